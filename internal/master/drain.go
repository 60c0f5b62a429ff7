package master

import (
	"context"
	"fmt"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/scheduler"
)

// Drain empties a node for planned work: it stops taking guests, and every guest on it
// live-migrates to where the scheduler's evacuation plan puts it, one after another.
// A guest whose migration fails stays running where it was and is reported; the drain
// goes on with the others. Stopped guests are simply placed elsewhere. progress gets a
// line per step. With maintenance, the node is marked as in maintenance too.
func (m *Master) Drain(ctx context.Context, node string, maintenance bool, progress func(api.DrainProgress)) (api.DrainProgress, error) {
	if err := m.mustAct(); err != nil {
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
	m.mu.Unlock()
	kind := "drain"
	if maintenance {
		kind = "maintenance"
	}
	m.Record(kind, node, "", fmt.Sprintf("%s started: %d guests to move", kind, len(plan.Moves)+len(plan.Unplaced)))
	start := time.Now()
	sum := api.DrainProgress{Node: node, Done: true}
	for _, mv := range plan.Moves {
		g, ok := byName[mv.Guest]
		if !ok || g.Node != node || mv.To == "" || mv.Action == scheduler.ActionNewTwin {
			continue
		}
		p := api.DrainProgress{Node: node, Guest: g.Name, To: mv.To}
		if g.Desired != store.DesiredRunning {
			// Not running: nothing to migrate, the guest is placed on its new node.
			err := m.reassign(g.Name, node, mv.To)
			p.Status, p.Error = drainStatus(err), errString(err)
		} else {
			res, err := m.Migrate(ctx, g.Name, mv.To)
			p.Status, p.Error = drainStatus(err), errString(err)
			p.TotalSeconds, p.DowntimeSeconds = res.TotalSeconds, res.DowntimeSeconds
		}
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
		p := api.DrainProgress{Node: node, Guest: u.Guest, Status: "failed", Error: "nowhere to go: " + u.Error()}
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
	g, ok := m.st.Guest(guest)
	if !ok || g.Node != from {
		return fmt.Errorf("guest %q moved meanwhile", guest)
	}
	g.Node = to
	_, err := m.st.Apply(store.Command{Op: store.OpPutGuest, Guest: &g})
	return err
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
