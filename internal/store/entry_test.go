package store

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/version"
	"github.com/hashicorp/raft"
)

// rawApply writes data as one log entry, as a leader of another build would: no
// check, no stamp.
func rawApply(t *testing.T, s *Store, data string) (uint64, any) {
	t.Helper()
	f := s.Raft().Apply([]byte(data), 5*time.Second)
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	return f.Index(), f.Response()
}

func TestApplyStampsTheWritersVersion(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	idx, err := s.Apply(Command{Op: OpPutNode, Node: &NodeRecord{Name: "n1"}})
	if err != nil {
		t.Fatal(err)
	}
	var l raft.Log
	if err := s.logs.GetLog(idx, &l); err != nil {
		t.Fatal(err)
	}
	var cmds []map[string]any
	if err := json.Unmarshal(l.Data, &cmds); err != nil {
		t.Fatal(err)
	}
	if len(cmds) != 1 || cmds[0]["v"] != version.Version {
		t.Fatalf("entry %d is %s: want the command stamped with %q", idx, l.Data, version.Version)
	}
}

// TestUnknownEntryHaltsTheReplica: an entry with an op, or a field, that this build
// does not know stops the replica at that entry, with a message naming the op or
// field, the index and the version that wrote it. Nothing after it is applied, no
// write is taken, no snapshot is made (it would compact the entry away), and after a
// restart the replica stops at the same entry again: it was kept, not skipped.
func TestUnknownEntryHaltsTheReplica(t *testing.T) {
	for _, c := range []struct {
		name, entry, want string
	}{
		{"op", `[{"op":"put_volume","v":"9.1.0","name":"vol1"}]`, `holds op "put_volume"`},
		{"field", `[{"op":"put_guest","v":"9.1.0","guest":{"name":"web","colour":"red"}}]`, `has field "colour"`},
		{"field of the command", `[{"op":"put_node","v":"9.1.0","node":{"name":"n9"},"lease":3}]`, `has field "lease"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s := single(t, dir)
			if _, err := s.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "before", Desired: DesiredRunning}}); err != nil {
				t.Fatal(err)
			}
			before := s.Index()
			idx, resp := rawApply(t, s, c.entry)
			err, _ := resp.(error)
			var h *HaltError
			if !errors.As(err, &h) || h.Index != idx || h.Writer != "9.1.0" {
				t.Fatalf("response to the entry at %d: %v", idx, resp)
			}
			for _, want := range []string{c.want, "log entry " + itoa(idx), "written by dvmd 9.1.0", "upgrade this node's dvmd to 9.1.0"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("message %q lacks %q", err, want)
				}
			}
			if !errors.Is(s.Halted(), ErrHalted) {
				t.Fatalf("Halted() = %v after the entry", s.Halted())
			}
			// A well-formed entry after it is not applied either.
			_, resp = rawApply(t, s, `[{"op":"put_guest","guest":{"name":"after","desired":"running"}}]`)
			if _, ok := s.Guest("after"); ok || s.Index() != before {
				t.Fatalf("applied past the halt: index %d (halted at %d), response %v", s.Index(), before, resp)
			}
			if _, err := s.Apply(Command{Op: OpPutNode, Node: &NodeRecord{Name: "n2"}}); !errors.Is(err, ErrHalted) {
				t.Fatalf("a write on the halted replica: %v", err)
			}
			if err := s.Raft().Snapshot().Error(); err == nil {
				t.Fatal("a halted replica took a snapshot")
			}
			s.Close()

			s = single(t, dir)
			defer s.Close()
			waitTrue(t, "replay halts again", func() bool { return s.Halted() != nil })
			if !errors.As(s.Halted(), &h) || h.Index != idx {
				t.Fatalf("after restart: %v, want a halt at %d", s.Halted(), idx)
			}
			if _, ok := s.Guest("before"); !ok {
				t.Fatal("the state before the entry was not replayed")
			}
			var l raft.Log
			if err := s.logs.GetLog(idx, &l); err != nil || string(l.Data) != c.entry {
				t.Fatalf("entry %d after restart: %q %v", idx, l.Data, err)
			}
		})
	}
}

func itoa(i uint64) string { b, _ := json.Marshal(i); return string(b) }

// TestDamagedEntryHaltsWithoutAVersion: an entry from a build that carried no version,
// or one that is not JSON, halts too; the message says it cannot be read and points
// to a restore rather than an upgrade.
func TestDamagedEntryHaltsWithoutAVersion(t *testing.T) {
	for _, entry := range []string{`{"op":"put_node"}`, `[{"op":"put_guest"}]`, `not json`} {
		s := single(t, t.TempDir())
		_, resp := rawApply(t, s, entry)
		err, _ := resp.(error)
		if !errors.Is(err, ErrHalted) || !strings.Contains(err.Error(), "cannot be read") ||
			!strings.Contains(err.Error(), "dvmd "+version.Unknown) || !strings.Contains(err.Error(), "snapshot restore") {
			t.Errorf("entry %s: %v", entry, err)
		}
		s.Close()
	}
}

// TestStateRefusesWhatItDoesNotKnow: a state snapshot of a newer format, or with a
// field this build does not know, is refused, naming it; the replica that meets one
// halts rather than load part of it.
func TestStateRefusesWhatItDoesNotKnow(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	if _, err := s.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "web", Desired: DesiredRunning}}); err != nil {
		t.Fatal(err)
	}
	good, err := json.Marshal(s.State())
	if err != nil {
		t.Fatal(err)
	}
	if st, err := DecodeState(good); err != nil || len(st.Guests) != 1 || st.Format != StateFormat || st.Version != version.Version {
		t.Fatalf("own state: %+v, %v", st, err)
	}
	// A raft snapshot of a build from before formats were carried reads as format 1.
	if st, err := DecodeState([]byte(`{"index":7,"nodes":[],"guests":[],"networks":[],"events":[],"meta":{"generation":1}}`)); err != nil || st.Format != 1 || st.Index != 7 {
		t.Fatalf("a snapshot without a format: %+v, %v", st, err)
	}
	for _, c := range []struct{ data, want string }{
		{strings.Replace(string(good), `"format":1`, `"format":2`, 1), "its format 2 is newer than this build's (1)"},
		{strings.Replace(string(good), `"guests":[{`, `"guests":[{"colour":"red",`, 1), `has field "colour"`},
		{strings.Replace(string(good), `"meta":{`, `"quotas":[],"meta":{`, 1), `has field "quotas"`},
		{`[]`, "not a state snapshot"},
	} {
		_, err := DecodeState([]byte(c.data))
		if !errors.Is(err, ErrHalted) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "state snapshot") {
			t.Errorf("DecodeState(%.60s…) = %v, want %q", c.data, err, c.want)
		}
	}
	bad := strings.Replace(string(good), `"guests":[{`, `"guests":[{"colour":"red",`, 1)
	f := (*fsm)(s)
	if err := f.Restore(io.NopCloser(strings.NewReader(bad))); err == nil {
		t.Fatal("restore of a snapshot with an unknown field succeeded")
	}
	if _, ok := s.Guest("web"); !ok || s.Halted() == nil {
		t.Fatalf("after a refused snapshot: guest kept %v, halted %v", ok, s.Halted())
	}
}

// TestNewerOpWaitsForEveryReplica: a leader writes an op newer than the baseline
// only once every replica of its group says it runs a version that applies it.
func TestNewerOpWaitsForEveryReplica(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	// A second replica, as raft's configuration lists it; it need not answer.
	if err := s.Raft().AddNonvoter("n2", "n2", 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	peers := map[string]string{}
	s.SetPeerVersion(func(node string) string { return peers[node] })
	adopt := Command{Op: OpSetAdoption, Adoption: &Adoption{Awaiting: []string{"n1"}}}
	_, err := s.Apply(adopt)
	if !errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "n2 runs unknown") || !strings.Contains(err.Error(), "set_adoption needs dvmd 0.1.0") {
		t.Fatalf("set_adoption with n2 of no version: %v", err)
	}
	if s.Adoption() != nil {
		t.Fatal("a refused write was applied")
	}
	// Ops every build applies are never held back.
	if _, err := s.Apply(Command{Op: OpPutNode, Node: &NodeRecord{Name: "n1"}}); err != nil {
		t.Fatal(err)
	}
	peers["n2"] = "0.1.0"
	if _, err := s.Apply(adopt); err != nil {
		t.Fatal(err)
	}
	if a := s.Adoption(); a == nil || !a.Adopting() || a.Awaiting[0] != "n1" {
		t.Fatalf("adoption %+v", a)
	}
}

// TestReplicaWithAnUnknownSnapshotDoesNotStart: a replica whose only raft snapshot
// holds a field this build does not know (one a newer dvmd took) does not start, and
// says why, rather than start from less than its state.
func TestReplicaWithAnUnknownSnapshotDoesNotStart(t *testing.T) {
	dir := t.TempDir()
	s := single(t, dir)
	if _, err := s.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "web", Desired: DesiredRunning}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	conf, err := s.Members()
	if err != nil {
		t.Fatal(err)
	}
	st := s.State()
	s.Close()
	// What a newer dvmd would have left: the same state, with a field more.
	snaps, err := raft.NewFileSnapshotStore(dir, 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	old, err := snaps.List()
	if err != nil || len(old) != 1 {
		t.Fatalf("snapshots %v %v", old, err)
	}
	data, _ := json.Marshal(st)
	data = []byte(strings.Replace(string(data), `"guests":[{`, `"guests":[{"colour":"red",`, 1))
	_, tr := raft.NewInmemTransport("")
	sink, err := snaps.Create(raft.SnapshotVersionMax, old[0].Index, old[0].Term, raft.Configuration{Servers: conf}, old[0].ConfigurationIndex, tr)
	if err != nil {
		t.Fatal(err)
	}
	sink.Write(data)
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "snapshots", old[0].ID)); err != nil {
		t.Fatal(err)
	}
	_, tr = raft.NewInmemTransport("")
	_, err = Open(Config{NodeID: "n1", Dir: dir, Transport: tr, Bootstrap: true, LogOutput: io.Discard})
	if !errors.Is(err, ErrHalted) || !strings.Contains(err.Error(), `has field "colour"`) || !strings.Contains(err.Error(), "state snapshot at index") {
		t.Fatalf("Open with an unknown snapshot: %v", err)
	}
}

// TestCountLossRaisesOnlyThatNode: count_loss raises the named node's Losses by one
// each time, leaves other nodes and an unknown name alone, is held back while a
// replica runs a dvmd from before it (MayWrite says so first), and survives a reopen.
func TestCountLossRaisesOnlyThatNode(t *testing.T) {
	dir := t.TempDir()
	s := single(t, dir)
	for _, n := range []string{"n1", "n2"} {
		if _, err := s.Apply(Command{Op: OpPutNode, Node: &NodeRecord{Name: n}}); err != nil {
			t.Fatal(err)
		}
	}
	before := s.PlacementWrites()
	for i := 0; i < 2; i++ {
		if _, err := s.Apply(Command{Op: OpCountLoss, Name: "n1"}, Command{Op: OpCountLoss, Name: "ghost"}); err != nil {
			t.Fatal(err)
		}
	}
	if s.PlacementWrites() == before {
		t.Error("a count_loss did not count as a change of the nodes")
	}
	if n, _ := s.Node("n1"); n.Losses != 2 {
		t.Fatalf("n1 losses %d, want 2", n.Losses)
	}
	if n, _ := s.Node("n2"); n.Losses != 0 {
		t.Fatalf("n2 losses %d, want 0", n.Losses)
	}
	if _, ok := s.Node("ghost"); ok {
		t.Fatal("count_loss of an unknown node made one")
	}
	if _, err := s.Apply(Command{Op: OpCountLoss}); err == nil {
		t.Fatal("count_loss without a name was taken")
	}
	if err := s.Raft().AddNonvoter("n3", "n3", 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	s.SetPeerVersion(func(string) string { return "0.2.0-dev" })
	if err := s.MayWrite(OpCountLoss); !errors.Is(err, ErrTooOld) {
		t.Fatalf("MayWrite(count_loss) with a 0.2.0-dev replica: %v", err)
	}
	if _, err := s.Apply(Command{Op: OpCountLoss, Name: "n1"}); !errors.Is(err, ErrTooOld) {
		t.Fatalf("count_loss with a 0.2.0-dev replica: %v", err)
	}
	s.Close()
	s = single(t, dir)
	defer s.Close()
	// Leadership comes before the log is applied again: wait for the replay.
	if err := s.Raft().Barrier(10 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Node("n1"); n.Losses != 2 {
		t.Fatalf("after reopen n1 losses %d, want 2", n.Losses)
	}
}
