package netplane

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// overlayLab is a small cluster made of namespaces: a switch namespace with a bridge
// (the cluster network), one namespace per node with its own reconciler, and one
// namespace per guest whose eth0 is a veth port on its node's bridge. Only these
// namespaces carry traffic.
type overlayLab struct {
	t      testing.TB
	sw     *testNS
	nodes  []*labNode
	guests map[string]*labGuest
}

type labNode struct {
	ns   *testNS
	vtep netip.Addr
	r    *Reconciler
}

type labGuest struct {
	ns   *testNS
	mac  net.HardwareAddr
	ip   netip.Addr
	node int // index into nodes
	port string
}

var blue = Network{Name: "blue", VNI: 42, CIDR: prefix("192.168.42.0/24")}

func newOverlayLab(t testing.TB, nodes int) *overlayLab {
	lab := &overlayLab{t: t, sw: newTestNS(t), guests: map[string]*labGuest{}}
	a := netlink.NewLinkAttrs()
	a.Name = "sw0"
	lab.sw.must(lab.sw.h.LinkAdd(&netlink.Bridge{LinkAttrs: a}))
	lab.sw.must(lab.sw.h.LinkSetUp(lab.sw.link("sw0")))
	for i := range nodes {
		ns := newTestNS(t)
		a := netlink.NewLinkAttrs()
		a.Name = fmt.Sprintf("n%d", i+1)
		lab.sw.must(lab.sw.h.LinkAdd(&netlink.Veth{LinkAttrs: a, PeerName: "ul0", PeerNamespace: netlink.NsFd(int(ns.ns))}))
		port := lab.sw.link(a.Name)
		lab.sw.must(lab.sw.h.LinkSetMaster(port, lab.sw.link("sw0")))
		lab.sw.must(lab.sw.h.LinkSetUp(port))
		vtep := netip.AddrFrom4([4]byte{10, 77, 0, byte(i + 1)})
		ns.upAddr("ul0", vtep.String()+"/24")
		lab.nodes = append(lab.nodes, &labNode{ns: ns, vtep: vtep, r: ns.reconciler("")})
	}
	return lab
}

// desired is what the agent of node i would compute from cluster state: network blue,
// every other node as a peer, every guest on another node as an endpoint.
func (lab *overlayLab) desired(i int) Desired {
	d := Desired{LocalVTEP: lab.nodes[i].vtep, Networks: []Network{blue}}
	for j, n := range lab.nodes {
		if j != i {
			d.Peers = append(d.Peers, n.vtep)
		}
	}
	for _, g := range lab.guests {
		if g.node != i {
			d.Endpoints = append(d.Endpoints, Endpoint{Network: blue.Name, MAC: g.mac, IP: g.ip, VTEP: lab.nodes[g.node].vtep})
		}
	}
	return d
}

func (lab *overlayLab) reconcileAll() {
	lab.t.Helper()
	for i, n := range lab.nodes {
		if cs, err := n.r.Reconcile(lab.desired(i)); err != nil {
			lab.t.Fatalf("node %d: Reconcile: %v (changes: %v)", i+1, err, cs)
		}
	}
}

// plug gives guest name (created on first use) an eth0 on node i's bridge, as libvirt
// does with a tap device; the guest keeps its MAC and IP wherever it is plugged.
func (lab *overlayLab) plug(name string, i int, macs, ip string) {
	lab.t.Helper()
	g := lab.guests[name]
	if g == nil {
		g = &labGuest{ns: newTestNS(lab.t), mac: mac(macs), ip: addr(ip)}
		lab.guests[name] = g
	}
	node := lab.nodes[i].ns
	a := netlink.NewLinkAttrs()
	a.Name = "vg-" + name
	a.MTU = node.link(BridgeName(blue.VNI)).Attrs().MTU
	node.must(node.h.LinkAdd(&netlink.Veth{LinkAttrs: a, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(g.ns.ns)), PeerHardwareAddr: g.mac, PeerMTU: uint32(a.MTU)}))
	port := node.link(a.Name)
	node.must(node.h.LinkSetMaster(port, node.link(BridgeName(blue.VNI))))
	node.must(node.h.LinkSetUp(port))
	// No IPv6 in the guests: they stay silent until a test makes them talk, so what the
	// bridges learn, and when, is up to the test.
	g.ns.must(g.ns.h.LinkSetIP6AddrGenMode(g.ns.link("eth0"), 1 /* IN6_ADDR_GEN_MODE_NONE */))
	g.ns.upAddr("eth0", ip+"/24")
	g.node, g.port = i, a.Name
}

// unplug removes the guest's port from its node (the guest left: migrated or its node died).
func (lab *overlayLab) unplug(name string) {
	lab.t.Helper()
	g := lab.guests[name]
	node := lab.nodes[g.node].ns
	node.must(node.h.LinkDel(node.link(g.port)))
	g.node = -1
}

// ping sends echo requests from guest from to guest to until one is answered; between
// nodes, the answer must have taken the tunnel.
func (lab *overlayLab) ping(from, to string) string {
	lab.t.Helper()
	src := lab.nodes[lab.guests[from].node].ns
	sent := func() uint64 { return src.link(VXLANName(blue.VNI)).Attrs().Statistics.TxPackets }
	before := sent()
	// A freshly plugged port forwards only once the kernel's link watcher has seen its
	// carrier (rate-limited to one run a second), so the first echo may be lost: send up to
	// ten, one at a time, and stop at the first answer.
	var out string
	var err error
	for range 10 {
		if out, err = lab.guests[from].ns.run("busybox", "ping", "-c", "1", "-W", "1", lab.guests[to].ip.String()); err == nil {
			break
		}
	}
	if err != nil {
		lab.t.Fatalf("ping %s -> %s over the overlay failed 10 times: %v\n%s", from, to, err, out)
	}
	if lab.guests[from].node != lab.guests[to].node && sent() == before {
		lab.t.Fatalf("ping %s -> %s was answered, but not through %s", from, to, VXLANName(blue.VNI))
	}
	return out
}

func TestOverlayPingAndMove(t *testing.T) {
	lab := newOverlayLab(t, 3)
	lab.reconcileAll()
	lab.plug("g1", 0, "52:54:00:aa:00:01", "192.168.42.10")
	lab.plug("g2", 1, "52:54:00:aa:00:02", "192.168.42.20")
	lab.reconcileAll()

	out := lab.ping("g1", "g2")
	t.Logf("g1 on node 1 -> g2 on node 2:\n%s", out)
	lab.ping("g2", "g1")

	// g2 moves from node 2 to node 3 with its MAC and address (a migration, or a restart
	// after node 2 died). Node 1's entry for g2 is replaced, not aged out.
	lab.unplug("g2")
	lab.plug("g2", 2, "52:54:00:aa:00:02", "192.168.42.20")
	cs, err := lab.nodes[0].r.Reconcile(lab.desired(0))
	if err != nil {
		t.Fatal(err)
	}
	wantChanges(t, cs, "replace fdb 52:54:00:aa:00:02→10.77.0.3 (was 10.77.0.2) on dvmvx42")
	lab.reconcileAll()
	out = lab.ping("g1", "g2")
	t.Logf("after the move, g1 on node 1 -> g2 on node 3:\n%s", out)
	lab.ping("g2", "g1")

	// g2 moves onto node 1, where g1 is. Node 1 drops g2's tunnel entry and what its bridge
	// learned about g2 on the tunnel port, so local frames for g2 go to its new port at once.
	lab.unplug("g2")
	lab.plug("g2", 0, "52:54:00:aa:00:02", "192.168.42.20")
	cs, err = lab.nodes[0].r.Reconcile(lab.desired(0))
	if err != nil {
		t.Fatal(err)
	}
	wantChanges(t, cs,
		"delete fdb 52:54:00:aa:00:02→10.77.0.3 on dvmvx42",
		"delete learned bridge fdb 52:54:00:aa:00:02 on dvmvx42",
		"delete neigh 192.168.42.20→52:54:00:aa:00:02 on dvmbr42")
	lab.reconcileAll()
	lab.ping("g1", "g2")

	// ... and back to node 3 for the last check.
	lab.unplug("g2")
	lab.plug("g2", 2, "52:54:00:aa:00:02", "192.168.42.20")
	lab.reconcileAll()
	lab.ping("g1", "g2")

	// Node 1 answers ARP for g2 from its neighbour entry (neigh_suppress on the tunnel
	// port): with g2's link down nobody else can, yet g1 resolves g2's address to its MAC.
	g2 := lab.guests["g2"]
	g2.ns.must(g2.ns.h.LinkSetDown(g2.ns.link("eth0")))
	if out, err := lab.guests["g1"].ns.run("ip", "neigh", "flush", "dev", "eth0"); err != nil {
		t.Fatalf("flush g1's neighbours: %v\n%s", err, out)
	}
	out, err = lab.guests["g1"].ns.run("busybox", "arping", "-f", "-c", "3", "-w", "3", "-I", "eth0", g2.ip.String())
	if err != nil || !strings.Contains(strings.ToLower(out), "["+g2.mac.String()+"]") {
		t.Fatalf("arping g2 from g1 with g2 down: err %v, want a reply with %s from node 1's bridge:\n%s", err, g2.mac, out)
	}
}
