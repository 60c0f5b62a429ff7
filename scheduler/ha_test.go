package scheduler

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func restart(name string, cpus int, memGiB int64) Guest {
	g := guest(name, cpus, memGiB)
	g.Failover = FailoverRestart
	return g
}

// Admission control keeps room to restart the restart guests (and rebuild the twins) of
// any K lost nodes.
func TestHAAdmission(t *testing.T) {
	three := []Node{node("a", 8, 32), node("b", 8, 32), node("c", 8, 32)}
	cases := []struct {
		name     string
		nodes    []Node
		opts     Options
		before   []Guest // placed first, must all be admitted
		guests   []Guest // placed in order
		admitted int     // how many of guests are admitted before the first refusal
		refusal  Reason  // "" = ReasonHAHeadroom
		warnOnly bool
	}{
		{
			name:  "off: fill the cluster",
			nodes: three, opts: Options{Strategy: Spread},
			guests: repeat(13, func(i int) Guest { return restart(fmt.Sprint("r", i), 2, 4) }), admitted: 12,
			refusal: ReasonNotEnoughCPU,
		},
		{
			// Losing any one node must leave 8 CPUs free for its guests: 16 of 24 usable.
			name:  "one node",
			nodes: three, opts: Options{Strategy: Spread, HAReserveNodes: 1},
			guests: repeat(9, func(i int) Guest { return restart(fmt.Sprint("r", i), 2, 4) }), admitted: 8,
		},
		{
			name:  "one node, by memory",
			nodes: three, opts: Options{Strategy: Spread, HAReserveNodes: 1},
			guests: repeat(9, func(i int) Guest { return restart(fmt.Sprint("r", i), 1, 8) }), admitted: 8,
		},
		{
			name:  "two nodes",
			nodes: three, opts: Options{Strategy: Spread, HAReserveNodes: 2},
			guests: repeat(5, func(i int) Guest { return restart(fmt.Sprint("r", i), 2, 4) }), admitted: 4,
		},
		{
			name:  "twins count twice",
			nodes: three, opts: Options{Strategy: Spread, HAReserveNodes: 1},
			guests: repeat(5, func(i int) Guest { return twin(fmt.Sprint("t", i), 2, 4) }), admitted: 4,
		},
		{
			// Node a is full of guests nobody restarts: losing it needs nothing, so the
			// worst loss is b or c, and their 8 CPUs must stay free.
			name:  "guests without failover only shrink the reserve",
			nodes: three, opts: Options{Strategy: Pack, HAReserveNodes: 1},
			before: repeat(4, func(i int) Guest { return guest(fmt.Sprint("n", i), 2, 4) }),
			guests: repeat(5, func(i int) Guest { return restart(fmt.Sprint("r", i), 2, 4) }), admitted: 4,
		},
		{
			name:  "warn only",
			nodes: three, opts: Options{Strategy: Spread, HAReserveNodes: 1, HAWarnOnly: true},
			guests: repeat(10, func(i int) Guest { return restart(fmt.Sprint("r", i), 2, 4) }), admitted: 10, warnOnly: true,
		},
		{
			name:   "a cordoned node's free share does not count",
			nodes:  []Node{node("a", 8, 32), node("b", 8, 32), func() Node { n := node("c", 8, 32); n.Schedulable = false; return n }()},
			opts:   Options{Strategy: Spread, HAReserveNodes: 1},
			guests: repeat(5, func(i int) Guest { return restart(fmt.Sprint("r", i), 2, 4) }), admitted: 4,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(tc.nodes, nil, tc.opts)
			for _, g := range tc.before {
				if _, err := s.Place(g); err != nil {
					t.Fatalf("before: %v", err)
				}
			}
			for i, g := range tc.guests {
				p, err := s.Place(g)
				if i < tc.admitted {
					if err != nil {
						t.Fatalf("guest %d refused: %v", i, err)
					}
					warned := strings.Contains(strings.Join(p.Warnings, ";"), "HA reserve")
					if shouldWarn := tc.warnOnly && i >= 8; warned != shouldWarn {
						t.Fatalf("guest %d: warnings %q, want warning %v", i, p.Warnings, shouldWarn)
					}
					continue
				}
				u := unplaceable(t, err)
				if tc.refusal != "" {
					if u.Reasons[tc.refusal] != len(tc.nodes) {
						t.Fatalf("guest %d: %v, want %s", i, err, tc.refusal)
					}
				} else {
					if u.Reasons[ReasonHAHeadroom] == 0 || !strings.Contains(err.Error(), "lost node") || !strings.Contains(err.Error(), "add nodes or lower the reserve") {
						t.Fatalf("guest %d: %v (reasons %v)", i, err, u.Reasons)
					}
					if e := s.Explain(g); e.Headroom == "" || e.Summary() != e.Headroom {
						t.Fatalf("Explain does not show the headroom: %+v", e)
					}
				}
				// Refused: nothing taken. Releasing one guest makes room again.
				s.Release(tc.guests[0].Name)
				if _, err := s.Place(g); err != nil {
					t.Fatalf("after a release: %v", err)
				}
				return
			}
		})
	}
}

func repeat(n int, f func(int) Guest) []Guest {
	out := make([]Guest, n)
	for i := range out {
		out[i] = f(i)
	}
	return out
}

func TestHeadroomReport(t *testing.T) {
	s := New([]Node{node("a", 8, 32), node("b", 4, 16)}, nil, Options{HAReserveNodes: 1})
	if _, err := s.Place(restart("r", 2, 4)); err != nil {
		t.Fatal(err)
	}
	rc, fc, rm, fm := s.Headroom()
	if rc != 8 || fc != 10 || rm != 32*gib || fm != 44*gib {
		t.Fatalf("Headroom = %d CPUs of %d free, %d of %d bytes", rc, fc, rm, fm)
	}
}

// The invariant admission control keeps, checked by brute force over every set of K lost
// nodes after every admitted guest: the others' free share holds the lost nodes' restart
// and twin guests, in CPUs and in memory. And a refusal is never needless: forcing the
// refused guest in where Place would have put it breaks the invariant.
func TestHAInvariant(t *testing.T) {
	for _, k := range []int{1, 2} {
		t.Run(fmt.Sprint("K=", k), func(t *testing.T) {
			nodes := benchNodes(12, 5)
			for i := range nodes {
				nodes[i].Schedulable, nodes[i].Draining = true, i == 3
			}
			s := New(nodes, nil, Options{Strategy: Pack, HAReserveNodes: k})
			holds := func() bool {
				for a := range s.nodes {
					for b := a; b < len(s.nodes); b++ {
						if k == 1 && b != a || k == 2 && b == a {
							continue
						}
						var needC, needM, freeC, freeM int64
						for i := range s.nodes {
							ns := &s.nodes[i]
							if i == a || i == b {
								needC += ns.haCPU
								needM += ns.haMem
							} else if ns.accepting() {
								freeC += int64(max(ns.freeCPU, 0))
								freeM += max(ns.freeMem, 0)
							}
						}
						if freeC < needC || freeM < needM {
							return false
						}
					}
				}
				return true
			}
			admitted, refused, moves := 0, 0, 0
			for i, g := range benchGuests(3000, 6) {
				g.Constraints, g.Accelerator, g.OS = nil, "", ""
				_, err := s.Place(g)
				if err == nil {
					admitted++
					if !holds() {
						t.Fatalf("guest %d %+v admitted but the HA invariant is broken", i, g)
					}
					if admitted%10 == 0 && startMove(s, g.Name) {
						// The room a move holds shrinks its destination's free share:
						// admission must see it, and must not refuse for it needlessly.
						if holds() {
							moves++
						} else {
							a, _ := s.Lookup(g.Name)
							s.Release(g.Name)
							a.MoveTo = ""
							if err := s.Assign(a); err != nil {
								t.Fatal(err)
							}
						}
					}
					continue
				}
				var u *Unplaceable
				if !errors.As(err, &u) || u.Headroom == "" {
					continue // does not fit at all
				}
				refused++
				e := s.Explain(g)
				if e.Node == "" || e.Headroom == "" {
					t.Fatalf("guest %d: Explain disagrees with the refusal: %+v", i, e)
				}
				if err := s.Assign(Assignment{Guest: g, Node: e.Node, TwinNode: e.TwinNode}); err != nil {
					t.Fatal(err)
				}
				if holds() {
					t.Fatalf("guest %d %+v refused needlessly: on %s it keeps the invariant", i, g, e.Node)
				}
				s.Release(g.Name)
			}
			if admitted < 100 || refused < 10 || moves < 10 {
				t.Fatalf("admitted %d, refused %d, %d moves in flight: the test needs all three", admitted, refused, moves)
			}
			t.Logf("admitted %d, refused %d, %d moves in flight", admitted, refused, moves)
		})
	}
}

// startMove records a move in flight of a placed guest to the other accepting node with
// the most free memory (the largest HA key, likely among the K that the reserve sums),
// if it has room; false when it has not.
func startMove(s *Scheduler, name string) bool {
	a, ok := s.Lookup(name)
	if !ok {
		return false
	}
	best := -1
	for i := range s.nodes {
		ns := &s.nodes[i]
		if ns.name != a.Node && ns.name != a.TwinNode && ns.accepting() && (best < 0 || ns.freeMem > s.nodes[best].freeMem) {
			best = i
		}
	}
	if best < 0 || s.nodes[best].freeCPU < int32(a.Guest.CPUs) || s.nodes[best].freeMem < a.Guest.MemoryBytes {
		return false
	}
	s.Release(name)
	s.Headroom() // the cached sums exact again, as after any placement: Assign must mark them stale
	a.MoveTo = s.nodes[best].name
	if err := s.Assign(a); err != nil {
		panic(err)
	}
	return true
}
