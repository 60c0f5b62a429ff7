// Package master is the cluster's management role: it keeps the desired state in the
// store, places guests with the scheduler, hands every node its assignment and joins the
// nodes' reports into what operators see.
package master

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/scheduler"
)

// Options configure a master.
type Options struct {
	// NodeTimeout is how long a node may go without a status report before it is shown
	// as unreachable and no longer gets new guests.
	NodeTimeout time.Duration
	Scheduler   scheduler.Options
	Log         *slog.Logger
	// Authority, when set, says whether this master may act (the role machine's
	// majority lease). Without it (a dev cluster) the raft leader acts.
	Authority Authority
	// Metrics receives recovery outcomes and durations; nil records nothing.
	Metrics Recorder
	// Balance is the automatic balancer's policy (BalanceLoop); the zero value is off.
	Balance scheduler.Balance
	// ImagesDir is the shared images directory the master writes imported images to
	// (images.go); "" for none, and then images cannot be imported.
	ImagesDir string
}

// Recorder is where the master reports what operators measure.
type Recorder interface {
	RecoveryOutcome(outcome string)
	RecoveryDone(d time.Duration)
}

type noRecorder struct{}

func (noRecorder) RecoveryOutcome(string)     {}
func (noRecorder) RecoveryDone(time.Duration) {}

// Errors a caller must tell apart.
var (
	ErrNotFound   = errors.New("not found")
	ErrConflict   = errors.New("conflict")
	ErrBadRequest = errors.New("bad request")
)

// Master is the management role of a cluster.
type Master struct {
	st   *store.Store
	opts Options
	log  *slog.Logger

	// problemsSaid is the last set of the scheduler's complaints about the state
	// logged, so a lasting one is said once, not on every placement.
	problemsMu   sync.Mutex
	problemsSaid string

	imports imports // image imports in progress (images.go)

	// mu serialises writes that depend on the state they read: placements are checked
	// again under it where they are committed (commit.go), so two requests cannot both
	// take the same free capacity.
	mu sync.Mutex

	// holds is the room drains and rebalances have planned for their moves not yet made
	// (guest -> hold), counted as taken until each move ends; changed only with mu held.
	holdMu  sync.Mutex
	holds   map[string]hold
	holdVer uint64 // changes whenever holds does
	plans   uint64 // drains and rebalances started, numbering their holds

	// creates are the creates queued for the next batch (batch.go); applier is held by
	// the one create that writes a batch.
	createMu sync.Mutex
	creates  []*createReq
	applier  chan struct{}
	// cview is the creates' view of the state, kept with their batches; changed only
	// with mu held.
	cview *createView

	rebalancing atomic.Bool // a rebalance runs (one at a time, the balancer's included)

	obsMu    sync.RWMutex
	lastSeen map[string]time.Time // node -> last status report
	// standbyAt is where each mirrored twin's standby was last reported to serve its
	// copy (guest -> node and address): a report that lacks it (a dvmd that just
	// restarted, a report lost) does not take the mirror's target away.
	standbyAt map[string]api.MirrorTarget
	observed  map[string]map[string]api.ObservedGuest // node -> guest -> state
	// obsChanged is closed, and replaced, when a report changes what a node observes
	// or comes from a node that was not reporting: it wakes WatchGuest.
	obsChanged chan struct{}

	migMu   sync.Mutex
	pending map[string]chan api.Migration // guest -> waiter of a migration in flight

	kick chan struct{} // wakes the placement loop

	reg      Recorder
	roles    RoleSource
	issuer   Issuer     // signs joining hosts' certificates; nil without the CA key
	tokMu    sync.Mutex // serialises token changes (read, check, write)
	peerTLS  func(node string) *tls.Config
	nodeTLS  func(node string) *tls.Config // opens consoles on nodes (console.go)
	fwdMu    sync.Mutex
	fwd      map[string]*http.Transport // master's node name -> transport that forwards to it
	recMu    sync.Mutex
	recStart map[string]time.Time // guest -> when its node was declared lost
	// adoptSaid keeps an adoption's once-only events from repeating at every report
	// (adopt.go); losing it only repeats an event.
	adoptMu   sync.Mutex
	adoptSaid map[string]bool
}

// New makes a master over a store.
func New(st *store.Store, opts Options) (*Master, error) {
	if err := opts.Scheduler.Validate(); err != nil {
		return nil, err
	}
	if err := opts.Balance.Validate(); err != nil {
		return nil, err
	}
	if opts.NodeTimeout <= 0 {
		opts.NodeTimeout = 5 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = noRecorder{}
	}
	return &Master{
		st: st, opts: opts, log: opts.Log,
		lastSeen: map[string]time.Time{}, standbyAt: map[string]api.MirrorTarget{},
		observed: map[string]map[string]api.ObservedGuest{},
		pending:  map[string]chan api.Migration{},
		holds:    map[string]hold{},
		kick:     make(chan struct{}, 1),
		applier:  make(chan struct{}, 1),
		reg:      opts.Metrics,
		recStart: map[string]time.Time{},

		obsChanged: make(chan struct{}),
		adoptSaid:  map[string]bool{},
	}, nil
}

// Store is the master's state store.
func (m *Master) Store() *store.Store { return m.st }

// Run places pending guests whenever the cluster changes, and runs the automatic
// balancer when its policy is on, until ctx ends.
func (m *Master) Run(ctx context.Context) {
	go m.BalanceLoop(ctx)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.kick:
		case <-tick.C:
		}
		m.checkAdoption()
		m.placePending()
	}
}

func (m *Master) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// nodeReady says whether a node reported recently.
func (m *Master) nodeReady(name string, now time.Time) bool {
	m.obsMu.RLock()
	defer m.obsMu.RUnlock()
	t, ok := m.lastSeen[name]
	return ok && now.Sub(t) < m.opts.NodeTimeout
}

// schedulerView builds the scheduler's snapshot from the state: every placed guest that
// is not deleted holds its CPU and memory on its node, stopped or not, so starting a
// stopped guest never fails for want of room; a guest moving (a live migration, or a
// drain's planned move) holds it on its destination too, until the move ends.
func (m *Master) schedulerView(nodes []store.NodeRecord, guests []store.GuestRecord) *scheduler.Scheduler {
	return m.schedulerViewHolding(nodes, guests, m.heldMoves())
}

// schedulerViewHolding is schedulerView with the plans' holds given: nil counts live
// migrations in flight only.
func (m *Master) schedulerViewHolding(nodes []store.NodeRecord, guests []store.GuestRecord, holds map[string]hold) *scheduler.Scheduler {
	return m.schedulerViewWith(nodes, guests, holds, nil)
}

// schedulerViewWith is schedulerViewHolding with the guests for which stay says so
// marked to stay where they are in rebalance plans (nil: none).
func (m *Master) schedulerViewWith(nodes []store.NodeRecord, guests []store.GuestRecord, holds map[string]hold, stay func(*store.GuestRecord) bool) *scheduler.Scheduler {
	now := time.Now()
	sn := make([]scheduler.Node, 0, len(nodes))
	for _, n := range nodes {
		sn = append(sn, scheduler.Node{
			Name: n.Name, CPUs: n.CPUs, MemoryBytes: n.MemoryBytes,
			Schedulable: !n.Unschedulable && n.LostAt.IsZero() && m.nodeReady(n.Name, now),
			Draining:    n.Draining, Accelerator: n.Accelerator, Labels: schedLabels(n),
		})
	}
	var existing []scheduler.Assignment
	for i := range guests {
		g := &guests[i]
		if g.Node == "" {
			continue
		}
		existing = append(existing, scheduler.Assignment{Guest: schedGuest(*g), Node: g.Node, TwinNode: g.TwinNode, MoveTo: moveTo(g, holds),
			Stay: stay != nil && stay(g)})
	}
	s := scheduler.New(sn, existing, m.opts.Scheduler)
	if p := strings.Join(s.Problems(), "; "); p != "" {
		m.problemsMu.Lock()
		said := p == m.problemsSaid
		m.problemsSaid = p
		m.problemsMu.Unlock()
		if !said && m.log != nil {
			m.log.Warn("the state holds what the scheduler cannot use as it is", "problems", p)
		}
	}
	return s
}

func schedGuest(g store.GuestRecord) scheduler.Guest {
	return scheduler.Guest{Name: g.Name, OS: g.OS, CPUs: g.CPUs, MemoryBytes: g.MemoryBytes, Failover: g.Failover, Constraints: schedConstraints(g)}
}

// CreateGuest validates, records and places a new guest. A guest that fits nowhere is
// kept as pending with the reason and placed as soon as room appears. It is placed and
// written with the creates made at the same time, in one batch (batch.go), and
// answered once that batch's log entry is committed.
func (m *Master) CreateGuest(req api.CreateGuest) (api.Guest, error) {
	return m.createGuest(req, nil)
}

// createGuest is CreateGuest with the event that records the write, written in the
// same log entry as the guest (nil: none); pending says whether the guest is written
// pending a node.
func (m *Master) createGuest(req api.CreateGuest, event func(pending bool) store.EventRecord) (api.Guest, error) {
	if fe := req.Normalize(); fe != nil {
		return api.Guest{}, fe
	}
	if err := m.mustPlace(); err != nil {
		return api.Guest{}, err
	}
	if _, ok := m.st.Guest(req.Name); ok {
		return api.Guest{}, guestExists(req.Name)
	}
	recorded, err := m.guestImage(&req)
	if err != nil {
		return api.Guest{}, err
	}
	if err := m.extraDisks(req); err != nil {
		return api.Guest{}, err
	}
	if err := m.guestISO(req); err != nil {
		return api.Guest{}, err
	}
	if _, err := m.guestPool(req); err != nil {
		return api.Guest{}, err
	}
	vncPassword := ""
	if req.VNC {
		if err := m.nodesRun("a guest with a VNC display", disksSince); err != nil {
			return api.Guest{}, err
		}
		vncPassword = newVNCPassword()
	}
	var seed *store.CloudInitRecord
	if ci := req.CloudInit; ci != nil {
		if err := m.nodesRun("a guest with a cloud-init seed", disksSince); err != nil {
			return api.Guest{}, err
		}
		seed = &store.CloudInitRecord{SSHKeys: ci.SSHKeys, UserData: ci.UserData}
	}
	desired := store.DesiredRunning
	if req.Start != nil && !*req.Start {
		desired = store.DesiredStopped
	}
	g := store.GuestRecord{
		Name: req.Name, UUID: newUUID(), OS: req.OS, CPUs: req.CPUs, MemoryBytes: req.MemoryBytes,
		DiskBytes: req.DiskBytes, Image: req.Image, Failover: req.Failover, Constraints: req.Constraints,
		Desired: desired, CreatedAt: time.Now().UTC(), ExtraDiskBytes: req.ExtraDiskBytes, ISO: req.ISO,
		VNCPassword: vncPassword, CloudInit: seed, Pool: req.Pool,
	}
	res := m.createBatched(&createReq{g: g, networks: req.Networks, image: recorded, event: event, done: make(chan createResult, 1)})
	if res.err != nil {
		return api.Guest{}, res.err
	}
	g = res.g
	m.log.Info("guest created", "guest", g.Name, "node", g.Node, "pending", g.PendingReason)
	out := m.view(g, time.Now())
	out.Warnings = res.warnings
	return out, nil
}

func guestExists(name string) error {
	return fmt.Errorf("guest %q %w: choose another name or delete it first", name, ErrConflict)
}

// RefusedError is a create that HA admission control refused; nothing was created.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string {
	return "refused by HA admission control: " + e.Reason + " (add capacity, or set ha_warn_only to admit with a warning)"
}

// place sets g's node, or its pending reason. It returns the scheduler's warnings, and
// HA admission control's objection when that alone keeps the guest from a node.
func (m *Master) place(g *store.GuestRecord, s *scheduler.Scheduler) (warnings []string, headroom string) {
	p, err := s.Place(schedGuest(*g))
	if err != nil {
		g.Node, g.TwinNode = "", ""
		g.PendingReason = err.Error()
		var u *scheduler.Unplaceable
		if errors.As(err, &u) {
			g.PendingReason = u.Error()
			headroom = u.Headroom
		}
		return nil, headroom
	}
	g.Node, g.TwinNode, g.PendingReason = p.Node, p.TwinNode, ""
	return p.Warnings, ""
}

// placePending tries again to place every pending guest, in creation order. It plans
// without the lock (with an HA reserve, under it); a placement refused at commit is
// planned again on the next round, which it asks for at once.
func (m *Master) placePending() {
	if !m.acting() || m.adopting() != nil {
		return
	}
	exact := m.opts.Scheduler.HAReserveNodes > 0
	var changes []change
	if !exact {
		nodes, guests, _ := m.st.Snapshot()
		changes = m.planPending(nodes, guests)
		if len(changes) == 0 {
			return
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	nodes, guests, _ := m.st.Snapshot()
	if exact {
		changes = m.planPending(nodes, guests)
	}
	if len(changes) == 0 {
		return
	}
	refused, err := m.commit(nodes, guests, changes)
	if err != nil {
		m.log.Error("place pending guests", "err", err)
		return
	}
	out := map[string]bool{}
	for _, r := range refused {
		out[r.Guest] = true
	}
	for _, c := range changes {
		switch {
		case out[c.next.Name]:
		case c.base.Node == "" && c.next.Node != "":
			m.log.Info("pending guest placed", "guest", c.next.Name, "node", c.next.Node)
		case c.base.Node != "" && c.base.TwinNode == "" && c.next.TwinNode != "":
			go m.Record("recovery", c.next.Node, c.next.Name, fmt.Sprintf("twin without a standby: new standby on %s", c.next.TwinNode))
		}
	}
	if len(refused) > 0 {
		m.wake()
	}
}

// planPending plans every pending guest, in creation order; a pending guest waits,
// whatever the reason, and is written only when placed or when its reason changed.
func (m *Master) planPending(nodes []store.NodeRecord, guests []store.GuestRecord) []change {
	var todo, twinless []store.GuestRecord
	for _, g := range guests {
		switch {
		case g.Desired == store.DesiredDeleted:
		case g.Node == "":
			todo = append(todo, g)
		case g.Failover == api.FailoverTwin && g.TwinNode == "" && !g.Lost && g.MigrateTo == "":
			twinless = append(twinless, g)
		}
	}
	if len(todo) == 0 && len(twinless) == 0 {
		return nil
	}
	sort.Slice(todo, func(i, j int) bool { return todo[i].CreatedAt.Before(todo[j].CreatedAt) })
	s := m.schedulerView(nodes, guests)
	var changes []change
	for i := range todo {
		g := todo[i]
		m.place(&g, s)
		if g.Node != "" || g.PendingReason != todo[i].PendingReason {
			changes = append(changes, change{base: &todo[i], next: g})
		}
	}
	// A twin left without a standby (none could be placed when its last one was lost:
	// no room then, or no node had reported to a master that had just taken over)
	// gets one as soon as a node can take it.
	for i := range twinless {
		if node, _, err := s.PlaceTwin(twinless[i].Name); err == nil {
			g := twinless[i]
			g.TwinNode = node
			changes = append(changes, change{base: &twinless[i], next: g})
		}
	}
	return changes
}

// Guests lists every guest.
func (m *Master) Guests() []api.Guest {
	_, guests, _ := m.st.Snapshot()
	now := time.Now()
	out := make([]api.Guest, 0, len(guests))
	for _, g := range guests {
		out = append(out, m.view(g, now))
	}
	return out
}

// Guest shows one guest.
func (m *Master) Guest(name string) (api.Guest, error) {
	g, ok := m.st.Guest(name)
	if !ok {
		return api.Guest{}, fmt.Errorf("guest %q %w", name, ErrNotFound)
	}
	return m.view(g, time.Now()), nil
}

// view joins a guest's record with its node's last report.
func (m *Master) view(g store.GuestRecord, now time.Time) api.Guest {
	out := api.Guest{
		Name: g.Name, UUID: g.UUID, Node: g.Node, OS: g.OS, CPUs: g.CPUs, MemoryBytes: g.MemoryBytes,
		DiskBytes: g.DiskBytes, Image: g.Image, Failover: g.Failover, Constraints: g.Constraints,
		Desired: g.Desired, MigrateTo: g.MigrateTo, PendingReason: g.PendingReason, CreatedAt: g.CreatedAt,
		NICs: nicViews(g.NICs), ExtraDiskBytes: g.ExtraDiskBytes, ISO: g.ISO, Pool: g.Pool,
		TwinNode: g.TwinNode, Protection: m.protectionOf(g),
	}
	if g.VNCPassword != "" {
		out.VNC = &api.GuestVNC{Display: m.vncDisplay(g)}
	}
	if ci := g.CloudInit; ci != nil {
		out.CloudInit = &api.GuestCloudInit{SSHKeys: ci.SSHKeys, UserDataBytes: len(ci.UserData)}
	}
	if len(g.LastMigration) > 0 {
		var mig api.Migration
		if json.Unmarshal(g.LastMigration, &mig) == nil {
			out.LastMigration = &mig
		}
	}
	out.State = m.state(g, now, &out.Error)
	return out
}

func (m *Master) state(g store.GuestRecord, now time.Time, errOut *string) string {
	if g.Node == "" {
		return api.GuestPending
	}
	if g.Lost {
		return api.GuestLost
	}
	if !m.nodeReady(g.Node, now) {
		return api.GuestUnknown
	}
	m.obsMu.RLock()
	obs, seen := m.observed[g.Node][g.Name]
	m.obsMu.RUnlock()
	*errOut = obs.Error
	switch {
	case g.Desired == store.DesiredDeleted:
		return api.GuestDeleting
	case g.MigrateTo != "":
		return api.GuestMigrating
	case api.IsHold(obs.Error) && g.Desired == store.DesiredRunning:
		// Held back by its node until the cluster vouches for the start: it starts then.
		return api.GuestStarting
	case obs.Error != "" && obs.State != "running":
		return api.GuestFailed
	case g.Desired == store.DesiredRunning && seen && obs.State == "running":
		return api.GuestRunning
	case g.Desired == store.DesiredRunning:
		return api.GuestStarting
	case seen && obs.State == "running":
		return api.GuestStopping
	}
	return api.GuestStopped
}

// updateGuest reads guest name's record, lets change edit it, and writes it back under
// mu: change returns what to write (OpPutGuest, OpDeleteGuest, or "" for nothing) or
// why the change is refused. It returns the record as change left it.
func (m *Master) updateGuest(name string, change func(g *store.GuestRecord) (store.Op, error)) (store.GuestRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.st.Guest(name)
	if !ok {
		return g, fmt.Errorf("guest %q %w", name, ErrNotFound)
	}
	op, err := change(&g)
	switch {
	case err != nil:
		return g, err
	case op == store.OpDeleteGuest:
		_, err = m.st.Apply(store.Command{Op: op, Name: name})
	case op != "":
		_, err = m.st.Apply(store.Command{Op: op, Guest: &g})
	}
	return g, err
}

// SetDesired asks for a guest to be running or stopped.
func (m *Master) SetDesired(name, desired string) (api.Guest, error) {
	if err := m.mustAct(); err != nil {
		return api.Guest{}, err
	}
	replace := false
	g, err := m.updateGuest(name, func(g *store.GuestRecord) (store.Op, error) {
		if g.Desired == store.DesiredDeleted {
			return "", fmt.Errorf("guest %q is being deleted: %w", name, ErrConflict)
		}
		// An operator brings back a guest lost with its node: place it anew.
		replace = g.Lost && desired == store.DesiredRunning
		if g.Desired == desired && !replace {
			return "", nil
		}
		g.Desired = desired
		if replace {
			g.Lost, g.Node, g.TwinNode = false, "", ""
		}
		return store.OpPutGuest, nil
	})
	if err != nil {
		return api.Guest{}, err
	}
	if replace {
		m.wake()
	}
	return m.view(g, time.Now()), nil
}

// DeleteGuest marks a guest for deletion. Its node removes the domain and disk and then
// reports it gone, which removes the record; a guest on no node is removed at once.
func (m *Master) DeleteGuest(name string, keepDisks bool) (api.Guest, error) {
	if err := m.mustAct(); err != nil {
		return api.Guest{}, err
	}
	g, err := m.updateGuest(name, func(g *store.GuestRecord) (store.Op, error) {
		if g.MigrateTo != "" {
			return "", fmt.Errorf("guest %q is migrating to %s: %w; delete it when the migration ends", name, g.MigrateTo, ErrConflict)
		}
		if keepDisks {
			if err := m.nodesRun("vm delete --keep-disks", disksSince, g.Node); err != nil {
				return "", err
			}
		}
		g.Desired, g.KeepDisks = store.DesiredDeleted, keepDisks
		if g.Node == "" || g.Lost {
			return store.OpDeleteGuest, nil
		}
		return store.OpPutGuest, nil
	})
	switch {
	case err != nil:
		return api.Guest{}, err
	case g.Node == "" || g.Lost:
		return api.Guest{Name: g.Name, State: "deleted"}, nil
	}
	return m.view(g, time.Now()), nil
}

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Why explains where a guest could go now and why other nodes cannot take it: the
// answer to "why is my guest pending".
func (m *Master) Why(name string) (api.Why, error) {
	g, ok := m.st.Guest(name)
	if !ok {
		return api.Why{}, fmt.Errorf("guest %q %w", name, ErrNotFound)
	}
	nodes, guests, _ := m.st.Snapshot()
	e := m.schedulerView(nodes, guests).Explain(schedGuest(g))
	w := api.Why{Guest: name, State: m.view(g, time.Now()).State, Node: g.Node, Nodes: e.Nodes, Feasible: e.Feasible,
		Reasons: map[string]int{}, TwinReasons: map[string]int{}, Headroom: e.Headroom, Summary: e.Summary(),
		WouldPlaceOn: e.Node, WouldTwinOn: e.TwinNode}
	for r, n := range e.Reasons {
		w.Reasons[string(r)] = n
	}
	for r, n := range e.TwinReasons {
		w.TwinReasons[string(r)] = n
	}
	return w, nil
}
