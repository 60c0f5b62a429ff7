package scheduler

// Explain answers "why is this guest pending": every node's verdict, counts per reason,
// where Place would put the guest now, and for twins why nodes were rejected as the twin.
// It changes nothing. For an invalid guest only Error is set.
func (s *Scheduler) Explain(g Guest) Explanation {
	e := Explanation{Guest: g.Name, Nodes: len(s.nodes), Reasons: map[Reason]int{}}
	// A guest that is already placed is explained as if it were not: its own allocation
	// (and the room its move in flight holds) would otherwise count against it.
	if id, ok := s.findGuest(g.Name); ok {
		a := *s.guest(id)
		s.Release(g.Name)
		g := a.guest()
		defer s.commit(&g, a.spec, a.node, a.twin, a.dest)
	}
	if err := s.checkGuest(&g); err != nil {
		e.Error = err.Error()
		return e
	}
	r := s.resolve(&g)
	cpu, mem := int32(g.CPUs), g.MemoryBytes
	e.Verdicts = make([]Verdict, len(s.nodes))
	for i := range s.nodes {
		why := s.verdict(int32(i), r, cpu, mem)
		e.Verdicts[i] = Verdict{Node: s.nodes[i].name, Reason: why}
		if why == "" {
			e.Feasible++
		} else {
			e.Reasons[why]++
		}
	}
	strat := s.strategy(&g)
	p := s.search(r, strat, cpu, mem, -1, -1)
	if p < 0 {
		return e
	}
	t := int32(-1)
	if g.Failover == FailoverTwin {
		var level int
		t, level, _ = s.searchTwin(r, strat, cpu, mem, p)
		if t < 0 {
			u := s.unplaceable(&g, r, p, level)
			e.TwinReasons = u.Reasons
			return e
		}
		e.TwinNode = s.nodes[t].name
	}
	e.Node = s.nodes[p].name
	e.Headroom = s.headroomShort(&g, p, t)
	return e
}
