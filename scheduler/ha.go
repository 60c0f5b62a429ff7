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
// placed: the cached sum stays a safe upper bound and is recomputed (O(nodes log nodes))
// only when a key may have grown (a release, a node change), or before refusing unless
// no key changed since the last recompute (so a run of refusals costs O(1) each).
//
// Like vSphere's percentage policy this counts capacity, not how it is cut: a free share
// split over many nodes may still not fit one large guest. Evacuate does the exact
// placement when the loss happens.

// headroomShort says why placing needCPU, needMem more would break the reserve, or "".
func (s *Scheduler) headroomShort(needCPU, needMem int64) string {
	k := s.opts.HAReserveNodes
	if k <= 0 {
		return ""
	}
	if s.haDirty {
		s.haRecompute()
	}
	if s.headroomOK(needCPU, needMem) {
		return ""
	}
	if !s.haExact {
		s.haRecompute()
		if s.headroomOK(needCPU, needMem) {
			return ""
		}
	}
	unit := "nodes"
	if k == 1 {
		unit = "node"
	}
	return fmt.Sprintf("%s: restarting the guests of any %d lost %s needs %d CPUs and %s kept free, placing leaves %d CPUs and %s; add nodes or lower the reserve",
		ReasonHAHeadroom, k, unit, s.haTopCPU, fmtGiB(s.haTopMem), s.freeCPUTotal-needCPU, fmtGiB(s.freeMemTotal-needMem))
}

func (s *Scheduler) headroomOK(needCPU, needMem int64) bool {
	return s.freeCPUTotal-needCPU >= s.haTopCPU && s.freeMemTotal-needMem >= s.haTopMem
}

// haRecompute sums the K largest keys per resource.
func (s *Scheduler) haRecompute() {
	k := s.opts.HAReserveNodes
	cpu := make([]int64, 0, len(s.nodes))
	mem := make([]int64, 0, len(s.nodes))
	for i := range s.nodes {
		ns := &s.nodes[i]
		kc, km := ns.haCPU, ns.haMem
		if ns.accepting() {
			kc += int64(max(ns.freeCPU, 0))
			km += max(ns.freeMem, 0)
		}
		cpu = append(cpu, kc)
		mem = append(mem, km)
	}
	s.haTopCPU, s.haTopMem = topSum(cpu, k), topSum(mem, k)
	s.haDirty, s.haExact = false, true
}

func topSum(v []int64, k int) int64 {
	slices.Sort(v)
	var sum int64
	for i := len(v) - 1; i >= 0 && i >= len(v)-k; i-- {
		sum += v[i]
	}
	return sum
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
