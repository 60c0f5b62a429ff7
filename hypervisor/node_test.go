package hypervisor

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"
)

func openTestNode(t testing.TB, c Capacity) *Node {
	t.Helper()
	uri, err := TestDriverURI(t.TempDir(), "n1", c)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Open(Options{URI: uri, Accelerator: "auto"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func TestNodeCapacityFromTestDriver(t *testing.T) {
	n := openTestNode(t, Capacity{CPUs: 12, MemoryBytes: 48 << 30})
	if got := n.HostCapacity(); got != (Capacity{12, 48 << 30}) {
		t.Fatalf("HostCapacity = %+v", got)
	}
	if n.Accelerator() != AccelTest {
		t.Fatalf("Accelerator = %q, want test", n.Accelerator())
	}
}

func TestNodeLifecycle(t *testing.T) {
	n := openTestNode(t, Capacity{CPUs: 8, MemoryBytes: 16 << 30})
	spec := GuestSpec{Name: "web", UUID: "8a3d51a2-1c7e-4a8e-9a57-2f1c1c0e0b01", OS: "dragonfly", CPUs: 2, MemoryBytes: 2 << 30,
		Disk: &Disk{Path: "/var/lib/dvm/disks/web.qcow2"}}
	if err := n.Define(spec); err != nil {
		t.Fatal(err)
	}
	// A foreign domain on the same host must stay invisible to dvm.
	foreign := &libvirtxml.Domain{Type: "test", Name: "not-ours", Memory: &libvirtxml.DomainMemory{Value: 1024, Unit: "MiB"},
		OS: &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Type: "hvm"}}}
	fx, _ := foreign.Marshal()
	if _, err := n.conn.DomainDefineXML(fx); err != nil {
		t.Fatal(err)
	}
	list, err := n.List()
	if err != nil || len(list) != 1 || list[0].Name != "web" || list[0].State != StateStopped || list[0].OS != "dragonfly" {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if err := n.Start("web"); err != nil {
		t.Fatal(err)
	}
	if err := n.Start("web"); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	if st, _ := n.State("web"); st != StateRunning {
		t.Fatalf("state after start = %s", st)
	}
	waitEvent(t, n, "web", StateRunning)
	// The test driver's guests power off on ACPI shutdown at once.
	if err := n.Shutdown(context.Background(), "web", time.Second); err != nil {
		t.Fatal(err)
	}
	if st, _ := n.State("web"); st != StateStopped {
		t.Fatalf("state after shutdown = %s", st)
	}
	waitEvent(t, n, "web", StateStopped)
	if err := n.Start("web"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // twice: pausing a paused guest is not an error
		if err := n.Suspend("web"); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := n.State("web"); st != StatePaused {
		t.Fatalf("state after suspend = %s", st)
	}
	for i := 0; i < 2; i++ {
		if err := n.Resume("web"); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := n.State("web"); st != StateRunning {
		t.Fatalf("state after resume = %s", st)
	}
	if err := n.Suspend("ghost"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Suspend of unknown guest: %v", err)
	}
	if err := n.Destroy("web"); err != nil {
		t.Fatal(err)
	}
	if err := n.Undefine("web"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.State("web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("State after undefine: %v, want ErrNotFound", err)
	}
	if err := n.Undefine("web"); err != nil {
		t.Fatalf("second Undefine: %v", err)
	}
	if err := n.Start("ghost"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Start of unknown guest: %v", err)
	}
}

func waitEvent(t *testing.T, n *Node, guest string, want State) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-n.Events():
			if ev.Guest == guest && ev.State == want {
				return
			}
		case <-deadline:
			t.Fatalf("no %s event for %s", want, guest)
		}
	}
}

func TestChooseAccelerator(t *testing.T) {
	both := map[string]bool{"kvm": true, "qemu": true}
	tcgOnly := map[string]bool{"qemu": true}
	cases := []struct {
		types map[string]bool
		want  string
		local bool
		accel Accelerator
		fails bool
	}{
		{both, "tcg", true, AccelTCG, false},
		{both, "kvm", true, AccelKVM, false},
		{both, "auto", false, AccelKVM, false},
		{tcgOnly, "auto", true, AccelTCG, false},
		{tcgOnly, "kvm", true, "", true},
		{map[string]bool{}, "auto", true, "", true},
		{both, "xen", true, "", true},
		{map[string]bool{"test": true}, "kvm", false, AccelTest, false},
	}
	for _, c := range cases {
		got, err := chooseAccelerator(c.types, c.want, c.local)
		if (err != nil) != c.fails || got != c.accel {
			t.Errorf("chooseAccelerator(%v, %q) = %q, %v", c.types, c.want, got, err)
		}
	}
}

func TestDiskPoolOnTestDriver(t *testing.T) {
	n := openTestNode(t, Capacity{CPUs: 4, MemoryBytes: 8 << 30})
	dir := t.TempDir()
	if err := n.EnsureDiskPool(dir); err != nil {
		t.Fatal(err)
	}
	if err := n.EnsureDiskPool(dir); err != nil {
		t.Fatalf("second EnsureDiskPool: %v", err)
	}
	p1, err := n.EnsureDisk("web", 0, 20<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := n.EnsureDisk("web", 0, 20<<30, nil)
	if err != nil || p1 != p2 {
		t.Fatalf("second EnsureDisk: %q %v, first %q", p2, err, p1)
	}
	if err := n.DeleteDisks("web"); err != nil {
		t.Fatal(err)
	}
	if err := n.DeleteDisks("web"); err != nil {
		t.Fatalf("second DeleteDisks: %v", err)
	}
	if err := n.EnsureDiskPool("relative/dir"); err == nil {
		t.Fatal("relative pool directory accepted")
	}
}

// TestDisksFromAnImage: a guest's first disk is a qcow2 overlay of the asked size on
// its image, the image's format named; extra disks are empty; DeleteDisks removes the
// guest's disks and no other guest's, even one whose name starts the same.
func TestDisksFromAnImage(t *testing.T) {
	n := openTestNode(t, Capacity{CPUs: 4, MemoryBytes: 8 << 30})
	if err := n.EnsureDiskPool(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"qcow2", "raw"} {
		base := &Base{Path: "/shared/images/debian/disk." + format, Format: format}
		p, err := n.EnsureDisk("web-"+format, 0, 30<<30, base)
		if err != nil {
			t.Fatal(err)
		}
		vol := volumeXML(t, n, "web-"+format+".qcow2")
		if vol.BackingStore == nil || vol.BackingStore.Path != base.Path || vol.BackingStore.Format.Type != format ||
			vol.Capacity.Value != 30<<30 || vol.Target.Format.Type != "qcow2" || vol.Target.Path != p {
			t.Errorf("%s: volume %+v, backing %+v", format, vol.Target, vol.BackingStore)
		}
	}
	if _, err := n.EnsureDisk("web", 0, 20<<30, &Base{Path: "/shared/images/x/disk.iso", Format: "iso"}); err == nil || !strings.Contains(err.Error(), `format "iso"`) {
		t.Fatalf("disk on an iso: %v", err)
	}
	for i, size := range []int64{20 << 30, 50 << 30, 1 << 30} {
		if _, err := n.EnsureDisk("web", i, size, nil); err != nil {
			t.Fatal(err)
		}
	}
	if vol := volumeXML(t, n, "web.disk1.qcow2"); vol.BackingStore != nil || vol.Capacity.Value != 50<<30 {
		t.Errorf("extra disk: %+v, backing %+v", vol.Capacity, vol.BackingStore)
	}
	if _, err := n.EnsureDisk("web-disk1", 0, 1<<30, nil); err != nil {
		t.Fatal(err)
	}
	if err := n.DeleteDisks("web"); err != nil {
		t.Fatal(err)
	}
	left := poolVolumes(t, n)
	want := []string{"web-disk1.qcow2", "web-qcow2.qcow2", "web-raw.qcow2"}
	if !slices.Equal(left, want) {
		t.Fatalf("after DeleteDisks(web): %v, want %v", left, want)
	}
}

func volumeXML(t *testing.T, n *Node, name string) libvirtxml.StorageVolume {
	t.Helper()
	pool, err := n.conn.LookupStoragePoolByName(DiskPool)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Free()
	vol, err := pool.LookupStorageVolByName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Free()
	x, err := vol.GetXMLDesc(0)
	if err != nil {
		t.Fatal(err)
	}
	var v libvirtxml.StorageVolume
	if err := v.Unmarshal(x); err != nil {
		t.Fatal(err)
	}
	return v
}

func poolVolumes(t *testing.T, n *Node) []string {
	t.Helper()
	pool, err := n.conn.LookupStoragePoolByName(DiskPool)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Free()
	names, err := pool.ListStorageVolumes()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}
