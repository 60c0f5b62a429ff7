package master

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/internal/version"
)

// ReportStatus records a node's status report: it registers a new node, updates what
// changed in its record, and keeps what it observed for the guests' states. A guest
// marked deleted that its node no longer reports is removed.
func (m *Master) ReportStatus(name string, st api.NodeStatus) error {
	if fe := api.ValidateName("node", name); fe != nil {
		return fe
	}
	if st.CPUs <= 0 || st.MemoryBytes <= 0 {
		return &api.FieldError{Field: "cpus", Msg: "a node must offer at least one cpu and some memory"}
	}
	now := time.Now()
	obs := make(map[string]api.ObservedGuest, len(st.Guests))
	for _, g := range st.Guests {
		obs[g.Name] = g
	}
	m.obsMu.Lock()
	last, known := m.lastSeen[name]
	if !known || now.Sub(last) >= m.opts.NodeTimeout || !maps.Equal(m.observed[name], obs) {
		close(m.obsChanged)
		m.obsChanged = make(chan struct{})
	}
	m.lastSeen[name] = now
	m.observed[name] = obs
	for _, g := range obs {
		if g.Standby != "" {
			m.standbyAt[g.Name] = api.MirrorTarget{Node: name, Address: g.Standby}
		}
	}
	m.obsMu.Unlock()

	m.mu.Lock()
	defer m.mu.Unlock()
	var cmds []store.Command
	old, ok := m.st.Node(name)
	rec := old
	rec.Name, rec.Address, rec.LibvirtURI, rec.Accelerator = name, st.Address, st.LibvirtURI, st.Accelerator
	rec.HostCPUs, rec.HostMemory, rec.CPUs, rec.MemoryBytes = st.HostCPUs, st.HostMemoryBytes, st.CPUs, st.MemoryBytes
	rec.Labels, rec.Version, rec.Pools = st.Labels, st.Version, st.Pools
	if len(rec.Pools) > 0 && !maps.Equal(old.Pools, rec.Pools) && m.st.MayWriteCommand(store.Command{Op: store.OpPutNode, Node: &rec}) != nil {
		// A management node of an older dvmd would halt on the field: the pools are
		// recorded once every one knows them, and no guest is put on one until then.
		rec.Pools = nil
	}
	if !ok {
		rec.RegisteredAt = now.UTC()
		m.log.Info("node registered", "node", name, "cpus", st.CPUs, "memory_bytes", st.MemoryBytes)
	}
	if !ok || !sameNode(old, rec) {
		cmds = append(cmds, store.Command{Op: store.OpPutNode, Node: &rec})
	}
	// The guests of the node alone, but while adopting, which looks at every guest:
	// every node reports every few seconds, and after every change it carried out.
	a := m.adopting()
	_, guests, _ := m.st.SnapshotWhere(func(g *store.GuestRecord) bool { return a != nil || g.Node == name })
	var adopted []adoptEvent
	if a != nil && m.acting() {
		var acmds []store.Command
		acmds, adopted = m.adopt(a, name, obs, guests, now)
		cmds = append(cmds, acmds...)
	}
	var found []string
	type protectionEvent struct{ guest, kind, detail string }
	var protection []protectionEvent
	for _, g := range guests {
		if g.Node == name && g.Failover == api.FailoverTwin && g.Desired != store.DesiredDeleted {
			if rec, detail := protectionReport(g, obs[g.Name]); rec != nil {
				c := store.Command{Op: store.OpPutGuest, Guest: rec}
				if err := m.st.MayWriteCommand(c); err != nil {
					m.log.Warn("twin's protection not recorded", "guest", g.Name, "err", err)
				} else {
					cmds = append(cmds, c)
					kind := "twin-unprotected"
					if rec.TwinProtected {
						kind = "twin-protected"
					}
					protection = append(protection, protectionEvent{g.Name, kind, detail})
				}
			}
		}
		if g.Node == name && obs[g.Name].State == "running" {
			m.recoveryDone(name, g.Name)
		}
		if g.Node == name && g.Lost && rec.LostAt.IsZero() && runs(obs[g.Name]) && adopted == nil {
			// A guest of policy none lost with its node, which is back (taken in
			// again) and runs it still, as after a dvmd restart that outlasted the
			// lease: it is not lost.
			g.Lost = false
			cmds = append(cmds, store.Command{Op: store.OpPutGuest, Guest: &g})
			found = append(found, g.Name)
		}
		if g.Node == name && g.Desired == store.DesiredDeleted {
			if _, present := obs[g.Name]; !present {
				cmds = append(cmds, store.Command{Op: store.OpDeleteGuest, Name: g.Name})
				m.obsMu.Lock()
				delete(m.standbyAt, g.Name)
				m.obsMu.Unlock()
			}
		}
	}
	if len(cmds) > 0 {
		if _, err := m.st.Apply(cmds...); err != nil {
			return err
		}
	}
	for _, e := range protection {
		go m.Record(e.kind, name, e.guest, e.detail)
	}
	for _, g := range found {
		go m.Record("recovered", name, g, fmt.Sprintf("guest %s, lost with node %s, runs there still now that the node is back: no longer lost", g, name))
	}
	if len(adopted) > 0 {
		go m.recordAdoption(name, adopted)
	}
	if !known {
		m.wake() // a node (back) online may take pending guests
	}
	return nil
}

func sameNode(a, b store.NodeRecord) bool {
	return a.Address == b.Address && a.LibvirtURI == b.LibvirtURI && a.Accelerator == b.Accelerator &&
		a.HostCPUs == b.HostCPUs && a.HostMemory == b.HostMemory && a.CPUs == b.CPUs &&
		a.MemoryBytes == b.MemoryBytes && maps.Equal(a.Labels, b.Labels) && a.Version == b.Version &&
		maps.Equal(a.Pools, b.Pools)
}

// Nodes lists the nodes with their allocation.
func (m *Master) Nodes() []api.Node {
	nodes, guests, _ := m.st.Snapshot()
	now := time.Now()
	// Allocation is the room placement counts as taken: the guests on the node, the
	// twins it holds room for, and moves in flight or planned toward it.
	held := m.books(nodes, guests).used
	out := make([]api.Node, 0, len(nodes))
	for _, n := range nodes {
		v := api.Node{
			Name: n.Name, Address: n.Address, LibvirtURI: n.LibvirtURI, Accelerator: n.Accelerator,
			HostCPUs: n.HostCPUs, HostMemoryBytes: n.HostMemory, CPUs: n.CPUs, MemoryBytes: n.MemoryBytes,
			Labels: n.Labels, Pools: n.Pools, Schedulable: !n.Unschedulable && !n.Draining, State: api.NodeUnreachable,
			Draining: n.Draining, Maintenance: n.Maintenance, Version: n.Version,
		}
		if m.nodeReady(n.Name, now) {
			v.State = api.NodeReady
		}
		if !n.LostAt.IsZero() {
			v.State = api.NodeLost
		}
		m.obsMu.RLock()
		v.LastSeen = m.lastSeen[n.Name].UTC()
		m.obsMu.RUnlock()
		if r := held[n.Name]; r != nil {
			v.AllocatedCPUs, v.AllocatedMemoryBytes = int(r.cpu), r.mem
		}
		for _, g := range guests {
			if g.Node == n.Name {
				v.Guests++
			}
		}
		out = append(out, v)
	}
	return out
}

// RemoveNode takes a host that is gone for good out of the cluster: its record, its
// place in the role table (so that it no longer counts toward majorities, nor among
// the management nodes a re-formation waits for) and its raft server. Only a node the
// cluster holds lost, and that holds no guest any more, can be removed: a node that is
// up is drained instead, and a guest of policy none that was lost with it is deleted
// (or started elsewhere) first.
func (m *Master) RemoveNode(name string) error {
	if err := m.mustAct(); err != nil {
		return err
	}
	n, ok := m.st.Node(name)
	if !ok {
		return fmt.Errorf("node %q %w", name, ErrNotFound)
	}
	if n.LostAt.IsZero() {
		return fmt.Errorf("node %s is not lost: drain a node that is up (vmctl node drain), and remove it only once it is gone: %w", name, ErrConflict)
	}
	_, guests, _ := m.st.Snapshot()
	var held []string
	for _, g := range guests {
		if g.Node == name || g.TwinNode == name || g.MigrateTo == name {
			held = append(held, g.Name)
		}
	}
	if len(held) > 0 {
		return fmt.Errorf("node %s still holds guests %s: delete them or start them on another node first: %w", name, strings.Join(held, ", "), ErrConflict)
	}
	if m.roles == nil {
		return fmt.Errorf("this cluster has no role machine (a dev cluster): %w", ErrConflict)
	}
	if err := m.roles.Remove(name); err != nil {
		return fmt.Errorf("remove node %s: %v: %w", name, err, ErrConflict)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// The event (node-removed) is the role machine's, which took it out first.
	_, err := m.st.Apply(store.Command{Op: store.OpDeleteNode, Name: name})
	return err
}

// Assignment returns what node must hold. Given the index of the node's last answer
// and a wait, it answers once the state has passed that index and the node's
// assignment differs from what it was when the poll came (or what the node observes
// changed), or when wait is over: a write that does not concern the node (a create
// placed elsewhere, an event) does not wake every node's poll, its reconcile and its
// report.
func (m *Master) Assignment(ctx context.Context, node string, index uint64, wait time.Duration) api.Assignment {
	if wait <= 0 || m.st.Index() > index {
		return m.assignmentNow(node)
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	held := m.assignmentNow(node)
	for {
		m.obsMu.RLock()
		reported := m.obsChanged
		m.obsMu.RUnlock()
		octx, ocancel := context.WithCancel(wctx)
		go func() {
			select {
			case <-reported:
				ocancel()
			case <-octx.Done():
			}
		}()
		index = m.st.Wait(octx, index)
		ocancel()
		a := m.assignmentNow(node)
		if wctx.Err() != nil || !sameAssignment(held, a) {
			return a
		}
	}
}

// sameAssignment says whether a and b ask the same of their node (their indexes
// aside).
func sameAssignment(a, b api.Assignment) bool {
	a.Index, b.Index = 0, 0
	return reflect.DeepEqual(a, b)
}

// assignmentNow is what node must hold now.
func (m *Master) assignmentNow(node string) api.Assignment {
	observed := map[string]bool{}
	m.obsMu.RLock()
	for g := range m.observed[node] {
		observed[g] = true
	}
	m.obsMu.RUnlock()
	// Only the guests that concern the node, and those with NICs (which nodes carry a
	// network): every poll reads this, and most guests are elsewhere.
	nodes, guests, idx := m.st.SnapshotWhere(func(g *store.GuestRecord) bool {
		return g.Node == node || g.MigrateTo == node || g.TwinNode == node || observed[g.Name] || len(g.NICs) > 0
	})
	byName := map[string]store.NodeRecord{}
	for _, n := range nodes {
		byName[n.Name] = n
	}
	a := api.Assignment{Index: idx, Guests: []api.AssignedGuest{}, Master: m.st.ID(), Generation: m.st.Generation(),
		NodeLost: !byName[node].LostAt.IsZero(), Version: version.Version}
	if version.AtLeast(byName[node].Version, api.LossesSince) {
		a.Losses, a.LossesCounted = byName[node].Losses, true
	}
	if m.adopting() != nil {
		m.adoptingAssignment(&a, node, guests)
		m.addNetworks(&a, node, nodes, guests)
		return a
	}
	for _, g := range guests {
		ag := api.AssignedGuest{Name: g.Name, UUID: g.UUID, OS: g.OS, CPUs: g.CPUs, MemoryBytes: g.MemoryBytes,
			DiskBytes: g.DiskBytes, Image: g.Image, Failover: g.Failover, Desired: g.Desired,
			ExtraDiskBytes: g.ExtraDiskBytes, KeepDisks: g.KeepDisks, ISO: g.ISO,
			VNCPassword: g.VNCPassword, CloudInit: cloudInit(g), Pool: g.Pool}
		mirrored := mirroredIn(&g, byName) && version.AtLeast(byName[node].Version, api.MirrorSince)
		switch {
		case g.Node == node:
			if mirrored {
				ag.Mirrored, ag.Mirror = true, m.mirrorTarget(&g)
			}
			if g.MigrateTo != "" {
				dest := byName[g.MigrateTo]
				ag.MigrateTo, ag.MigrateLibvirtURI, ag.MigrateAddress = g.MigrateTo, dest.LibvirtURI, hostOf(dest.Address)
			}
			a.Guests = append(a.Guests, ag)
		case g.MigrateTo == node:
			ag.Incoming = true
			a.Guests = append(a.Guests, ag)
		case g.TwinNode == node && g.Desired != store.DesiredDeleted && !g.Lost:
			ag.Twin, ag.Mirrored = true, mirrored
			a.Guests = append(a.Guests, ag)
		case observed[g.Name]:
			// This node still holds a guest the cluster moved away while the node was
			// lost: remove its copy (never the disk, which the guest's node uses).
			ag.Evict = true
			a.Guests = append(a.Guests, ag)
		}
	}
	m.addNetworks(&a, node, nodes, guests)
	return a
}

// ErrMasterChanged: this node stopped being the master while it waited for the end of
// work it had started (a live migration), which goes on without it.
var ErrMasterChanged = errors.New("this node stopped being the master meanwhile")

// Migrate live-migrates a running guest to another node and waits for the outcome. The
// guest's node changes in the state only when its node reports libvirt's success; until
// the migration ends, either way, the guest holds its room on both nodes. A destination
// that cannot take the guest is refused with a *RefusedPlacement that says why.
func (m *Master) Migrate(ctx context.Context, name, to string) (api.Migration, error) {
	if err := m.mustPlace(); err != nil {
		return api.Migration{}, err
	}
	m.mu.Lock()
	g, ok := m.st.Guest(name)
	switch {
	case !ok:
		m.mu.Unlock()
		return api.Migration{}, fmt.Errorf("guest %q %w", name, ErrNotFound)
	case g.Node == "":
		m.mu.Unlock()
		return api.Migration{}, fmt.Errorf("guest %q is pending on no node: %w", name, ErrConflict)
	case g.Node == to:
		m.mu.Unlock()
		return api.Migration{}, &api.FieldError{Field: "node", Msg: fmt.Sprintf("guest %q already runs on %s: name another node", name, to)}
	case g.MigrateTo != "":
		m.mu.Unlock()
		return api.Migration{}, fmt.Errorf("guest %q is already migrating to %s: %w", name, g.MigrateTo, ErrConflict)
	case g.Desired != store.DesiredRunning:
		m.mu.Unlock()
		return api.Migration{}, fmt.Errorf("guest %q is not running (desired %s): %w; live migration moves running guests", name, g.Desired, ErrConflict)
	case m.onNodePool(g):
		m.mu.Unlock()
		return api.Migration{}, fmt.Errorf("guest %q has its disks on storage pool %s, a directory of node %s's own (kind dir): %w; live migration moves guests on shared storage only", name, g.Pool, g.Node, ErrConflict)
	}
	if _, ok := m.st.Node(to); !ok {
		m.mu.Unlock()
		return api.Migration{}, fmt.Errorf("node %q %w", to, ErrNotFound)
	}
	// The destination must fit the guest as the scheduler sees it, and be ready.
	nodes, guests, _ := m.st.Snapshot()
	// Explain weighs the guest as if it were not placed, so its own allocation on the
	// source (and room a drain holds for it) does not count against it.
	for _, v := range m.schedulerView(nodes, guests).Explain(schedGuest(g)).Verdicts {
		if v.Node == to && v.Reason != "" {
			m.mu.Unlock()
			return api.Migration{}, &RefusedPlacement{Guest: name, Node: to, Reason: string(v.Reason)}
		}
	}
	done := make(chan api.Migration, 1)
	m.migMu.Lock()
	m.pending[name] = done
	m.migMu.Unlock()
	next := g
	next.MigrateTo = to
	refused, err := m.commit(nodes, guests, []change{{base: &g, next: next}})
	m.mu.Unlock()
	if err == nil && len(refused) > 0 {
		err = refused[0]
	}
	if err != nil {
		m.migMu.Lock()
		delete(m.pending, name)
		m.migMu.Unlock()
		return api.Migration{}, err
	}
	m.log.Info("migration started", "guest", name, "from", g.Node, "to", to)
	// The source's agent reports the end to whichever node is master then: a master
	// that is no longer one would wait for ever (and a rebalance with it, holding its
	// turn), so it looks every second whether it still leads.
	lead := time.NewTicker(time.Second)
	defer lead.Stop()
	for {
		select {
		case res := <-done:
			if !res.OK {
				return res, fmt.Errorf("migrate guest %q from %s to %s: %s", name, res.From, res.To, res.Error)
			}
			return res, nil
		case <-ctx.Done():
			return api.Migration{}, fmt.Errorf("guest %q: still migrating to %s; watch `vmctl vm show %s`", name, to, name)
		case <-lead.C:
			if m.IsLeader() {
				continue
			}
			m.migMu.Lock()
			if m.pending[name] == done {
				delete(m.pending, name)
			}
			m.migMu.Unlock()
			return api.Migration{}, fmt.Errorf("guest %q, migrating to %s: %w; the migration goes on and the new master records its end: watch `vmctl vm show %s`",
				name, to, ErrMasterChanged, name)
		}
	}
}

// MigrationDone records the outcome a source node reports.
func (m *Master) MigrationDone(node, name string, res api.Migration) error {
	_, err := m.updateGuest(name, func(g *store.GuestRecord) (store.Op, error) {
		if g.Node != node || g.MigrateTo == "" {
			return "", fmt.Errorf("guest %q is not migrating away from %s: %w", name, node, ErrConflict)
		}
		res.From, res.To, res.FinishedAt = node, g.MigrateTo, time.Now().UTC()
		if res.OK {
			g.Node = g.MigrateTo
		}
		g.MigrateTo = ""
		g.LastMigration, _ = json.Marshal(res)
		return store.OpPutGuest, nil
	})
	if err != nil {
		return err
	}
	m.wake() // the room the move held on the node it did not end on is free again
	m.log.Info("migration finished", "guest", name, "from", res.From, "to", res.To, "ok", res.OK, "error", res.Error,
		"total_seconds", res.TotalSeconds, "downtime_seconds", res.DowntimeSeconds)
	m.endWait(name, res)
	return nil
}

// endWait hands the end of guest's migration to whoever waits for it in Migrate.
func (m *Master) endWait(guest string, res api.Migration) {
	m.migMu.Lock()
	defer m.migMu.Unlock()
	if ch, ok := m.pending[guest]; ok {
		ch <- res
		delete(m.pending, guest)
	}
}

// hostOf returns the host of a host:port address.
func hostOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[:i]
		}
	}
	return addr
}
