package master

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/scheduler"
)

// Drain empties a node for planned work: it stops taking guests, and every guest on it
// live-migrates to where the scheduler's evacuation plan puts it, one after another.
// The room of every planned move is held from the plan until that move ends, so creates
// meanwhile cannot take it; a move whose node can no longer take the guest (it went
// away, was drained, or shrank) is planned again. A guest already migrating away is
// waited for. A guest whose migration fails stays running where it was and is reported;
// the drain goes on with the others. Stopped guests are simply placed elsewhere.
// progress gets a line per step. With maintenance, the node is marked as in maintenance
// too.
func (m *Master) Drain(ctx context.Context, node string, maintenance bool, progress func(api.DrainProgress)) (api.DrainProgress, error) {
	if err := m.mustPlace(); err != nil {
		return api.DrainProgress{}, err
	}
	m.mu.Lock()
	n, ok := m.st.Node(node)
	if !ok {
		m.mu.Unlock()
		return api.DrainProgress{}, fmt.Errorf("node %q %w", node, ErrNotFound)
	}
	n.Draining, n.Unschedulable = true, true
	n.Maintenance = n.Maintenance || maintenance
	if _, err := m.st.Apply(store.Command{Op: store.OpPutNode, Node: &n}); err != nil {
		m.mu.Unlock()
		return api.DrainProgress{}, err
	}
	nodes, guests, _ := m.st.Snapshot()
	plan := m.schedulerView(nodes, guests).Evacuate(node)
	byName := map[string]store.GuestRecord{}
	for _, g := range guests {
		byName[g.Name] = g
	}
	m.holdMu.Lock()
	m.plans++
	id := m.plans
	m.holdMu.Unlock()
	var held []string
	for _, mv := range plan.Moves {
		if g, ok := byName[mv.Guest]; ok && g.Node == node && g.MigrateTo == "" && mv.Action == scheduler.ActionMigrate {
			m.setHold(g.Name, hold{from: node, to: mv.To, plan: id})
			held = append(held, g.Name)
		}
	}
	m.mu.Unlock()
	defer func() {
		// A drain cut short (its request ended, the master lost its role) holds nothing.
		m.mu.Lock()
		for _, name := range held {
			m.dropHold(name, id)
		}
		m.mu.Unlock()
		m.wake()
	}()
	kind := "drain"
	if maintenance {
		kind = "maintenance"
	}
	m.Record(kind, node, "", fmt.Sprintf("%s started: %d guests to move", kind, len(plan.Moves)+len(plan.Unplaced)))
	start := time.Now()
	sum := api.DrainProgress{Node: node, MoveOutcome: api.MoveOutcome{Done: true}}
	for _, mv := range plan.Moves {
		g, ok := byName[mv.Guest]
		if !ok || g.Node != node || mv.To == "" || mv.Action == scheduler.ActionNewTwin {
			continue
		}
		p := api.DrainProgress{Node: node, Guest: g.Name, To: mv.To}
		move := func(to string) error {
			switch {
			case m.onNodePool(g):
				// Its disks stay on this node: placed elsewhere, it would find none.
				return fmt.Errorf("guest %q has its disks on storage pool %s, a directory of node %s's own (kind dir): %w; it stays (delete it, or move its disks by hand)", g.Name, g.Pool, node, ErrConflict)
			case g.MigrateTo != "":
				return m.awaitMove(ctx, g.Name, to)
			case g.Desired != store.DesiredRunning:
				// Not running: nothing to migrate, the guest is placed on its new node.
				return m.reassign(g.Name, node, to)
			}
			res, err := m.Migrate(ctx, g.Name, to)
			p.TotalSeconds, p.DowntimeSeconds = res.TotalSeconds, res.DowntimeSeconds
			return err
		}
		err := move(p.To)
		var rp *RefusedPlacement
		if errors.As(err, &rp) && rp.Node == p.To {
			if to, why := m.replanMove(g.Name, node, id); to != "" {
				m.log.Info("drain: move planned again", "guest", g.Name, "from", p.To, "to", to, "because", rp.Reason)
				p.To = to
				err = move(to)
			} else {
				err = fmt.Errorf("%w; nowhere else to go now: %s", err, why)
			}
		}
		m.mu.Lock()
		m.dropHold(g.Name, id)
		m.mu.Unlock()
		p.Status, p.Error = drainStatus(err), errString(err)
		if p.Status == "moved" {
			sum.Moved++
		} else {
			sum.Failed++
			m.Record(kind, node, g.Name, "could not move, stays where it runs: "+p.Error)
		}
		progress(p)
		if ctx.Err() != nil {
			break
		}
	}
	for _, u := range plan.Unplaced {
		sum.Failed++
		p := api.DrainProgress{Node: node, Guest: u.Guest, MoveOutcome: api.MoveOutcome{Status: "failed", Error: "nowhere to go: " + u.Error()}}
		m.Record(kind, node, u.Guest, "could not move, stays where it runs: "+p.Error)
		progress(p)
	}
	sum.TotalSeconds = time.Since(start).Seconds()
	m.Record(kind, node, "", fmt.Sprintf("%s done in %.1f s: %d moved, %d failed", kind, sum.TotalSeconds, sum.Moved, sum.Failed))
	return sum, nil
}

// reassign places a guest that is not running on another node.
func (m *Master) reassign(guest, from, to string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	nodes, guests, _ := m.st.Snapshot()
	g, ok := m.st.Guest(guest)
	if !ok || g.Node != from || g.MigrateTo != "" {
		return fmt.Errorf("guest %q moved meanwhile", guest)
	}
	next := g
	next.Node = to
	refused, err := m.commit(nodes, guests, []change{{base: &g, next: next}})
	if err == nil && len(refused) > 0 {
		err = refused[0]
	}
	return err
}

// replanMove chooses a new node for a drain's move of guest off from, and holds its room
// there for the drain; "" and why when none can take it now.
func (m *Master) replanMove(guest, from string, plan uint64) (string, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.st.Guest(guest)
	if !ok || g.Node != from {
		return "", "the guest moved meanwhile"
	}
	nodes, guests, _ := m.st.Snapshot()
	// Explain weighs the guest as if it were not placed: the room held for its old move
	// does not count against it.
	e := m.schedulerView(nodes, guests).Explain(schedGuest(g))
	if e.Node == "" {
		return "", e.Summary()
	}
	m.setHold(guest, hold{from: from, to: e.Node, plan: plan})
	return e.Node, ""
}

// awaitMove waits for a migration started before the drain to end, and says whether
// the guest landed on to.
func (m *Master) awaitMove(ctx context.Context, guest, to string) error {
	for {
		idx := m.st.Index()
		g, ok := m.st.Guest(guest)
		switch {
		case !ok:
			return fmt.Errorf("guest %q was deleted while it migrated", guest)
		case g.MigrateTo == "" && g.Node == to:
			return nil
		case g.MigrateTo == "":
			var res api.Migration
			json.Unmarshal(g.LastMigration, &res)
			return fmt.Errorf("its migration to %s (started before the drain) failed: %s", to, res.Error)
		}
		if m.st.Wait(ctx, idx); ctx.Err() != nil {
			return fmt.Errorf("guest %q: still migrating to %s; watch `vmctl vm show %s`", guest, to, guest)
		}
	}
}

// Undrain lets a node take guests again and ends its maintenance.
func (m *Master) Undrain(node string) error {
	if err := m.mustAct(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.st.Node(node)
	if !ok {
		return fmt.Errorf("node %q %w", node, ErrNotFound)
	}
	n.Draining, n.Unschedulable, n.Maintenance = false, false, false
	if _, err := m.st.Apply(store.Command{Op: store.OpPutNode, Node: &n}); err != nil {
		return err
	}
	go m.Record("undrain", node, "", "takes guests again")
	m.wake()
	return nil
}

func drainStatus(err error) string {
	if err != nil {
		return "failed"
	}
	return "moved"
}

func errString(err error) string {
	if err != nil {
		return err.Error()
	}
	return ""
}
