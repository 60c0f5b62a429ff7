package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"
)

// ErrTwinStuck: the primary's guest did not run again after a COLO checkpoint; QEMU's
// COLO thread is wedged and the guest frozen. Only stopping the process ends it.
var ErrTwinStuck = errors.New("primary frozen after a COLO checkpoint")

// ErrTwinState: the operation does not fit the half's role or state (Failover on a
// primary, Protect on a half already protected, …).
var ErrTwinState = errors.New("wrong role or state for this twin operation")

// twinPollInterval is how often the runner asks QEMU while it waits for a job, a
// migration or a state.
const twinPollInterval = 100 * time.Millisecond

// Pair starts COLO between a primary and a secondary both run by this process (both on
// this node, or a caller that holds both ends). Across nodes, each node's agent calls
// the secondary's PrepareSecondary and then the primary's Protect, which is all Pair
// does. The secondary's Links say where the halves meet. On failure the primary runs
// alone as before and the secondary is left as it is, to be stopped.
func Pair(ctx context.Context, primary, secondary *Twin) error {
	if primary.Name() != secondary.Name() {
		return fmt.Errorf("pair twin %q with %q: %w: both halves must be the same guest", primary.Name(), secondary.Name(), ErrTwinState)
	}
	pd, sd := primary.spec.Guest.Disk, secondary.spec.Guest.Disk
	if (pd == nil) != (sd == nil) {
		return fmt.Errorf("pair twin %q: one half has a disk, the other none: start both from the same guest spec", primary.Name())
	}
	if pd != nil && pd.Path == sd.Path {
		return fmt.Errorf("pair twin %q: both halves use disk %s: %w: the secondary needs its own copy of the disk (COLO writes into it), not shared storage", primary.Name(), pd.Path, ErrTwinUnsupported)
	}
	if err := secondary.PrepareSecondary(ctx); err != nil {
		return err
	}
	if err := primary.Protect(ctx, secondary.spec.Links); err != nil {
		return err
	}
	secondary.setState(TwinProtected)
	return nil
}

// PrepareSecondary readies a started secondary for its primary's Protect: the x-colo
// capability, and its copy of the disk exported over NBD on Links.NBD.
func (t *Twin) PrepareSecondary(ctx context.Context) error {
	t.mu.Lock()
	role, state := t.role, t.state
	t.mu.Unlock()
	if role != TwinSecondary || state != TwinUnprotected {
		return fmt.Errorf("prepare twin %q: this half is a %s %s: %w", t.Name(), state, role, ErrTwinState)
	}
	if err := t.setColoCapability(ctx); err != nil {
		return err
	}
	if t.spec.Guest.Disk != nil {
		h, p := hostPort(t.spec.Links.NBD)
		if err := t.do(ctx, "nbd-server-start", func() error {
			return t.api.NBDServerStart(raw.SocketAddressLegacyInet{Host: h, Port: p}, nil)
		}); err != nil {
			return err
		}
		writable := true
		if err := t.do(ctx, "nbd-server-add", func() error { return t.api.NBDServerAdd("parent0", &writable) }); err != nil {
			return err
		}
	}
	t.setState(TwinSyncing)
	return nil
}

func (t *Twin) setColoCapability(ctx context.Context) error {
	return t.do(ctx, "migrate-set-capabilities x-colo", func() error {
		return t.api.MigrateSetCapabilities([]raw.MigrationCapabilityStatus{{Capability: raw.MigrationCapabilityXColo, State: true}})
	})
}

func (t *Twin) setState(s TwinState) {
	t.mu.Lock()
	t.state = s
	t.mu.Unlock()
}

// Protect makes this primary replicate to a prepared secondary that listens on links
// (the secondary's TwinSpec.Links). A primary that never ran (TwinSpec.Paused) is paired
// as it is, its disk being a copy of the secondary's; a running one first copies its
// disk into the secondary's with drive-mirror while the guest runs, pauses for the last
// blocks, then starts COLO, which resumes the guest. On failure the primary is left
// running alone, as before.
func (t *Twin) Protect(ctx context.Context, links TwinLinks) error {
	t.mu.Lock()
	role, state := t.role, t.state
	t.mu.Unlock()
	if role != TwinPrimary || state != TwinUnprotected {
		return fmt.Errorf("protect twin %q: this half is a %s %s: %w", t.Name(), state, role, ErrTwinState)
	}
	if err := t.spec.checkLinks(links); err != nil {
		return fmt.Errorf("protect twin %q: %w", t.Name(), err)
	}
	t.setState(TwinSyncing)
	if err := t.protect(ctx, links); err != nil {
		// Undo with a fresh context: ctx may be what ran out.
		uctx, cancel := context.WithTimeout(context.Background(), twinQMPTimeout)
		defer cancel()
		if uerr := t.unprotect(uctx, false); uerr != nil {
			err = fmt.Errorf("%w (and undoing it: %v)", err, uerr)
		}
		t.setState(TwinUnprotected)
		return fmt.Errorf("protect twin %q: %w", t.Name(), err)
	}
	t.setState(TwinProtected)
	return nil
}

func (t *Twin) protect(ctx context.Context, links TwinLinks) error {
	st, err := t.runState(ctx)
	if err != nil {
		return err
	}
	fresh := st == "prelaunch"
	if t.spec.Guest.Disk != nil {
		nh, np := hostPort(links.NBD)
		if !fresh {
			if err := t.mirrorDisk(ctx, "nbd://"+net.JoinHostPort(nh, np)+"/parent0"); err != nil {
				return err
			}
		}
		if err := t.hmp(ctx, "drive_add -n buddy driver=replication,mode=primary,file.driver=nbd,file.host="+qemuOpt(nh)+",file.port="+np+",file.export=parent0,node-name=replication0"); err != nil {
			return err
		}
		node := "replication0"
		if err := t.do(ctx, "x-blockdev-change add replication0", func() error { return t.api.XBlockdevChange("colo-disk0", nil, &node) }); err != nil {
			return err
		}
	}
	if len(t.spec.Guest.NICs) == 1 {
		if err := t.addCompare(ctx, links); err != nil {
			return err
		}
	}
	if err := t.setColoCapability(ctx); err != nil {
		return err
	}
	params := map[string]any{}
	if d := t.spec.CheckpointInterval; d > 0 {
		params["x-checkpoint-delay"] = d.Milliseconds()
	}
	if b := t.spec.MigrationBandwidth; b > 0 {
		params["max-bandwidth"] = b
	}
	if len(params) > 0 {
		if err := t.qmpRun(ctx, "migrate-set-parameters", params, nil); err != nil {
			return err
		}
	}
	mh, mp := hostPort(links.Migrate)
	if err := t.qmpRun(ctx, "migrate", map[string]string{"uri": "tcp:" + bracketIPv6(mh) + ":" + mp}, nil); err != nil {
		return err
	}
	if _, err := t.waitMigration(ctx); err != nil {
		return err
	}
	// COLO's thread resumes the guest after the first checkpoint (a paused or fresh
	// primary included); until then QEMU refuses "cont".
	for {
		st, err := t.runState(ctx)
		if err != nil {
			return err
		}
		if st == "running" {
			return nil
		}
		if err := t.sleep(ctx, "the guest to run in COLO"); err != nil {
			return err
		}
	}
}

// mirrorDisk copies the running guest's disk into the secondary's copy over NBD, then
// pauses the guest and ends the mirror once both are level. QEMU's COLO-FT procedure
// for a new secondary of a running primary.
func (t *Twin) mirrorDisk(ctx context.Context, target string) error {
	job, format := "resync", "raw"
	mode := raw.NewImageModeExisting
	if err := t.do(ctx, "drive-mirror", func() error {
		return t.api.DriveMirror(&raw.DriveMirror{JobID: &job, Device: "colo-disk0", Target: target, Format: &format, Sync: raw.MirrorSyncModeFull, Mode: &mode})
	}); err != nil {
		return err
	}
	if err := t.waitJob(ctx, job, func(j *raw.BlockJobInfo) bool { return j != nil && j.Ready }); err != nil {
		return err
	}
	if err := t.do(ctx, "stop", t.api.Stop); err != nil {
		return err
	}
	// Cancelling a ready mirror completes it without switching the guest to the copy.
	if err := t.do(ctx, "block-job-cancel", func() error { return t.api.BlockJobCancel(job, nil) }); err != nil {
		return err
	}
	return t.waitJob(ctx, job, func(j *raw.BlockJobInfo) bool { return j == nil })
}

// waitJob polls query-block-jobs until done says the job (nil once gone) is where
// the caller wants it.
func (t *Twin) waitJob(ctx context.Context, id string, done func(*raw.BlockJobInfo) bool) error {
	for {
		var jobs []raw.BlockJobInfo
		if err := t.do(ctx, "query-block-jobs", func() (err error) { jobs, err = t.api.QueryBlockJobs(); return }); err != nil {
			return err
		}
		var job *raw.BlockJobInfo
		for i := range jobs {
			if jobs[i].Device == id {
				job = &jobs[i]
			}
		}
		if done(job) {
			return nil
		}
		if err := t.sleep(ctx, "disk mirror "+id); err != nil {
			return err
		}
	}
}

func (t *Twin) sleep(ctx context.Context, what string) error {
	select {
	case <-ctx.Done():
		return fmt.Errorf("%s of twin %q: waiting for %s: %w", t.spec.Role, t.Name(), what, ctx.Err())
	case <-t.done:
		return fmt.Errorf("%s of twin %q: waiting for %s: QEMU ended (%v)", t.spec.Role, t.Name(), what, t.exitErr)
	case <-time.After(twinPollInterval):
		return nil
	}
}

// addCompare sets up the primary's packet compare: its NIC's incoming packets are
// mirrored to the secondary (m0), its outgoing packets go to colo-compare (redire1),
// which also reads the secondary's (compare1) and lets through what agrees (redire0).
// The TCP chardevs are (re)made on links when they differ from those the process has;
// a former secondary gets the local ones too, and its filters go before its rewriter.
func (t *Twin) addCompare(ctx context.Context, links TwinLinks) error {
	t.mu.Lock()
	promoted, have, local := t.promoted, t.packetLinks, t.localCompare
	t.mu.Unlock()
	want := TwinLinks{Mirror: links.Mirror, Compare: links.Compare}
	if have != want {
		if have.Mirror != "" {
			for _, id := range []string{"mirror0", "compare1"} {
				if err := t.do(ctx, "chardev-remove "+id, func() error { return t.api.ChardevRemove(id) }); err != nil {
					return err
				}
			}
			t.setPacketLinks(TwinLinks{}, local)
		}
		for _, c := range []struct {
			id, addr string
		}{{"mirror0", want.Mirror}, {"compare1", want.Compare}} {
			h, p := hostPort(c.addr)
			if err := t.chardevAdd(ctx, c.id, map[string]any{"type": "inet", "data": map[string]string{"host": h, "port": p}}, true); err != nil {
				return err
			}
		}
		t.setPacketLinks(want, local)
	}
	if !local {
		for _, c := range []struct {
			id, path string
			server   bool
		}{
			{"compare0", t.spec.path(twinCompareIn), true}, {"compare0-0", t.spec.path(twinCompareIn), false},
			{"compare_out", t.spec.path(twinCompareOut), true}, {"compare_out0", t.spec.path(twinCompareOut), false},
		} {
			if c.server {
				if err := removeIfExists(c.path); err != nil {
					return err
				}
			}
			if err := t.chardevAdd(ctx, c.id, map[string]any{"type": "unix", "data": map[string]string{"path": c.path}}, c.server); err != nil {
				return err
			}
		}
		t.setPacketLinks(want, true)
	}
	filter := func(props map[string]any) map[string]any {
		props["netdev"] = "hn0"
		if promoted {
			props["insert"], props["position"] = "before", "id=rew0"
		}
		return props
	}
	objects := []struct {
		typ, id string
		props   map[string]any
	}{
		{"filter-mirror", "m0", filter(map[string]any{"queue": "tx", "outdev": "mirror0"})},
		{"filter-redirector", "redire0", filter(map[string]any{"queue": "rx", "indev": "compare_out"})},
		{"filter-redirector", "redire1", filter(map[string]any{"queue": "rx", "outdev": "compare0"})},
		{"iothread", "iothread1", map[string]any{}},
		{"colo-compare", "comp0", map[string]any{"primary_in": "compare0-0", "secondary_in": "compare1", "outdev": "compare_out0", "iothread": "iothread1"}},
	}
	for _, o := range objects {
		args := map[string]any{"qom-type": o.typ, "id": o.id}
		for k, v := range o.props {
			args[k] = v
		}
		if err := t.qmpRun(ctx, "object-add", args, nil); err != nil {
			return fmt.Errorf("add %s %s: %w", o.typ, o.id, err)
		}
	}
	// The secondary connects to both sockets on its own (every second); migrating
	// before it has would lose the packets mirrored meanwhile.
	return t.waitChardevs(ctx, "mirror0", "compare1")
}

func (t *Twin) setPacketLinks(l TwinLinks, local bool) {
	t.mu.Lock()
	t.packetLinks, t.localCompare = l, local
	t.mu.Unlock()
}

func (t *Twin) chardevAdd(ctx context.Context, id string, addr map[string]any, server bool) error {
	data := map[string]any{"addr": addr, "server": server}
	if server {
		data["wait"] = false
	}
	return t.qmpRun(ctx, "chardev-add", map[string]any{"id": id, "backend": map[string]any{"type": "socket", "data": data}}, nil)
}

// waitChardevs waits until each named socket chardev has a peer (query-chardev names
// an unconnected socket "disconnected:…").
func (t *Twin) waitChardevs(ctx context.Context, ids ...string) error {
	for {
		var devs []struct {
			Label    string `json:"label"`
			Filename string `json:"filename"`
		}
		if err := t.qmpRun(ctx, "query-chardev", nil, &devs); err != nil {
			return err
		}
		waiting := map[string]bool{}
		for _, id := range ids {
			waiting[id] = true
		}
		for _, d := range devs {
			if waiting[d.Label] && !strings.HasPrefix(d.Filename, "disconnected") {
				delete(waiting, d.Label)
			}
		}
		if len(waiting) == 0 {
			return nil
		}
		if err := t.sleep(ctx, "the secondary to connect to the packet links"); err != nil {
			return err
		}
	}
}

// migrationInfo is what dvm reads of query-migrate (go-qemu's type predates 7.2's).
type migrationInfo struct {
	Status string `json:"status"`
	RAM    struct {
		Remaining int64 `json:"remaining"`
	} `json:"ram"`
	ErrorDesc string `json:"error-desc"`
}

func (t *Twin) queryMigrate(ctx context.Context) (migrationInfo, error) {
	var mi migrationInfo
	err := t.qmpRun(ctx, "query-migrate", nil, &mi)
	return mi, err
}

// waitMigration waits until the first copy is done and COLO runs.
func (t *Twin) waitMigration(ctx context.Context) (migrationInfo, error) {
	for {
		mi, err := t.queryMigrate(ctx)
		if err != nil {
			return mi, err
		}
		switch mi.Status {
		case "colo":
			return mi, nil
		case "failed", "cancelled", "completed":
			return mi, fmt.Errorf("migration to the secondary %s, not in COLO: %s", mi.Status, mi.ErrorDesc)
		}
		if err := t.sleep(ctx, "the first copy to the secondary"); err != nil {
			return mi, err
		}
	}
}

type coloStatus struct {
	Mode     string `json:"mode"`
	LastMode string `json:"last-mode"`
	Reason   string `json:"reason"`
}

func (t *Twin) queryColo(ctx context.Context) (coloStatus, error) {
	var cs coloStatus
	err := t.qmpRun(ctx, "query-colo-status", nil, &cs)
	return cs, err
}

func (t *Twin) runState(ctx context.Context) (string, error) {
	var st raw.StatusInfo
	if err := t.do(ctx, "query-status", func() (err error) { st, err = t.api.QueryStatus(); return }); err != nil {
		return "", err
	}
	return st.Status.String(), nil
}

// Failover makes this secondary the guest's only half after its primary was lost:
// the NBD export stops, COLO ends (x-colo-lost-heartbeat) and the replica runs on from
// its last checkpoint, with no reboot. Call it only when the primary is known dead or
// fenced: a secondary that takes over from a live primary makes two guests.
func (t *Twin) Failover(ctx context.Context) error {
	t.mu.Lock()
	role := t.role
	t.mu.Unlock()
	if role != TwinSecondary {
		return fmt.Errorf("failover of twin %q: this half is the %s: %w", t.Name(), role, ErrTwinState)
	}
	cs, err := t.queryColo(ctx)
	if err != nil {
		return fmt.Errorf("failover of twin %q: %w", t.Name(), err)
	}
	if cs.Mode != "secondary" {
		return fmt.Errorf("failover of twin %q: the secondary is not in COLO (mode %q): %w: it holds no complete copy of the guest", t.Name(), cs.Mode, ErrTwinState)
	}
	if t.spec.Guest.Disk != nil {
		if err := t.do(ctx, "nbd-server-stop", t.api.NBDServerStop); err != nil {
			return err
		}
	}
	if err := t.do(ctx, "x-colo-lost-heartbeat", t.api.XColoLostHeartbeat); err != nil {
		return err
	}
	if err := t.waitRunning(ctx); err != nil {
		return err
	}
	t.mu.Lock()
	t.role, t.state, t.promoted = TwinPrimary, TwinUnprotected, true
	t.mu.Unlock()
	// The links to the lost primary go: the redirectors would feed the guest from, and
	// send its packets to, a peer that no longer exists. The rewriter stays, as QEMU's
	// procedure has it, and the filters of the next pairing go before it.
	if len(t.spec.Guest.NICs) == 1 {
		for _, id := range []string{"f2", "f1"} {
			if err := t.do(ctx, "object-del "+id, func() error { return t.api.ObjectDel(id) }); err != nil {
				return err
			}
		}
		for _, id := range []string{"red1", "red0"} {
			if err := t.do(ctx, "chardev-remove "+id, func() error { return t.api.ChardevRemove(id) }); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitRunning waits until COLO has ended on this half and the guest runs.
func (t *Twin) waitRunning(ctx context.Context) error {
	for {
		cs, err := t.queryColo(ctx)
		if err != nil {
			return err
		}
		if cs.Mode == "none" {
			st, err := t.runState(ctx)
			if err != nil {
				return err
			}
			if st == "running" {
				return nil
			}
		}
		if err := t.sleep(ctx, "the guest to run alone"); err != nil {
			return err
		}
	}
}

// PrimaryAlone makes this primary run on without its secondary, after the secondary
// (or its node) was lost: the replication child and the packet compare go, COLO ends,
// and the guest runs unprotected until the next Protect. As Failover, call it only when
// the secondary is known dead or fenced.
func (t *Twin) PrimaryAlone(ctx context.Context) error {
	t.mu.Lock()
	role := t.role
	t.mu.Unlock()
	if role != TwinPrimary {
		return fmt.Errorf("primary alone of twin %q: this half is the %s: %w", t.Name(), role, ErrTwinState)
	}
	if err := t.unprotect(ctx, true); err != nil {
		return fmt.Errorf("primary alone of twin %q: %w", t.Name(), err)
	}
	t.setState(TwinUnprotected)
	return nil
}

// unprotect takes the replication parts off a primary, as far as they were added, and
// ends COLO if it runs; the guest runs alone afterwards. lost says the secondary is
// gone, which PrimaryAlone asserts and a failed Protect does not.
func (t *Twin) unprotect(ctx context.Context, lost bool) error {
	var errs []error
	// Stop a migration (or a mirror) that did not reach COLO.
	mi, err := t.queryMigrate(ctx)
	if err != nil {
		return err
	}
	switch mi.Status {
	case "setup", "active", "device", "pre-switchover":
		errs = append(errs, t.do(ctx, "migrate_cancel", t.api.MigrateCancel))
	}
	var jobs []raw.BlockJobInfo
	if err := t.do(ctx, "query-block-jobs", func() (err error) { jobs, err = t.api.QueryBlockJobs(); return }); err == nil {
		for _, j := range jobs {
			if j.Device == "resync" {
				force := true
				errs = append(errs, t.do(ctx, "block-job-cancel", func() error { return t.api.BlockJobCancel(j.Device, &force) }))
			}
		}
	}
	cs, err := t.queryColo(ctx)
	if err != nil {
		return err
	}
	if t.spec.Guest.Disk != nil && t.hasReplicationChild(ctx) {
		child := "children.1"
		errs = append(errs, t.do(ctx, "x-blockdev-change remove children.1", func() error { return t.api.XBlockdevChange("colo-disk0", &child, nil) }))
		errs = append(errs, t.hmp(ctx, "drive_del replication0"))
	}
	if len(t.spec.Guest.NICs) == 1 {
		have := t.objects(ctx)
		for _, id := range []string{"comp0", "iothread1", "m0", "redire0", "redire1"} {
			if have[id] {
				errs = append(errs, t.do(ctx, "object-del "+id, func() error { return t.api.ObjectDel(id) }))
			}
		}
	}
	if cs.Mode == "primary" {
		errs = append(errs, t.do(ctx, "x-colo-lost-heartbeat", t.api.XColoLostHeartbeat))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if st, err := t.runState(ctx); err == nil && st == "paused" {
		if err := t.do(ctx, "cont", t.api.Cont); err != nil {
			return err
		}
	}
	if cs.Mode == "primary" || lost {
		return t.waitRunning(ctx)
	}
	return nil
}

// hasReplicationChild reports whether the quorum holds the replication child.
func (t *Twin) hasReplicationChild(ctx context.Context) bool {
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := t.qmpRun(ctx, "query-named-block-nodes", map[string]bool{"flat": true}, &nodes); err != nil {
		return false
	}
	for _, n := range nodes {
		if n.NodeName == "replication0" {
			return true
		}
	}
	return false
}

// objects lists the ids of the user-created objects (qom-list /objects).
func (t *Twin) objects(ctx context.Context) map[string]bool {
	var props []struct {
		Name string `json:"name"`
	}
	have := map[string]bool{}
	if err := t.qmpRun(ctx, "qom-list", map[string]string{"path": "/objects"}, &props); err == nil {
		for _, p := range props {
			have[p.Name] = true
		}
	}
	return have
}

// TwinStatus is a twin half's replication as QEMU and dvm see it.
type TwinStatus struct {
	Role     TwinRole
	State    TwinState
	RunState string // QEMU's run state: running, paused, inmigrate, colo, …
	// COLOMode is QEMU's COLO mode: primary, secondary or none.
	COLOMode string
	// LastCOLOExit is why COLO last ended on this half: "request" (a failover),
	// "error" (QEMU gave up on its peer) or "none".
	LastCOLOExit string
	// Migration is the primary's migration status ("colo" while protected) and
	// SyncRemaining the bytes of memory still to copy while it is syncing.
	Migration     string
	SyncRemaining int64
	// Checkpoints counts the half's checkpoints since it started (or was attached),
	// LastCheckpoint is how long the last one took (from the request to "loaded") and
	// LastCheckpointAt when it ended. QEMU 7.2 has no QMP figure for these; the runner
	// reads them from COLO's trace events.
	LastCheckpoint   time.Duration
	LastCheckpointAt time.Time
	Checkpoints      int64
}

// Status asks QEMU where the half's replication stands. A half that was protected and
// whose COLO ended without a failover (QEMU gave up on the peer) reports unprotected.
func (t *Twin) Status(ctx context.Context) (TwinStatus, error) {
	t.mu.Lock()
	s := TwinStatus{Role: t.role, State: t.state, Checkpoints: t.checkpoints, LastCheckpoint: t.lastCheckpoint, LastCheckpointAt: t.checkpointAt}
	t.mu.Unlock()
	// Asked over QMP, a wedged primary would not answer at all.
	if at, stuck := t.stuckSince(); stuck {
		return s, fmt.Errorf("twin %q: checkpoint %d ended at %s and the guest has not run since: %w", t.Name(), s.Checkpoints, at.UTC().Format(time.RFC3339Nano), ErrTwinStuck)
	}
	var err error
	if s.RunState, err = t.runState(ctx); err != nil {
		return s, err
	}
	cs, err := t.queryColo(ctx)
	if err != nil {
		return s, err
	}
	s.COLOMode, s.LastCOLOExit = cs.Mode, cs.Reason
	if s.Role == TwinPrimary {
		mi, err := t.queryMigrate(ctx)
		if err != nil {
			return s, err
		}
		s.Migration, s.SyncRemaining = mi.Status, mi.RAM.Remaining
	}
	switch {
	case cs.Mode == "primary" || cs.Mode == "secondary":
		s.State = TwinProtected
	case s.State == TwinProtected:
		s.State = TwinUnprotected
	}
	return s, nil
}
