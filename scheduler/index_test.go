package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// The class searches (up and down the tree of tops) agree with a plain scan over the
// classes, with class counts from one word to five levels of tree, levels not full.
func TestCapIndexAgainstScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, classes := range []int{1, 2, 3, 7, 64, 65, 100, 700, 8192} {
		x := newCapIndex(200, classes, 0)
		free := make([][2]int64, 200)
		for step := 0; step < 3000; step++ {
			n := int32(rng.IntN(200))
			cpu, mem := int32(rng.IntN(80)-4), int64(rng.IntN(classes+2)-1)
			x.put(n, cpu, mem)
			free[n] = [2]int64{int64(cpu), mem}
			lo, need := rng.IntN(classes+1)-1, int8(rng.IntN(cpuBuckets))
			wantNext, wantPrev := -1, -1
			tops := make([]int8, classes)
			for c := range tops {
				tops[c] = -1
			}
			for i := range free {
				if free[i][0] >= 1 && free[i][1] >= 1 {
					c := x.class(free[i][1])
					tops[c] = max(tops[c], int8(cpuBucket(int32(free[i][0]))))
				}
			}
			for c, top := range tops {
				if top >= need && c >= lo && wantNext < 0 {
					wantNext = c
				}
				if top >= need && c <= lo {
					wantPrev = c
				}
			}
			if got := x.nextClass(lo, need); got != wantNext {
				t.Fatalf("classes %d step %d: nextClass(%d, %d) = %d, want %d", classes, step, lo, need, got, wantNext)
			}
			if got := x.prevClass(lo, need); got != wantPrev {
				t.Fatalf("classes %d step %d: prevClass(%d, %d) = %d, want %d", classes, step, lo, need, got, wantPrev)
			}
		}
	}
}

// reference finds, by looking at every node of s, the best node for g (p < 0) or for
// its twin apart from p at level, exactly as the filters define it.
func reference(s *Scheduler, g *Guest, p int32, level int) int32 {
	r := s.resolve(g)
	strat := s.strategy(g)
	best := int32(-1)
	for i := range s.nodes {
		n := int32(i)
		var why Reason
		if p >= 0 {
			why = s.twinVerdict(n, r, int32(g.CPUs), g.MemoryBytes, p, level)
		} else {
			why = s.verdict(n, r, int32(g.CPUs), g.MemoryBytes)
		}
		if why == "" && (best < 0 || s.better(strat, n, best, int32(g.CPUs), g.MemoryBytes)) {
			best = n
		}
	}
	return best
}

// referenceTwin applies the twin rule (broadest labelled level first) by exhaustive search.
func referenceTwin(s *Scheduler, g *Guest, p int32) int32 {
	doms := s.nodes[p].failureDomains
	labelled := false
	for lv := len(doms) - 1; lv >= 0; lv-- {
		if doms[lv] < 0 {
			continue
		}
		labelled = true
		if t := reference(s, g, p, lv); t >= 0 {
			return t
		}
	}
	if labelled {
		return -1
	}
	return reference(s, g, p, -1)
}

// Every placement the index makes is one the exhaustive search calls best, to the
// resolution of a memory class: same node found or not, and for Pack the same memory
// class (Spread scores a sample, so only feasibility is compared), on the same state, over thousands of placements and releases on clusters big enough that the
// atoms get their own indexes and zones are searched apart.
func TestIndexAgreesWithExhaustive(t *testing.T) {
	for _, strat := range []Strategy{Pack, Spread} {
		for _, n := range []int{60, 1200} {
			t.Run(fmt.Sprintf("%s/nodes=%d", strat, n), func(t *testing.T) {
				nodes := benchNodes(n, uint64(n))
				// Unlabel a few nodes and add a small atom.
				for i := 0; i < n; i += 97 {
					delete(nodes[i].Labels, "rack")
					nodes[i].Labels["gpu"] = "yes"
				}
				s := New(nodes, nil, Options{Strategy: strat, FailureDomains: []string{"rack", "zone"}})
				guests := benchGuests(4*n, uint64(n)+1)
				for i := range guests {
					if i%50 == 0 {
						guests[i].Constraints = map[string]string{"gpu": "yes"}
					}
				}
				rng := rand.New(rand.NewPCG(3, 4))
				var placed []string
				for i, g := range guests {
					if i%40 == 0 {
						// Nodes change under the index: drain, cordon, relabel.
						k := rng.IntN(n)
						nd := nodes[k]
						nd.Labels = map[string]string{}
						for lk, lv := range nodes[k].Labels {
							nd.Labels[lk] = lv
						}
						switch rng.IntN(4) {
						case 0:
							nd.Draining = !nd.Draining
						case 1:
							nd.Schedulable = !nd.Schedulable
						case 2:
							nd.Labels["disk"] = "ssd"
						case 3:
							nd.Labels["zone"] = fmt.Sprint("z", rng.IntN(3))
						}
						nodes[k] = nd
						if err := s.UpdateNode(nd); err != nil {
							t.Fatal(err)
						}
					}
					if len(placed) > 0 && rng.IntN(4) == 0 {
						k := rng.IntN(len(placed))
						s.Release(placed[k])
						placed[k] = placed[len(placed)-1]
						placed = placed[:len(placed)-1]
					}
					want := reference(s, &g, -1, -1)
					wantCls := -1
					if want >= 0 {
						wantCls = s.global.class(s.nodes[want].freeMem)
					}
					p, err := s.Place(g)
					if err != nil {
						var u *Unplaceable
						if want >= 0 && !(g.Failover == FailoverTwin && asUnplaceable(err, &u) && u.Twin) {
							t.Fatalf("guest %d: refused (%v), reference %s", i, err, s.nodes[want].name)
						}
						if want >= 0 {
							if tw := referenceTwin(s, &g, want); tw >= 0 {
								t.Fatalf("guest %d: twin refused (%v) but reference twin %s", i, err, s.nodes[tw].name)
							}
						}
						continue
					}
					if want < 0 {
						t.Fatalf("guest %d: placed on %s, reference found nothing", i, p.Node)
					}
					placed = append(placed, g.Name)
					got := s.byNode[p.Node]
					cls := func(n int32) int { return s.global.class(s.nodes[n].freeMem) }
					if gotCls := s.global.class(s.nodes[got].freeMem + g.MemoryBytes); strat == Pack && gotCls != wantCls {
						t.Fatalf("guest %d %+v: index chose %s (class %d), reference %s (class %d)",
							i, g, p.Node, gotCls, s.nodes[want].name, wantCls)
					}
					if p.TwinNode != "" {
						// Check the twin against the reference for the chosen primary,
						// with the twin's allocation given back.
						tn := s.byNode[p.TwinNode]
						s.take(tn, -int32(g.CPUs), -g.MemoryBytes)
						wt := referenceTwin(s, &g, got)
						if wt < 0 || (strat == Pack && cls(tn) != cls(wt)) {
							t.Fatalf("guest %d: twin %s, reference twin %d", i, p.TwinNode, wt)
						}
						s.take(tn, int32(g.CPUs), g.MemoryBytes)
					}
				}
			})
		}
	}
}

func asUnplaceable(err error, u **Unplaceable) bool { return errors.As(err, u) }

// maxBytes is the bytewise maximum for the byte values tops take.
func TestMaxBytes(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for range 100000 {
		var a, b [8]byte
		for i := range a {
			a[i], b[i] = byte(rng.IntN(cpuBuckets+1)), byte(rng.IntN(cpuBuckets+1))
		}
		got := maxBytes(word(a[:], 0), word(b[:], 0))
		for i := range a {
			if g := byte(got >> (8 * i)); g != max(a[i], b[i]) {
				t.Fatalf("maxBytes(%v, %v): byte %d is %d", a, b, i, g)
			}
		}
	}
}

// A pool index that catches up when searched lists every bucket's nodes as one that
// catches up after every change does (kept as it was before pool indexes lagged),
// whatever moved meanwhile: placements, releases, node changes.
func TestPoolCatchUpKeepsOrder(t *testing.T) {
	for _, strat := range []Strategy{Pack, Spread} {
		t.Run(string(strat), func(t *testing.T) { testPoolCatchUp(t, strat) })
	}
}

// sameHeads: two blocks of bucket heads hold the same, a block not allocated holding
// zeros.
func sameHeads(a, b *[headBlock]int32) bool {
	var empty [headBlock]int32
	if a == nil {
		a = &empty
	}
	if b == nil {
		b = &empty
	}
	return *a == *b
}

func testPoolCatchUp(t *testing.T, strat Strategy) {
	nodes := benchNodes(1200, 5) // zones of 400 nodes get pool indexes
	opts := Options{Strategy: strat, FailureDomains: []string{"rack", "zone"}}
	lazy, eager := New(nodes, nil, opts), New(nodes, nil, opts)
	guests := benchGuests(4000, 6)
	rng := rand.New(rand.NewPCG(5, 6))
	var placed []string
	// do applies one change to both schedulers; eager's pools catch up at once.
	do := func(f func(s *Scheduler)) {
		f(lazy)
		f(eager)
		for _, a := range eager.pools {
			eager.catchUp(a)
		}
	}
	for i, g := range guests {
		switch {
		case i%97 == 0:
			nd := nodes[rng.IntN(len(nodes))]
			nd.Draining = !nd.Draining
			do(func(s *Scheduler) {
				if err := s.UpdateNode(nd); err != nil {
					t.Fatal(err)
				}
			})
		case len(placed) > 0 && rng.IntN(3) == 0:
			k := rng.IntN(len(placed))
			do(func(s *Scheduler) { s.Release(placed[k]) })
			placed[k] = placed[len(placed)-1]
			placed = placed[:len(placed)-1]
		}
		var errs []error
		do(func(s *Scheduler) {
			_, err := s.Place(g)
			errs = append(errs, err)
		})
		if (errs[0] == nil) != (errs[1] == nil) {
			t.Fatalf("guest %d: placed by one scheduler only: %v, %v", i, errs[0], errs[1])
		}
		if errs[0] == nil {
			placed = append(placed, g.Name)
			if i%5 == 0 {
				// Its node goes back to the bucket it left, and first in it.
				do(func(s *Scheduler) { s.Release(g.Name) })
				placed = placed[:len(placed)-1]
			}
		}
		if i%20 != 0 {
			continue
		}
		if len(lazy.pools) != len(eager.pools) {
			t.Fatalf("guest %d: %d pool indexes, and %d", i, len(lazy.pools), len(eager.pools))
		}
		for k, a := range lazy.pools {
			lazy.catchUp(a)
			x, y := a.pool, eager.pools[k].pool
			if !slices.EqualFunc(x.heads, y.heads, sameHeads) || !slices.Equal(x.links, y.links) {
				t.Fatalf("guest %d: pool %s=%s lists its nodes otherwise than when caught up at once", i, a.key, a.value)
			}
		}
	}
	if len(lazy.pools) == 0 {
		t.Fatal("no pool index was built")
	}
}
