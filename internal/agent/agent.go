// Package agent is the node agent's reconcile loop: it reads the node's assignment from
// the master with blocking queries, makes libvirt match it, and reports what the node
// really runs.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dvmproject/dvm/failover"
	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/internal/strictjson"
	"github.com/dvmproject/dvm/internal/version"
)

// Config is what an agent needs.
type Config struct {
	Name       string
	Node       *hypervisor.Node
	Share      hypervisor.Share
	Labels     map[string]string
	Client     *api.Client
	Address    string // host:port where this node's dvmd listens, as peers reach it
	LibvirtURI string // this node's libvirt as peers reach it, for migration
	ImagesDir  string // images, by name: DIR/NAME/{kernel,initrd,cmdline} or DIR/NAME/disk.qcow2
	DisksDir   string // guest disks (shared storage on a real cluster)
	// Pools are the node's storage pools (dvmd.conf's pool.NAME keys): a guest
	// assigned with one has its disks there (pools.go).
	Pools []config.Pool
	// LockspaceDir is libvirt's lockspace on the shared storage (config.Node); when
	// set, every restart and twin guest runs under a lock there, disk or no disk.
	LockspaceDir string
	ConsoleDir   string // serial console logs
	// PausedFile records the HA guests this node paused when its lease lapsed
	// (pause.go), shared with the fence guard; without it a fence destroys them.
	PausedFile string
	// ShutdownTimeout is how long a guest gets to power off before it is destroyed.
	ShutdownTimeout time.Duration
	// ReportInterval is the period of status reports (the master's liveness signal).
	ReportInterval time.Duration
	// ReportTimeout bounds one report, its tries at every management node included;
	// 0: 5 s or five report intervals, whichever is longer.
	ReportTimeout time.Duration
	// Fencing makes the node start fenced and obey Fence/Unfence from its role machine.
	// Off for `dvmd dev`, which has no role machine.
	Fencing bool
	// FenceGrace is how long the node stays fenced before it stops its HA guests,
	// checking every FenceCheck (failover.Timing).
	FenceGrace, FenceCheck time.Duration
	// Lease says which master holds this node's lease, in which generation, and
	// whether it is live (roles.Runner.Lease); nil without a role machine.
	Lease func() (holder string, generation uint64, live bool)
	Log   *slog.Logger
	Net   NetConfig // guest networking (networks.go)
	// Mirror serves mirrored twins' standby copies and mirrors to them (mirror.go).
	Mirror MirrorConfig
}

// Agent runs one node.
type Agent struct {
	cfg  Config
	pool hypervisor.Capacity

	mu   sync.Mutex
	errs map[string]string // guest -> last failed step
	busy map[string]bool   // guests with a slow step (shutdown, migration) in flight
	// deleting are the deleted guests whose disks are being removed: reported until
	// that ends, so the master keeps the guest (and asks again) if it fails.
	deleting map[string]bool
	// standbys are the addresses of the standby copies this node serves, and
	// protection the mirrors of its guests, by guest, for the report (mirror.go).
	standbys   map[string]string
	protection map[string]*api.Protection
	report     chan struct{} // asks for a status report now

	latest *heldAssignment // the last assignment read; guarded by mu
	// basis is what was last written to the paused guests' record as the basis of
	// the next pause (pause.go), nil before the first write; guarded by mu.
	basis  *lossBasis
	resync chan struct{} // asks for a reconcile of latest now

	net netAgent // guest networks (networks.go)

	fenced   bool // no lease: HA guests must not run; guarded by mu
	fencedAt time.Time
	// unfencedAt is when the node last got its lease back: an assignment asked for
	// before that may be stale (the guests it names may have been restarted
	// elsewhere meanwhile) and starts no HA guest.
	unfencedAt time.Time
	pollCancel context.CancelFunc // ends the current blocking read of the assignment

	cons consoles // console sessions (console.go)
}

// heldAssignment is an assignment with when it was asked for. The two travel
// together: a reconcile judges the freshness of the very assignment it acts on, not
// of whichever one the poll stored since (a fresh one read just after the lease came
// back must not vouch for the stale one a reconcile already holds).
type heldAssignment struct {
	api.Assignment
	asked time.Time
}

// New checks the node's share and prepares its disk pool.
func New(cfg Config) (*Agent, error) {
	pool, err := cfg.Share.PoolShare(cfg.Node.HostCapacity())
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 30 * time.Second
	}
	if cfg.ReportInterval <= 0 {
		cfg.ReportInterval = time.Second
	}
	if cfg.ReportTimeout <= 0 {
		cfg.ReportTimeout = max(5*time.Second, 5*cfg.ReportInterval)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.DisksDir != "" {
		if err := cfg.Node.EnsureDiskPool(cfg.DisksDir); err != nil {
			return nil, err
		}
	}
	if err := ensurePools(cfg); err != nil {
		return nil, err
	}
	if cfg.ConsoleDir != "" {
		if err := os.MkdirAll(cfg.ConsoleDir, 0o750); err != nil {
			return nil, fmt.Errorf("console log directory: %w", err)
		}
	}
	if cfg.FenceGrace <= 0 {
		cfg.FenceGrace = failover.DefaultFenceGrace
	}
	if cfg.FenceCheck <= 0 {
		cfg.FenceCheck = failover.DefaultFenceCheck
	}
	// A node with a role machine starts fenced, as its machine does: it has no lease
	// until the master's first request arrives.
	a := &Agent{cfg: cfg, pool: pool, errs: map[string]string{}, busy: map[string]bool{}, deleting: map[string]bool{}, report: make(chan struct{}, 1),
		standbys: map[string]string{}, protection: map[string]*api.Protection{},
		resync: make(chan struct{}, 1), fenced: cfg.Fencing, fencedAt: time.Now()}
	if cfg.Mirror.RunDir != "" {
		// Exports a previous dvmd started run on: the first report names them, so
		// that no mirror to them is dropped while this dvmd finds its feet.
		for guest, s := range hypervisor.Standbys(cfg.Mirror.RunDir) {
			a.standbys[guest] = s.Addr()
		}
	}
	return a, nil
}

// PoolShare is what the node offers to the cluster.
func (a *Agent) PoolShare() hypervisor.Capacity { return a.pool }

// Run reconciles until ctx ends.
func (a *Agent) Run(ctx context.Context) {
	// Run returns only once every loop has: they call libvirt, and the caller closes
	// the libvirt connection after Run (a call on a closed connection crashes in C).
	var wg sync.WaitGroup
	defer wg.Wait()
	loops := []func(context.Context){a.reportLoop, a.eventLoop, a.reconcileLoop, a.consoleLoop, a.mirrorWatchLoop}
	if a.cfg.Fencing {
		loops = append(loops, a.fenceLoop)
	}
	for _, loop := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	var index uint64
	for ctx.Err() == nil {
		var asg api.Assignment
		path := fmt.Sprintf("/v1/nodes/%s/assignment?index=%d&wait=30s", url.PathEscape(a.cfg.Name), index)
		pctx, cancel := context.WithCancel(ctx)
		a.mu.Lock()
		a.pollCancel = cancel
		a.mu.Unlock()
		// An answer is as fresh as its question: one computed before the node got
		// its lease back (during a cut, delivered when TCP retransmits after the
		// heal) may name guests the cluster has moved away meanwhile.
		asked := time.Now()
		var raw []byte
		err := a.cfg.Client.Do(pctx, "GET", path, nil, &raw)
		refetch := pctx.Err() != nil // cancelled by Unfence, not ended by itself
		cancel()
		if refetch && ctx.Err() == nil {
			index = 0 // asked to read afresh (the lease is back): no waiting
			continue
		}
		if err == nil {
			if err = decodeAssignment(raw, &asg); err != nil {
				// The last assignment this agent understood stays in force: guests keep
				// running as they are, nothing new is done, until dvmd is upgraded.
				a.cfg.Log.Error("assignment refused", "err", err)
				sleep(ctx, 5*time.Second)
				continue
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				a.cfg.Log.Warn("read assignment", "err", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		// A master whose index went back (a fresh state) must not make this node drop its
		// guests on the strength of an empty list; the reconcile never destroys unassigned
		// guests, and the index simply follows the master.
		index = asg.Index
		a.mu.Lock()
		a.latest = &heldAssignment{Assignment: asg, asked: asked}
		a.mu.Unlock()
		a.noteBasis(asg)
		a.requestResync()
	}
}

func (a *Agent) requestResync() {
	select {
	case a.resync <- struct{}{}:
	default:
	}
}

// reconcileLoop reconciles the latest assignment when it changes, when a guest changes
// state on the node (a guest that died while wanted running starts again), and every
// few seconds in case an event was missed.
func (a *Agent) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.resync:
		case <-t.C:
		}
		a.mu.Lock()
		held := a.latest
		a.mu.Unlock()
		if held != nil {
			a.reconcile(ctx, *held)
			a.requestReport()
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (a *Agent) requestReport() {
	select {
	case a.report <- struct{}{}:
	default:
	}
}

func (a *Agent) setErr(guest string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		delete(a.errs, guest)
		return
	}
	a.errs[guest] = err.Error()
	a.cfg.Log.Warn("reconcile guest", "guest", guest, "err", err)
}

// startSlow runs fn for guest in the background unless a slow step of that guest is
// already running.
func (a *Agent) startSlow(guest string, fn func()) {
	a.mu.Lock()
	if a.busy[guest] {
		a.mu.Unlock()
		return
	}
	a.busy[guest] = true
	a.mu.Unlock()
	go func() {
		fn()
		a.mu.Lock()
		delete(a.busy, guest)
		a.mu.Unlock()
		a.requestReport()
	}()
}

// reconcile makes libvirt match the assignment. It never touches a dvm guest that the
// assignment does not name: removing a guest from a node is the master's explicit act
// (delete, migration), never an inference from absence.
func (a *Agent) reconcile(ctx context.Context, held heldAssignment) {
	asg := held.Assignment
	a.reconcileNetworks(asg)
	present := map[string]hypervisor.State{}
	pausedByCall := map[string]bool{}
	media := map[string]string{} // install media in a guest's cdrom
	if list, err := a.cfg.Node.List(); err == nil {
		for _, g := range list {
			present[g.Name] = g.State
			pausedByCall[g.Name] = g.PausedByCall
			media[g.Name] = g.ISO
		}
	} else {
		a.cfg.Log.Warn("list guests", "err", err)
		return
	}
	paused := a.readPaused()
	a.prunePaused(paused, present)
	// Guests to start are started together once the assignment is read through: a
	// QEMU start takes a few hundred milliseconds, and the guests of a lost node
	// placed here would otherwise wait for each other. Each was allowed (its HA
	// lease checked) where it is queued, as a start in the loop would be.
	var starts []func()
	defer func() { runAll(starts, maxParallelStarts) }()
	for _, g := range asg.Guests {
		g := g
		if g.Incoming {
			continue
		}
		state, defined := present[g.Name]
		if a.settlePaused(held, paused, g, state) || a.settleUnknownPause(held, paused, g, pausedByCall[g.Name]) {
			continue
		}
		switch {
		case g.Evict:
			if defined {
				a.startSlow(g.Name, func() {
					a.cfg.Log.Warn("removing a guest the cluster moved away while this node was lost", "guest", g.Name)
					a.setErr(g.Name, a.cfg.Node.Undefine(g.Name)) // the disk stays: the guest's node uses it
				})
			} else if g.Mirrored {
				// A standby this node no longer holds: its copy goes.
				a.setErr(g.Name, a.dropStandby(g))
			}
		case g.Twin && g.Mirrored:
			// The standby of a mirrored twin: a copy served, no domain, never running.
			if defined && (state == hypervisor.StateRunning || state == hypervisor.StatePaused) {
				a.setErr(g.Name, a.cfg.Node.Destroy(g.Name))
				continue
			}
			a.serveStandby(g)
		case g.Twin:
			// The guest's twin: defined, never running here while its primary runs.
			if !defined {
				if err := a.define(g); err != nil {
					a.setErr(g.Name, err)
				}
				continue
			}
			if state == hypervisor.StateRunning || state == hypervisor.StatePaused {
				a.setErr(g.Name, a.cfg.Node.Destroy(g.Name))
				continue
			}
			a.setErr(g.Name, nil)
		case g.Desired == store.DesiredDeleted:
			a.startSlow(g.Name, func() {
				a.mu.Lock()
				a.deleting[g.Name] = true
				a.mu.Unlock()
				err := a.cfg.Node.Undefine(g.Name)
				if err == nil {
					err = a.deleteDisks(g)
				}
				a.setErr(g.Name, err)
				a.mu.Lock()
				delete(a.deleting, g.Name)
				a.mu.Unlock()
			})
		case g.MigrateTo != "":
			if state == hypervisor.StateRunning {
				a.startSlow(g.Name, func() { a.migrate(ctx, g) })
			}
		default:
			if g.Mirrored {
				// Promoted here, or placed here afresh: a standby this node served
				// for the guest ends before the guest may use the copy.
				if err := a.promote(g); err != nil {
					a.setErr(g.Name, err)
					continue
				}
				if state == hypervisor.StateRunning {
					a.reconcileMirror(g)
				} else {
					a.setProtection(g.Name, nil)
				}
			}
			if !defined {
				if err := a.define(g); err != nil {
					a.setErr(g.Name, err)
					continue
				}
				state = hypervisor.StateStopped
			} else if media[g.Name] != "" && g.ISO == "" {
				// Ejected in the cluster's state (vmctl vm eject): out of the drive
				// now, and out of the definition, so the next boot is from the disk.
				if err := a.cfg.Node.EjectISO(g.Name); err != nil {
					a.setErr(g.Name, err)
					continue
				}
				a.cfg.Log.Info("install media ejected", "guest", g.Name, "iso", media[g.Name])
			}
			switch {
			case g.Desired == store.DesiredRunning && state != hypervisor.StateRunning && state != hypervisor.StatePaused:
				if isHA(g.Failover) {
					if err := a.mayStartHA(held); err != nil {
						a.setErr(g.Name, err)
						continue
					}
				}
				starts = append(starts, func() {
					err := a.cfg.Node.Start(g.Name)
					if err == nil {
						// Which assignment a start rests on is what a double run is traced back to.
						a.cfg.Log.Info("guest started", "guest", g.Name, "failover", g.Failover, "master", asg.Master,
							"generation", asg.Generation, "index", asg.Index)
					}
					a.setErr(g.Name, err)
				})
			case g.Desired == store.DesiredStopped && state == hypervisor.StateRunning:
				a.startSlow(g.Name, func() {
					a.setErr(g.Name, a.cfg.Node.Shutdown(ctx, g.Name, a.cfg.ShutdownTimeout))
				})
			default:
				a.setErr(g.Name, nil)
			}
		}
	}
}

// maxParallelStarts bounds the guest starts a reconcile runs at once: libvirt
// serves each on a worker thread of its own (max_workers defaults to 20).
const maxParallelStarts = 8

// runAll runs fns, at most limit at a time, and returns when all have.
func runAll(fns []func(), limit int) {
	if len(fns) == 1 {
		fns[0]()
		return
	}
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			fn()
			<-sem
		}()
	}
	wg.Wait()
}

// define builds a guest's domain from its assignment, the image it names and its disk.
func (a *Agent) define(g api.AssignedGuest) error {
	spec := hypervisor.GuestSpec{Name: g.Name, UUID: g.UUID, OS: g.OS, CPUs: g.CPUs, MemoryBytes: g.MemoryBytes, Failover: g.Failover}
	if a.cfg.ConsoleDir != "" {
		spec.ConsoleLog = filepath.Join(a.cfg.ConsoleDir, g.Name+".log")
	}
	base, err := a.useImage(g, &spec)
	if err != nil {
		return err
	}
	if isHA(g.Failover) && a.cfg.LockspaceDir != "" {
		// A twin too: a mirrored twin's copies are two disks, which no disk lease
		// keeps apart, so only the guest's own lock stops its standby from starting
		// while a paused primary can still run on.
		lock, err := guestLock(a.cfg.LockspaceDir, g)
		if err != nil {
			return err
		}
		spec.Lock = lock
	}
	a.attachNICs(&spec, g)
	if err := a.attachDisks(&spec, g, base); err != nil {
		return err
	}
	if err := a.attachISO(&spec, g); err != nil {
		return err
	}
	if err := a.attachSeed(&spec, g); err != nil {
		return err
	}
	if g.VNCPassword != "" {
		// Reached on the node's management address, or loopback: never every address.
		spec.VNC = &hypervisor.VNC{Listen: hypervisor.VNCListen(a.cfg.Address), Password: g.VNCPassword}
	}
	return a.cfg.Node.Define(spec)
}

// guestLock makes sure the file of an HA guest's lock exists in the lockspace
// (virtlockd opens a domain lease's file but does not create it) and names it. The
// key is the guest's UUID, the same on every node and for the guest's whole life, so
// the copy a node restarts and the copy a node that was paused resumes contend for
// one lock. Fencing is the first guard against two copies; this lock catches what
// fencing cannot see, such as a node paused whole (its fence guard too) whose QEMUs
// run for an instant on resume before the guard destroys them. The file is never
// removed: unlinking a lock file another QEMU still holds would let a third take a
// new one.
func guestLock(dir string, g api.AssignedGuest) (*hypervisor.GuestLock, error) {
	id := g.UUID
	if id == "" {
		id = g.Name
	}
	key := "dvm-guest-" + id
	f, err := os.OpenFile(filepath.Join(dir, key), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("guest lock in lockspace_dir: %w (is %s on the shared storage and writable?)", err, dir)
	}
	f.Close()
	return &hypervisor.GuestLock{Lockspace: dir, Key: key}, nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// migrate carries out a migration the master asked for and reports the outcome, whether
// libvirt succeeded or not: the master changes the guest's node only on success.
func (a *Agent) migrate(ctx context.Context, g api.AssignedGuest) {
	migrateURI := ""
	if g.MigrateAddress != "" {
		migrateURI = "tcp://" + g.MigrateAddress
	}
	a.cfg.Log.Info("migrating", "guest", g.Name, "to", g.MigrateTo, "uri", g.MigrateLibvirtURI)
	stats, err := a.cfg.Node.Migrate(g.Name, g.MigrateLibvirtURI, migrateURI)
	res := api.Migration{OK: err == nil, TotalSeconds: stats.Total.Seconds(), DowntimeSeconds: stats.Downtime.Seconds(), Bytes: stats.Bytes}
	if err != nil {
		res.Error = err.Error()
	}
	path := fmt.Sprintf("/v1/guests/%s/migration?node=%s", url.PathEscape(g.Name), url.QueryEscape(a.cfg.Name))
	for try := 0; try < 30 && ctx.Err() == nil; try++ {
		err := a.cfg.Client.Do(ctx, "POST", path, res, nil)
		var se *api.StatusError
		if err == nil || errors.As(err, &se) {
			if err != nil {
				a.cfg.Log.Warn("report migration", "guest", g.Name, "err", err)
			}
			return
		}
		sleep(ctx, time.Second)
	}
}

// status is what the node reports now.
func (a *Agent) status() api.NodeStatus {
	host := a.cfg.Node.HostCapacity()
	st := api.NodeStatus{
		Address: a.cfg.Address, LibvirtURI: a.cfg.LibvirtURI, Accelerator: string(a.cfg.Node.Accelerator()),
		HostCPUs: host.CPUs, HostMemoryBytes: host.MemoryBytes, CPUs: a.pool.CPUs, MemoryBytes: a.pool.MemoryBytes,
		Labels: a.cfg.Labels, Guests: []api.ObservedGuest{},
	}
	list, err := a.cfg.Node.List()
	if err != nil {
		a.cfg.Log.Warn("list guests", "err", err)
	}
	displays := map[string]string{}
	for _, g := range list {
		if g.VNC && g.State == hypervisor.StateRunning {
			displays[g.Name], _ = a.cfg.Node.VNCDisplay(g.Name)
		}
	}
	a.refreshProtection(list)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.latest != nil && version.AtLeast(a.latest.Version, api.PoolsSince) {
		st.Pools = poolKinds(a.cfg.Pools)
	}
	for _, g := range list {
		st.Guests = append(st.Guests, api.ObservedGuest{Name: g.Name, State: string(g.State), Error: a.guestError(g.Name), VNC: displays[g.Name]})
	}
	for name, e := range a.errs {
		if !containsGuest(list, name) {
			st.Guests = append(st.Guests, api.ObservedGuest{Name: name, State: "absent", Error: e})
		}
	}
	for name := range a.deleting {
		if _, failed := a.errs[name]; !failed && !containsGuest(list, name) {
			st.Guests = append(st.Guests, api.ObservedGuest{Name: name, State: "absent"})
		}
	}
	a.mirrorReport(&st, list)
	return st
}

func containsGuest(list []hypervisor.Guest, name string) bool {
	for _, g := range list {
		if g.Name == name {
			return true
		}
	}
	return false
}

func (a *Agent) reportLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ReportInterval)
	defer t.Stop()
	path := "/v1/nodes/" + url.PathEscape(a.cfg.Name) + "/status"
	for {
		// A report is bounded: a master paused whole (SIGSTOP, a hung host) accepts the
		// connection and never answers, and the reports must go on to its successor
		// once gossip drops it from the management nodes. A report sent twice is
		// harmless (it is the node's whole state).
		rctx, cancel := context.WithTimeout(ctx, a.cfg.ReportTimeout)
		err := a.cfg.Client.Do(rctx, "PUT", path, a.status(), nil)
		cancel()
		if err != nil && ctx.Err() == nil {
			a.cfg.Log.Warn("report status", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.report:
		}
	}
}

// eventLoop turns libvirt's lifecycle events into prompt status reports, so a guest that
// started or died shows up without waiting for the next period.
func (a *Agent) eventLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-a.cfg.Node.Events():
			a.cfg.Log.Debug("domain event", "guest", ev.Guest, "state", ev.State, "detail", ev.Detail)
			a.requestReport()
			a.requestResync()
		}
	}
}

// decodeAssignment reads an assignment strictly: a field this agent does not know was
// written by a newer master, and acting on the rest without it could do the wrong
// thing (start what it meant to hold back, say). The error names the field and the
// master's version.
func decodeAssignment(raw []byte, asg *api.Assignment) error {
	err := strictjson.Decode(raw, asg)
	if err == nil {
		return nil
	}
	var head struct {
		Master  string `json:"master"`
		Version string `json:"version"`
	}
	_ = json.Unmarshal(raw, &head)
	theirs := version.Or(head.Version)
	if f, ok := strictjson.UnknownField(err); ok {
		return fmt.Errorf("the assignment from master %s (dvmd %s) has field %q, which this dvmd (%s) does not know: this node keeps its guests as they are and applies no assignment until its dvmd is upgraded to %s or newer",
			head.Master, theirs, f, version.Version, theirs)
	}
	return fmt.Errorf("the assignment from master %s (dvmd %s) cannot be read: %w", head.Master, theirs, err)
}
