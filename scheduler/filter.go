package scheduler

import (
	"encoding/binary"
	"maps"
	"slices"
)

// atom is one static predicate a guest can require of a node: a label pair, an
// accelerator, or an OS profile. Its members are fixed until the node changes
// (UpdateNode), so they are computed once, when a guest first asks for the atom.
type atom struct {
	kind    Reason // ReasonAccelerator, ReasonProfile or ReasonLabel: what a miss reports
	key     string
	value   string
	members []uint64 // bitset over nodes
	count   int
	list    []int32   // members in node order, kept while the atom is small
	pool    *capIndex // capacity index over accepting members, built when first needed
}

func (a *atom) has(n int32) bool { return a.members[n>>6]&(1<<(uint(n)&63)) != 0 }

func (a *atom) set(n int32, on bool) {
	w, bit := n>>6, uint64(1)<<(uint(n)&63)
	was := a.members[w]&bit != 0
	switch {
	case on && !was:
		a.members[w] |= bit
		a.count++
	case !on && was:
		a.members[w] &^= bit
		a.count--
	}
}

// smallAtom: an atom with at most this many members is searched by looking at every
// member; a capacity index would cost more to keep than it saves.
const smallAtom = 256

// req is what a guest demands of a node, beyond CPU and memory; cached per distinct
// (accelerator, OS, constraints) so resolving it is a map lookup.
type req struct {
	atoms []*atom // ordered by filter order: accelerator, profile, labels
	// Where to search: the capacity index of the smallest atom (or the global one when
	// every atom covers most nodes), or the member list of a small atom.
	pool    *capIndex
	covered *atom // the atom the pool or list already guarantees; not checked again
	small   bool  // search covered.list exhaustively
	// pinned has bit i set when a constraint names failure-domain level i's key: every
	// candidate then shares the primary's failure domain at that level, so a twin search there
	// would only walk nodes it must reject.
	pinned uint64
	// within: this requirement narrowed to one value of the broadest failure-domain
	// label, for twin searches that must leave the primary's (large) failure domain.
	within map[string]*req
	// constraints is a copy of the constraints this requirement was made from (nil when
	// none), stored with every guest placed with it; never changed.
	constraints map[string]string
	os, accel   string // the guest's OS and accelerator it was made from
	// specs: the guest specs of this requirement, by failover policy and strategy (see
	// specFor).
	specs [4][3]*guestSpec
}

func (s *Scheduler) atomFor(kind Reason, key, value string) *atom {
	s.keyBuf = append(s.keyBuf[:0], kind...)
	s.keyBuf = append(s.keyBuf, 0)
	s.keyBuf = append(s.keyBuf, key...)
	s.keyBuf = append(s.keyBuf, 0)
	s.keyBuf = append(s.keyBuf, value...)
	if a, ok := s.atoms[string(s.keyBuf)]; ok {
		return a
	}
	a := &atom{kind: kind, key: key, value: value, members: make([]uint64, (len(s.nodes)+63)/64)}
	for i := range s.nodes {
		a.set(int32(i), s.nodes[i].matches(a))
	}
	s.atoms[string(s.keyBuf)] = a
	s.atomList = append(s.atomList, a)
	return a
}

func (n *nodeState) matches(a *atom) bool {
	switch a.kind {
	case ReasonAccelerator:
		return n.accel == a.value
	case ReasonProfile:
		return len(n.profiles) == 0 || slices.Contains(n.profiles, a.value)
	default:
		v, ok := n.labels[a.key]
		return ok && v == a.value
	}
}

// maxPlainReqs bounds the list of requirements without constraints that resolve scans
// before building a key: beyond, they are found through the map like the others.
const maxPlainReqs = 32

// resolve returns the cached requirement of g.
func (s *Scheduler) resolve(g *Guest) *req {
	if len(g.Constraints) == 0 {
		// Most guests have none: a few string compares cost less than a key and a hash.
		for _, r := range s.plainReqs {
			if r.os == g.OS && r.accel == g.Accelerator {
				return r
			}
		}
	}
	// Each string is written after its length, so no two requirements share a key
	// whatever their labels hold ({"a": "b=c"} and {"a=b": "c"} differ).
	b := appendString(s.reqBuf[:0], g.Accelerator)
	b = appendString(b, g.OS)
	if len(g.Constraints) > 0 {
		keys := s.keysBuf[:0]
		for k := range g.Constraints {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			b = appendString(b, k)
			b = appendString(b, g.Constraints[k])
		}
		s.keysBuf = keys[:0]
	}
	s.reqBuf = b
	if r, ok := s.reqs[string(b)]; ok {
		return r
	}
	r := &req{os: g.OS, accel: g.Accelerator}
	if len(g.Constraints) > 0 {
		r.constraints = maps.Clone(g.Constraints)
	} else if len(s.plainReqs) < maxPlainReqs {
		s.plainReqs = append(s.plainReqs, r)
	}
	if g.Accelerator != "" {
		r.atoms = append(r.atoms, s.atomFor(ReasonAccelerator, "", g.Accelerator))
	}
	if g.OS != "" {
		r.atoms = append(r.atoms, s.atomFor(ReasonProfile, "", g.OS))
	}
	keys := make([]string, 0, len(g.Constraints))
	for k := range g.Constraints {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		r.atoms = append(r.atoms, s.atomFor(ReasonLabel, k, g.Constraints[k]))
	}
	for lv, k := range s.opts.FailureDomains {
		if _, ok := g.Constraints[k]; ok && lv < 64 {
			r.pinned |= 1 << lv
		}
	}
	s.plan(r)
	s.reqs[string(s.reqBuf)] = r
	return r
}

func appendString(b []byte, v string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(v))), v...)
}

// plan chooses where a requirement is searched. Called again when nodes change.
func (s *Scheduler) plan(r *req) {
	r.pool, r.covered, r.small = s.global, nil, false
	var best *atom
	for _, a := range r.atoms {
		if best == nil || a.count < best.count {
			best = a
		}
	}
	if best == nil || best.count*2 > len(s.nodes) {
		return
	}
	r.covered = best
	if best.count <= smallAtom {
		if best.list == nil {
			best.list = make([]int32, 0, best.count)
			for i := range s.nodes {
				if best.has(int32(i)) {
					best.list = append(best.list, int32(i))
				}
			}
		}
		r.small = true
		return
	}
	if best.pool == nil {
		best.pool = newCapIndex(len(s.nodes), s.global.classes, s.global.shift)
		best.list = nil
		for i := len(s.nodes) - 1; i >= 0; i-- { // in reverse: see buildIndexes
			n := &s.nodes[i]
			if best.has(int32(i)) && n.accepting() {
				best.pool.put(int32(i), n.freeCPU, n.freeMem)
			}
		}
		s.pools = append(s.pools, best)
	}
	r.pool = best.pool
}

// staticReason is the first static filter node n fails for r, or "".
func (s *Scheduler) staticReason(n int32, r *req) Reason {
	ns := &s.nodes[n]
	if !ns.schedulable || ns.excluded {
		return ReasonUnschedulable
	}
	if ns.draining {
		return ReasonDraining
	}
	for _, a := range r.atoms {
		if !a.has(n) {
			return a.kind
		}
	}
	return ""
}

// verdict is the first filter node n fails for a guest of r, cpu and mem, or "".
func (s *Scheduler) verdict(n int32, r *req, cpu int32, mem int64) Reason {
	if why := s.staticReason(n, r); why != "" {
		return why
	}
	ns := &s.nodes[n]
	if ns.freeCPU < cpu {
		return ReasonNotEnoughCPU
	}
	if ns.freeMem < mem {
		return ReasonNotEnoughMemory
	}
	return ""
}

// twinVerdict adds the twin's separation from its primary p at failure-domain level
// (-1: only a different node is required) to verdict.
func (s *Scheduler) twinVerdict(n int32, r *req, cpu int32, mem int64, p int32, level int) Reason {
	if why := s.verdict(n, r, cpu, mem); why != "" {
		return why
	}
	if n == p {
		return ReasonTwinSameNode
	}
	if level >= 0 && !s.separated(n, p, level) {
		return ReasonTwinSameFailureDomain
	}
	return ""
}

// separated: nodes a and b are in different failure domains at level (both labelled).
func (s *Scheduler) separated(a, b int32, level int) bool {
	da, db := s.nodes[a].failureDomains[level], s.nodes[b].failureDomains[level]
	return da >= 0 && db >= 0 && da != db
}
