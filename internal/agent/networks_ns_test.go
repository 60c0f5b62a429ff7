package agent

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// privateNetns makes a network namespace for one test, with an underlay link "ul0" (veth)
// (10.77.0.11/24, MTU 1500), and returns its path and a netlink handle in it. The test
// process never leaves its own namespace (the thread that creates the new one returns
// at once), so nothing reaches the root namespace. Needs root: skipped without it
// unless CI=true.
func privateNetns(t *testing.T) (string, *netlink.Handle) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test needs root (a private network namespace)")
		}
		t.Skip("needs root for a private network namespace (CI=true makes this a failure)")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("create netns: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		panic(fmt.Sprintf("restore netns: %v", err)) // the thread is in the wrong namespace
	}
	orig.Close()
	runtime.UnlockOSThread()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); ns.Close() })
	// A veth pair, both ends here: the lab machine's kernel has no dummy links.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0", MTU: 1500}, PeerName: "ul0p"}); err != nil {
		t.Fatal(err)
	}
	ul, err := h.LinkByName("ul0")
	if err != nil {
		t.Fatal(err)
	}
	if peer, err := h.LinkByName("ul0p"); err != nil || h.LinkSetUp(peer) != nil {
		t.Fatalf("ul0p: %v", err)
	}
	addr, _ := netlink.ParseAddr("10.77.0.11/24")
	if err := h.AddrAdd(ul, addr); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(ul); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns)), h
}

// TestReconcileNetworksInNetns runs the agent's network step against the kernel, in a
// private namespace: the assignment's network gets its bridge (MTU derived from the
// underlay, given to the guest's NIC), flood and guest entries; a guest that moved is
// followed; a network no guest needs any more is removed; a netlink failure becomes the
// error of the guests on that network.
func TestReconcileNetworksInNetns(t *testing.T) {
	path, h := privateNetns(t)
	a := &Agent{cfg: Config{Name: "n1", Address: "10.77.0.11:7460", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Net: NetConfig{NetnsPath: path}}, errs: map[string]string{}}
	asg := api.Assignment{
		Guests: []api.AssignedGuest{{Name: "a", NICs: []api.AssignedNIC{{Network: "blue", VNI: 42, MAC: "52:54:00:00:00:0a", IP: "192.168.42.1/24"}}}},
		Net: &api.NetAssignment{
			Networks:  []api.AssignedNetwork{{Name: "blue", VNI: 42, CIDR: "192.168.42.0/24"}},
			Peers:     []string{"10.77.0.12"},
			Endpoints: []api.Endpoint{{Network: "blue", Guest: "b", MAC: "52:54:00:00:00:0b", IP: "192.168.42.2", Node: "n2", VTEP: "10.77.0.12"}},
		},
	}
	a.reconcileNetworks(asg)
	if e := a.guestError("a"); e != "" {
		t.Fatalf("guest a has error %q", e)
	}
	br, err := h.LinkByName("dvmbr42")
	if err != nil || br.Attrs().MTU != 1450 {
		t.Fatalf("bridge dvmbr42: %v; want MTU 1450 (1500 - VXLAN over IPv4)", err)
	}
	if got := a.net.mtu[42]; got != 1450 {
		t.Errorf("MTU for guest NICs %d; want the bridge's 1450", got)
	}
	if got := fdbDst(t, h, "52:54:00:00:00:0b"); got != "10.77.0.12" {
		t.Errorf("b's FDB entry points at %q; want n2's VTEP", got)
	}

	// b moved to n3.
	asg.Net.Peers = []string{"10.77.0.13"}
	asg.Net.Endpoints[0].Node, asg.Net.Endpoints[0].VTEP = "n3", "10.77.0.13"
	a.reconcileNetworks(asg)
	if got := fdbDst(t, h, "52:54:00:00:00:0b"); got != "10.77.0.13" {
		t.Errorf("after the move b's FDB entry points at %q; want n3's VTEP", got)
	}

	// A network whose MTU cannot fit the underlay: the failure is guest a's error.
	bad := asg
	bad.Net = &api.NetAssignment{Networks: []api.AssignedNetwork{{Name: "blue", VNI: 42, CIDR: "192.168.42.0/24", MTU: 1480}}}
	a.reconcileNetworks(bad)
	if e := a.guestError("a"); !strings.Contains(e, "network") || !strings.Contains(e, "1480") {
		t.Errorf("guest a's error %q; want the network's MTU failure", e)
	}

	// No guest here needs a network any more: the devices go.
	a.reconcileNetworks(api.Assignment{})
	if _, err := h.LinkByName("dvmbr42"); err == nil {
		t.Error("dvmbr42 still exists after its last guest left")
	}
	if e := a.guestError("a"); e != "" {
		t.Errorf("error %q kept after a clean reconcile", e)
	}
}

// fdbDst is where the VXLAN device of VNI 42 sends mac, or "".
func fdbDst(t *testing.T, h *netlink.Handle, mac string) string {
	t.Helper()
	vx, err := h.LinkByName("dvmvx42")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := h.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := net.ParseMAC(mac)
	for _, e := range entries {
		if e.HardwareAddr.String() == want.String() && e.IP != nil {
			return e.IP.String()
		}
	}
	return ""
}
