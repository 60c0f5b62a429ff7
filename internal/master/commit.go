package master

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/internal/units"
	"github.com/dvmproject/dvm/scheduler"
)

// The plan applier. The master plans placements from a snapshot of the state (the
// scheduler's view costs O(nodes + guests) to build, so pending guests are planned
// outside m.mu, and creates are planned in batches, one view for each: batch.go); by
// the time a placement is written, other requests may have taken the room, and a node
// may have gone or been drained. Every write that places a guest therefore goes through
// commit, under m.mu, where such writes are applied one at a time: as Nomad's plan
// applier does, it checks each placement again against the state as it is then and
// leaves out the ones that no longer fit, with the reason. The caller plans those
// again or reports them. Room held by moves in flight (live migrations and
// the planned moves of drains and rebalances) counts as taken, in the scheduler's view
// and here alike.

// change is one guest record to write, planned from base (nil for a new guest).
type change struct {
	base *store.GuestRecord
	next store.GuestRecord
}

// RefusedPlacement is a placement that the state no longer allowed when it was
// committed, or that the destination cannot take; nothing was written for it. It is a
// conflict (errors.Is(err, ErrConflict)): the caller may plan again.
type RefusedPlacement struct {
	Guest  string
	Node   string // "" when the guest itself changed meanwhile
	Reason string
}

func (e *RefusedPlacement) Error() string {
	if e.Node == "" {
		return fmt.Sprintf("guest %q: %s", e.Guest, e.Reason)
	}
	return fmt.Sprintf("node %s cannot take guest %q: %s", e.Node, e.Guest, e.Reason)
}

// Is makes a refused placement an ErrConflict, answered with 409.
func (e *RefusedPlacement) Is(target error) bool { return target == ErrConflict }

// hold is the room that plan number plan (a drain or a rebalance) has planned for a
// guest on node to, while the guest is on from.
type hold struct {
	from, to string
	plan     uint64
}

// setHold records the room a plan holds for guest. Called with m.mu held, so a commit
// sees holds and state change together.
func (m *Master) setHold(guest string, h hold) {
	m.holdMu.Lock()
	defer m.holdMu.Unlock()
	m.holds[guest] = h
	m.holdVer++
}

// dropHold gives back the room plan holds for guest, if it still holds it. Called with
// m.mu held.
func (m *Master) dropHold(guest string, plan uint64) {
	m.holdMu.Lock()
	defer m.holdMu.Unlock()
	if h, ok := m.holds[guest]; ok && h.plan == plan {
		delete(m.holds, guest)
		m.holdVer++
	}
}

// holdVersion changes whenever the holds do.
func (m *Master) holdVersion() uint64 {
	m.holdMu.Lock()
	defer m.holdMu.Unlock()
	return m.holdVer
}

// heldMoves copies the plans' holds.
func (m *Master) heldMoves() map[string]hold {
	m.holdMu.Lock()
	defer m.holdMu.Unlock()
	out := make(map[string]hold, len(m.holds))
	for g, h := range m.holds {
		out[g] = h
	}
	return out
}

// moveTo is where g holds room for a move in flight: the destination of its live
// migration, or where a drain or rebalance has planned to move it; "" when it is not moving. A lost
// guest's migration can never end (its node is gone), so it holds nothing.
func moveTo(g *store.GuestRecord, holds map[string]hold) string {
	if g.Node == "" || g.Lost {
		return ""
	}
	if g.MigrateTo != "" {
		return g.MigrateTo
	}
	if h, ok := holds[g.Name]; ok && h.from == g.Node {
		return h.to
	}
	return ""
}

// holdings lists the nodes on which g holds room: its node, its twin's and its move's.
func holdings(g *store.GuestRecord, holds map[string]hold) []string {
	var out []string
	for _, n := range []string{g.Node, g.TwinNode, moveTo(g, holds)} {
		if n != "" {
			out = append(out, n)
		}
	}
	return out
}

// books is the room in use on every node as the state has it, changed as commit admits
// placements. It costs one pass over the guests, without copying them.
type books struct {
	m       *Master
	now     time.Time
	holds   map[string]hold
	nodes   map[string]*store.NodeRecord
	guests  []store.GuestRecord           // the state's, sorted by name
	written map[string]*store.GuestRecord // admitted by this commit
	used    map[string]*room
}

type room struct{ cpu, mem int64 }

func (m *Master) books(nodes []store.NodeRecord, guests []store.GuestRecord) *books {
	b := &books{m: m, now: time.Now(), holds: m.heldMoves(), nodes: make(map[string]*store.NodeRecord, len(nodes)),
		guests: guests, written: map[string]*store.GuestRecord{}, used: make(map[string]*room, len(nodes))}
	for i := range nodes {
		b.nodes[nodes[i].Name] = &nodes[i]
		b.used[nodes[i].Name] = &room{}
	}
	for i := range guests {
		b.use(&guests[i], 1)
	}
	return b
}

// guest is the current record of a guest.
func (b *books) guest(name string) (*store.GuestRecord, bool) {
	if g, ok := b.written[name]; ok {
		return g, true
	}
	i, ok := slices.BinarySearchFunc(b.guests, name, func(g store.GuestRecord, name string) int { return strings.Compare(g.Name, name) })
	if !ok {
		return nil, false
	}
	return &b.guests[i], true
}

// use adds (sign 1) or takes away (-1) g's room on every node it holds room on.
func (b *books) use(g *store.GuestRecord, sign int64) {
	if g.Node == "" {
		return
	}
	nodes := [3]string{g.Node, g.TwinNode, moveTo(g, b.holds)}
	for i, n := range nodes {
		// A node named twice (a twin on its primary's node, which the scheduler counts
		// once) holds the guest's room once, as in the scheduler's view.
		if n == "" || slices.Contains(nodes[:i], n) {
			continue
		}
		r := b.used[n]
		if r == nil {
			r = &room{} // a node the state does not know: refuse reports it
			b.used[n] = r
		}
		r.cpu += sign * int64(g.CPUs)
		r.mem += sign * g.MemoryBytes
	}
}

// admit checks one change against the books and takes its room; a refusal leaves the
// books as they were.
func (b *books) admit(c *change) *RefusedPlacement {
	g := &c.next
	cur, exists := b.guest(g.Name)
	switch {
	case c.base == nil && exists:
		return &RefusedPlacement{Guest: g.Name, Reason: "a guest of that name was created meanwhile"}
	case c.base != nil && !exists:
		return &RefusedPlacement{Guest: g.Name, Reason: "deleted meanwhile"}
	case c.base != nil && !reflect.DeepEqual(*cur, *c.base):
		return &RefusedPlacement{Guest: g.Name, Reason: "changed meanwhile (moved, stopped or deleted): plan it again"}
	}
	// Nodes the guest is on, or migrating to, need no check. Room a plan holds for it
	// is checked like a new placement (the node may have gone meanwhile); with the
	// guest's own room taken off the books, the room it held is there for it.
	on := map[string]bool{}
	if exists {
		for _, n := range holdings(cur, nil) {
			on[n] = true
		}
		b.use(cur, -1)
	}
	for _, n := range holdings(g, b.holds) {
		if on[n] {
			continue
		}
		if why := b.refuse(n, g); why != "" {
			if exists {
				b.use(cur, 1)
			}
			return &RefusedPlacement{Guest: g.Name, Node: n, Reason: why}
		}
	}
	b.use(g, 1)
	b.written[g.Name] = g
	return nil
}

// refuse says why node n cannot take room for g now, or "". The words are the
// scheduler's reasons, so a refusal reads like `vmctl vm why`.
func (b *books) refuse(n string, g *store.GuestRecord) string {
	node, ok := b.nodes[n]
	switch {
	case !ok:
		return "no such node"
	case !node.LostAt.IsZero():
		return string(scheduler.ReasonUnschedulable) + ": the node is lost"
	case node.Draining:
		return string(scheduler.ReasonDraining)
	case node.Unschedulable:
		return string(scheduler.ReasonUnschedulable)
	case !b.m.nodeReady(n, b.now):
		return fmt.Sprintf("%s: no status report for over %s", scheduler.ReasonUnschedulable, b.m.opts.NodeTimeout)
	}
	if free := int64(node.CPUs) - b.used[n].cpu; free < int64(g.CPUs) {
		return fmt.Sprintf("%s: %d of %d free, the guest needs %d", scheduler.ReasonNotEnoughCPU, max(free, 0), node.CPUs, g.CPUs)
	}
	if free := node.MemoryBytes - b.used[n].mem; free < g.MemoryBytes {
		return fmt.Sprintf("%s: %s of %s free, the guest needs %s", scheduler.ReasonNotEnoughMemory,
			units.FormatBytes(max(free, 0)), units.FormatBytes(node.MemoryBytes), units.FormatBytes(g.MemoryBytes))
	}
	return ""
}

// commit writes the changes that still fit the state (nodes and guests, read under m.mu)
// and the extra commands, unchecked, as one log entry. It returns the changes it left
// out, in order. Must be called with m.mu held.
func (m *Master) commit(nodes []store.NodeRecord, guests []store.GuestRecord, changes []change, extra ...store.Command) ([]*RefusedPlacement, error) {
	cmds, refused := m.books(nodes, guests).check(changes)
	cmds = append(cmds, extra...)
	if len(cmds) == 0 {
		return refused, nil
	}
	_, err := m.st.Apply(cmds...)
	return refused, err
}

// check admits the changes that fit, in order, each against the books as the ones
// before it left them, and returns the commands that write them and the changes it
// left out.
func (b *books) check(changes []change) ([]store.Command, []*RefusedPlacement) {
	var refused []*RefusedPlacement
	cmds := make([]store.Command, 0, len(changes))
	for i := range changes {
		if r := b.admit(&changes[i]); r != nil {
			b.m.log.Info("placement refused at commit", "guest", r.Guest, "node", r.Node, "reason", r.Reason)
			refused = append(refused, r)
			continue
		}
		cmds = append(cmds, store.Command{Op: store.OpPutGuest, Guest: &changes[i].next})
	}
	return cmds, refused
}
