package scheduler

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
)

var benchOpts = Options{Strategy: Pack, FailureDomains: []string{"rack", "zone"}}

type baseline struct {
	used, placed int
	rate         float64 // placements per second
}

var (
	baselineMu sync.Mutex
	baselines  = map[int]baseline{}
)

// exhaustiveBaseline places the same guests on the same nodes with the exhaustive
// best-fit loop, once per node count and test binary run.
func exhaustiveBaseline(nodes []Node, guests []Guest) baseline {
	baselineMu.Lock()
	defer baselineMu.Unlock()
	if b, ok := baselines[len(nodes)]; ok {
		return b
	}
	e := newExhaustive(nodes, benchOpts)
	placed := 0
	start := time.Now()
	for _, g := range guests {
		if p, _ := e.place(g); p >= 0 {
			placed++
		}
	}
	elapsed := time.Since(start)
	b := baseline{used: e.nodesUsed(), placed: placed, rate: float64(len(guests)) / elapsed.Seconds()}
	baselines[len(nodes)] = b
	return b
}

// BenchmarkPlace places 100 000 mixed guests (see benchGuests) on 1 000, 10 000 and
// 100 000 nodes (see benchNodes) with Pack, and compares with an exhaustive best-fit
// placement of the same guests on the same nodes, computed in the same run:
//
//	placements/s           Place calls per second (building the Scheduler not timed)
//	placements/cpu-s       Place calls per second of CPU time used by the process meanwhile
//	                       (the garbage collector's included): on a shared machine the
//	                       wall-clock figure falls with the share of a core the benchmark
//	                       gets, this one much less
//	nodes_vs_bestfit       nodes used / nodes used by exhaustive best fit
//	speedup_vs_exhaustive  placements/s / exhaustive best fit's placements/s
//	placed, placed_bestfit guests placed by each (they must agree for the ratio to mean much)
//	gc/op                  garbage collections that ran while the 100 000 guests were placed:
//	                       their CPU time is in placements/cpu-s, and a run allocating a
//	                       little less can leave its collection to the untimed New of the
//	                       next round, so compare B/op too
func BenchmarkPlace(b *testing.B) {
	guests := benchGuests(100000, 7)
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			nodes := benchNodes(n, 3)
			base := exhaustiveBaseline(nodes, guests)
			b.ReportAllocs()
			b.ResetTimer()
			var used, placed int
			var cpu time.Duration
			cpuOK := true
			var gcs uint32
			var ms runtime.MemStats
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				s := New(nodes, nil, benchOpts)
				runtime.GC() // the baseline's and the last round's garbage is not ours
				runtime.ReadMemStats(&ms)
				gc0 := ms.NumGC
				c0, ok0 := processCPU()
				b.StartTimer()
				placed = 0
				for _, g := range guests {
					if _, err := s.Place(g); err == nil {
						placed++
					}
				}
				b.StopTimer()
				c1, ok1 := processCPU()
				runtime.ReadMemStats(&ms)
				gcs += ms.NumGC - gc0
				cpu += c1 - c0
				cpuOK = cpuOK && ok0 && ok1
				used = s.nodesUsed()
			}
			rate := float64(b.N) * float64(len(guests)) / b.Elapsed().Seconds()
			b.ReportMetric(rate, "placements/s")
			if cpuOK && cpu > 0 {
				b.ReportMetric(float64(b.N)*float64(len(guests))/cpu.Seconds(), "placements/cpu-s")
			}
			b.ReportMetric(float64(used)/float64(base.used), "nodes_vs_bestfit")
			b.ReportMetric(rate/base.rate, "speedup_vs_exhaustive")
			b.ReportMetric(float64(placed), "placed")
			b.ReportMetric(float64(base.placed), "placed_bestfit")
			b.ReportMetric(float64(gcs)/float64(b.N), "gc/op")
		})
	}
}

// BenchmarkPlaceOptions shows what the other settings cost, on the same guests: Spread
// (scores a sample of 8) at 10 000 nodes; HA admission control keeping room for any 2
// lost nodes at 10 000 nodes, and for any 50 at 1 000 nodes, where the cluster fills up
// and admission control refuses (counted in refused_ha).
func BenchmarkPlaceOptions(b *testing.B) {
	guests := benchGuests(100000, 7)
	failureDomains := []string{"rack", "zone"}
	for _, tc := range []struct {
		name  string
		nodes int
		opts  Options
	}{
		{"nodes=10000/spread", 10000, Options{Strategy: Spread, FailureDomains: failureDomains}},
		{"nodes=10000/pack_ha=2", 10000, Options{Strategy: Pack, FailureDomains: failureDomains, HAReserveNodes: 2}},
		{"nodes=1000/pack_ha=50", 1000, Options{Strategy: Pack, FailureDomains: failureDomains, HAReserveNodes: 50}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			nodes := benchNodes(tc.nodes, 3)
			var placed, refusedHA int
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				s := New(nodes, nil, tc.opts)
				runtime.GC()
				b.StartTimer()
				placed, refusedHA = 0, 0
				for _, g := range guests {
					_, err := s.Place(g)
					var u *Unplaceable
					switch {
					case err == nil:
						placed++
					case errors.As(err, &u) && u.Headroom != "":
						refusedHA++
					}
				}
			}
			b.ReportMetric(float64(b.N)*float64(len(guests))/b.Elapsed().Seconds(), "placements/s")
			b.ReportMetric(float64(placed), "placed")
			b.ReportMetric(float64(refusedHA), "refused_ha")
		})
	}
}

// BenchmarkPlans measures plans on 10 000 nodes holding the 100 000 benchmark guests
// (packed, so nodes are full): evacuating the node with the most guests, and a rebalance
// of up to 100 moves.
func BenchmarkPlans(b *testing.B) {
	nodes := benchNodes(10000, 3)
	s := New(nodes, nil, benchOpts)
	for _, g := range benchGuests(100000, 7) {
		s.Place(g)
	}
	busiest := int32(0)
	for i := range s.nodes {
		if s.nodes[i].count > s.nodes[busiest].count {
			busiest = int32(i)
		}
	}
	name := s.nodes[busiest].name
	b.Run("evacuate", func(b *testing.B) {
		var plan Plan
		for i := 0; i < b.N; i++ {
			plan = s.Evacuate(name)
		}
		b.ReportMetric(float64(len(plan.Moves)), "moves")
		b.ReportMetric(float64(len(plan.Unplaced)), "unplaced")
	})
	b.Run("rebalance=100", func(b *testing.B) {
		var plan Plan
		for i := 0; i < b.N; i++ {
			plan = s.Rebalance(100)
		}
		b.ReportMetric(float64(len(plan.Moves)), "moves")
	})
}
