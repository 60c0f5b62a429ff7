package master

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/scheduler"
)

// Authority says whether this master may act: it is the raft leader and holds
// unexpired leases from a majority of all nodes (the role machine). A master that
// cannot act writes nothing, so two groups cut apart can never both act.
type Authority interface {
	Acting() bool
}

// Durability is what an Authority may also say: how many management nodes must
// hold a client write before it is acknowledged (roles.Runner). Without it, raft's
// commit is enough (a dev cluster of one replica).
type Durability interface {
	AckCopies() int
}

// WaitDurable waits until everything this master has applied is on as many
// replicas as a client write needs, while it still acts.
func (m *Master) WaitDurable(ctx context.Context) error {
	d, ok := m.opts.Authority.(Durability)
	if !ok {
		return nil
	}
	var acting func() bool
	if m.opts.Authority != nil {
		acting = m.opts.Authority.Acting
	}
	return m.st.WaitDurable(ctx, m.st.Index(), d.AckCopies(), acting)
}

// ErrNotActing: this master holds no majority lease now.
var ErrNotActing = errors.New("this master does not hold leases from a majority of nodes now: retry in a moment")

// acting: this master may write. A master whose replica has halted may not: its state
// stops at an entry it could not read, and what it would decide from it is stale.
func (m *Master) acting() bool {
	return m.IsLeader() && m.st.Halted() == nil && (m.opts.Authority == nil || m.opts.Authority.Acting())
}

func (m *Master) mustAct() error {
	if err := m.st.Halted(); err != nil {
		return err
	}
	if !m.acting() {
		return ErrNotActing
	}
	return nil
}

// Record keeps an event in the replicated state, where `vmctl events` reads it. Only
// the master writes; elsewhere the event is logged only.
func (m *Master) Record(kind, node, guest, detail string) {
	c := m.eventCommand(kind, node, guest, detail)
	if !m.IsLeader() {
		return
	}
	if _, err := m.st.Apply(c); err != nil {
		m.log.Warn("record event", "err", err)
	}
}

// eventCommand is the write that keeps an event, for a change that carries its events in
// its own write: nothing can then come between the change and the events that tell of
// it. It logs the event, as Record does.
func (m *Master) eventCommand(kind, node, guest, detail string) store.Command {
	m.log.Info("event", "kind", kind, "node", node, "guest", guest, "detail", detail)
	e := store.EventRecord{Time: time.Now().UTC(), Kind: kind, Node: node, Guest: guest, Detail: detail}
	return store.Command{Op: store.OpEvent, Event: &e}
}

// RecoverNode carries out what "node lost" means for its guests, as the role machine
// declared it (the node has fenced itself by now): restart guests are placed again and
// started on their new nodes, twins are promoted on their twin's node and get a new
// twin, and guests with policy none are marked lost. Guests that fit nowhere stay
// pending and are placed as soon as room appears.
func (m *Master) RecoverNode(node, why string) {
	if err := m.mustAct(); err != nil {
		m.log.Warn("recover node: not acting", "node", node)
		return
	}
	declared := time.Now()
	m.Record("node-lost", node, "", why)
	m.mu.Lock()
	nodes, guests, _ := m.st.Snapshot()
	var cmds []store.Command
	for i := range nodes {
		if nodes[i].Name == node && nodes[i].LostAt.IsZero() {
			nodes[i].LostAt = declared.UTC()
			n := nodes[i]
			cmds = append(cmds, store.Command{Op: store.OpPutNode, Node: &n})
			// Counted, so that the node resumes none of the guests it paused when its
			// lease lapsed (they are recovered elsewhere in this very write). A group
			// with a replica from before the count goes without it: its agents are
			// told no count (Assignment.Losses) and destroy what they paused.
			if err := m.st.MayWrite(store.OpCountLoss); err == nil {
				cmds = append(cmds, store.Command{Op: store.OpCountLoss, Name: node})
			} else {
				m.log.Warn("node lost: loss not counted", "node", node, "err", err)
			}
		}
	}
	// A node awaited after a restore is awaited no more: its guests are recovered
	// here like any lost node's.
	var adoptionDone bool
	if a := m.adopting(); a != nil && slices.Contains(a.Awaiting, node) {
		cmds = append(cmds, store.Command{Op: store.OpSetAdoption, Adoption: awaitingLess(a, node, declared)})
		adoptionDone = len(a.Awaiting) == 1
	}
	// A lost node's guests come before planned work: room a drain holds for a move it
	// has not begun is free to them (the drain plans that move again when it comes to
	// it); a live migration in flight holds its room, its guest is on the way there.
	s := m.schedulerViewHolding(nodes, guests, nil)
	plan := s.EvacuateLost(node)
	byName := map[string]store.GuestRecord{}
	for _, g := range guests {
		byName[g.Name] = g
	}
	type outcome struct{ guest, detail string }
	var events []outcome
	for _, mv := range plan.Moves {
		g, ok := byName[mv.Guest]
		if !ok {
			continue
		}
		switch mv.Action {
		case scheduler.ActionRestart:
			g.Node, g.MigrateTo = mv.To, ""
			events = append(events, outcome{g.Name, fmt.Sprintf("restarting on %s", mv.To)})
		case scheduler.ActionPromote:
			if m.mirrored(g) && !g.TwinProtected {
				// The standby's copy was never recorded in step: booting from it could
				// lose acknowledged writes. The guest waits for its node and its disk
				// (started again there once the node is taken back in); its standby
				// stays and is filled again then.
				events = append(events, outcome{g.Name, fmt.Sprintf("twin not promoted: its standby's copy on %s was not in step; it waits for %s and its disk", g.TwinNode, node)})
				delete(byName, g.Name)
				continue
			}
			g.Node, g.TwinNode, g.MigrateTo = mv.To, mv.NewTwin, ""
			events = append(events, outcome{g.Name, fmt.Sprintf("twin promoted on %s, new twin on %s", mv.To, orNone(mv.NewTwin))})
		case scheduler.ActionNewTwin:
			g.TwinNode = mv.NewTwin
			events = append(events, outcome{g.Name, fmt.Sprintf("twin lost with %s, new twin on %s", node, orNone(mv.NewTwin))})
		default:
			continue
		}
		cmds = append(cmds, store.Command{Op: store.OpPutGuest, Guest: &g})
		if g.Desired == store.DesiredRunning {
			m.recovering(g.Name, declared)
		}
		delete(byName, g.Name)
	}
	for _, u := range plan.Unplaced {
		g, ok := byName[u.Guest]
		if !ok || g.Node != node {
			continue
		}
		g.Node, g.TwinNode, g.MigrateTo, g.PendingReason = "", "", "", u.Error()
		cmds = append(cmds, store.Command{Op: store.OpPutGuest, Guest: &g})
		events = append(events, outcome{g.Name, "nowhere to restart: " + u.Error()})
		m.recovering(g.Name, declared)
		m.reg.RecoveryOutcome("pending")
	}
	for _, name := range plan.Lost {
		g, ok := byName[name]
		if !ok {
			continue
		}
		g.Lost = true
		cmds = append(cmds, store.Command{Op: store.OpPutGuest, Guest: &g})
		events = append(events, outcome{g.Name, "lost with its node (failover none): not restarted"})
		m.reg.RecoveryOutcome("lost")
	}
	// The recovery events go in the same write as the moves: a restarted guest's node
	// may report it running (the event recovered) before a later write could tell of
	// its restart.
	sort.Slice(events, func(i, j int) bool { return events[i].guest < events[j].guest })
	for _, e := range events {
		cmds = append(cmds, m.eventCommand("recovery", node, e.guest, e.detail))
	}
	var err error
	if len(cmds) > 0 {
		_, err = m.st.Apply(cmds...)
	}
	m.mu.Unlock()
	if err != nil {
		m.log.Error("recover node", "node", node, "err", err)
		return
	}
	// The lost node's agent will never report the migrations it was carrying out: their
	// waiters (a migrate request, a drain, a rebalance) learn it here.
	for _, g := range guests {
		if g.Node == node && g.MigrateTo != "" {
			m.endWait(g.Name, api.Migration{From: node, To: g.MigrateTo, FinishedAt: declared.UTC(),
				Error: fmt.Sprintf("node %s was lost during the migration: the guest is recovered by its failover policy (vmctl vm show %s)", node, g.Name)})
		}
	}
	if adoptionDone {
		m.recordAdoption(node, []adoptEvent{{done: true}})
	}
}

func orNone(s string) string {
	if s == "" {
		return "none (no room)"
	}
	return s
}

// Readmit clears a node's lost mark once the role machine has taken it back. Its
// guests stay where they were recovered; its old copies are evicted.
func (m *Master) Readmit(node string) {
	if !m.IsLeader() {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.st.Node(node)
	if !ok || n.LostAt.IsZero() {
		return
	}
	n.LostAt = time.Time{}
	if _, err := m.st.Apply(store.Command{Op: store.OpPutNode, Node: &n}); err != nil {
		m.log.Warn("node returned", "node", node, "err", err)
		return
	}
	go m.Record("node-returned", node, "", "back in the cluster: its old copies of recovered guests are removed")
}

// recovering notes that guest is being brought back after its node was lost at t;
// the report that shows it running ends the recovery and is measured.
func (m *Master) recovering(guest string, t time.Time) {
	m.recMu.Lock()
	m.recStart[guest] = t
	m.recMu.Unlock()
}

// recoveryDone is called when a node reports guest running.
func (m *Master) recoveryDone(node, guest string) {
	m.recMu.Lock()
	t, ok := m.recStart[guest]
	if ok {
		delete(m.recStart, guest)
	}
	m.recMu.Unlock()
	if !ok {
		return
	}
	d := time.Since(t)
	m.reg.RecoveryDone(d)
	go m.Record("recovered", node, guest, fmt.Sprintf("guest %s running on %s %.1f s after its node was declared lost", guest, node, d.Seconds()))
}

// SetAuthority gives the master its node's role machine: it acts only while that
// machine holds a majority lease.
func (m *Master) SetAuthority(a Authority) { m.opts.Authority = a }
