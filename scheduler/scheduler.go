package scheduler

import (
	"cmp"
	"fmt"
	"hash/maphash"
	"maps"
	"math"
	"math/bits"
	"slices"
	"strings"
)

// classBits bounds the number of memory classes of a capacity index to 2^classBits: free
// memory is ordered to 1/8192 of the largest node (128 MiB on a 1 TiB node, never finer
// than 1 MiB).
const classBits = 13

// Scheduler holds a snapshot of the nodes and of the guests placed on them. It is not
// safe for concurrent use: the master owns one and calls it from one goroutine.
type Scheduler struct {
	opts      Options
	nodes     []nodeState
	byNode    map[string]int32
	global    *capIndex // every accepting node
	atoms     map[string]*atom
	atomList  []*atom
	pools     []*atom // atoms with their own capacity index
	reqs      map[string]*req
	plainReqs []*req // some of reqs: those without constraints (see resolve)
	optsErr   error
	chunks    [][]placed // guests by id, in chunks so growing never copies them
	nguests   int32
	freeSlots []int32
	names     guestNames // guest ids by name
	// Values of the broadest failure-domain label (zones, say), sorted.
	broadValues []string
	problems    []string
	// failureDomainIDs numbers the failure domains, each by its path of label values.
	failureDomainIDs map[string]int32
	sharedWarnings   []string // by failure domain id (see sharedWarning)

	// HA admission control: free capacity over accepting nodes, and a cached sum of the
	// K largest per-node keys (see ha.go).
	freeCPUTotal, freeMemTotal int64
	haTopCPU, haTopMem         int64
	haDirty                    bool // a key may have grown: the cached sums may be low
	haExact                    bool // the cached sums are exact (no key shrank since)

	clock uint64 // counts the global index's moves (see reindex)

	keyBuf, reqBuf []byte
	keysBuf        []string
}

type nodeState struct {
	name         string
	cpus         int32
	mem          int64
	freeCPU      int32
	freeMem      int64
	schedulable  bool
	draining     bool
	excluded     bool // taken out while a plan is computed
	accel        string
	profiles     []string
	labels       map[string]string
	first        int32  // guests here: first slot+1 (slot = id*2, +1 for a twin copy)
	count        int32  // guests whose primary or twin is here
	haCPU, haMem int64  // demand of restart and twin guests here, for HA admission
	inCPU, inMem int64  // room held here by moves in flight to this node
	moved        uint64 // Scheduler.clock when the global index last moved the node
	// failureDomains has, per failure-domain level, the id of the node's failure
	// domain there (-1: the node lacks the level's label).
	failureDomains []int32
}

func (n *nodeState) accepting() bool { return n.schedulable && !n.draining && !n.excluded }

// placed is a guest as recorded. Its name and size are its own; the rest (OS,
// accelerator, constraints, failover, strategy) is a spec that the guests placed with the
// same requirement and policy share. A record is 72 bytes with two pointers, where a
// copy of the Guest made it 136 with six: every placement allocates one, and the garbage
// collector scans them all.
type placed struct {
	name string
	spec *guestSpec
	cpus int
	mem  int64
	node int32
	twin int32 // -1 unless twin
	dest int32 // -1 unless a move in flight holds room there
	// stay: Rebalance leaves the guest where it is (Assignment.Stay).
	stay bool
	// Links of the per-node guest lists: [0] for the primary's node, [1] for the twin's.
	next, prev [2]int32 // slot+1, 0 = none
}

// guestSpec is what a guest asks for besides its name and size; never changed once
// made, as guests share it.
type guestSpec struct {
	os, accel, failover string
	strategy            Strategy
	constraints         map[string]string
}

// newSpec makes g's spec. constraints is a copy of g.Constraints the scheduler owns
// (nil: one is made, the caller may reuse its map).
func newSpec(g *Guest, constraints map[string]string) *guestSpec {
	if constraints == nil && len(g.Constraints) > 0 {
		constraints = maps.Clone(g.Constraints)
	} else if len(g.Constraints) == 0 {
		constraints = g.Constraints
	}
	return &guestSpec{os: g.OS, accel: g.Accelerator, failover: g.Failover, strategy: g.Strategy, constraints: constraints}
}

// specFor returns the spec for a guest resolved to r: shared per requirement for the
// known failover policies and strategies, made anew otherwise (and for an empty, non-nil
// constraints map, which the guest keeps as it was given, as it did before specs).
func (s *Scheduler) specFor(r *req, g *Guest) *guestSpec {
	if g.Constraints != nil && len(g.Constraints) == 0 {
		return newSpec(g, nil)
	}
	f, st := -1, -1
	switch g.Failover {
	case "":
		f = 0
	case FailoverNone:
		f = 1
	case FailoverRestart:
		f = 2
	case FailoverTwin:
		f = 3
	}
	switch g.Strategy {
	case "":
		st = 0
	case Pack:
		st = 1
	case Spread:
		st = 2
	}
	if f < 0 || st < 0 {
		return newSpec(g, r.constraints)
	}
	sp := &r.specs[f][st]
	if *sp == nil {
		*sp = newSpec(g, r.constraints)
	}
	return *sp
}

// guest returns the Guest as it was given.
func (pg *placed) guest() Guest {
	sp := pg.spec
	return Guest{Name: pg.name, OS: sp.os, CPUs: pg.cpus, MemoryBytes: pg.mem, Failover: sp.failover,
		Constraints: sp.constraints, Accelerator: sp.accel, Strategy: sp.strategy}
}

func (pg *placed) ha() bool { return haFailover(pg.spec.failover) }

const chunkBits = 12

func (s *Scheduler) guest(id int32) *placed {
	return &s.chunks[id>>chunkBits][id&(1<<chunkBits-1)]
}

// guestsOn lists the ids of the guests whose primary or twin is on node n.
func (s *Scheduler) guestsOn(n int32) []int32 {
	ids := make([]int32, 0, s.nodes[n].count)
	for slot := s.nodes[n].first; slot != 0; {
		id, k := (slot-1)/2, (slot-1)%2
		ids = append(ids, id)
		slot = s.guest(id).next[k]
	}
	return ids
}

// New builds a scheduler over a snapshot. Node.Allocated* is the capacity in use on each
// node and should include the guests in existing; where it is smaller than the sum of
// existing guests on the node and of the moves in flight to it (for example left zero),
// that sum is used instead. Existing assignments naming unknown nodes or repeated guests
// are skipped and listed by Problems; a move to an unknown node (or to the guest's own)
// is listed there too, and the guest is counted where it is.
func New(nodes []Node, existing []Assignment, opts Options) *Scheduler {
	optsErr := opts.Validate()
	if optsErr != nil {
		// Place reports the bad options; keep the structures sound meanwhile.
		opts.FailureDomains = nil
	}
	s := &Scheduler{
		opts:             opts,
		nodes:            make([]nodeState, len(nodes)),
		byNode:           make(map[string]int32, len(nodes)),
		atoms:            map[string]*atom{},
		reqs:             map[string]*req{},
		names:            guestNames{seed: maphash.MakeSeed()},
		failureDomainIDs: map[string]int32{},
		optsErr:          optsErr,
	}
	usedCPU := make([]int64, len(nodes))
	usedMem := make([]int64, len(nodes))
	for i, n := range nodes {
		ns := &s.nodes[i]
		s.setStatic(ns, n)
		if _, dup := s.byNode[n.Name]; dup {
			s.problems = append(s.problems, fmt.Sprintf("node %q listed twice: the later entry is not used", n.Name))
			ns.schedulable = false
		} else {
			s.byNode[n.Name] = int32(i)
		}
		usedCPU[i], usedMem[i] = int64(n.AllocatedCPUs), n.AllocatedMemoryBytes
	}
	// Existing guests: sum them per node, then settle each node's used capacity.
	sumCPU := make([]int64, len(nodes))
	sumMem := make([]int64, len(nodes))
	for _, a := range existing {
		if a.Guest.Failover == FailoverTwin && a.TwinNode != "" && a.TwinNode == a.Node {
			// Not a state the master writes; were it skipped, its room would be free
			// here while the master's commit check counts it: count it once.
			s.problems = append(s.problems, fmt.Sprintf("guest %q: twin on its primary's node %q: counted once, as a guest without a twin", a.Guest.Name, a.Node))
			a.TwinNode = ""
		}
		p, t, err := s.assignmentNodes(a)
		if err == nil {
			_, dup := s.findGuest(a.Guest.Name)
			switch {
			case dup || a.Guest.Name == "":
				err = fmt.Errorf("guest %q: %w", a.Guest.Name, ErrGuestExists)
			case a.Guest.CPUs <= 0 || a.Guest.MemoryBytes <= 0:
				err = fmt.Errorf("%w %q: %d CPUs, %d bytes", ErrInvalidGuest, a.Guest.Name, a.Guest.CPUs, a.Guest.MemoryBytes)
			}
		}
		if err != nil {
			s.problems = append(s.problems, fmt.Sprintf("existing assignment skipped: %v", err))
			continue
		}
		d, err := s.moveDest(a, p)
		if err != nil {
			// The guest still holds its room where it is; only the move is not counted.
			s.problems = append(s.problems, fmt.Sprintf("move in flight not counted: %v", err))
		}
		for i, n := range []int32{p, t, d} {
			// A node named twice holds the guest's room once, as the master's commit
			// check counts it.
			if n >= 0 && (i == 0 || n != p) && (i < 2 || n != t) {
				sumCPU[n] += int64(a.Guest.CPUs)
				sumMem[n] += a.Guest.MemoryBytes
			}
		}
		s.guest(s.addGuest(&a.Guest, newSpec(&a.Guest, a.Guest.Constraints), p, t, d)).stay = a.Stay
	}
	for i := range s.nodes {
		ns := &s.nodes[i]
		ns.freeCPU = clamp32(int64(ns.cpus) - max(usedCPU[i], sumCPU[i]))
		ns.freeMem = ns.mem - max(usedMem[i], sumMem[i])
	}
	s.collectBroadValues()
	s.buildIndexes()
	for i := range s.nodes {
		if ns := &s.nodes[i]; ns.accepting() {
			s.freeCPUTotal += int64(max(ns.freeCPU, 0))
			s.freeMemTotal += max(ns.freeMem, 0)
		}
	}
	s.haDirty = true
	return s
}

// buildIndexes (re)builds the global capacity index and every atom's, with memory classes
// sized to the largest node. Requirements must be planned again afterwards.
func (s *Scheduler) buildIndexes() {
	var maxMem int64 = 1
	for i := range s.nodes {
		maxMem = max(maxMem, s.nodes[i].mem)
	}
	shift := uint(20)
	if l := bits.Len64(uint64(maxMem)); l > classBits+20 {
		shift = uint(l - classBits)
	}
	fill := func(member func(int32) bool) *capIndex {
		x := newCapIndex(len(s.nodes), int(maxMem>>shift)+1, shift)
		// Buckets are filled at the front: in reverse, so equal nodes come in snapshot order.
		for i := len(s.nodes) - 1; i >= 0; i-- {
			if ns := &s.nodes[i]; ns.accepting() && member(int32(i)) {
				x.put(int32(i), ns.freeCPU, ns.freeMem)
			}
		}
		return x
	}
	s.global = fill(func(int32) bool { return true })
	for _, a := range s.pools {
		a.pool = fill(a.has)
	}
}

func clamp32(v int64) int32 {
	if v > math.MaxInt32 {
		return math.MaxInt32
	}
	if v < math.MinInt32 {
		return math.MinInt32
	}
	return int32(v)
}

func (s *Scheduler) setStatic(ns *nodeState, n Node) {
	ns.name = n.Name
	ns.cpus = clamp32(int64(n.CPUs))
	ns.mem = n.MemoryBytes
	ns.schedulable = n.Schedulable
	ns.draining = n.Draining
	ns.accel = n.Accelerator
	ns.profiles = append([]string(nil), n.Profiles...)
	ns.labels = make(map[string]string, len(n.Labels))
	for k, v := range n.Labels {
		ns.labels[k] = v
	}
	// A failure domain at level i is the path of label values from i up to the broadest
	// level, so rack "r1" of zone "a" and rack "r1" of zone "b" are different racks.
	fd := s.opts.FailureDomains
	ns.failureDomains = make([]int32, len(fd))
	for i := range fd {
		v, ok := n.Labels[fd[i]]
		if !ok {
			ns.failureDomains[i] = -1
			continue
		}
		var key strings.Builder
		fmt.Fprintf(&key, "%d", i)
		key.WriteString("\x00" + v)
		for _, k := range fd[i+1:] {
			key.WriteString("\x00" + n.Labels[k])
		}
		id, ok := s.failureDomainIDs[key.String()]
		if !ok {
			id = int32(len(s.failureDomainIDs))
			s.failureDomainIDs[key.String()] = id
		}
		ns.failureDomains[i] = id
	}
}

// Problems lists what New skipped in its input.
func (s *Scheduler) Problems() []string { return append([]string(nil), s.problems...) }

func (s *Scheduler) assignmentNodes(a Assignment) (p, t int32, err error) {
	p, t = -1, -1
	var ok bool
	if p, ok = s.byNode[a.Node]; !ok {
		return -1, -1, fmt.Errorf("guest %q: node %q: %w", a.Guest.Name, a.Node, ErrUnknownNode)
	}
	if a.Guest.Failover == FailoverTwin && a.TwinNode == "" {
		// A twin running without its twin (none could be placed after a loss): it
		// holds room on its node only, and is planned like a restart guest.
		return p, -1, nil
	}
	if a.Guest.Failover == FailoverTwin {
		if t, ok = s.byNode[a.TwinNode]; !ok {
			return -1, -1, fmt.Errorf("guest %q: twin node %q: %w", a.Guest.Name, a.TwinNode, ErrUnknownNode)
		}
		if t == p {
			return -1, -1, fmt.Errorf("guest %q: twin on its primary's node %q: %w", a.Guest.Name, a.Node, ErrInvalidGuest)
		}
	} else if a.TwinNode != "" {
		return -1, -1, fmt.Errorf("guest %q: twin node %q given but failover is %q: %w", a.Guest.Name, a.TwinNode, a.Guest.Failover, ErrInvalidGuest)
	}
	return p, t, nil
}

// moveDest resolves an assignment's MoveTo for a guest on p: -1 when it has none.
func (s *Scheduler) moveDest(a Assignment, p int32) (int32, error) {
	if a.MoveTo == "" {
		return -1, nil
	}
	d, ok := s.byNode[a.MoveTo]
	if !ok {
		return -1, fmt.Errorf("guest %q: moving to node %q: %w", a.Guest.Name, a.MoveTo, ErrUnknownNode)
	}
	if d == p {
		return -1, fmt.Errorf("guest %q: moving to %q, the node it is on: %w", a.Guest.Name, a.MoveTo, ErrInvalidGuest)
	}
	return d, nil
}

// addGuest records a guest on p (and twin t, and a move's destination d) without
// touching capacity.
func (s *Scheduler) addGuest(g *Guest, spec *guestSpec, p, t, d int32) int32 {
	var id int32
	if k := len(s.freeSlots); k > 0 {
		id = s.freeSlots[k-1]
		s.freeSlots = s.freeSlots[:k-1]
	} else {
		id = s.nguests
		s.nguests++
		if int(id>>chunkBits) == len(s.chunks) {
			s.chunks = append(s.chunks, make([]placed, 1<<chunkBits))
		}
	}
	pg := s.guest(id)
	*pg = placed{name: g.Name, spec: spec, cpus: g.CPUs, mem: g.MemoryBytes, node: p, twin: t, dest: d}
	s.names.insert(g.Name, id)
	if d >= 0 {
		s.nodes[d].inCPU += int64(g.CPUs)
		s.nodes[d].inMem += g.MemoryBytes
	}
	ha := haGuest(g)
	for k, n := range [2]int32{p, t} {
		if n < 0 {
			continue
		}
		ns := &s.nodes[n]
		slot := id*2 + int32(k) + 1
		pg.next[k] = ns.first
		if ns.first != 0 {
			s.guest((ns.first - 1) / 2).prev[(ns.first-1)%2] = slot
		}
		ns.first = slot
		ns.count++
		if ha {
			ns.haCPU += int64(g.CPUs)
			ns.haMem += g.MemoryBytes
		}
	}
	return id
}

func (s *Scheduler) dropGuest(id int32) {
	pg := s.guest(id)
	ha := pg.ha()
	if pg.dest >= 0 {
		s.nodes[pg.dest].inCPU -= int64(pg.cpus)
		s.nodes[pg.dest].inMem -= pg.mem
	}
	for k, n := range [2]int32{pg.node, pg.twin} {
		if n < 0 {
			continue
		}
		ns := &s.nodes[n]
		prev, next := pg.prev[k], pg.next[k]
		if prev != 0 {
			s.guest((prev - 1) / 2).next[(prev-1)%2] = next
		} else {
			ns.first = next
		}
		if next != 0 {
			s.guest((next - 1) / 2).prev[(next-1)%2] = prev
		}
		ns.count--
		if ha {
			ns.haCPU -= int64(pg.cpus)
			ns.haMem -= pg.mem
			s.haDirty = true
		}
	}
	s.names.remove(pg.name, id)
	*pg = placed{}
	s.freeSlots = append(s.freeSlots, id)
}

// haGuest: the guest needs capacity again when a node it is on is lost (a restart, or a
// new twin).
func haGuest(g *Guest) bool { return haFailover(g.Failover) }

func haFailover(f string) bool { return f == FailoverRestart || f == FailoverTwin }

// take changes node n's free capacity by -cpu, -mem (give back with negative values) and
// keeps the indexes and totals in step.
func (s *Scheduler) take(n int32, cpu int32, mem int64) {
	ns := &s.nodes[n]
	if ns.accepting() {
		s.freeCPUTotal -= int64(max(ns.freeCPU, 0))
		s.freeMemTotal -= max(ns.freeMem, 0)
	}
	ns.freeCPU -= cpu
	ns.freeMem -= mem
	if cpu < 0 || mem < 0 {
		s.haDirty = true // a node's key may have grown
	}
	if ns.accepting() {
		s.freeCPUTotal += int64(max(ns.freeCPU, 0))
		s.freeMemTotal += max(ns.freeMem, 0)
	}
	s.reindex(n)
}

// reindex moves node n in the global capacity index after its free capacity changed,
// and marks it in the pool indexes it belongs to, which catch up when next searched
// (see catchUp): most placements search only the global index, and a node filling up
// moves many times between two searches of a pool.
func (s *Scheduler) reindex(n int32) {
	ns := &s.nodes[n]
	var moved bool
	if ns.accepting() {
		moved = s.global.put(n, ns.freeCPU, ns.freeMem)
	} else {
		moved = s.global.remove(n)
	}
	if !moved {
		return // every pool has it where the global index has it
	}
	s.clock++
	ns.moved = s.clock
	for _, a := range s.pools {
		if a.has(n) {
			a.pool.mark(n)
		}
	}
}

// catchUp brings a's pool index to where putting every node as it moved would have: the
// nodes that moved since, in the order of their last moves, each go first in their
// bucket (or out), so every bucket lists its nodes as the global index does.
func (s *Scheduler) catchUp(a *atom) {
	x := a.pool
	if len(x.lateNodes) == 0 {
		return
	}
	slices.SortFunc(x.lateNodes, func(m, n int32) int { return cmp.Compare(s.nodes[m].moved, s.nodes[n].moved) })
	for _, n := range x.lateNodes {
		x.late[n] = false
		if ns := &s.nodes[n]; ns.accepting() && a.has(n) {
			x.putFirst(n, ns.freeCPU, ns.freeMem)
		} else {
			x.remove(n)
		}
	}
	x.lateNodes = x.lateNodes[:0]
}

// reindexNow puts node n into, or takes it out of, every capacity index it belongs to at
// once, for a change of state or membership rather than of free capacity.
func (s *Scheduler) reindexNow(n int32) {
	for _, a := range s.pools {
		s.catchUp(a)
	}
	ns := &s.nodes[n]
	if !ns.accepting() {
		s.global.remove(n)
		for _, a := range s.pools {
			a.pool.remove(n)
		}
		return
	}
	s.global.put(n, ns.freeCPU, ns.freeMem)
	for _, a := range s.pools {
		if a.has(n) {
			a.pool.put(n, ns.freeCPU, ns.freeMem)
		}
	}
}

// setExcluded takes node n out of consideration (or puts it back) while a plan is made.
func (s *Scheduler) setExcluded(n int32, on bool) {
	ns := &s.nodes[n]
	if ns.accepting() {
		s.freeCPUTotal -= int64(max(ns.freeCPU, 0))
		s.freeMemTotal -= max(ns.freeMem, 0)
	}
	ns.excluded = on
	if ns.accepting() {
		s.freeCPUTotal += int64(max(ns.freeCPU, 0))
		s.freeMemTotal += max(ns.freeMem, 0)
	}
	s.haDirty = true
	s.reindexNow(n)
}

func (s *Scheduler) strategy(g *Guest) Strategy {
	if g.Strategy != "" {
		return g.Strategy
	}
	if s.opts.Strategy != "" {
		return s.opts.Strategy
	}
	return Spread
}

// checkGuest rejects a guest the scheduler cannot reason about, or whose name it knows;
// nothing is changed.
func (s *Scheduler) checkGuest(g *Guest) error {
	if err := s.checkFields(g); err != nil {
		return err
	}
	if _, dup := s.findGuest(g.Name); dup {
		return errExists(g.Name)
	}
	return nil
}

func errExists(name string) error {
	return fmt.Errorf("guest %q: %w; release it first", name, ErrGuestExists)
}

// checkFields is checkGuest without looking the name up.
func (s *Scheduler) checkFields(g *Guest) error {
	if s.optsErr != nil {
		return fmt.Errorf("scheduler options: %w", s.optsErr)
	}
	switch {
	case g.Name == "":
		return fmt.Errorf("%w: the guest has no name", ErrInvalidGuest)
	case g.CPUs <= 0 || g.CPUs > math.MaxInt32:
		return fmt.Errorf("%w %q: %d CPUs: give at least 1", ErrInvalidGuest, g.Name, g.CPUs)
	case g.MemoryBytes <= 0:
		return fmt.Errorf("%w %q: %d bytes of memory: give more than 0", ErrInvalidGuest, g.Name, g.MemoryBytes)
	}
	switch g.Failover {
	case "", FailoverNone, FailoverRestart, FailoverTwin:
	default:
		return fmt.Errorf("%w %q: failover %q unknown: use %q, %q or %q", ErrInvalidGuest, g.Name, g.Failover, FailoverNone, FailoverRestart, FailoverTwin)
	}
	switch g.Strategy {
	case "", Pack, Spread:
	default:
		return fmt.Errorf("%w %q: strategy %q unknown: use %q or %q", ErrInvalidGuest, g.Name, g.Strategy, Pack, Spread)
	}
	return nil
}

// Place chooses a node (and a twin node for Failover "twin") and records the allocation,
// so successive calls see each other. When nothing fits the error is *Unplaceable.
func (s *Scheduler) Place(g Guest) (Placement, error) {
	if err := s.checkFields(&g); err != nil {
		return Placement{}, err
	}
	// The name must be new: the read of its slot is under way while the node is
	// searched, which neither depends on it nor changes the name table.
	probe := s.names.startFind(g.Name)
	r := s.resolve(&g)
	strat := s.strategy(&g)
	cpu, mem := int32(g.CPUs), g.MemoryBytes
	p := s.search(r, strat, cpu, mem, -1, -1)
	if _, dup := s.finishFind(g.Name, probe); dup {
		return Placement{}, errExists(g.Name)
	}
	if p < 0 {
		return Placement{}, s.unplaceable(&g, r, -1, -1)
	}
	pl := Placement{Node: s.nodes[p].name}
	t := int32(-1)
	if g.Failover == FailoverTwin {
		var level int
		var warn string
		t, level, warn = s.searchTwin(r, strat, cpu, mem, p)
		if t < 0 {
			return Placement{}, s.unplaceable(&g, r, p, level)
		}
		if warn != "" {
			pl.Warnings = append(pl.Warnings, warn)
		}
		pl.TwinNode = s.nodes[t].name
	}
	if short := s.headroomShort(&g, p, t); short != "" {
		if !s.opts.HAWarnOnly {
			return Placement{}, &Unplaceable{Guest: g.Name, Nodes: len(s.nodes),
				Reasons: map[Reason]int{ReasonHAHeadroom: len(s.nodes)}, Headroom: short}
		}
		pl.Warnings = append(pl.Warnings, "admitted below the HA reserve: "+short)
	}
	s.commit(&g, s.specFor(r, &g), p, t, -1)
	return pl, nil
}

// commit records g on p (and twin t, and a move's destination d) and takes the capacity.
// spec is g's spec (see specFor), or nil to make one.
func (s *Scheduler) commit(g *Guest, spec *guestSpec, p, t, d int32) {
	if spec == nil {
		spec = newSpec(g, nil)
	}
	if !haGuest(g) || d >= 0 {
		// p's key (or d's, whose free share shrinks with no demand added) shrinks: the
		// cached sum is now an upper bound.
		s.haExact = false
	}
	for _, n := range [3]int32{p, t, d} {
		if n >= 0 {
			s.take(n, int32(g.CPUs), g.MemoryBytes)
		}
	}
	s.addGuest(g, spec, p, t, d)
}

// Assign records a guest the master placed itself (or moved by a plan), without
// filters: the master has the final word. Errors name what was wrong; nothing changes.
func (s *Scheduler) Assign(a Assignment) error {
	if err := s.checkGuest(&a.Guest); err != nil {
		return err
	}
	p, t, err := s.assignmentNodes(a)
	if err != nil {
		return err
	}
	d, err := s.moveDest(a, p)
	if err != nil {
		return err
	}
	s.commit(&a.Guest, nil, p, t, d)
	id, _ := s.findGuest(a.Guest.Name)
	s.guest(id).stay = a.Stay
	return nil
}

// Release forgets a guest and frees its capacity, the room of its move in flight too;
// unknown names are ignored (releasing twice is harmless).
func (s *Scheduler) Release(guestName string) {
	id, ok := s.findGuest(guestName)
	if !ok {
		return
	}
	pg := *s.guest(id)
	for _, n := range [3]int32{pg.node, pg.twin, pg.dest} {
		if n >= 0 {
			s.take(n, -int32(pg.cpus), -pg.mem)
		}
	}
	s.dropGuest(id)
}

// Lookup returns where a guest is recorded.
func (s *Scheduler) Lookup(guestName string) (Assignment, bool) {
	id, ok := s.findGuest(guestName)
	if !ok {
		return Assignment{}, false
	}
	pg := s.guest(id)
	a := Assignment{Guest: pg.guest(), Node: s.nodes[pg.node].name}
	if len(a.Guest.Constraints) > 0 {
		// The scheduler's copy is shared by the guests of the same requirement.
		a.Guest.Constraints = maps.Clone(a.Guest.Constraints)
	}
	if pg.twin >= 0 {
		a.TwinNode = s.nodes[pg.twin].name
	}
	if pg.dest >= 0 {
		a.MoveTo = s.nodes[pg.dest].name
	}
	a.Stay = pg.stay
	return a, true
}

// Free returns a node's free pool share as the scheduler's books have it: the room held
// by moves in flight to the node is not free.
func (s *Scheduler) Free(node string) (cpus int, memoryBytes int64, err error) {
	n, ok := s.byNode[node]
	if !ok {
		return 0, 0, fmt.Errorf("node %q: %w", node, ErrUnknownNode)
	}
	return int(s.nodes[n].freeCPU), s.nodes[n].freeMem, nil
}

// UpdateNode replaces what the scheduler knows of a node (state, labels, profiles, pool
// share), or adds it when the name is new: a host that joins takes guests at once. The
// guests recorded on it stay; the node's used capacity is the larger of n.Allocated* and
// the sum of those guests and of the moves in flight to it. Nodes are never removed:
// mark them unschedulable.
func (s *Scheduler) UpdateNode(n Node) error {
	if n.Name == "" {
		return fmt.Errorf("update node: the node has no name")
	}
	id, ok := s.byNode[n.Name]
	if !ok {
		id = s.addNode(n.Name)
	}
	for _, a := range s.pools {
		s.catchUp(a) // before any membership changes: see reindex
	}
	ns := &s.nodes[id]
	if ns.accepting() {
		s.freeCPUTotal -= int64(max(ns.freeCPU, 0))
		s.freeMemTotal -= max(ns.freeMem, 0)
	}
	sumCPU, sumMem := ns.inCPU, ns.inMem
	for _, gid := range s.guestsOn(id) {
		sumCPU += int64(s.guest(gid).cpus)
		sumMem += s.guest(gid).mem
	}
	excluded, first, count, haCPU, haMem, inCPU, inMem := ns.excluded, ns.first, ns.count, ns.haCPU, ns.haMem, ns.inCPU, ns.inMem
	*ns = nodeState{}
	s.setStatic(ns, n)
	ns.excluded, ns.first, ns.count, ns.haCPU, ns.haMem, ns.inCPU, ns.inMem = excluded, first, count, haCPU, haMem, inCPU, inMem
	ns.freeCPU = clamp32(int64(ns.cpus) - max(int64(n.AllocatedCPUs), sumCPU))
	ns.freeMem = ns.mem - max(n.AllocatedMemoryBytes, sumMem)
	if ns.accepting() {
		s.freeCPUTotal += int64(max(ns.freeCPU, 0))
		s.freeMemTotal += max(ns.freeMem, 0)
	}
	for _, a := range s.atomList {
		in := ns.matches(a)
		if a.has(id) != in {
			a.set(id, in)
			a.list = nil // rebuilt by plan
			if a.pool != nil && !in {
				a.pool.remove(id)
			}
		}
	}
	s.collectBroadValues()
	if ns.mem>>s.global.shift >= int64(s.global.classes) {
		s.buildIndexes() // larger than any node so far: widen the memory classes
	}
	for _, r := range s.reqs {
		s.plan(r)
		for _, w := range r.within {
			s.plan(w)
		}
	}
	s.reindexNow(id)
	s.haDirty = true
	return nil
}

// addNode appends an empty, unschedulable node and grows every per-node structure.
func (s *Scheduler) addNode(name string) int32 {
	id := int32(len(s.nodes))
	s.nodes = append(s.nodes, nodeState{name: name, failureDomains: make([]int32, len(s.opts.FailureDomains))})
	s.byNode[name] = id
	for _, x := range append([]*capIndex{s.global}, s.poolIndexes()...) {
		x.addNode()
	}
	for _, a := range s.atomList {
		if int(id)/64 >= len(a.members) {
			a.members = append(a.members, 0)
		}
	}
	return id
}

func (s *Scheduler) poolIndexes() []*capIndex {
	out := make([]*capIndex, len(s.pools))
	for i, a := range s.pools {
		out[i] = a.pool
	}
	return out
}

// search returns the best node for a guest of r, cpu, mem under strat, or -1. With p >= 0
// it searches a twin for primary p, separated at failure-domain level (-1: any other node).
func (s *Scheduler) search(r *req, strat Strategy, cpu int32, mem int64, p int32, level int) int32 {
	if r.small {
		return s.searchList(r, strat, cpu, mem, p, level)
	}
	x := r.pool
	if x != s.global {
		s.catchUp(r.covered)
	}
	need := int8(cpuBucket(cpu))
	lo := x.class(mem)
	if strat == Pack {
		// The first class with a fitting node holds the best fit to a class's width;
		// within it, up to packSample fitting nodes are compared exactly.
		best, seen := int32(-1), 0
		for c := x.nextClass(lo, need); c >= 0; c = x.nextClass(c+1, need) {
			m := x.mask[c] >> uint(need) << uint(need)
			for m != 0 {
				b := bits.TrailingZeros64(m)
				m &= m - 1
				for id := x.head(int32(c*cpuBuckets + b)); id != 0; id = x.links[id-1].next {
					n := id - 1
					if !s.fits(n, r, cpu, mem, p, level) {
						continue
					}
					if best < 0 || s.better(Pack, n, best, cpu, mem) {
						best = n
					}
					if seen++; seen == packSample {
						return best
					}
				}
			}
			if best >= 0 {
				return best
			}
		}
		return -1
	}
	// Spread: among the first spreadSample fitting nodes in order of most free memory,
	// the one left with the largest free share of its scarcer resource, so a node with
	// memory to spare but few CPUs is not drained of CPUs first.
	best, seen := int32(-1), 0
	var bestScore float64
	for c := x.prevClass(x.classes-1, need); c >= lo; c = x.prevClass(c-1, need) {
		m := x.mask[c] >> uint(need) << uint(need)
		for m != 0 {
			b := 63 - bits.LeadingZeros64(m)
			m &^= 1 << uint(b)
			for id := x.head(int32(c*cpuBuckets + b)); id != 0; id = x.links[id-1].next {
				n := id - 1
				if !s.fits(n, r, cpu, mem, p, level) {
					continue
				}
				if sc := s.nodes[n].spreadScore(cpu, mem); best < 0 || sc > bestScore {
					best, bestScore = n, sc
				}
				if seen++; seen == spreadSample {
					return best
				}
			}
		}
	}
	return best
}

// packSample bounds how many fitting nodes of the best memory class Pack compares.
const packSample = 16

// spreadSample is how many fitting nodes Spread scores (Nomad's limited candidate
// sampling, with the candidates taken from the top of the free-memory order).
const spreadSample = 8

// spreadScore is the share of its scarcer resource node n has left after taking cpu, mem.
func (n *nodeState) spreadScore(cpu int32, mem int64) float64 {
	if n.cpus <= 0 || n.mem <= 0 {
		return 0
	}
	return min(float64(n.freeCPU-cpu)/float64(n.cpus), float64(n.freeMem-mem)/float64(n.mem))
}

// fits checks what the index does not guarantee for a node it yielded.
func (s *Scheduler) fits(n int32, r *req, cpu int32, mem int64, p int32, level int) bool {
	ns := &s.nodes[n]
	if ns.freeCPU < cpu || ns.freeMem < mem {
		return false
	}
	for _, a := range r.atoms {
		if a != r.covered && !a.has(n) {
			return false
		}
	}
	if p >= 0 {
		if n == p || (level >= 0 && !s.separated(n, p, level)) {
			return false
		}
	}
	return true
}

// searchList looks at every member of a small atom; exact best (or most free) fit.
func (s *Scheduler) searchList(r *req, strat Strategy, cpu int32, mem int64, p int32, level int) int32 {
	best := int32(-1)
	for _, n := range r.covered.list {
		ns := &s.nodes[n]
		if !ns.accepting() || !s.fits(n, r, cpu, mem, p, level) {
			continue
		}
		if best < 0 {
			best = n
			continue
		}
		if s.better(strat, n, best, cpu, mem) {
			best = n
		}
	}
	return best
}

// better: node a scores higher than node b under strat for a guest of cpu, mem.
func (s *Scheduler) better(strat Strategy, a, b int32, cpu int32, mem int64) bool {
	na, nb := &s.nodes[a], &s.nodes[b]
	if strat == Pack {
		return na.freeMem < nb.freeMem || (na.freeMem == nb.freeMem && na.freeCPU < nb.freeCPU)
	}
	return na.spreadScore(cpu, mem) > nb.spreadScore(cpu, mem)
}

// maxSplitFailureDomains: up to this many broadest failure domains (zones), a twin that
// must leave its primary's failure domain is searched in each other one's own index;
// beyond, the walk skips the primary's failure domain node by node.
const maxSplitFailureDomains = 16

func (s *Scheduler) collectBroadValues() {
	s.broadValues = s.broadValues[:0]
	fd := s.opts.FailureDomains
	if len(fd) == 0 {
		return
	}
	seen := map[string]bool{}
	for i := range s.nodes {
		if v, ok := s.nodes[i].labels[fd[len(fd)-1]]; ok && !seen[v] {
			seen[v] = true
			s.broadValues = append(s.broadValues, v)
		}
	}
	slices.Sort(s.broadValues)
}

// searchApart searches a twin for primary p, separated at level lv. Skipping the
// primary's failure domain node by node costs as many steps as it has fitting nodes,
// which for a zone that alone has room is a third of the cluster; so at the broadest
// level, when the primary's failure domain is large and the failure domains few, each
// other one is searched through its own index and the best answer kept.
func (s *Scheduler) searchApart(r *req, strat Strategy, cpu int32, mem int64, p int32, lv int) int32 {
	fd := s.opts.FailureDomains
	if r.small || lv != len(fd)-1 || len(s.broadValues) > maxSplitFailureDomains {
		return s.search(r, strat, cpu, mem, p, lv)
	}
	own := s.nodes[p].labels[fd[lv]]
	if s.atomFor(ReasonLabel, fd[lv], own).count <= smallAtom {
		return s.search(r, strat, cpu, mem, p, lv)
	}
	best := int32(-1)
	for _, v := range s.broadValues {
		if v == own {
			continue
		}
		w, ok := r.within[v]
		if !ok {
			w = &req{atoms: append(slices.Clone(r.atoms), s.atomFor(ReasonLabel, fd[lv], v)), pinned: r.pinned}
			s.plan(w)
			if r.within == nil {
				r.within = map[string]*req{}
			}
			r.within[v] = w
		}
		if n := s.search(w, strat, cpu, mem, -1, -1); n >= 0 && (best < 0 || s.better(strat, n, best, cpu, mem)) {
			best = n
		}
	}
	return best
}

// searchTwin finds the twin node for primary p: in a different failure domain at the
// broadest failure-domain level that has room, at worst at the most specific level where p is
// labelled. It returns the node (or -1), the most specific level tried (for reasons),
// and a warning when the twin had to settle for a narrower separation.
func (s *Scheduler) searchTwin(r *req, strat Strategy, cpu int32, mem int64, p int32) (int32, int, string) {
	doms := s.nodes[p].failureDomains
	specific := -1
	for lv := len(doms) - 1; lv >= 0; lv-- {
		if doms[lv] < 0 {
			continue
		}
		specific = lv
		if lv < 64 && r.pinned&(1<<lv) != 0 {
			continue
		}
		if t := s.searchApart(r, strat, cpu, mem, p, lv); t >= 0 {
			var warn string
			for broad := len(doms) - 1; broad > lv; broad-- {
				if doms[broad] >= 0 {
					warn = s.sharedWarning(p, broad)
					break
				}
			}
			return t, lv, warn
		}
	}
	if specific >= 0 {
		return -1, specific, ""
	}
	return s.search(r, strat, cpu, mem, p, -1), -1, ""
}

// sharedWarning is the warning for a twin that shares primary p's failure domain at
// level broad, made once per failure domain.
func (s *Scheduler) sharedWarning(p int32, broad int) string {
	id := s.nodes[p].failureDomains[broad]
	if int(id) >= len(s.sharedWarnings) {
		s.sharedWarnings = append(s.sharedWarnings, make([]string, int(id)+1-len(s.sharedWarnings))...)
	}
	if s.sharedWarnings[id] == "" {
		key := s.opts.FailureDomains[broad]
		s.sharedWarnings[id] = fmt.Sprintf("twin shares %s %q with its primary: no other %s has room", key, s.nodes[p].labels[key], key)
	}
	return s.sharedWarnings[id]
}

// unplaceable counts, over every node, the first filter rejecting the guest (or its twin
// when p >= 0).
func (s *Scheduler) unplaceable(g *Guest, r *req, p int32, level int) *Unplaceable {
	u := &Unplaceable{Guest: g.Name, Nodes: len(s.nodes), Reasons: map[Reason]int{}, Twin: p >= 0}
	cpu, mem := int32(g.CPUs), g.MemoryBytes
	for i := range s.nodes {
		var why Reason
		if p >= 0 {
			why = s.twinVerdict(int32(i), r, cpu, mem, p, level)
		} else {
			why = s.verdict(int32(i), r, cpu, mem)
		}
		if why != "" {
			u.Reasons[why]++
		}
	}
	return u
}
