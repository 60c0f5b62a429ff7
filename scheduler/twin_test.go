package scheduler

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func twin(name string, cpus int, memGiB int64) Guest {
	g := guest(name, cpus, memGiB)
	g.Failover = FailoverTwin
	return g
}

func TestTwins(t *testing.T) {
	failureDomains := []string{"rack", "zone"}
	cases := []struct {
		name      string
		nodes     []Node
		opts      Options
		guest     Guest
		node      string
		twin      string // "" with reasons set: refused
		warning   string
		reasons   map[Reason]int
		twinError bool
	}{
		{
			name:  "no failure failureDomains: any other node",
			nodes: []Node{node("a", 8, 64), node("b", 8, 32)},
			opts:  Options{Strategy: Spread},
			guest: twin("t", 2, 4), node: "a", twin: "b",
		},
		{
			name:  "never the same node",
			nodes: []Node{node("a", 8, 64)},
			opts:  Options{Strategy: Spread},
			guest: twin("t", 2, 4), reasons: map[Reason]int{ReasonTwinSameNode: 1}, twinError: true,
		},
		{
			name: "other zone preferred over other rack of the same zone",
			nodes: []Node{
				node("a1", 8, 64, "rack=r1", "zone=z1"),
				node("a2", 8, 60, "rack=r2", "zone=z1"), // fits best, but same zone
				node("b1", 8, 32, "rack=r3", "zone=z2"),
			},
			opts:  Options{Strategy: Spread, FailureDomains: failureDomains},
			guest: twin("t", 2, 4), node: "a1", twin: "b1",
		},
		{
			name: "other rack of the same zone when no other zone has room, with a warning",
			nodes: []Node{
				node("a1", 8, 64, "rack=r1", "zone=z1"),
				node("a2", 8, 60, "rack=r2", "zone=z1"),
				node("b1", 8, 2, "rack=r3", "zone=z2"),
			},
			opts:  Options{Strategy: Spread, FailureDomains: failureDomains},
			guest: twin("t", 2, 4), node: "a1", twin: "a2", warning: `twin shares zone "z1"`,
		},
		{
			name: "same rack only: refused",
			nodes: []Node{
				node("a1", 8, 64, "rack=r1", "zone=z1"),
				node("a2", 8, 60, "rack=r1", "zone=z1"),
				node("b1", 8, 2, "rack=r3", "zone=z2"),
			},
			opts:      Options{Strategy: Spread, FailureDomains: failureDomains},
			guest:     twin("t", 2, 4),
			reasons:   map[Reason]int{ReasonTwinSameNode: 1, ReasonTwinSameFailureDomain: 1, ReasonNotEnoughMemory: 1},
			twinError: true,
		},
		{
			name: "racks are named within their zone",
			nodes: []Node{
				node("a1", 8, 64, "rack=r1", "zone=z1"),
				node("b1", 8, 60, "rack=r1", "zone=z2"),
			},
			opts:  Options{Strategy: Spread, FailureDomains: failureDomains},
			guest: twin("t", 2, 4), node: "a1", twin: "b1",
		},
		{
			name: "unlabelled nodes are not another failure domain",
			nodes: []Node{
				node("a1", 8, 64, "rack=r1"),
				node("x", 8, 60),
			},
			opts:      Options{Strategy: Spread, FailureDomains: []string{"rack"}},
			guest:     twin("t", 2, 4),
			reasons:   map[Reason]int{ReasonTwinSameNode: 1, ReasonTwinSameFailureDomain: 1},
			twinError: true,
		},
		{
			name: "pack keeps twins apart too",
			nodes: []Node{
				node("a1", 8, 8, "rack=r1"),
				node("a2", 8, 8, "rack=r1"),
				node("b1", 8, 64, "rack=r2"),
			},
			opts:  Options{Strategy: Pack, FailureDomains: []string{"rack"}},
			guest: twin("t", 2, 4), node: "a1", twin: "b1",
		},
		{
			name: "the twin honours the guest's constraints",
			nodes: []Node{
				node("a1", 8, 64, "rack=r1", "disk=ssd"),
				node("b1", 8, 60, "rack=r2", "disk=hdd"),
				node("c1", 8, 10, "rack=r3", "disk=ssd"),
			},
			opts: Options{Strategy: Spread, FailureDomains: []string{"rack"}},
			guest: func() Guest {
				g := twin("t", 2, 4)
				g.Constraints = map[string]string{"disk": "ssd"}
				return g
			}(),
			node: "a1", twin: "c1",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(tc.nodes, nil, tc.opts)
			p, err := s.Place(tc.guest)
			if tc.reasons != nil {
				u := unplaceable(t, err)
				if u.Twin != tc.twinError || !reflect.DeepEqual(u.Reasons, tc.reasons) {
					t.Fatalf("twin %v reasons %v; want twin %v reasons %v", u.Twin, u.Reasons, tc.twinError, tc.reasons)
				}
				if e := s.Explain(tc.guest); e.Node != "" || !reflect.DeepEqual(e.TwinReasons, tc.reasons) || !strings.HasPrefix(e.Summary(), "no twin node: ") {
					t.Fatalf("Explain: node %q twin reasons %v summary %q", e.Node, e.TwinReasons, e.Summary())
				}
				for _, n := range tc.nodes {
					if c, _, _ := s.Free(n.Name); c != n.CPUs {
						t.Fatalf("refused twin left capacity taken on %s", n.Name)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Node != tc.node || p.TwinNode != tc.twin {
				t.Fatalf("placed %s/%s, want %s/%s", p.Node, p.TwinNode, tc.node, tc.twin)
			}
			if got := strings.Join(p.Warnings, "; "); (tc.warning == "") != (got == "") || !strings.Contains(got, tc.warning) {
				t.Fatalf("warnings %q, want %q", got, tc.warning)
			}
			for _, n := range []string{tc.node, tc.twin} {
				c, _, _ := s.Free(n)
				for _, nd := range tc.nodes {
					if nd.Name == n && c != nd.CPUs-tc.guest.CPUs {
						t.Fatalf("%s: %d CPUs free, want the guest taken", n, c)
					}
				}
			}
		})
	}
}

// Over a generated cluster, no twin ever shares a rack with its primary, and when zones
// have room it never shares a zone either.
func TestTwinsNeverShareARack(t *testing.T) {
	nodes := benchNodes(400, 11)
	guests := benchGuests(6000, 12)
	s := New(nodes, nil, Options{Strategy: Pack, FailureDomains: []string{"rack", "zone"}})
	labels := map[string]map[string]string{}
	for _, n := range nodes {
		labels[n.Name] = n.Labels
	}
	twins := 0
	for _, g := range guests {
		p, err := s.Place(g)
		if err != nil || g.Failover != FailoverTwin {
			continue
		}
		twins++
		a, b := labels[p.Node], labels[p.TwinNode]
		if p.Node == p.TwinNode || a["zone"]+a["rack"] == b["zone"]+b["rack"] {
			t.Fatalf("guest %s: twin %s shares the rack of %s", g.Name, p.TwinNode, p.Node)
		}
		if a["zone"] == b["zone"] && len(p.Warnings) == 0 {
			t.Fatalf("guest %s: twin in the same zone without a warning", g.Name)
		}
	}
	if twins < 100 {
		t.Fatalf("only %d twins placed; the test needs more", twins)
	}
}

// TestTwinWithoutItsTwin: a twin whose twin could not be placed after a loss runs on
// its node alone. It holds its room there (were it skipped, the node would look free
// to every placement), and when its node is lost it restarts elsewhere from its disk,
// as a restart guest does, rather than being given up.
func TestTwinWithoutItsTwin(t *testing.T) {
	nodes := []Node{node("a", 8, 64), node("b", 8, 64)}
	s := New(nodes, []Assignment{{Guest: twin("t", 6, 4), Node: "a"}}, Options{Strategy: Spread})
	if p := s.Problems(); len(p) != 0 {
		t.Fatalf("problems: %v", p)
	}
	if cpus, _, _ := s.Free("a"); cpus != 2 {
		t.Errorf("a has %d CPUs free; want 2, the twin's 6 counted", cpus)
	}
	plan := s.EvacuateLost("a")
	if len(plan.Moves) != 1 || plan.Moves[0].Action != ActionRestart || plan.Moves[0].To != "b" || len(plan.Lost) != 0 {
		t.Errorf("plan %+v; want t restarted on b", plan)
	}
	// A twin recorded on its own primary's node (no state the master writes) is
	// counted once, and said.
	s = New(nodes, []Assignment{{Guest: twin("u", 6, 4), Node: "a", TwinNode: "a"}}, Options{Strategy: Spread})
	if cpus, _, _ := s.Free("a"); cpus != 2 || len(s.Problems()) != 1 {
		t.Errorf("a has %d CPUs free, problems %v; want 2 and the problem named", cpus, s.Problems())
	}
}

// TestPlaceTwin: a twin guest recorded without a twin gets one in another failure
// domain, with its room held there; with none that can take it the guest stays as it
// was and the answer says why.
func TestPlaceTwin(t *testing.T) {
	nodes := []Node{
		{Name: "n1", CPUs: 8, MemoryBytes: 16 * gib, Schedulable: true, Labels: map[string]string{"rack": "r1"}},
		{Name: "n2", CPUs: 8, MemoryBytes: 16 * gib, Schedulable: true, Labels: map[string]string{"rack": "r1"}},
		{Name: "n3", CPUs: 8, MemoryBytes: 16 * gib, Schedulable: false, Labels: map[string]string{"rack": "r2"}},
	}
	opts := Options{FailureDomains: []string{"rack"}}
	tw := Guest{Name: "tw", CPUs: 2, MemoryBytes: 4 * gib, Failover: FailoverTwin}
	s := New(nodes, []Assignment{{Guest: tw, Node: "n1"}}, opts)
	if _, _, err := s.PlaceTwin("nope"); !errors.Is(err, ErrInvalidGuest) {
		t.Fatalf("unknown guest: %v", err)
	}
	// Only n2 takes guests, in the guest's own rack: refused, nothing changed.
	var u *Unplaceable
	if _, _, err := s.PlaceTwin("tw"); !errors.As(err, &u) || !u.Twin {
		t.Fatalf("no other rack: %v, want an *Unplaceable for a twin", err)
	}
	if a, ok := s.Lookup("tw"); !ok || a.Node != "n1" || a.TwinNode != "" {
		t.Fatalf("after a refusal: %+v (%v)", a, ok)
	}
	if cpus, _, _ := s.Free("n1"); cpus != 6 {
		t.Fatalf("n1 has %d CPUs free, want 6", cpus)
	}
	// n3 (another rack) takes guests now: the twin goes there, its room held.
	nodes[2].Schedulable = true
	s = New(nodes, []Assignment{{Guest: tw, Node: "n1"}}, opts)
	if node, warn, err := s.PlaceTwin("tw"); err != nil || node != "n3" || warn != "" {
		t.Fatalf("PlaceTwin = %q, %q, %v; want n3, no warning", node, warn, err)
	}
	if a, _ := s.Lookup("tw"); a.Node != "n1" || a.TwinNode != "n3" {
		t.Fatalf("recorded %+v", a)
	}
	if cpus, _, _ := s.Free("n3"); cpus != 6 {
		t.Fatalf("n3 has %d CPUs free, want 6: the twin's room is held", cpus)
	}
	if node, _, err := s.PlaceTwin("tw"); err != nil || node != "n3" {
		t.Fatalf("again: %q, %v; want n3 as it is", node, err)
	}
}
