package scheduler

import (
	"fmt"
	"slices"
)

// HA admission control (vSphere HA's "cluster resource percentage" policy, made exact
// for whole nodes): after any K nodes are lost, the capacity left free on the others must
// hold the restart guests of the lost ones, and the new twins of twin guests that were on
// them. Per resource, with D(x) that demand on node x and F(x) node x's free share (0 when
// x accepts no guests), for every set S of K nodes:
//
//	sum over x not in S of F(x)  >=  sum over x in S of D(x)
//	<=>  total free  >=  max over S of sum over S of (D(x) + F(x))
//
// and the right side is the sum of the K largest keys D(x)+F(x). A restart or twin guest
// placed on x moves capacity from F(x) to D(x), so keys only shrink when guests are
// placed: the cached sum stays a safe upper bound, and admitting is O(1) while it says
// yes. Before refusing, the sums are computed exactly (O(nodes × K)), with the placement
// applied, so no guest is refused that the rule admits; after a refusal with nothing
// changed, the next restart guest is refused in O(1).
//
// Like vSphere's percentage policy this counts capacity, not how it is cut: a free share
// split over many nodes may still not fit one large guest. Evacuate does the exact
// placement when the loss happens.

// headroomShort says why placing g on p (and its twin on t, -1 if none) would break the
// reserve, or "". With g nil it checks the snapshot as it is.
func (s *Scheduler) headroomShort(g *Guest, p, t int32) string {
	k := s.opts.HAReserveNodes
	if k <= 0 {
		return ""
	}
	var needCPU, needMem int64
	if g != nil {
		copies := int64(1)
		if t >= 0 {
			copies = 2
		}
		needCPU, needMem = copies*int64(g.CPUs), copies*g.MemoryBytes
	}
	if s.haDirty {
		s.haRecompute()
	}
	topCPU, topMem := s.haTopCPU, s.haTopMem
	if s.freeCPUTotal-needCPU >= topCPU && s.freeMemTotal-needMem >= topMem {
		return ""
	}
	// Before refusing, compute exactly: a guest without failover shrinks p's key, and
	// the cached sums may be stale upper bounds.
	if shrinks := g != nil && !haGuest(g); shrinks || !s.haExact {
		if !s.haExact {
			s.haRecompute()
		}
		topCPU, topMem = s.haTopCPU, s.haTopMem
		if shrinks {
			topCPU, topMem = s.haSums(p, int64(g.CPUs), g.MemoryBytes)
		}
		if s.freeCPUTotal-needCPU >= topCPU && s.freeMemTotal-needMem >= topMem {
			return ""
		}
	}
	unit := "nodes"
	if k == 1 {
		unit = "node"
	}
	return fmt.Sprintf("%s: restarting the guests of any %d lost %s needs %d CPUs and %s kept free, placing leaves %d CPUs and %s; add nodes or lower the reserve",
		ReasonHAHeadroom, k, unit, topCPU, fmtGiB(topMem), s.freeCPUTotal-needCPU, fmtGiB(s.freeMemTotal-needMem))
}

// haRecompute refreshes the cached sums of the K largest keys; it returns the CPU sum.
func (s *Scheduler) haRecompute() int64 {
	s.haTopCPU, s.haTopMem = s.haSums(-1, 0, 0)
	s.haDirty, s.haExact = false, true
	return s.haTopCPU
}

// haSums returns the sums of the K largest keys per resource, with node shrink's free
// share reduced by cpu, mem (a guest placed there). O(nodes × K).
func (s *Scheduler) haSums(shrink int32, cpu, mem int64) (int64, int64) {
	k := s.opts.HAReserveNodes
	topC := make([]int64, 0, k+1)
	topM := make([]int64, 0, k+1)
	for i := range s.nodes {
		ns := &s.nodes[i]
		kc, km := ns.haCPU, ns.haMem
		if ns.accepting() {
			fc, fm := int64(ns.freeCPU), ns.freeMem
			if int32(i) == shrink {
				fc, fm = fc-cpu, fm-mem
			}
			kc += max(fc, 0)
			km += max(fm, 0)
		}
		topC = keepLargest(topC, kc, k)
		topM = keepLargest(topM, km, k)
	}
	var c, m int64
	for _, v := range topC {
		c += v
	}
	for _, v := range topM {
		m += v
	}
	return c, m
}

// keepLargest inserts v into top (sorted, largest first) and keeps at most k values.
func keepLargest(top []int64, v int64, k int) []int64 {
	if len(top) == k && v <= top[k-1] {
		return top
	}
	i, _ := slices.BinarySearchFunc(top, v, func(a, b int64) int {
		switch {
		case a > b:
			return -1
		case a < b:
			return 1
		}
		return 0
	})
	top = slices.Insert(top, i, v)
	if len(top) > k {
		top = top[:k]
	}
	return top
}

func fmtGiB(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }

// Headroom reports the HA reserve: the CPUs and memory that must stay free, and what is
// free now. With HAReserveNodes 0 the reserve is zero.
func (s *Scheduler) Headroom() (reserveCPUs, freeCPUs, reserveMemoryBytes, freeMemoryBytes int64) {
	if s.opts.HAReserveNodes > 0 {
		s.haRecompute()
		reserveCPUs, reserveMemoryBytes = s.haTopCPU, s.haTopMem
	}
	return reserveCPUs, s.freeCPUTotal, reserveMemoryBytes, s.freeMemTotal
}
