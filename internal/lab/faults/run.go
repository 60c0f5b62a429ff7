package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/lab"
)

// The checks a Violation names (see the package doc).
const (
	CheckTwice      = "twice"
	CheckTwoMasters = "two-masters"
	CheckLostWrite  = "lost-write"
	CheckStuck      = "stuck"
)

// Options say what Run does.
type Options struct {
	Lab      *lab.Lab
	Schedule Schedule
	// Out receives the schedule, each step as it runs, and the verdict; nil: nowhere.
	Out io.Writer
	// Prefix starts the name of every guest the run creates; empty means "f<seed>-".
	Prefix string
	// WriteBound and RestartBound bound the time from the end of the finale to a
	// write accepted and to every restart guest running; 0 means 30 s and 90 s.
	WriteBound, RestartBound time.Duration
	// Interval between two samples of every node; 0 means 100 ms.
	Interval time.Duration
	// Rerun is the command that replays this schedule, printed with a failing verdict.
	Rerun string
}

// Violation is one breach of a check.
type Violation struct {
	Check  string
	Detail string
}

func (v Violation) String() string { return v.Check + ": " + v.Detail }

// Result is what a run found.
type Result struct {
	Schedule   Schedule
	Violations []Violation
	// Samples of every node, and how many node samples were read from /proc because
	// the node was paused or its libvirtd did not answer in time.
	Samples, FromProc int
	// Acked writes (creates answered 201 or 202), those whose answer named a stable
	// term, and the masters that acknowledged them.
	Acked, WithTerm int
	Masters         []string
	Checkpoints     int
	// From the end of the finale to a write accepted, and to every restart guest
	// running; the OK flags are false when that did not happen within its bound.
	WritesAfterHeal, RestartAfterHeal time.Duration
	WritesOK, RestartOK               bool
	RestartGuests                     int
}

// OK says whether the run found no violation.
func (r *Result) OK() bool { return len(r.Violations) == 0 }

// Verdict is the run's last line: PASS or FAIL with the figures.
func (r *Result) Verdict() string {
	word := "PASS"
	if !r.OK() {
		word = fmt.Sprintf("FAIL (%d violations)", len(r.Violations))
	}
	writes, restart := "not within the bound", "not within the bound"
	if r.WritesOK {
		writes = fmt.Sprintf("%.2f s", r.WritesAfterHeal.Seconds())
	}
	if r.RestartOK {
		restart = fmt.Sprintf("%.2f s", r.RestartAfterHeal.Seconds())
	}
	return fmt.Sprintf("verdict: %s seed %d: %d samples of every node (%d node samples from /proc); %d acknowledged writes (%d with a stable term) from masters %v; %d checkpoints; last heal -> writes accepted %s, -> all %d restart guests running %s",
		word, r.Schedule.Seed, r.Samples, r.FromProc, r.Acked, r.WithTerm, r.Masters, r.Checkpoints, writes, r.RestartGuests, restart)
}

// ack is a create the cluster acknowledged.
type ack struct {
	name     string
	failover string
	running  bool
	answer
}

type runner struct {
	opts   Options
	lab    *lab.Lab
	cl     *client
	smp    *Sampler
	start  time.Time
	prefix string

	mu         sync.Mutex
	acks       []ack
	violations []Violation
	checks     sync.WaitGroup
	nCheck     int
}

// Run carries out the schedule on the lab (which must be up, with as many nodes as
// the schedule) while checking it, and returns what it found. An error means the run
// could not be carried out (the lab, not dvm); violations are in the Result.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.WriteBound == 0 {
		opts.WriteBound = 30 * time.Second
	}
	if opts.RestartBound == 0 {
		opts.RestartBound = 90 * time.Second
	}
	if opts.Interval == 0 {
		opts.Interval = 100 * time.Millisecond
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	l := opts.Lab
	if !l.IsUp() {
		return nil, fmt.Errorf("lab in %s is down: bring it up with `vmctl lab up --nodes %d --dir %s`", l.Dir(), opts.Schedule.Nodes, l.Dir())
	}
	nodes := l.Nodes()
	if len(nodes) != opts.Schedule.Nodes {
		return nil, fmt.Errorf("the schedule is for %d nodes and the lab in %s has %d: bring up a lab of %d (`vmctl lab up --nodes %d`)",
			opts.Schedule.Nodes, l.Dir(), len(nodes), opts.Schedule.Nodes, opts.Schedule.Nodes)
	}
	for _, n := range nodes {
		if n.PID == 0 || n.Paused {
			return nil, fmt.Errorf("node %s of the lab is killed or paused: a schedule starts from a lab whose nodes all run (`vmctl lab restart %s`, or resume)", n.Name, n.Name)
		}
	}
	if len(l.Cuts()) > 0 {
		return nil, fmt.Errorf("the lab has cuts in force: heal them first (`vmctl lab heal --dir %s`)", l.Dir())
	}
	token, err := l.Token()
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.AgentURL)
	}
	r := &runner{opts: opts, lab: l, cl: newClient(addrs, token, l.TLSConfig(), 5*time.Second), start: time.Now(), prefix: opts.Prefix}
	if r.prefix == "" {
		r.prefix = fmt.Sprintf("f%d-", opts.Schedule.Seed)
	}
	fmt.Fprintf(opts.Out, "faults: %s", opts.Schedule)
	r.smp = StartSampler(l, opts.Interval)
	defer r.smp.Stop()

	if err := r.settle(ctx, nodes); err != nil {
		return nil, err
	}
	if err := r.setup(ctx); err != nil {
		return nil, err
	}
	wctx, stopWriter := context.WithCancel(ctx)
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); r.writer(wctx) }()

	var stepErr error
	for i, st := range opts.Schedule.Steps {
		if stepErr = r.step(ctx, fmt.Sprintf("%d/%d", i+1, len(opts.Schedule.Steps)), st); stepErr != nil {
			break
		}
	}
	if stepErr == nil && ctx.Err() == nil {
		for _, st := range opts.Schedule.Finale {
			if stepErr = r.step(ctx, "finale", Step{Kind: st.Kind, Node: st.Node}); stepErr != nil {
				break
			}
		}
	}
	if stepErr != nil || ctx.Err() != nil {
		// A run cut short leaves no stopped process and no cut behind.
		r.cleanup()
		stopWriter()
		<-writerDone
		r.checks.Wait()
		if stepErr == nil {
			stepErr = ctx.Err()
		}
		return nil, stepErr
	}
	healed := time.Now()
	r.logf("last heal: every node runs, none is cut")
	res := &Result{Schedule: opts.Schedule}
	r.afterHeal(ctx, healed, res)
	stopWriter()
	<-writerDone
	r.checks.Wait()
	// The end's own checkpoint, once no write is under way.
	r.checkLost(ctx, "end", 30*time.Second, true)
	r.judge(res)
	fmt.Fprintln(opts.Out, res.Verdict())
	if !res.OK() {
		for _, v := range res.Violations {
			fmt.Fprintf(opts.Out, "  %s\n", v)
		}
		if opts.Rerun != "" {
			fmt.Fprintf(opts.Out, "rerun: %s\n", opts.Rerun)
		}
	}
	return res, ctx.Err()
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.opts.Out, "[%6.1fs] %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...))
}

func (r *runner) violate(check, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := Violation{Check: check, Detail: fmt.Sprintf(format, args...)}
	r.violations = append(r.violations, v)
	r.logf("VIOLATION %s", v)
}

// guestReq is a create of the lab image: small, so that a few run at once on a
// 2-core machine. A running guest with disk has one on the lab's shared storage: a
// second copy would write the same disk, and libvirt's lock manager is there to refuse
// it. A running guest without (a stateless one) has fencing alone between it and a
// second copy, so both guards are tried.
func guestReq(name, failover string, running, disk bool) api.CreateGuest {
	start := running
	req := api.CreateGuest{Name: name, OS: "linux", Image: "lab", CPUs: 1, MemoryBytes: 64 << 20, Failover: failover, Start: &start}
	if running {
		req.MemoryBytes = 96 << 20
	}
	if disk {
		req.DiskBytes = 64 << 20
	}
	return req
}

// settle waits until every node, asked on its own, names the same acting master and
// the same three voters, with raft's voters the same: faults start on a cluster in
// service, not on one still forming.
func (r *runner) settle(ctx context.Context, nodes []lab.Node) error {
	deadline := time.Now().Add(3 * time.Minute)
	var last string
	for {
		var first *api.ClusterStatus
		ok := true
		for _, n := range nodes {
			a := r.cl.one(ctx, n.AgentURL, http.MethodGet, "/v1/cluster", nil)
			var st api.ClusterStatus
			if a.code != http.StatusOK || json.Unmarshal(a.body, &st) != nil {
				ok, last = false, fmt.Sprintf("%s: %d %v", n.Name, a.code, a.err)
				break
			}
			voters, raft := slices.Sorted(slices.Values(st.Voters)), slices.Sorted(slices.Values(st.RaftVoters))
			if st.Master == "" || len(voters) != 3 || !slices.Equal(voters, raft) || (first != nil && (st.Master != first.Master || !slices.Equal(voters, first.Voters))) {
				ok, last = false, fmt.Sprintf("%s sees master %q, voters %v, raft voters %v", n.Name, st.Master, st.Voters, st.RaftVoters)
				break
			}
			if first == nil {
				st.Voters = voters
				first = &st
			}
		}
		if ok && first.Acting {
			r.logf("cluster in service: master %s, voters %v, generation %d", first.Master, first.Voters, first.Generation)
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the lab's cluster did not settle within 3 minutes (a master and two backups that every node names): %s", last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// setup creates a running guest of each failover policy (two restart guests) and
// waits until every one runs.
func (r *runner) setup(ctx context.Context) error {
	guests := []struct {
		name, failover string
		disk           bool
	}{
		{r.prefix + "none", api.FailoverNone, true}, {r.prefix + "restart1", api.FailoverRestart, true},
		{r.prefix + "restart2", api.FailoverRestart, false}, {r.prefix + "twin", api.FailoverTwin, true},
	}
	var names []string
	for _, g := range guests {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			a := r.cl.do(ctx, http.MethodPost, "/v1/guests", guestReq(g.name, g.failover, true, g.disk))
			if r.record(a, g.name, g.failover, true) {
				break
			}
			if a.code == http.StatusConflict {
				return fmt.Errorf("guest %s exists already: run a schedule on a fresh lab, or give another --prefix", g.name)
			}
			if a.code >= 400 && a.code < 500 {
				return fmt.Errorf("create guest %s: %d %s", g.name, a.code, strings.TrimSpace(string(a.body)))
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("create guest %s: no master accepted it within 2 minutes (last answer: %d %s %v)", g.name, a.code, strings.TrimSpace(string(a.body)), a.err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		names = append(names, g.name)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var waiting []string
		for _, g := range names {
			if _, ok := r.smp.runningSince(g); !ok {
				waiting = append(waiting, g)
			}
		}
		if len(waiting) == 0 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("guests %v did not run within 3 minutes of their creation, before any fault: see `vmctl vm ls` and the nodes' dvmd.log", waiting)
		}
		time.Sleep(200 * time.Millisecond)
	}
	r.logf("setup: guests %s run", strings.Join(names, ", "))
	return nil
}

// record keeps a create's answer and says whether it acknowledged the write.
func (r *runner) record(a answer, name, failover string, running bool) bool {
	if a.code != http.StatusCreated && a.code != http.StatusAccepted {
		return false
	}
	r.mu.Lock()
	r.acks = append(r.acks, ack{name: name, failover: failover, running: running, answer: a})
	r.mu.Unlock()
	return true
}

// writer creates guests until ctx ends: mostly stopped ones (no QEMU), of every
// policy, and two running restart guests, the first with a disk, the second without.
func (r *runner) writer(ctx context.Context) {
	policies := []string{api.FailoverNone, api.FailoverRestart, api.FailoverTwin}
	started := 0
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("%sw%d", r.prefix, i)
		failover, running := policies[i%len(policies)], false
		if i%6 == 4 && started < 2 {
			failover, running = api.FailoverRestart, true
		}
		a := r.cl.do(ctx, http.MethodPost, "/v1/guests", guestReq(name, failover, running, running && started%2 == 0))
		if r.record(a, name, failover, running) && running {
			started++
		}
		select {
		case <-ctx.Done():
		case <-time.After(700 * time.Millisecond):
		}
	}
}

// step carries out one step and, after a step that undoes a fault, starts a
// checkpoint.
func (r *runner) step(ctx context.Context, label string, st Step) error {
	if st.Wait > 0 {
		r.logf("%s %s, then wait %s", label, st.Action(), st.Wait)
	} else {
		r.logf("%s %s", label, st.Action())
	}
	t0 := time.Now()
	var err error
	switch st.Kind {
	case Kill:
		err = r.lab.Kill(st.Node)
	case Pause:
		err = r.lab.Pause(st.Node)
	case Resume:
		err = r.lab.Resume(st.Node)
	case Cut:
		var peers []string
		for _, n := range r.lab.Nodes() {
			if n.Name != st.Node {
				peers = append(peers, n.Name)
			}
		}
		err = r.lab.Cut(st.Node, peers)
	case CutLink:
		err = r.lab.Cut(st.Node, []string{st.Peer})
	case Heal:
		err = r.lab.Heal(st.Node)
	case Restart:
		err = r.lab.Restart(ctx, st.Node)
	default:
		err = fmt.Errorf("unknown step %q", st.Kind)
	}
	if err != nil {
		r.logf("%s %s failed: %v", label, st.Action(), err)
		return fmt.Errorf("step %s (%s): %w", label, st.Action(), err)
	}
	if d := time.Since(t0); d > time.Second {
		r.logf("%s %s took %.1fs", label, st.Action(), d.Seconds())
	}
	if label != "finale" && (st.Kind == Heal || st.Kind == Resume || st.Kind == Restart) {
		r.checks.Add(1)
		go func() {
			defer r.checks.Done()
			r.checkLost(ctx, "after "+label+" "+st.Action(), 15*time.Second, false)
		}()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(st.Wait):
	}
	return nil
}

// cleanup resumes every paused node and heals every cut, whatever the schedule
// did so far.
func (r *runner) cleanup() {
	for _, n := range r.lab.Nodes() {
		if n.Paused {
			if err := r.lab.Resume(n.Name); err != nil {
				r.logf("cleanup: %v", err)
			}
		}
	}
	if err := r.lab.Heal(""); err != nil {
		r.logf("cleanup: %v", err)
	}
	r.logf("cleanup: every node resumed, every cut healed")
}

// checkLost lists the guests and looks for every write acknowledged before it began.
// A list counts for a write only when it comes from a master of a (generation, term)
// at least as new as the write's; a guest missing is looked for again until within
// has passed. At the end (final), a write that no such list answered for is a
// violation too: no master as new as the writes answered.
func (r *runner) checkLost(ctx context.Context, label string, within time.Duration, final bool) {
	r.mu.Lock()
	r.nCheck++
	acked := make([]ack, 0, len(r.acks))
	begin := time.Now()
	for _, a := range r.acks {
		if a.end.Before(begin) {
			acked = append(acked, a)
		}
	}
	r.mu.Unlock()
	found := map[string]bool{}
	missedBy := map[string]answer{} // a list, as new as the write, that lacked it
	deadline := begin.Add(within)
	for len(found) < len(acked) && time.Now().Before(deadline) && ctx.Err() == nil {
		a := r.cl.do(ctx, http.MethodGet, "/v1/guests", nil)
		var list []api.Guest
		if a.code != http.StatusOK || !a.epoch.known() || json.Unmarshal(a.body, &list) != nil {
			time.Sleep(300 * time.Millisecond)
			continue
		}
		listed := map[string]bool{}
		for _, g := range list {
			listed[g.Name] = true
		}
		for _, w := range acked {
			if found[w.name] || (w.epoch.known() && a.epoch.less(w.epoch)) {
				continue
			}
			if listed[w.name] {
				found[w.name] = true
				delete(missedBy, w.name)
			} else {
				missedBy[w.name] = a
			}
		}
		if len(found) < len(acked) {
			time.Sleep(500 * time.Millisecond)
		}
	}
	var lost, unconfirmed []string
	for _, w := range acked {
		if found[w.name] {
			continue
		}
		if m, ok := missedBy[w.name]; ok {
			lost = append(lost, fmt.Sprintf("%s (acknowledged by %s in %s at %s; not listed by %s in %s at %s)",
				w.name, w.master, w.epoch, w.end.Format("15:04:05.000"), m.master, m.epoch, m.end.Format("15:04:05.000")))
		} else {
			unconfirmed = append(unconfirmed, w.name)
		}
	}
	if len(lost) > 0 {
		r.violate(CheckLostWrite, "checkpoint %s: %d acknowledged writes not listed for %s: %s", label, len(lost), within, strings.Join(lost, "; "))
	}
	switch {
	case len(unconfirmed) > 0 && final:
		r.violate(CheckStuck, "checkpoint %s: no master as new as the writes %v listed the guests within %s", label, unconfirmed, within)
	case len(unconfirmed) > 0:
		r.logf("checkpoint %s: %d of %d writes not confirmed (no master as new as them answered within %s)", label, len(unconfirmed), len(acked), within)
	default:
		r.logf("checkpoint %s: all %d acknowledged writes listed", label, len(acked))
	}
}

// afterHeal measures the time from the end of the finale to a write accepted and to
// every restart guest running.
func (r *runner) afterHeal(ctx context.Context, healed time.Time, res *Result) {
	r.checks.Add(1)
	go func() {
		defer r.checks.Done()
		r.checkLost(ctx, "after the finale", 30*time.Second, false)
	}()
	for i := 0; time.Since(healed) < r.opts.WriteBound && ctx.Err() == nil; i++ {
		name := fmt.Sprintf("%sh%d", r.prefix, i)
		a := r.cl.do(ctx, http.MethodPost, "/v1/guests", guestReq(name, api.FailoverNone, false, false))
		if r.record(a, name, api.FailoverNone, false) && !a.start.Before(healed) {
			res.WritesAfterHeal, res.WritesOK = a.end.Sub(healed), true
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if res.WritesOK {
		r.logf("a master accepted a write %.2f s after the last heal", res.WritesAfterHeal.Seconds())
	} else {
		r.violate(CheckStuck, "no write accepted within %s of the last heal", r.opts.WriteBound)
	}

	r.mu.Lock()
	var guests []string
	for _, a := range r.acks {
		if a.failover == api.FailoverRestart && a.running {
			guests = append(guests, a.name)
		}
	}
	r.mu.Unlock()
	res.RestartGuests = len(guests)
	var waiting []string
	for {
		waiting = waiting[:0]
		var last time.Time
		for _, g := range guests {
			since, ok := r.smp.runningSince(g)
			if !ok {
				waiting = append(waiting, g)
			} else if since.After(last) {
				last = since
			}
		}
		if len(waiting) == 0 {
			res.RestartAfterHeal, res.RestartOK = max(last.Sub(healed), 0), true
			r.logf("all %d restart guests run %.2f s after the last heal", len(guests), res.RestartAfterHeal.Seconds())
			return
		}
		if time.Since(healed) > r.opts.RestartBound || ctx.Err() != nil {
			r.violate(CheckStuck, "restart guests %v not running %s after the last heal", waiting, r.opts.RestartBound)
			return
		}
		time.Sleep(r.opts.Interval)
	}
}

// judge gathers the samples' and the acknowledgements' checks into res.
func (r *runner) judge(res *Result) {
	sr := r.smp.Report()
	res.Samples, res.FromProc = sr.Samples, sr.FromProc
	r.mu.Lock()
	if sr.Twice > 0 {
		r.violations = append(r.violations, Violation{CheckTwice, fmt.Sprintf("a guest ran on two nodes in %d of %d samples: %s",
			sr.Twice, sr.Samples, strings.Join(sr.Examples, "; "))})
	}
	defer r.mu.Unlock()
	if res.Samples < 10 {
		r.violations = append(r.violations, Violation{CheckTwice, fmt.Sprintf("only %d samples of the nodes: the check proves nothing", res.Samples)})
	}
	res.Acked = len(r.acks)
	masters := map[string]bool{}
	for _, a := range r.acks {
		masters[a.master] = true
		if a.epoch.known() {
			res.WithTerm++
		}
	}
	for m := range masters {
		res.Masters = append(res.Masters, m)
	}
	sort.Strings(res.Masters)
	r.violations = append(r.violations, twoMasters(r.acks)...)
	res.Violations = r.violations
	res.Checkpoints = r.nCheck
}

// twoMasters finds, among acknowledged writes, two masters in one (generation, term)
// and a master that acknowledged a write in an older (generation, term) after a write
// of a newer one had been acknowledged (see the package doc). Acknowledgements without
// a stable term are left out: they cannot be placed.
func twoMasters(acks []ack) []Violation {
	var out []Violation
	byEpoch := map[epoch]ack{}
	var known []ack
	for _, a := range acks {
		if !a.epoch.known() {
			continue
		}
		known = append(known, a)
		if o, ok := byEpoch[a.epoch]; ok && o.master != a.master {
			out = append(out, Violation{CheckTwoMasters, fmt.Sprintf("%s and %s both acknowledged writes in %s: %s at %s, %s at %s",
				o.master, a.master, a.epoch, o.name, o.end.Format("15:04:05.000"), a.name, a.end.Format("15:04:05.000"))})
			continue
		}
		byEpoch[a.epoch] = a
	}
	sort.Slice(known, func(i, j int) bool { return known[i].start.Before(known[j].start) })
	reported := map[[2]epoch]bool{}
	for i, newer := range known {
		for _, older := range known[i+1:] {
			// newer's answer came before older's request was sent, yet older's epoch
			// is the older one.
			if !newer.end.Before(older.start) || !older.epoch.less(newer.epoch) {
				continue
			}
			k := [2]epoch{older.epoch, newer.epoch}
			if reported[k] {
				continue
			}
			reported[k] = true
			out = append(out, Violation{CheckTwoMasters, fmt.Sprintf("%s acknowledged %s in %s at %s (sent %s), after %s had acknowledged %s in the newer %s at %s",
				older.master, older.name, older.epoch, older.end.Format("15:04:05.000"), older.start.Format("15:04:05.000"),
				newer.master, newer.name, newer.epoch, newer.end.Format("15:04:05.000"))})
		}
	}
	return out
}

// KeepLogs copies every node's logs (dvmd.log, node.log, the fence guard's log) into
// dst, as NODE-FILE, for a failed run to be read after the lab is gone.
func KeepLogs(l *lab.Lab, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	var errs []error
	for _, n := range l.Nodes() {
		for _, f := range []string{"dvmd.log", "node.log", "data/fence-guard.log"} {
			b, err := os.ReadFile(filepath.Join(n.Dir, f))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err == nil {
				err = os.WriteFile(filepath.Join(dst, n.Name+"-"+filepath.Base(f)), b, 0o644)
			}
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
