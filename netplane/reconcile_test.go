package netplane

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func blueDesired() Desired {
	return Desired{
		LocalVTEP: addr("10.77.0.1"),
		Networks:  []Network{{Name: "blue", VNI: 42, CIDR: prefix("192.168.42.0/24")}},
		Peers:     []netip.Addr{addr("10.77.0.2"), addr("10.77.0.3")},
		Endpoints: []Endpoint{
			{Network: "blue", MAC: mac("52:54:00:00:00:12"), IP: addr("192.168.42.12"), VTEP: addr("10.77.0.2")},
			{Network: "blue", MAC: mac("52:54:00:00:00:13"), VTEP: addr("10.77.0.3")}, // IP not known
		},
	}
}

func reconcileOK(t *testing.T, r *Reconciler, d Desired) Changes {
	t.Helper()
	cs, err := r.Reconcile(d)
	if err != nil {
		t.Fatalf("Reconcile: %v (changes: %v)", err, cs)
	}
	return cs
}

func wantChanges(t *testing.T, got Changes, want ...string) {
	t.Helper()
	var g []string
	for _, c := range got {
		g = append(g, c.String())
	}
	if !slices.Equal(g, want) {
		t.Fatalf("changes:\n got  %q\n want %q", g, want)
	}
}

func TestReconcileFromEmpty(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay("10.77.0.1/24", 1500)
	r := ns.reconciler("")
	cs := reconcileOK(t, r, blueDesired())
	if len(cs) == 0 {
		t.Fatal("first Reconcile reported no changes")
	}

	br := ns.link("dvmbr42")
	if _, ok := br.(*netlink.Bridge); !ok {
		t.Fatalf("dvmbr42 is a %s, want bridge", br.Type())
	}
	vl := ns.link("dvmvx42")
	vx, ok := vl.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("dvmvx42 is a %s, want vxlan", vl.Type())
	}
	ul := ns.link("ul0")
	if vx.VxlanId != 42 || !vx.SrcAddr.Equal(addr("10.77.0.1").AsSlice()) || vx.Port != 4789 || vx.Learning || vx.VtepDevIndex != ul.Attrs().Index {
		t.Errorf("vxlan: vni=%d local=%v port=%d learning=%v dev=%d; want 42 10.77.0.1 4789 false %d",
			vx.VxlanId, vx.SrcAddr, vx.Port, vx.Learning, vx.VtepDevIndex, ul.Attrs().Index)
	}
	if vx.MasterIndex != br.Attrs().Index {
		t.Errorf("dvmvx42 master = %d, want dvmbr42 (%d)", vx.MasterIndex, br.Attrs().Index)
	}
	for _, l := range []netlink.Link{br, vx} {
		if l.Attrs().MTU != 1450 {
			t.Errorf("%s mtu = %d, want 1450", l.Attrs().Name, l.Attrs().MTU)
		}
		if l.Attrs().Flags&(1<<0) == 0 { // net.FlagUp
			t.Errorf("%s is down", l.Attrs().Name)
		}
	}
	for _, l := range []netlink.Link{br, vx} {
		as, err := ns.h.AddrList(l, netlink.FAMILY_ALL)
		ns.must(err)
		if len(as) != 0 {
			t.Errorf("%s has addresses %v; the node must have none on guest networks", l.Attrs().Name, as)
		}
	}
	if m, err := r.BridgeMTU(42); err != nil || m != 1450 {
		t.Errorf("BridgeMTU(42) = %d, %v; want 1450", m, err)
	}
	pi, err := ns.h.LinkGetProtinfo(vx)
	ns.must(err)
	if !pi.NeighSuppress {
		t.Error("neigh_suppress is off on dvmvx42")
	}
	wantFDB := []string{
		"00:00:00:00:00:00→10.77.0.2", "00:00:00:00:00:00→10.77.0.3",
		"52:54:00:00:00:12→10.77.0.2", "52:54:00:00:00:13→10.77.0.3",
	}
	if got := ns.fdb("dvmvx42"); !slices.Equal(got, wantFDB) {
		t.Errorf("fdb = %q, want %q", got, wantFDB)
	}
	if got, want := ns.neighs("dvmbr42"), []string{"192.168.42.12→52:54:00:00:00:12"}; !slices.Equal(got, want) {
		t.Errorf("neighbours = %q, want %q", got, want)
	}
	if BridgeName(42) != "dvmbr42" || r.BridgeName(42) != "dvmbr42" || VXLANName(16777215) != "dvmvx16777215" {
		t.Errorf("names: %s %s %s", BridgeName(42), r.BridgeName(42), VXLANName(16777215))
	}
}

func TestReconcileTwiceChangesNothing(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay("10.77.0.1/24", 1500)
	r := ns.reconciler("")
	d := blueDesired()
	d.Networks = append(d.Networks, Network{Name: "red", VNI: 7, CIDR: prefix("fd00:7::/64"), MTU: 1400})
	d.Endpoints = append(d.Endpoints, Endpoint{Network: "red", MAC: mac("52:54:00:00:07:01"), IP: addr("fd00:7::1"), VTEP: addr("10.77.0.2")})
	reconcileOK(t, r, d)
	if got, want := ns.neighs("dvmbr7"), []string{"fd00:7::1→52:54:00:00:07:01"}; !slices.Equal(got, want) {
		t.Fatalf("IPv6 neighbours = %q, want %q", got, want)
	}
	before := ns.snapshot()

	wantChanges(t, reconcileOK(t, r, d))
	if after := ns.snapshot(); after != before {
		t.Fatalf("second Reconcile changed the namespace:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// Order of the lists is not state: the same sets reversed change nothing either.
	slices.Reverse(d.Networks)
	slices.Reverse(d.Peers)
	slices.Reverse(d.Endpoints)
	d.Peers = append(d.Peers, d.Peers[0]) // a duplicate peer is the same peer
	wantChanges(t, reconcileOK(t, r, d))
	if after := ns.snapshot(); after != before {
		t.Fatalf("reordered Desired changed the namespace")
	}
}

func TestNetworkRemovedDeletesOnlyOurDevices(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay("10.77.0.1/24", 1500)
	// Foreign devices: another owner's bridge and vxlan, and a name that starts with our
	// prefix but is not one of our names.
	for _, name := range []string{"br-keep", "dvmfoo", "dvmbr042"} {
		a := netlink.NewLinkAttrs()
		a.Name = name
		ns.must(ns.h.LinkAdd(&netlink.Bridge{LinkAttrs: a}))
	}
	a := netlink.NewLinkAttrs()
	a.Name = "vxkeep"
	ns.must(ns.h.LinkAdd(&netlink.Vxlan{LinkAttrs: a, VxlanId: 99, Port: 4789}))

	r := ns.reconciler("")
	d := blueDesired()
	d.Networks = append(d.Networks, Network{Name: "green", VNI: 43, CIDR: prefix("192.168.43.0/24")})
	reconcileOK(t, r, d)
	for _, name := range []string{"dvmbr42", "dvmvx42", "dvmbr43", "dvmvx43"} {
		if !ns.hasLink(name) {
			t.Fatalf("%s missing after create", name)
		}
	}

	d.Networks = d.Networks[:1]
	cs := reconcileOK(t, r, d)
	wantChanges(t, cs,
		"delete vxlan (network no longer desired) on dvmvx43",
		"delete bridge (network no longer desired) on dvmbr43")
	if ns.hasLink("dvmbr43") || ns.hasLink("dvmvx43") || !ns.hasLink("dvmbr42") || !ns.hasLink("dvmvx42") {
		t.Fatal("wrong devices after removing network green")
	}

	d.Networks, d.Endpoints = nil, nil
	reconcileOK(t, r, d)
	if ns.hasLink("dvmbr42") || ns.hasLink("dvmvx42") {
		t.Fatal("devices of network blue left after removing it")
	}

	// The zero Desired (a node leaving) removes all of ours, even once the node's tunnel
	// address is gone.
	reconcileOK(t, r, blueDesired())
	vtep, err := netlink.ParseAddr("10.77.0.1/24")
	ns.must(err)
	ns.must(ns.h.AddrDel(ns.link("ul0"), vtep))
	wantChanges(t, reconcileOK(t, r, Desired{}),
		"delete vxlan (network no longer desired) on dvmvx42",
		"delete bridge (network no longer desired) on dvmbr42")
	for _, name := range []string{"br-keep", "vxkeep", "dvmfoo", "dvmbr042", "ul0"} {
		if !ns.hasLink(name) {
			t.Errorf("foreign device %s was deleted", name)
		}
	}
}

func TestEndpointMovedReplacesFDBEntry(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay("10.77.0.1/24", 1500)
	r := ns.reconciler("")
	d := blueDesired()
	reconcileOK(t, r, d)

	d.Endpoints[0].VTEP = addr("10.77.0.3") // the guest migrated from node .2 to node .3
	wantChanges(t, reconcileOK(t, r, d),
		"replace fdb 52:54:00:00:00:12→10.77.0.3 (was 10.77.0.2) on dvmvx42")
	want := []string{
		"00:00:00:00:00:00→10.77.0.2", "00:00:00:00:00:00→10.77.0.3",
		"52:54:00:00:00:12→10.77.0.3", "52:54:00:00:00:13→10.77.0.3",
	}
	if got := ns.fdb("dvmvx42"); !slices.Equal(got, want) {
		t.Fatalf("fdb after move = %q, want %q", got, want)
	}

	// The guest moved onto this node: it is no longer a remote endpoint, so its FDB and
	// neighbour entries go (the bridge reaches it through its own port).
	d.Endpoints = d.Endpoints[1:]
	wantChanges(t, reconcileOK(t, r, d),
		"delete fdb 52:54:00:00:00:12→10.77.0.3 on dvmvx42",
		"delete neigh 192.168.42.12→52:54:00:00:00:12 on dvmbr42")
	if got := ns.neighs("dvmbr42"); len(got) != 0 {
		t.Fatalf("neighbours left: %q", got)
	}

	// A new guest took the address with another MAC: the neighbour entry is replaced.
	d.Endpoints = append(d.Endpoints, Endpoint{Network: "blue", MAC: mac("52:54:00:00:00:99"), IP: addr("192.168.42.12"), VTEP: addr("10.77.0.2")})
	reconcileOK(t, r, d)
	d.Endpoints[1].MAC = mac("52:54:00:00:00:98")
	wantChanges(t, reconcileOK(t, r, d),
		"add fdb 52:54:00:00:00:98→10.77.0.2 on dvmvx42",
		"delete fdb 52:54:00:00:00:99→10.77.0.2 on dvmvx42",
		"replace neigh 192.168.42.12→52:54:00:00:00:98 (was 52:54:00:00:00:99) on dvmbr42")
}

func TestPeerRemovedDeletesFloodEntry(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay("10.77.0.1/24", 1500)
	r := ns.reconciler("")
	d := blueDesired()
	reconcileOK(t, r, d)

	d.Peers = d.Peers[:1]
	d.Endpoints = d.Endpoints[:1]
	wantChanges(t, reconcileOK(t, r, d),
		"delete flood fdb 00:00:00:00:00:00→10.77.0.3 on dvmvx42",
		"delete fdb 52:54:00:00:00:13→10.77.0.3 on dvmvx42")
	want := []string{"00:00:00:00:00:00→10.77.0.2", "52:54:00:00:00:12→10.77.0.2"}
	if got := ns.fdb("dvmvx42"); !slices.Equal(got, want) {
		t.Fatalf("fdb = %q, want %q", got, want)
	}

	d.Peers = append(d.Peers, addr("10.77.0.4"))
	wantChanges(t, reconcileOK(t, r, d), "add flood fdb 00:00:00:00:00:00→10.77.0.4 on dvmvx42")
}

func TestMTUDerivation(t *testing.T) {
	cases := []struct {
		name        string
		local, ul   string
		underlayMTU int
		netMTU      int
		want        int
	}{
		{"ipv4 underlay 1500", "10.77.0.1", "10.77.0.1/24", 1500, 0, 1450},
		{"ipv4 jumbo underlay", "10.77.0.1", "10.77.0.1/24", 9000, 0, 8950},
		{"explicit below the limit", "10.77.0.1", "10.77.0.1/24", 1500, 1400, 1400},
		{"explicit at the limit", "10.77.0.1", "10.77.0.1/24", 1500, 1450, 1450},
		{"ipv6 underlay", "fd77::1", "fd77::1/64", 1500, 0, 1430},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ns := newTestNS(t)
			ns.underlay(c.ul, c.underlayMTU)
			r := ns.reconciler("")
			reconcileOK(t, r, Desired{
				LocalVTEP: addr(c.local),
				Networks:  []Network{{Name: "blue", VNI: 42, CIDR: prefix("192.168.42.0/24"), MTU: c.netMTU}},
			})
			for _, name := range []string{"dvmbr42", "dvmvx42"} {
				if got := ns.link(name).Attrs().MTU; got != c.want {
					t.Errorf("%s mtu = %d, want %d", name, got, c.want)
				}
			}
		})
	}

	t.Run("MTU changed later", func(t *testing.T) {
		ns := newTestNS(t)
		ns.underlay("10.77.0.1/24", 1500)
		r := ns.reconciler("")
		d := Desired{LocalVTEP: addr("10.77.0.1"), Networks: []Network{{Name: "blue", VNI: 42, CIDR: prefix("192.168.42.0/24")}}}
		reconcileOK(t, r, d)
		ns.must(ns.h.LinkSetMTU(ns.link("ul0"), 9000))
		wantChanges(t, reconcileOK(t, r, d),
			"set mtu 8950 (was 1450) on dvmvx42",
			"set mtu 8950 (was 1450) on dvmbr42")
		d.Networks[0].MTU = 1400
		wantChanges(t, reconcileOK(t, r, d),
			"set mtu 1400 (was 8950) on dvmbr42",
			"set mtu 1400 (was 8950) on dvmvx42")
	})

	t.Run("routed VTEP on loopback", func(t *testing.T) {
		ns := newTestNS(t)
		ns.underlay("10.78.0.1/24", 9000)
		lo := ns.link("lo")
		vtep, err := netlink.ParseAddr("10.77.0.1/32")
		ns.must(err)
		ns.must(ns.h.AddrAdd(lo, vtep))
		_, dst, _ := net.ParseCIDR("10.77.0.2/32")
		ns.must(ns.h.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP("10.78.0.2"), LinkIndex: ns.link("ul0").Attrs().Index}))
		r := ns.reconciler("")
		d := Desired{LocalVTEP: addr("10.77.0.1"), Networks: []Network{{Name: "blue", VNI: 42, CIDR: prefix("192.168.42.0/24")}}}

		_, err = r.Reconcile(d)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "cannot derive the MTU: LocalVTEP is on loopback") {
			t.Fatalf("no peers: err = %v", err)
		}
		d.Peers = []netip.Addr{addr("10.77.0.2"), addr("10.77.0.3")} // .3 has no route: skipped
		reconcileOK(t, r, d)
		vx := ns.link("dvmvx42").(*netlink.Vxlan)
		if vx.MTU != 8950 || vx.VtepDevIndex != 0 {
			t.Fatalf("routed VTEP: mtu %d bound to ifindex %d, want 8950 and unbound", vx.MTU, vx.VtepDevIndex)
		}
	})

	t.Run("explicit MTU above the underlay", func(t *testing.T) {
		ns := newTestNS(t)
		ns.underlay("10.77.0.1/24", 1500)
		r := ns.reconciler("")
		_, err := r.Reconcile(Desired{LocalVTEP: addr("10.77.0.1"), Networks: []Network{{Name: "blue", VNI: 42, CIDR: prefix("192.168.42.0/24"), MTU: 1451}}})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `network "blue": MTU 1451 does not fit the underlay ul0`) || !strings.Contains(err.Error(), "use 1450 or less") {
			t.Fatalf("err = %v", err)
		}
		if ns.hasLink("dvmbr42") {
			t.Fatal("invalid Desired created devices")
		}
	})
}

func TestInvalidDesiredChangesNothing(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay("10.77.0.1/24", 1500)
	r := ns.reconciler("")
	reconcileOK(t, r, blueDesired())
	before := ns.snapshot()

	cases := []struct {
		name string
		edit func(*Desired)
		want string
	}{
		{"VNI zero", func(d *Desired) { d.Networks[0].VNI = 0 }, `network "blue": VNI 0 is out of range: use 1..16777215`},
		{"VNI too large", func(d *Desired) { d.Networks[0].VNI = 1 << 24 }, `network "blue": VNI 16777216 is out of range`},
		{"VNI shared", func(d *Desired) {
			d.Networks = append(d.Networks, Network{Name: "red", VNI: 42, CIDR: prefix("10.1.0.0/16")})
		}, `networks "blue" and "red" share VNI 42`},
		{"no CIDR", func(d *Desired) { d.Networks[0].CIDR = netip.Prefix{} }, `network "blue": CIDR is not set`},
		{"no LocalVTEP", func(d *Desired) { d.LocalVTEP = netip.Addr{} }, "LocalVTEP is not set"},
		{"LocalVTEP not here", func(d *Desired) {
			d.LocalVTEP = addr("10.77.0.9")
		}, "LocalVTEP 10.77.0.9 is not an address of any link in this namespace"},
		{"unknown underlay", func(d *Desired) { d.Underlay = "nosuch0" }, `underlay link "nosuch0"`},
		{"peer of other family", func(d *Desired) { d.Peers[0] = addr("fd00::2") }, "peer fd00::2: address family differs"},
		{"endpoint on unknown network", func(d *Desired) { d.Endpoints[0].Network = "green" }, `network "green" is not among Networks`},
		{"endpoint on this node", func(d *Desired) { d.Endpoints[0].VTEP = addr("10.77.0.1") }, "is this node's own VTEP: list only guest NICs on other nodes"},
		{"endpoint IP outside CIDR", func(d *Desired) { d.Endpoints[0].IP = addr("10.0.0.1") }, "IP 10.0.0.1 is outside the network's CIDR 192.168.42.0/24"},
		{"multicast MAC", func(d *Desired) { d.Endpoints[0].MAC = mac("01:00:5e:00:00:01") }, "is not a unicast Ethernet address"},
		{"endpoint behind two VTEPs", func(d *Desired) {
			e := d.Endpoints[0]
			e.VTEP = addr("10.77.0.3")
			d.Endpoints = append(d.Endpoints, e)
		}, "listed behind two VTEPs"},
		{"MTU too small", func(d *Desired) { d.Networks[0].MTU = 10 }, "MTU 10 is out of range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := blueDesired()
			c.edit(&d)
			cs, err := r.Reconcile(d)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want ErrInvalid containing %q", err, c.want)
			}
			if len(cs) != 0 {
				t.Fatalf("changes on invalid input: %v", cs)
			}
			if after := ns.snapshot(); after != before {
				t.Fatalf("invalid input changed the namespace:\n%s\n----\n%s", before, after)
			}
		})
	}
}

// A real kernel refusal: another (foreign) VXLAN device already holds VNI 42 on port 4789,
// so creating ours fails. The error names the operation and the device, and the other
// network is reconciled all the same.
func TestNetlinkErrorNamesDeviceAndOperation(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay("10.77.0.1/24", 1500)
	a := netlink.NewLinkAttrs()
	a.Name = "other42"
	ns.must(ns.h.LinkAdd(&netlink.Vxlan{LinkAttrs: a, VxlanId: 42, Port: 4789, SrcAddr: addr("10.77.0.1").AsSlice()}))

	r := ns.reconciler("")
	d := blueDesired()
	d.Networks = append(d.Networks, Network{Name: "green", VNI: 43, CIDR: prefix("192.168.43.0/24")})
	cs, err := r.Reconcile(d)
	var oe *OpError
	if !errors.As(err, &oe) {
		t.Fatalf("err = %v, want an *OpError", err)
	}
	if oe.Op != "add" || oe.Device != "dvmvx42" || !strings.HasPrefix(err.Error(), "netplane: add vxlan (vni 42, local 10.77.0.1, dev ul0, dstport 4789, nolearning) on dvmvx42: ") {
		t.Fatalf("err = %q (op %q device %q)", err, oe.Op, oe.Device)
	}
	if errors.Is(err, ErrInvalid) {
		t.Fatal("a kernel refusal must not read as invalid input")
	}
	if !ns.hasLink("dvmvx43") || !ns.hasLink("dvmbr43") || !ns.hasLink("other42") {
		t.Fatal("network green was not reconciled past the failure of blue, or the foreign device was touched")
	}
	if len(cs) == 0 {
		t.Fatal("changes made around the failure were not reported")
	}
}

func TestNewReconcilerRejectsBadPrefix(t *testing.T) {
	for _, p := range []string{"toolong", "DVM", "d-v"} {
		if _, err := NewReconciler(Options{Prefix: p}); !errors.Is(err, ErrInvalid) {
			t.Errorf("prefix %q: err = %v, want ErrInvalid", p, err)
		}
	}
}

func TestParseOwned(t *testing.T) {
	cases := []struct {
		name string
		kind string
		vni  uint32
		ok   bool
	}{
		{"dvmbr42", "br", 42, true},
		{"dvmvx16777215", "vx", 16777215, true},
		{"dvmbr042", "", 0, false},
		{"dvmbr0", "", 0, false},
		{"dvmbr16777216", "", 0, false},
		{"dvmfoo", "", 0, false},
		{"dvmbr", "", 0, false},
		{"xdvmbr42", "", 0, false},
		{"dvmbr4x", "", 0, false},
	}
	for _, c := range cases {
		kind, vni, ok := parseOwned("dvm", c.name)
		if kind != c.kind || vni != c.vni || ok != c.ok {
			t.Errorf("parseOwned(%q) = %q %d %v, want %q %d %v", c.name, kind, vni, ok, c.kind, c.vni, c.ok)
		}
	}
}

// Someone (an operator, another tool) changed our devices: Reconcile puts them back and
// says what it did.
func TestReconcileRepairsDrift(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay("10.77.0.1/24", 1500)
	r := ns.reconciler("")
	d := blueDesired()
	reconcileOK(t, r, d)

	br, vx := ns.link("dvmbr42"), ns.link("dvmvx42")
	ns.must(ns.h.LinkSetNoMaster(vx))
	ns.must(ns.h.LinkSetDown(br))
	ns.must(ns.h.LinkSetMTU(br, 1300))
	ns.must(ns.h.NeighDel(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, Flags: unix.NTF_SELF,
		HardwareAddr: mac("52:54:00:00:00:13"), IP: addr("10.77.0.3").AsSlice()}))
	ns.must(ns.h.NeighSet(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, Flags: unix.NTF_SELF, State: fdbState,
		HardwareAddr: mac("52:54:00:00:00:12"), IP: addr("10.77.0.9").AsSlice()}))
	ns.must(ns.h.NeighAppend(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, Flags: unix.NTF_SELF, State: fdbState,
		HardwareAddr: zeroMAC, IP: addr("10.77.0.9").AsSlice()}))

	wantChanges(t, reconcileOK(t, r, d),
		"set mtu 1450 (was 1300) on dvmbr42",
		"set master dvmbr42 on dvmvx42",
		"set neigh_suppress on on dvmvx42", // port flags go with the port
		"set up on dvmbr42",
		"delete flood fdb 00:00:00:00:00:00→10.77.0.9 on dvmvx42",
		"replace fdb 52:54:00:00:00:12→10.77.0.2 (was 10.77.0.9) on dvmvx42",
		"add fdb 52:54:00:00:00:13→10.77.0.3 on dvmvx42",
		"add neigh 192.168.42.12→52:54:00:00:00:12 on dvmbr42") // the kernel flushes neighbours of a link set down
	wantChanges(t, reconcileOK(t, r, d))
}

// Guest ports come and go on the bridge; its address, and with it its neighbour entries,
// stay (a bridge that takes its ports' lowest MAC would flush them at every change).
func TestGuestPortsLeaveBridgeAndNeighboursAlone(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay("10.77.0.1/24", 1500)
	r := ns.reconciler("")
	d := blueDesired()
	reconcileOK(t, r, d)
	brMAC := ns.link("dvmbr42").Attrs().HardwareAddr.String()

	a := netlink.NewLinkAttrs()
	a.Name, a.HardwareAddr = "vnet0", mac("02:00:00:00:00:01") // lower than any MAC the bridge has
	ns.must(ns.h.LinkAdd(&netlink.Veth{LinkAttrs: a, PeerName: "vnet0p"}))
	ns.must(ns.h.LinkSetMaster(ns.link("vnet0"), ns.link("dvmbr42")))
	ns.must(ns.h.LinkSetUp(ns.link("vnet0")))
	ns.must(ns.h.LinkDel(ns.link("vnet0")))

	if got := ns.link("dvmbr42").Attrs().HardwareAddr.String(); got != brMAC {
		t.Fatalf("bridge MAC changed from %s to %s with a guest port", brMAC, got)
	}
	if got := ns.neighs("dvmbr42"); len(got) != 1 {
		t.Fatalf("neighbour entries after guest port churn: %q", got)
	}
	wantChanges(t, reconcileOK(t, r, d))
}

// Attributes a live VXLAN device cannot change (here: the local VTEP), or a device of the
// wrong kind under one of our names, mean delete and add; the entries come back with it.
func TestReconcileRecreatesDevices(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay("10.77.0.1/24", 1500)
	a := netlink.NewLinkAttrs()
	a.Name = "dvmvx42" // our name, but a bridge
	ns.must(ns.h.LinkAdd(&netlink.Bridge{LinkAttrs: a}))
	r := ns.reconciler("")
	d := blueDesired()
	cs := reconcileOK(t, r, d)
	if cs[0].String() != "add bridge on dvmbr42" || cs[1].String() != "delete vxlan (not a vxlan device but bridge) on dvmvx42" {
		t.Fatalf("changes = %v", cs)
	}

	a2, err := netlink.ParseAddr("10.77.0.5/24")
	ns.must(err)
	ns.must(ns.h.AddrAdd(ns.link("ul0"), a2))
	d.LocalVTEP = addr("10.77.0.5")
	cs = reconcileOK(t, r, d)
	if cs[0].String() != "delete vxlan (local 10.77.0.1, want 10.77.0.5) on dvmvx42" {
		t.Fatalf("changes = %v", cs)
	}
	vx := ns.link("dvmvx42").(*netlink.Vxlan)
	if !vx.SrcAddr.Equal(addr("10.77.0.5").AsSlice()) || vx.MasterIndex != ns.link("dvmbr42").Attrs().Index {
		t.Fatalf("recreated vxlan: local %v master %d", vx.SrcAddr, vx.MasterIndex)
	}
	if got := ns.fdb("dvmvx42"); len(got) != 4 {
		t.Fatalf("fdb after recreate = %q", got)
	}
	wantChanges(t, reconcileOK(t, r, d))
}
