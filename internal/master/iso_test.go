package master

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// isoFile writes the least file the import takes for an ISO 9660 image: a volume
// descriptor at 32 KiB.
func isoFile(t *testing.T, path string) {
	t.Helper()
	b := make([]byte, 64<<10)
	copy(b[0x8000:], "\x01CD001\x01")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestISOInstall: a guest created with --iso gets the ISO in its assignment and an
// empty disk of the default size; an ISO is refused as --image, a disk image as
// --iso, and --iso beside --image or with failover twin, each naming the field, and
// nothing is created; the ISO is in use (its delete refused, naming the guest and
// how to free it) until the guest's media is ejected, which a read token may not
// do, which is an event naming the token, and which a second time is refused.
func TestISOInstall(t *testing.T) {
	r := newImagesRig(t, capacityMaster)
	dir, m, admin, ops, reader := r.dir, r.m, r.admin, r.ops, r.reader
	ctx := context.Background()
	report(t, admin, "n1", 8, 16)
	iso := filepath.Join(dir, "dfly.iso")
	isoFile(t, iso)
	if _, err := importImage(ops, "dfly", "iso", "", iso); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.img")
	os.WriteFile(disk, make([]byte, 1<<20), 0o644)
	if _, err := importImage(ops, "plain", "raw", "", disk); err != nil {
		t.Fatal(err)
	}
	createWith := func(req api.CreateGuest) (api.Guest, error) { return createSmall(ops, req) }
	for _, b := range []refusal{
		{"an iso as --image", api.CreateGuest{Name: "x", Image: "dfly"}, 400, "image", "install media"},
		{"a disk image as --iso", api.CreateGuest{Name: "x", ISO: "plain"}, 400, "iso", `image "plain" is a raw image, not install media (iso): give it as --image`},
		{"no such iso", api.CreateGuest{Name: "x", ISO: "nope"}, 400, "iso", `no image "nope"`},
		{"--iso and --image", api.CreateGuest{Name: "x", ISO: "dfly", Image: "plain"}, 400, "iso", "give --iso or --image, not both"},
		{"a twin", api.CreateGuest{Name: "x", ISO: "dfly", Failover: api.FailoverTwin}, 400, "iso", "a twin guest has no install media"},
		{"a bad name", api.CreateGuest{Name: "x", ISO: "Dfly!"}, 400, "iso", "not a valid image name"},
	} {
		_, err := createWith(b.req)
		b.check(t, m, err)
	}

	g, err := createWith(api.CreateGuest{Name: "inst", ISO: "dfly"})
	if err != nil || g.ISO != "dfly" || g.DiskBytes != api.DefaultDisk || g.Image != "" || g.Node != "n1" {
		t.Fatalf("inst: %+v, %v", g, err)
	}
	assigned := func() api.AssignedGuest {
		for _, ag := range m.Assignment(ctx, "n1", 0, 0).Guests {
			if ag.Name == "inst" {
				return ag
			}
		}
		t.Fatal("inst not assigned to n1")
		return api.AssignedGuest{}
	}
	if ag := assigned(); ag.ISO != "dfly" || ag.DiskBytes != api.DefaultDisk || ag.Image != "" {
		t.Fatalf("assignment of inst: %+v", ag)
	}
	var shown api.Image
	if err := reader.Do(ctx, "GET", "/v1/images/dfly", nil, &shown); err != nil || strings.Join(shown.UsedBy, ",") != "inst" {
		t.Fatalf("image show dfly: %+v, %v", shown, err)
	}
	wantStatus(t, "delete an iso in a cdrom", ops.Do(ctx, "DELETE", "/v1/images/dfly", nil, nil), 409,
		`image "dfly" is used by 1 guests (inst): conflict: it is in their cdrom; eject it (vmctl vm eject GUEST)`)
	if _, ok := m.st.Image("dfly"); !ok {
		t.Fatal("a refused delete removed the image")
	}

	wantStatus(t, "eject with a read token", reader.Do(ctx, "POST", "/v1/guests/inst/eject", nil, nil), 403, "operator")
	wantStatus(t, "eject with a body", ops.Do(ctx, "POST", "/v1/guests/inst/eject", map[string]string{"iso": "dfly"}, nil), 400, "unknown field")
	if rec, _ := m.st.Guest("inst"); rec.ISO != "dfly" {
		t.Fatalf("a refused eject changed the guest: %+v", rec)
	}
	var ejected api.Guest
	if err := ops.Do(ctx, "POST", "/v1/guests/inst/eject", nil, &ejected); err != nil || ejected.Name != "inst" || ejected.ISO != "" {
		t.Fatalf("eject: %+v, %v", ejected, err)
	}
	if ag := assigned(); ag.ISO != "" {
		t.Fatalf("assignment after the eject: %+v", ag)
	}
	found := false
	for _, e := range m.st.Events(0) {
		if e.Kind == EventWrite && e.Guest == "inst" && e.Token == "ops" && strings.Contains(e.Detail, "POST /v1/guests/inst/eject (200): image dfly ejected") {
			found = true
		}
	}
	if !found {
		t.Error("no write event for the eject")
	}
	wantStatus(t, "eject again", ops.Do(ctx, "POST", "/v1/guests/inst/eject", nil, nil), 409, `guest "inst" has no install media in its cdrom`)
	wantStatus(t, "eject a guest that is not there", ops.Do(ctx, "POST", "/v1/guests/nope/eject", nil, nil), 404, `guest "nope"`)
	if err := ops.Do(ctx, "DELETE", "/v1/images/dfly", nil, nil); err != nil {
		t.Fatalf("delete the iso once ejected: %v", err)
	}

	// A node of an older dvmd would refuse an assignment with install media.
	isoFile(t, iso)
	if _, err := importImage(ops, "dfly", "iso", "", iso); err != nil {
		t.Fatal(err)
	}
	putNode(t, m, store.NodeRecord{Name: "old", CPUs: 4, MemoryBytes: 8 << 30, Version: "0.2.0-dev"})
	_, err = createWith(api.CreateGuest{Name: "x", ISO: "dfly"})
	wantStatus(t, "an iso with a 0.2.0-dev node", err, 409, "node old runs 0.2.0-dev")
}
