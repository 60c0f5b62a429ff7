package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestImagesSurviveRestartAndSnapshot: image records are replicated state: kept across
// a restart (the log replayed), carried by a raft snapshot and a snapshot file, and
// deleted by delete_image.
func TestImagesSurviveRestartAndSnapshot(t *testing.T) {
	dir := t.TempDir()
	s := single(t, dir)
	now := time.Now().UTC().Truncate(time.Second)
	if _, err := s.Apply(
		Command{Op: OpPutImage, Image: &ImageRecord{Name: "debian", Format: "qcow2", State: ImageImporting, CreatedAt: now}},
		Command{Op: OpPutImage, Image: &ImageRecord{Name: "old", Format: "raw", State: ImageReady, SizeBytes: 1 << 20, VirtualBytes: 1 << 20, SHA256: "ab"}},
	); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(
		Command{Op: OpPutImage, Image: &ImageRecord{Name: "debian", Format: "qcow2", State: ImageReady, SizeBytes: 300 << 20, VirtualBytes: 2 << 30, SHA256: "cd", CreatedAt: now}},
		Command{Op: OpDeleteImage, Name: "old"},
	); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = single(t, dir)
	defer s.Close()
	waitTrue(t, "log replayed", func() bool { _, ok := s.Image("debian"); return ok })
	im, _ := s.Image("debian")
	if im.State != ImageReady || im.VirtualBytes != 2<<30 || im.SHA256 != "cd" || !im.CreatedAt.Equal(now) {
		t.Fatalf("after reopen: %+v", im)
	}
	if _, ok := s.Image("old"); ok || len(s.Images()) != 1 {
		t.Fatalf("images after reopen: %+v", s.Images())
	}

	// A raft snapshot (what a follower that fell behind gets) carries them.
	data, err := json.Marshal(s.State())
	if err != nil {
		t.Fatal(err)
	}
	st, err := DecodeState(data)
	if err != nil || len(st.Images) != 1 || st.Images[0].Name != "debian" {
		t.Fatalf("state: %+v, %v", st.Images, err)
	}
	other := single(t, t.TempDir())
	defer other.Close()
	other.load(st)
	if im, ok := other.Image("debian"); !ok || im.SHA256 != "cd" {
		t.Fatalf("loaded: %+v %v", im, ok)
	}
	// So does a snapshot file (vmctl cluster snapshot save).
	_, fromFile, err := ReadSnapshot(bytes.NewReader(snapshotFile(t, s.State())))
	if err != nil || len(fromFile.Images) != 1 {
		t.Fatalf("snapshot file: %+v, %v", fromFile.Images, err)
	}
}

// TestStateWithoutImagesIsReadByOlderBuilds: a state that holds no image has no
// "images" field at all, so a dvmd from before images still reads it; one that holds
// images has it, and a build that did not know it refuses it loudly (the strict
// decoding every state goes through, shown here with a field this build lacks).
func TestStateWithoutImagesIsReadByOlderBuilds(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	data, _ := json.Marshal(s.State())
	if strings.Contains(string(data), `"images"`) {
		t.Fatalf("a state without images names them: %s", data)
	}
	if _, err := s.Apply(Command{Op: OpPutImage, Image: &ImageRecord{Name: "x", Format: "raw", State: ImageReady}}); err != nil {
		t.Fatal(err)
	}
	data, _ = json.Marshal(s.State())
	bad := strings.Replace(string(data), `"images":[{`, `"images":[{"colour":"red",`, 1)
	if _, err := DecodeState([]byte(bad)); !errors.Is(err, ErrHalted) || !strings.Contains(err.Error(), `has field "colour"`) {
		t.Fatalf("unknown field in an image: %v", err)
	}
}

// TestImageOpsAreChecked: an image command without its record, name, format or
// state is refused before it reaches the log, and the new ops (and guest records
// with the fields added with them) wait for every replica to run a dvmd that applies
// them.
func TestImageOpsAreChecked(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	before := s.Index()
	for _, c := range []Command{
		{Op: OpPutImage},
		{Op: OpPutImage, Image: &ImageRecord{Name: "x", State: ImageReady}},
		{Op: OpPutImage, Image: &ImageRecord{Name: "x", Format: "raw"}},
		{Op: OpDeleteImage},
	} {
		if _, err := s.Apply(c); err == nil {
			t.Errorf("%+v applied", c)
		}
	}
	if s.Index() != before {
		t.Fatal("a refused command changed the index")
	}
	if err := s.Raft().AddNonvoter("n2", "n2", 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	s.SetPeerVersion(func(string) string { return "0.2.0-dev" }) // the last landing before images
	_, err := s.Apply(Command{Op: OpPutImage, Image: &ImageRecord{Name: "x", Format: "raw", State: ImageImporting}})
	if !errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "put_image needs dvmd 0.3.0") {
		t.Fatalf("put_image with a 0.2.0-dev replica: %v", err)
	}
	// A guest record with the fields added since is held back too; one without is not.
	_, err = s.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "web", ExtraDiskBytes: []int64{1 << 30}}})
	if !errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "a guest with extra disks needs dvmd 0.3.0") {
		t.Fatalf("extra disks with a 0.2.0-dev replica: %v", err)
	}
	if _, err := s.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "web", KeepDisks: true}}); !errors.Is(err, ErrTooOld) {
		t.Fatalf("keep_disks with a 0.2.0-dev replica: %v", err)
	}
	_, err = s.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "web", ISO: "dfly"}})
	if !errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "a guest with install media needs dvmd 0.3.0") {
		t.Fatalf("install media with a 0.2.0-dev replica: %v", err)
	}
	_, err = s.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "web", VNCPassword: "abcd2345"}})
	if !errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "a guest with a VNC display needs dvmd 0.3.0") {
		t.Fatalf("a VNC display with a 0.2.0-dev replica: %v", err)
	}
	_, err = s.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "web", CloudInit: &CloudInitRecord{}}})
	if !errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "a guest with a cloud-init seed needs dvmd 0.3.0") {
		t.Fatalf("a cloud-init seed with a 0.2.0-dev replica: %v", err)
	}
	_, err = s.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "web", Pool: "ceph"}})
	if !errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "a guest on a storage pool needs dvmd 0.3.0") {
		t.Fatalf("a storage pool with a 0.2.0-dev replica: %v", err)
	}
	pools := Command{Op: OpPutNode, Node: &NodeRecord{Name: "n3", CPUs: 1, MemoryBytes: 1 << 30, Pools: map[string]string{"ceph": "rbd"}}}
	if err := s.MayWriteCommand(pools); !errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "a node with storage pools needs dvmd 0.3.0") {
		t.Fatalf("a node's storage pools with a 0.2.0-dev replica: %v", err)
	}
	if _, err := s.Apply(pools); !errors.Is(err, ErrTooOld) {
		t.Fatalf("a node's storage pools with a 0.2.0-dev replica applied: %v", err)
	}
	if _, err := s.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "web"}}); err != nil {
		t.Fatal(err)
	}
}
