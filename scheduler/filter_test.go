package scheduler

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

const gib = gibibyte

// node is a schedulable KVM node with cpus and mem GiB free, labelled "k=v" pairs.
func node(name string, cpus int, memGiB int64, labels ...string) Node {
	n := Node{Name: name, CPUs: cpus, MemoryBytes: memGiB * gib, Schedulable: true, Accelerator: "kvm", Labels: map[string]string{}}
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		n.Labels[k] = v
	}
	return n
}

func guest(name string, cpus int, memGiB int64) Guest {
	return Guest{Name: name, OS: "dragonfly", CPUs: cpus, MemoryBytes: memGiB * gib, Failover: FailoverNone}
}

func unplaceable(t *testing.T, err error) *Unplaceable {
	t.Helper()
	var u *Unplaceable
	if !errors.As(err, &u) {
		t.Fatalf("want *Unplaceable, got %v", err)
	}
	return u
}

// Every filter: each case has exactly one node that passes, so the guest must land there,
// and without it the guest must be refused with the filter's reason for the others.
func TestFilters(t *testing.T) {
	cordoned := node("cordoned", 64, 256)
	cordoned.Schedulable = false
	draining := node("draining", 64, 256)
	draining.Draining = true
	tcg := node("tcg", 64, 256)
	tcg.Accelerator = "tcg"
	linuxOnly := node("linux-only", 64, 256)
	linuxOnly.Profiles = []string{"linux"}
	full := node("full", 64, 256)
	full.AllocatedCPUs = 63
	fullMem := node("full-mem", 64, 256)
	fullMem.AllocatedMemoryBytes = 255 * gib

	kvmGuest := guest("g", 2, 4)
	kvmGuest.Accelerator = "kvm"
	ssdGuest := guest("g", 2, 4)
	ssdGuest.Constraints = map[string]string{"disk": "ssd"}

	cases := []struct {
		name   string
		reject Node
		guest  Guest
		reason Reason
	}{
		{"unschedulable", cordoned, guest("g", 2, 4), ReasonUnschedulable},
		{"draining", draining, guest("g", 2, 4), ReasonDraining},
		{"accelerator", tcg, kvmGuest, ReasonAccelerator},
		{"os profile", linuxOnly, guest("g", 2, 4), ReasonProfile},
		{"label", node("hdd", 64, 256, "disk=hdd"), ssdGuest, ReasonLabel},
		{"label missing", node("bare", 64, 256), ssdGuest, ReasonLabel},
		{"cpu", full, guest("g", 2, 4), ReasonNotEnoughCPU},
		{"memory", fullMem, guest("g", 2, 4), ReasonNotEnoughMemory},
		{"cpu larger than a bucket", node("small", 70, 256, "disk=ssd"), func() Guest { g := guest("g", 100, 4); return g }(), ReasonNotEnoughCPU},
	}
	for _, tc := range cases {
		for _, strat := range []Strategy{Pack, Spread} {
			t.Run(fmt.Sprintf("%s/%s", tc.name, strat), func(t *testing.T) {
				// Three rejected nodes, more attractive than the good one under both
				// strategies (some emptier, some fuller), then the good one.
				var nodes []Node
				for i, share := range []int64{1, 2, 4} {
					n := tc.reject
					n.Name = fmt.Sprintf("%s-%d", tc.reject.Name, i)
					n.MemoryBytes = tc.reject.MemoryBytes * share / 2
					if tc.reject.AllocatedMemoryBytes > 0 {
						n.AllocatedMemoryBytes = n.MemoryBytes - 1*gib
					}
					nodes = append(nodes, n)
				}
				good := node("good", 128, 128, "disk=ssd")
				good.CPUs = max(128, tc.guest.CPUs)
				s := New(append(nodes, good), nil, Options{Strategy: strat})

				e := s.Explain(tc.guest)
				if want := map[Reason]int{tc.reason: 3}; !reflect.DeepEqual(e.Reasons, want) || e.Node != "good" || e.Feasible != 1 {
					t.Fatalf("Explain: reasons %v node %q feasible %d; want %v on good", e.Reasons, e.Node, e.Feasible, want)
				}
				p, err := s.Place(tc.guest)
				if err != nil || p.Node != "good" {
					t.Fatalf("Place = %+v, %v; want good", p, err)
				}
				s.Release(tc.guest.Name)

				s = New(nodes, nil, Options{Strategy: strat})
				_, err = s.Place(tc.guest)
				u := unplaceable(t, err)
				if want := map[Reason]int{tc.reason: 3}; !reflect.DeepEqual(u.Reasons, want) {
					t.Fatalf("reasons %v, want %v", u.Reasons, want)
				}
				if want := fmt.Sprintf("3 nodes: %s", tc.reason); !strings.HasSuffix(err.Error(), want) {
					t.Fatalf("error %q does not end in %q", err, want)
				}
			})
		}
	}
}

// The first rejecting filter counts, and the message lists the most frequent first.
func TestUnplaceableMessage(t *testing.T) {
	d := node("d", 64, 256)
	d.Draining = true
	s := New([]Node{node("a", 2, 4), node("b", 2, 4), node("c", 2, 4), d}, nil, Options{})
	_, err := s.Place(guest("web", 2, 8))
	u := unplaceable(t, err)
	if u.Nodes != 4 {
		t.Fatalf("nodes %d, want 4", u.Nodes)
	}
	if want := `guest "web" not placeable: 3 nodes: not enough memory; 1 node: draining`; err.Error() != want {
		t.Fatalf("got %q, want %q", err, want)
	}
	if e := s.Explain(guest("web", 2, 8)); e.Summary() != "3 nodes: not enough memory; 1 node: draining" {
		t.Fatalf("Explain summary %q", e.Summary())
	}
	if _, err := New(nil, nil, Options{}).Place(guest("x", 1, 1)); err == nil || !strings.Contains(err.Error(), "no nodes") {
		t.Fatalf("empty cluster: %v", err)
	}
}

func TestInvalidGuests(t *testing.T) {
	s := New([]Node{node("a", 64, 256)}, nil, Options{})
	if _, err := s.Place(guest("taken", 1, 1)); err != nil {
		t.Fatal(err)
	}
	bad := func(f func(*Guest)) Guest { g := guest("g", 1, 1); f(&g); return g }
	cases := []struct {
		name  string
		guest Guest
		is    error
		says  string
	}{
		{"no name", bad(func(g *Guest) { g.Name = "" }), ErrInvalidGuest, "no name"},
		{"zero cpus", bad(func(g *Guest) { g.CPUs = 0 }), ErrInvalidGuest, "0 CPUs"},
		{"negative cpus", bad(func(g *Guest) { g.CPUs = -2 }), ErrInvalidGuest, "-2 CPUs"},
		{"zero memory", bad(func(g *Guest) { g.MemoryBytes = 0 }), ErrInvalidGuest, "0 bytes"},
		{"failover", bad(func(g *Guest) { g.Failover = "pray" }), ErrInvalidGuest, `failover "pray"`},
		{"strategy", bad(func(g *Guest) { g.Strategy = "random" }), ErrInvalidGuest, `strategy "random"`},
		{"duplicate", bad(func(g *Guest) { g.Name = "taken" }), ErrGuestExists, "release it first"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cpus, mem, _ := s.Free("a")
			_, err := s.Place(tc.guest)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err %v; want %v saying %q", err, tc.is, tc.says)
			}
			if c, m, _ := s.Free("a"); c != cpus || m != mem {
				t.Fatalf("free changed from %d/%d to %d/%d", cpus, mem, c, m)
			}
		})
	}
	bs := New([]Node{node("a", 64, 256)}, nil, Options{Strategy: "sideways"})
	if _, err := bs.Place(guest("g", 1, 1)); err == nil || !strings.Contains(err.Error(), `strategy "sideways"`) {
		t.Fatalf("bad options: %v", err)
	}
}

func TestStrategies(t *testing.T) {
	nodes := []Node{node("big", 64, 512), node("mid", 64, 128), node("tight", 64, 16), node("tiny", 64, 4)}
	cases := []struct {
		cluster, guest Strategy
		want           string
	}{
		{Pack, "", "tight"},
		{Spread, "", "big"},
		{"", "", "big"}, // Spread is the default
		{Pack, Spread, "big"},
		{Spread, Pack, "tight"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/%s", tc.cluster, tc.guest), func(t *testing.T) {
			s := New(nodes, nil, Options{Strategy: tc.cluster})
			g := guest("g", 2, 8)
			g.Strategy = tc.guest
			p, err := s.Place(g)
			if err != nil || p.Node != tc.want {
				t.Fatalf("Place = %+v, %v; want %s", p, err, tc.want)
			}
		})
	}
	// Spread weighs CPU against memory: the node with the most free memory has almost
	// no CPUs left, so the guest goes where the scarcer resource stays most free.
	cpuPoor := node("cpu-poor", 16, 64)
	cpuPoor.AllocatedCPUs = 14
	s := New([]Node{cpuPoor, node("balanced", 16, 60)}, nil, Options{Strategy: Spread})
	if p, _ := s.Place(guest("g", 1, 1)); p.Node != "balanced" {
		t.Fatalf("spread balance: got %s, want balanced", p.Node)
	}
	// Equal memory: Pack takes the node with the fewest free CPUs that fit.
	s = New([]Node{node("many", 64, 32), node("few", 4, 32), node("too-few", 1, 32)}, nil, Options{Strategy: Pack})
	if p, _ := s.Place(guest("g", 2, 8)); p.Node != "few" {
		t.Fatalf("pack on CPU: got %s, want few", p.Node)
	}
}

// Successive placements see each other; Release gives the capacity back.
func TestPlaceReleaseBooks(t *testing.T) {
	s := New([]Node{node("a", 4, 8)}, nil, Options{Strategy: Pack})
	for i := 0; i < 4; i++ {
		if _, err := s.Place(guest(fmt.Sprint("g", i), 1, 2)); err != nil {
			t.Fatalf("guest %d: %v", i, err)
		}
	}
	_, err := s.Place(guest("g4", 1, 2))
	if u := unplaceable(t, err); u.Reasons[ReasonNotEnoughCPU] != 1 {
		t.Fatalf("full node: %v", u.Reasons)
	}
	s.Release("g2")
	s.Release("g2") // harmless
	if cpus, mem, _ := s.Free("a"); cpus != 1 || mem != 2*gib {
		t.Fatalf("free after release: %d CPUs %d bytes", cpus, mem)
	}
	if _, err := s.Place(guest("g2", 1, 2)); err != nil {
		t.Fatalf("name reuse after release: %v", err)
	}
	if a, ok := s.Lookup("g2"); !ok || a.Node != "a" {
		t.Fatalf("Lookup = %+v %v", a, ok)
	}
}

func TestNewWithExisting(t *testing.T) {
	a := node("a", 16, 64)
	a.AllocatedCPUs, a.AllocatedMemoryBytes = 8, 8*gib // includes g1 and something else
	b := node("b", 16, 64)                             // Allocated left zero
	existing := []Assignment{
		{Guest: guest("g1", 2, 4), Node: "a"},
		{Guest: guest("g2", 4, 16), Node: "b"},
		{Guest: guest("g3", 1, 1), Node: "nowhere"},
		{Guest: guest("g1", 1, 1), Node: "b"},
		{Guest: func() Guest { g := guest("tw", 1, 1); g.Failover = FailoverTwin; return g }(), Node: "a", TwinNode: "b"},
	}
	s := New([]Node{a, b}, existing, Options{})
	if got := len(s.Problems()); got != 2 {
		t.Fatalf("problems %q, want 2 (unknown node, repeated guest)", s.Problems())
	}
	if c, m, _ := s.Free("a"); c != 8 || m != 56*gib {
		t.Fatalf("a free %d/%d: Allocated is larger than the guests, so it counts", c, m)
	}
	if c, m, _ := s.Free("b"); c != 11 || m != 47*gib {
		t.Fatalf("b free %d/%d: the guests (g2 and the twin) count when Allocated is zero", c, m)
	}
	if err := s.Assign(Assignment{Guest: guest("g5", 1, 1), Node: "nowhere"}); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("Assign to unknown node: %v", err)
	}
	if err := s.Assign(Assignment{Guest: guest("g5", 1, 1), Node: "a", TwinNode: "b"}); !errors.Is(err, ErrInvalidGuest) {
		t.Fatalf("Assign twin node for a non-twin guest: %v", err)
	}
	if err := s.Assign(Assignment{Guest: guest("g5", 1, 1), Node: "a"}); err != nil {
		t.Fatal(err)
	}
	if c, _, _ := s.Free("a"); c != 7 {
		t.Fatalf("Assign did not take capacity: %d free", c)
	}
}

func TestUpdateNode(t *testing.T) {
	s := New([]Node{node("a", 16, 64, "zone=z1"), node("b", 16, 32, "zone=z1")}, nil, Options{Strategy: Spread})
	g := guest("g", 1, 1)
	g.Constraints = map[string]string{"zone": "z1"}
	if p, _ := s.Place(g); p.Node != "a" {
		t.Fatalf("got %s, want a", p.Node)
	}
	cordoned := node("a", 16, 64, "zone=z1")
	cordoned.Schedulable = false
	if err := s.UpdateNode(cordoned); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.Place(guest("h", 1, 1)); p.Node != "b" {
		t.Fatalf("cordoned node still chosen: %s", p.Node)
	}
	if err := s.UpdateNode(node("b", 16, 32, "zone=z2")); err != nil {
		t.Fatal(err)
	}
	g.Name = "g2"
	_, err := s.Place(g)
	if u := unplaceable(t, err); !reflect.DeepEqual(u.Reasons, map[Reason]int{ReasonUnschedulable: 1, ReasonLabel: 1}) {
		t.Fatalf("after relabel: %v", u.Reasons)
	}
	if c, _, _ := s.Free("b"); c != 15 {
		t.Fatalf("update lost the guest on b: %d CPUs free", c)
	}
	// A new node joins and takes the guest nobody else could.
	if err := s.UpdateNode(node("new", 8, 16, "zone=z1")); err != nil {
		t.Fatal(err)
	}
	if p, err := s.Place(g); err != nil || p.Node != "new" {
		t.Fatalf("after a node joined: %+v, %v", p, err)
	}
	if err := s.UpdateNode(Node{}); err == nil {
		t.Fatal("a node without a name was accepted")
	}
}

// Hosts joining one by one are indexed as if the scheduler had been built with them: the
// index still finds a node exactly when the exhaustive search does, in the same memory
// class, after atoms, pools and zone searches were set up on a one-node cluster.
func TestNodesJoin(t *testing.T) {
	nodes := benchNodes(700, 21)
	opts := Options{Strategy: Pack, FailureDomains: []string{"rack", "zone"}}
	s := New(nodes[:1], nil, opts)
	classes := s.global.classes
	guests := benchGuests(3000, 22)
	for _, g := range guests[:500] { // atoms exist before the others join; most do not fit
		s.Place(g)
	}
	for _, n := range nodes[1:] {
		if err := s.UpdateNode(n); err != nil {
			t.Fatal(err)
		}
	}
	if s.global.classes <= classes {
		t.Fatalf("memory classes not widened for larger nodes: %d, first node has %d GiB", s.global.classes, nodes[0].MemoryBytes>>30)
	}
	placed := 0
	for i, g := range guests[500:] {
		if g.Failover == FailoverTwin {
			g.Failover = FailoverRestart
		}
		want := reference(s, &g, -1, -1)
		wantCls := -1
		if want >= 0 {
			wantCls = s.global.class(s.nodes[want].freeMem)
		}
		p, err := s.Place(g)
		if (err == nil) != (want >= 0) {
			t.Fatalf("guest %d: placed %+v (%v), reference %d", i, p, err, want)
		}
		if err != nil {
			continue
		}
		placed++
		if got := s.global.class(s.nodes[s.byNode[p.Node]].freeMem + g.MemoryBytes); got != wantCls {
			t.Fatalf("guest %d on %s: class %d, reference class %d", i, p.Node, got, wantCls)
		}
	}
	if placed < 2400 {
		t.Fatalf("only %d of 2500 placed after 699 nodes joined", placed)
	}
}

func TestOptionsValidate(t *testing.T) {
	cases := []struct {
		opts Options
		says string // "" = valid
	}{
		{Options{}, ""},
		{Options{Strategy: Pack, FailureDomains: []string{"rack", "zone"}, HAReserveNodes: 2}, ""},
		{Options{Strategy: "tetris"}, `strategy "tetris" unknown`},
		{Options{HAReserveNodes: -1}, "must be 0 (off) or more"},
		{Options{FailureDomains: []string{"rack", "rack"}}, "distinct, non-empty"},
		{Options{FailureDomains: []string{""}}, "distinct, non-empty"},
	}
	for _, tc := range cases {
		err := tc.opts.Validate()
		if (tc.says == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.says)) {
			t.Errorf("%+v: %v, want %q", tc.opts, err, tc.says)
		}
		// A scheduler built with bad options refuses to place, saying why.
		if err != nil {
			_, perr := New([]Node{node("a", 4, 4)}, nil, tc.opts).Place(guest("g", 1, 1))
			if perr == nil || !strings.Contains(perr.Error(), tc.says) {
				t.Errorf("%+v: Place = %v", tc.opts, perr)
			}
		}
	}
}

// Requirements whose labels would read alike if joined with separators stay apart, and
// each guest keeps its own constraints, unchanged by what the caller does with its map.
func TestConstraintsKeptApart(t *testing.T) {
	one := node("one", 8, 16)
	one.Labels = map[string]string{"a": "b=c"}
	other := node("other", 8, 16)
	other.Labels = map[string]string{"a=b": "c"}
	s := New([]Node{one, other}, nil, Options{})
	for _, tc := range []struct {
		guest       string
		constraints map[string]string
		want        string
	}{
		{"g1", map[string]string{"a": "b=c"}, "one"},
		{"g2", map[string]string{"a=b": "c"}, "other"},
		{"g3", map[string]string{"a": "b=c"}, "one"},
	} {
		g := guest(tc.guest, 1, 1)
		g.Constraints = tc.constraints
		p, err := s.Place(g)
		if err != nil || p.Node != tc.want {
			t.Fatalf("%s %v: placed on %q (%v), want %q", tc.guest, tc.constraints, p.Node, err, tc.want)
		}
		for k := range tc.constraints {
			tc.constraints[k] = "changed by the caller"
		}
		a, _ := s.Lookup(tc.guest)
		a.Guest.Constraints["x"] = "changed by a Lookup caller"
	}
	for name, want := range map[string]map[string]string{
		"g1": {"a": "b=c"}, "g2": {"a=b": "c"}, "g3": {"a": "b=c"},
	} {
		if a, _ := s.Lookup(name); !reflect.DeepEqual(a.Guest.Constraints, want) {
			t.Errorf("%s recorded with %v, want %v", name, a.Guest.Constraints, want)
		}
	}
}

// Lookup returns each guest as it was given, whether placed, assigned or existing, and
// whatever parts it shares with other guests in the scheduler's books.
func TestLookupReturnsGuestAsGiven(t *testing.T) {
	nodes := []Node{node("a", 64, 256, "zone=z1"), node("b", 64, 256, "zone=z2")}
	full := Guest{Name: "full", OS: "linux", CPUs: 2, MemoryBytes: 3 * gib, Failover: FailoverNone,
		Constraints: map[string]string{"zone": "z1"}, Accelerator: "kvm", Strategy: Spread}
	existing := Guest{Name: "old", OS: "netbsd", CPUs: 1, MemoryBytes: gib, Failover: "bogus", Strategy: "odd"}
	s := New(nodes, []Assignment{{Guest: existing, Node: "b"}}, Options{Strategy: Pack})
	placed := []Guest{
		full,
		{Name: "plain", CPUs: 1, MemoryBytes: gib},
		{Name: "empty-map", CPUs: 1, MemoryBytes: gib, Constraints: map[string]string{}},
		{Name: "plain-again", CPUs: 1, MemoryBytes: gib},
		{Name: "same-req", OS: "linux", CPUs: 1, MemoryBytes: gib, Failover: FailoverRestart,
			Constraints: map[string]string{"zone": "z1"}, Accelerator: "kvm"},
	}
	for _, g := range placed {
		if _, err := s.Place(g); err != nil {
			t.Fatal(err)
		}
	}
	assigned := Guest{Name: "assigned", OS: "openbsd", CPUs: 1, MemoryBytes: gib, Failover: FailoverTwin, Strategy: Pack}
	if err := s.Assign(Assignment{Guest: assigned, Node: "a", TwinNode: "b"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range append(placed, existing, assigned) {
		a, ok := s.Lookup(want.Name)
		if !ok || !reflect.DeepEqual(a.Guest, want) {
			t.Errorf("Lookup(%q) = %+v, %v; want %+v", want.Name, a.Guest, ok, want)
		}
	}
}
