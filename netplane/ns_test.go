package netplane

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// testNS is a private network namespace created for one test. The test process stays in
// its own namespace; everything it does in testNS goes through a netlink handle bound to
// it, or through `nsenter --net` for commands, so nothing ever reaches the root namespace.
type testNS struct {
	t    testing.TB
	ns   netns.NsHandle
	path string // /proc/PID/fd/N: usable by this process and by nsenter
	h    *netlink.Handle
}

func newTestNS(t testing.TB) *testNS {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New() // creates and enters a new namespace on this thread
	if err != nil {
		t.Fatalf("create netns (these tests need root or CAP_SYS_ADMIN): %v", err)
	}
	if err := netns.Set(orig); err != nil {
		// The thread stays in the wrong namespace: do not let anything else run on it.
		panic(fmt.Sprintf("restore netns: %v", err))
	}
	if ns.Equal(orig) {
		t.Fatal("new netns is the test's own namespace; refusing to touch it")
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink handle in test netns: %v", err)
	}
	n := &testNS{t: t, ns: ns, path: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns)), h: h}
	t.Cleanup(func() { h.Close(); ns.Close() })
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatalf("lo: %v", err)
	}
	n.must(h.LinkSetUp(lo))
	return n
}

func (n *testNS) must(err error) {
	n.t.Helper()
	if err != nil {
		n.t.Fatal(err)
	}
}

func (n *testNS) reconciler(prefix string) *Reconciler {
	n.t.Helper()
	r, err := NewReconciler(Options{Prefix: prefix, NetnsPath: n.path})
	if err != nil {
		n.t.Fatalf("NewReconciler: %v", err)
	}
	n.t.Cleanup(r.Close)
	return r
}

// underlay adds a veth pair "ul0"/"ul0p" (up, with addr on ul0 and the given MTU) to stand
// in for the node's cluster-network link.
func (n *testNS) underlay(addr string, mtu int) {
	n.t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = "ul0", mtu
	n.must(n.h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "ul0p"}))
	n.upAddr("ul0", addr)
	n.must(n.h.LinkSetUp(n.link("ul0p")))
}

func (n *testNS) upAddr(name, addr string) {
	n.t.Helper()
	l := n.link(name)
	a, err := netlink.ParseAddr(addr)
	n.must(err)
	n.must(n.h.AddrAdd(l, a))
	n.must(n.h.LinkSetUp(l))
}

func (n *testNS) link(name string) netlink.Link {
	n.t.Helper()
	l, err := n.h.LinkByName(name)
	if err != nil {
		n.t.Fatalf("link %s: %v", name, err)
	}
	return l
}

func (n *testNS) hasLink(name string) bool {
	_, err := n.h.LinkByName(name)
	return err == nil
}

// fdb lists the VXLAN driver's own entries on dev as "MAC→VTEP" strings, sorted.
func (n *testNS) fdb(dev string) []string {
	n.t.Helper()
	l := n.link(dev)
	es, err := n.h.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
	n.must(err)
	var out []string
	for _, e := range es {
		if e.LinkIndex == l.Attrs().Index && e.Flags&unix.NTF_SELF != 0 && e.IP != nil {
			out = append(out, e.HardwareAddr.String()+"→"+e.IP.String())
		}
	}
	sort.Strings(out)
	return out
}

// neighs lists permanent neighbour entries on dev as "IP→MAC", sorted.
func (n *testNS) neighs(dev string) []string {
	n.t.Helper()
	l := n.link(dev)
	var out []string
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		es, err := n.h.NeighList(l.Attrs().Index, fam)
		n.must(err)
		for _, e := range es {
			if e.LinkIndex == l.Attrs().Index && e.State&unix.NUD_PERMANENT != 0 {
				out = append(out, e.IP.String()+"→"+e.HardwareAddr.String())
			}
		}
	}
	sort.Strings(out)
	return out
}

// snapshot is every link with its configuration, every FDB entry on our links and every
// permanent neighbour entry in the namespace, as text: equal snapshots mean nothing was changed.
func (n *testNS) snapshot() string {
	n.t.Helper()
	links, err := n.h.LinkList()
	n.must(err)
	var lines []string
	ours := map[int]bool{}
	for _, l := range links {
		a := l.Attrs()
		_, _, ours[a.Index] = parseOwned(DefaultPrefix, a.Name)
		// Admin state only: the running (carrier) flag follows asynchronously.
		line := fmt.Sprintf("link %d %s %s mtu=%d master=%d up=%v mac=%v", a.Index, a.Name, l.Type(), a.MTU, a.MasterIndex, a.Flags&net.FlagUp != 0, a.HardwareAddr)
		if vx, ok := l.(*netlink.Vxlan); ok {
			line += fmt.Sprintf(" vni=%d local=%v dev=%d port=%d learning=%v", vx.VxlanId, vx.SrcAddr, vx.VtepDevIndex, vx.Port, vx.Learning)
		}
		lines = append(lines, line)
	}
	for _, fam := range []int{unix.AF_BRIDGE, unix.AF_INET, unix.AF_INET6} {
		es, err := n.h.NeighList(0, fam)
		n.must(err)
		for _, e := range es {
			if fam == unix.AF_BRIDGE && !ours[e.LinkIndex] {
				continue // other links' FDB: their multicast lists, which IPv6 DAD changes
			}
			if fam != unix.AF_BRIDGE && e.State&unix.NUD_PERMANENT == 0 {
				continue // resolved and aged by the kernel itself, not configuration
			}
			lines = append(lines, fmt.Sprintf("neigh fam=%d dev=%d %v %v state=%#x flags=%#x", fam, e.LinkIndex, e.HardwareAddr, e.IP, e.State, e.Flags))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// run runs a command inside the namespace.
func (n *testNS) run(args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.path, "--"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

var addr = netip.MustParseAddr
var prefix = netip.MustParsePrefix
