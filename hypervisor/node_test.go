package hypervisor

import (
	"context"
	"errors"
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
	p1, err := n.EnsureDisk("web", 20<<30, "")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := n.EnsureDisk("web", 20<<30, "")
	if err != nil || p1 != p2 {
		t.Fatalf("second EnsureDisk: %q %v, first %q", p2, err, p1)
	}
	if err := n.DeleteDisk("web"); err != nil {
		t.Fatal(err)
	}
	if err := n.DeleteDisk("web"); err != nil {
		t.Fatalf("second DeleteDisk: %v", err)
	}
	if err := n.EnsureDiskPool("relative/dir"); err == nil {
		t.Fatal("relative pool directory accepted")
	}
}
