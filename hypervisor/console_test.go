package hypervisor

import (
	"errors"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"
)

// The test driver has no consoles, so this holds what OpenConsole decides before it
// asks libvirt for one: unknown and foreign domains are not found, a stopped guest is
// not running (and says so), and a running one on the test driver is ErrNoConsole.
// Opening a real console is TestRealQEMUConsole's (internal/daemon).
func TestOpenConsoleRefusals(t *testing.T) {
	n := openTestNode(t, Capacity{CPUs: 4, MemoryBytes: 8 << 30})
	if _, err := n.OpenConsole("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown guest: %v, want ErrNotFound", err)
	}
	foreign := &libvirtxml.Domain{Type: "test", Name: "not-ours", Memory: &libvirtxml.DomainMemory{Value: 64, Unit: "MiB"},
		OS: &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Type: "hvm"}}}
	fx, _ := foreign.Marshal()
	d, err := n.conn.DomainDefineXML(fx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Create(); err != nil {
		t.Fatal(err)
	}
	d.Free()
	if _, err := n.OpenConsole("not-ours"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a running domain dvm does not manage: %v, want ErrNotFound", err)
	}
	if err := n.Define(GuestSpec{Name: "web", OS: "linux", CPUs: 1, MemoryBytes: 64 << 20,
		Boot: &DirectBoot{Kernel: "/var/lib/dvm/images/lab/kernel"}, ConsoleLog: "/var/lib/dvm/console/web.log"}); err != nil {
		t.Fatal(err)
	}
	_, err = n.OpenConsole("web")
	if !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("stopped guest: %v, want ErrNotRunning naming its state", err)
	}
	if err := n.Start("web"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.OpenConsole("web"); !errors.Is(err, ErrNoConsole) {
		t.Fatalf("running guest on the test driver: %v, want ErrNoConsole", err)
	}
}
