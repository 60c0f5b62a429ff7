// Package roles runs the role machine (failover.Machine) on a node: it feeds it
// membership and probes, carries its messages over the cluster's signed gossip
// transport, persists its hard state, and carries out its actions on raft, the master
// and the agent. failover decides; this package only wires.
package roles

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/dvmproject/dvm/failover"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/hashicorp/raft"
)

// Hooks are what the role machine's decisions do outside raft.
type Hooks struct {
	// Fence stops this node's restart and twin guests: its lease lapsed. Unfence lets
	// them run again.
	Fence, Unfence func()
	// DeclareLost runs on the master: node is lost and has fenced itself; its guests
	// may be recovered elsewhere.
	DeclareLost func(node, why string)
	// NodeReturned runs on the master: a lost node is back and was taken into the
	// cluster again.
	NodeReturned func(node string)
	// Rejoin runs on a management node whose raft replica belongs to an older
	// generation than its role machine's view while it is no voter of that generation:
	// the replica is thrown away and the node joins the current group again.
	Rejoin func(generation uint64)
	// Event records something operators should see (a node on hold, given up, a
	// generation change, a merge).
	Event func(kind, node, detail string)
}

// Config says how to run the role machine on one node.
type Config struct {
	Self      string
	Capable   bool // management-capable: may be candidate, backup, master
	Bootstrap bool // this node formed the cluster: it starts as master of generation 1
	Failover  failover.Config
	// StateFile keeps the machine's hard state across restarts.
	StateFile string
	Members   *cluster.Members
	// Store is this node's replica of the cluster state (management nodes); nil on
	// plain nodes.
	Store *store.Store
	Hooks Hooks
	Log   *slog.Logger
	// Tick is the machine's clock period.
	Tick time.Duration
	// Health measures this node's health (network, CPU, disk scores, uptime).
	Health func() failover.HealthReport
}

// Runner is the role machine of one node, running.
type Runner struct {
	cfg  Config
	log  *slog.Logger
	http *http.Client

	mu          sync.Mutex
	m           *failover.Machine    // nil until this node knows a view (a joining node waits for its first lease)
	direct      map[string]time.Time // node -> last answered direct probe
	lastLead    string
	lastTerm    uint64
	reformed    uint64    // generation this node's raft was last re-formed for
	rejoined    uint64    // generation this node last rejoined
	newerSince  time.Time // since when the view's generation is ahead of this node's raft
	handedBack  time.Time // last raft leadership transfer to the acting master
	synced      time.Time // last raft voter sync (syncVoters)
	syncing     bool
	transitions map[string]int
}

// New prepares a runner. A node with a saved hard state resumes from it; the node that
// bootstraps a cluster starts as its master; any other node waits for the master's
// first lease request, which carries the view it joins.
func New(cfg Config) (*Runner, error) {
	if cfg.Tick <= 0 {
		cfg.Tick = 100 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cfg.Failover.Self = cfg.Self
	if err := cfg.Failover.Validate(); err != nil {
		return nil, err
	}
	r := &Runner{cfg: cfg, log: cfg.Log.With("component", "roles"), http: &http.Client{Timeout: 400 * time.Millisecond},
		direct: map[string]time.Time{}, transitions: map[string]int{}}
	hs, err := r.loadHardState()
	switch {
	case err == nil:
		if r.m, err = failover.RestartMachine(cfg.Failover, hs); err != nil {
			return nil, fmt.Errorf("role machine: restart from %s: %w", cfg.StateFile, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	case cfg.Bootstrap:
		view := failover.ClusterView{Generation: 1, Version: 1, Master: cfg.Self, Voters: []string{cfg.Self},
			Nodes: []failover.NodeState{{Name: cfg.Self, Role: failover.RoleMaster, Capable: true}}}
		if r.m, err = failover.NewMachine(cfg.Failover, view); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (r *Runner) loadHardState() (failover.HardState, error) {
	var hs failover.HardState
	b, err := os.ReadFile(r.cfg.StateFile)
	if err != nil {
		return hs, err
	}
	if err := json.Unmarshal(b, &hs); err != nil {
		return hs, fmt.Errorf("role machine state %s: %w (move it away to rejoin as a new node)", r.cfg.StateFile, err)
	}
	return hs, nil
}

// saveHardState writes the machine's hard state durably: a lease granted and then
// forgotten in a crash could let two holders count the same node.
func (r *Runner) saveHardState() error {
	b, err := json.Marshal(r.m.HardState())
	if err != nil {
		return err
	}
	tmp := r.cfg.StateFile + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, r.cfg.StateFile); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(r.cfg.StateFile)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Run drives the machine until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	go r.probeLoop(ctx)
	t := time.NewTicker(r.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-r.cfg.Members.Events():
			r.onMember(ev.Member)
		case msg := <-r.cfg.Members.Messages():
			r.onMessage(msg)
		case now := <-t.C:
			r.tick(now)
		}
	}
}

func (r *Runner) step(ev failover.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		return
	}
	before := r.m.Role()
	acts := r.m.Step(ev)
	if after := r.m.Role(); after != before {
		r.transitions[string(before)+"->"+string(after)]++
		r.log.Info("role changed", "from", before, "to", after, "generation", r.m.Generation())
		r.event("role", r.cfg.Self, fmt.Sprintf("%s -> %s in generation %d", before, after, r.m.Generation()))
	}
	r.carryOut(acts)
}

func (r *Runner) event(kind, node, detail string) {
	if r.cfg.Hooks.Event != nil {
		r.cfg.Hooks.Event(kind, node, detail)
	}
}

func health(meta cluster.Meta) failover.HealthReport {
	h := failover.HealthReport{Network: meta.Network, CPU: meta.CPU, Disk: meta.Disk, Downtime: meta.Downtime}
	if !meta.UpSince.IsZero() {
		h.Uptime = time.Since(meta.UpSince)
	}
	return h
}

func (r *Runner) onMember(m cluster.Member) {
	if m.Name == r.cfg.Self || m.MetaErr != nil {
		return
	}
	r.step(failover.Health{Node: m.Name, Report: health(m.Meta)})
	if m.State == cluster.StateAlive {
		r.step(failover.Register{Node: m.Name, Capable: m.Meta.Management})
	}
}

func (r *Runner) onMessage(msg cluster.Message) {
	var fm failover.Message
	if err := json.Unmarshal(msg.Payload, &fm); err != nil || fm.From != msg.From {
		r.log.Warn("role message refused", "from", msg.From, "err", err)
		return
	}
	r.mu.Lock()
	if r.m == nil && fm.Type == failover.MsgLease && fm.View != nil && fm.View.Role(r.cfg.Self) != "" {
		// A joining node's first lease request: the master's view lists it now.
		m, err := failover.NewMachine(r.cfg.Failover, *fm.View)
		if err != nil {
			r.mu.Unlock()
			r.log.Warn("view from master refused", "from", fm.From, "err", err)
			return
		}
		r.m = m
		r.m.Step(failover.Tick{Now: time.Now()})
		r.log.Info("joined the management view", "master", fm.From, "generation", fm.View.Generation, "role", r.m.Role())
	}
	r.mu.Unlock()
	r.step(fm)
}

// tick feeds the clock, probes, our own health, registrations and raft leadership.
func (r *Runner) tick(now time.Time) {
	r.step(failover.Tick{Now: now})
	if r.cfg.Health != nil {
		r.step(failover.Health{Node: r.cfg.Self, Report: r.cfg.Health()})
	}
	members := map[string]cluster.Member{}
	for _, m := range r.cfg.Members.Members() {
		members[m.Name] = m
	}
	r.mu.Lock()
	var nodes []string
	if r.m != nil {
		for _, n := range r.m.View().Nodes {
			nodes = append(nodes, n.Name)
		}
	}
	direct := map[string]bool{}
	for _, n := range nodes {
		direct[n] = now.Sub(r.direct[n]) < 3*r.cfg.Tick+400*time.Millisecond
	}
	r.mu.Unlock()
	// Health from every member's gossip metadata, every tick: a node that joined the
	// view after the members' join events (or a backup promoted to master) knows the
	// others' health only from here.
	for name, m := range members {
		if name != r.cfg.Self && m.MetaErr == nil && m.State == cluster.StateAlive {
			r.step(failover.Health{Node: name, Report: health(m.Meta)})
		}
	}
	for _, n := range nodes {
		if n == r.cfg.Self {
			continue
		}
		m, known := members[n]
		gossip := known && m.State == cluster.StateAlive
		p := failover.Probe{Node: n, Reachable: direct[n] || gossip}
		if !direct[n] && gossip {
			p.Via = "gossip"
		}
		r.step(p)
	}
	// New members the master has not registered yet (their join event may have come
	// before this node was master).
	for name, m := range members {
		if name != r.cfg.Self && m.State == cluster.StateAlive && m.MetaErr == nil {
			r.step(failover.Register{Node: name, Capable: m.Meta.Management})
		}
	}
	r.observeRaft()
}

// observeRaft reports raft leadership to the machine, writes the generation into the
// replicated state on the leader, and re-forms this node's raft when the machine's
// view names it a voter of a newer generation.
func (r *Runner) observeRaft() {
	st := r.cfg.Store
	if st == nil {
		return
	}
	leader := st.Leader()
	term, _ := strconv.ParseUint(st.Raft().Stats()["term"], 10, 64)
	r.mu.Lock()
	if r.m == nil {
		r.mu.Unlock()
		return
	}
	gen := r.m.Generation()
	view := r.m.View()
	if leader != "" {
		r.lastLead, r.lastTerm = leader, term
	}
	r.mu.Unlock()
	// Told every tick, not only on a change: a machine that could not take the news
	// when it came (it was not yet a backup in its view) takes it as soon as it can.
	// The leader is reported with the generation this raft has recorded (a new
	// cluster records none before its first: that is 1), and the machine takes it
	// only for its own: an old group's leader (a non-voter keeps naming one it no
	// longer hears from) would otherwise demote a re-formed master.
	raftGen := max(st.Meta().Generation, 1)
	if leader != "" {
		r.step(failover.LeaderObserved{Leader: leader, Generation: raftGen, Term: term})
	}
	if err := st.AdoptEpoch(); err != nil {
		r.log.Warn("raft epoch", "err", err)
	}
	if raftGen == gen {
		// Only a raft of the view's generation may hand leadership on or change
		// voters: an old group's leader (a minority that kept raft's quorum) must not.
		r.handBackLeadership()
		r.syncVoters()
	}
	// The generation goes into the log of its own raft only: the re-formed group's
	// (its epoch is the generation) or the first group's. An old group's leader that
	// kept its quorum in a minority would otherwise stamp its stale log with the new
	// generation, and its members would never see they must rejoin.
	if st.IsLeader() && st.Meta().Generation < gen && (st.Epoch() == gen || gen == 1) {
		if _, err := st.Apply(store.Command{Op: store.OpSetMeta, Meta: &store.Meta{Generation: gen}}); err != nil {
			r.log.Warn("record generation", "generation", gen, "err", err)
		}
	}
	// A candidate named voter of a re-formed generation follows the semi-master: its
	// raft still has the old group's configuration, which has no quorum any more. A
	// non-voter keeps naming the old leader after it stopped hearing from it, so
	// silence counts as no leader.
	oldLeaderGone := leader == "" || st.LeaderSilence() > 2*time.Second
	if gen > 1 && gen > st.Meta().Generation && gen > r.reformed && oldLeaderGone && slices.Contains(view.Voters, r.cfg.Self) {
		r.reform(gen, view.Voters)
	}
	// A management node that is no voter of the newer generation keeps the old group's
	// raft, which the new group does not include: once the new group has written its
	// generation (give it a few seconds), drop the replica and join.
	r.mu.Lock()
	behind := gen > 1 && gen > st.Meta().Generation && !slices.Contains(view.Voters, r.cfg.Self)
	if !behind {
		r.newerSince = time.Time{}
	} else if r.newerSince.IsZero() {
		r.newerSince = time.Now()
	}
	due := behind && gen > r.rejoined && time.Since(r.newerSince) > 5*time.Second
	if due {
		r.rejoined = gen
	}
	r.mu.Unlock()
	if due && r.cfg.Hooks.Rejoin != nil {
		go r.cfg.Hooks.Rejoin(gen)
	}
}

// handBackLeadership gives raft's leadership to the acting master when this node holds
// it instead (raft elected another voter of a re-formed group, or moved on a hiccup):
// the master that holds the majority lease is the one that writes.
func (r *Runner) handBackLeadership() {
	st := r.cfg.Store
	if !st.IsLeader() {
		return
	}
	r.mu.Lock()
	master, ok := r.m.MasterToLead()
	due := ok && time.Since(r.handedBack) > 2*time.Second
	if due {
		r.handedBack = time.Now()
	}
	r.mu.Unlock()
	if !due {
		return
	}
	servers, err := st.Members()
	if err != nil {
		return
	}
	for _, s := range servers {
		if string(s.ID) == master && s.Suffrage == raft.Voter {
			r.log.Info("handing raft leadership to the acting master", "master", master)
			go func() {
				if err := st.Raft().LeadershipTransferToServer(s.ID, s.Address).Error(); err != nil {
					r.log.Warn("hand raft leadership to the acting master", "master", master, "err", err)
				}
			}()
			return
		}
	}
}

// syncVoters makes raft's voters the role machine's voters, on the acting master that
// leads raft: view voters that only follow the log are made voters, and once all of
// them vote, any other voter is made a non-voter again. Raft's leader election then
// only ever picks a master or backup of the role table.
func (r *Runner) syncVoters() {
	st := r.cfg.Store
	if !st.IsLeader() {
		return
	}
	r.mu.Lock()
	voters := r.m.View().Voters
	due := r.m.Acting() && !r.syncing && time.Since(r.synced) > time.Second
	if due {
		r.syncing, r.synced = true, time.Now()
	}
	r.mu.Unlock()
	if !due {
		return
	}
	go func() {
		defer func() {
			r.mu.Lock()
			r.syncing = false
			r.mu.Unlock()
		}()
		servers, err := st.Members()
		if err != nil {
			return
		}
		missing := false
		for _, v := range voters {
			if !slices.ContainsFunc(servers, func(s raft.Server) bool { return string(s.ID) == v && s.Suffrage == raft.Voter }) {
				missing = true
			}
		}
		for _, s := range servers {
			if slices.Contains(voters, string(s.ID)) && s.Suffrage != raft.Voter {
				r.log.Info("raft voter for the role table", "node", s.ID)
				if err := st.Raft().AddVoter(s.ID, s.Address, 0, 5*time.Second).Error(); err != nil {
					r.log.Warn("make voter", "node", s.ID, "err", err)
				}
			}
		}
		if missing {
			return
		}
		for _, s := range servers {
			if !slices.Contains(voters, string(s.ID)) && s.Suffrage == raft.Voter {
				r.log.Info("raft voter not in the role table: follows the log only", "node", s.ID)
				if err := st.Raft().DemoteVoter(s.ID, 0, 5*time.Second).Error(); err != nil {
					r.log.Warn("make non-voter", "node", s.ID, "err", err)
				}
			}
		}
	}()
}

// probeLoop asks every member's dvmd directly, a few times a second: the machine tells
// a node in direct reach from one only reachable through others.
func (r *Runner) probeLoop(ctx context.Context) {
	t := time.NewTicker(3 * r.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var wg sync.WaitGroup
		for _, m := range r.cfg.Members.Members() {
			if m.Name == r.cfg.Self || m.Meta.API == "" || m.State == cluster.StateLeft {
				continue
			}
			wg.Add(1)
			go func(name, api string) {
				defer wg.Done()
				resp, err := r.http.Get("http://" + api + "/v1/health")
				if err != nil {
					return
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					r.mu.Lock()
					r.direct[name] = time.Now()
					r.mu.Unlock()
				}
			}(m.Name, m.Meta.API)
		}
		wg.Wait()
	}
}

// carryOut does what the machine decided. Called with r.mu held.
func (r *Runner) carryOut(acts []failover.Action) {
	sends := false
	for _, a := range acts {
		if _, ok := a.(failover.Send); ok {
			sends = true
		}
	}
	if sends {
		if err := r.saveHardState(); err != nil {
			// Without its grant on disk the node must not promise a lease.
			r.log.Error("save role machine state: not sending", "err", err)
			return
		}
	}
	for _, a := range acts {
		switch a := a.(type) {
		case failover.Send:
			b, err := json.Marshal(a.Msg)
			if err == nil {
				go r.cfg.Members.Send(a.Msg.To, b)
			}
		case failover.Fence:
			if a.Node == r.cfg.Self && r.cfg.Hooks.Fence != nil {
				r.log.Warn("fenced: lease lapsed")
				go r.cfg.Hooks.Fence()
			}
		case failover.Unfence:
			if a.Node == r.cfg.Self && r.cfg.Hooks.Unfence != nil {
				r.log.Info("unfenced: lease held")
				go r.cfg.Hooks.Unfence()
			}
		case failover.DeclareLost:
			r.log.Warn("node lost", "node", a.Node, "why", a.Why)
			r.event("node-lost", a.Node, a.Why)
			if r.cfg.Hooks.DeclareLost != nil {
				go r.cfg.Hooks.DeclareLost(a.Node, a.Why)
			}
		case failover.Promote:
			r.event("promote", a.Node, string(a.To))
			if a.To == failover.RoleBackup {
				go r.raftVoter(a.Node, "")
			}
		case failover.ReplaceVoter:
			r.event("replace-voter", a.New, "replaces "+a.Old)
			go r.raftVoter(a.New, a.Old)
		case failover.Demote:
			r.event("demote", a.Node, string(a.To))
			go r.raftDemote(a.Node, a.To)
			if r.cfg.Hooks.NodeReturned != nil && a.To != failover.RoleLost {
				go r.cfg.Hooks.NodeReturned(a.Node)
			}
		case failover.ReForm:
			r.event("re-form", r.cfg.Self, fmt.Sprintf("generation %d with voters %v", a.Generation, a.Voters))
			go r.reform(a.Generation, a.Voters)
		case failover.Hold:
			r.event("on-hold", a.Node, a.Why)
		case failover.Notify:
			r.event(a.Kind, a.Node, a.Detail)
		case failover.Merge:
			// The machine follows the winner from now on. Raft needs no step here: a node
			// of the same generation is in the winner's raft group already, and one of an
			// older generation rejoins from observeRaft.
			r.event("merge", r.cfg.Self, fmt.Sprintf("into the group of %s: %s", a.Into, a.Reason))
		case failover.StopContacting:
			r.event("gave-up", a.Node, "no longer contacted")
		case failover.SolitudeShutdown:
			r.event("solitude", a.Node, "reached no other node: management shut down")
		case failover.RequestVotes:
			r.event("semi-master", r.cfg.Self, fmt.Sprintf("asking witness votes for generation %d", a.Generation))
		}
	}
}

// raftVoter makes node a raft voter (it must already follow the log as a non-voter,
// which every management node does once it joined) and removes old, if given.
func (r *Runner) raftVoter(node, old string) {
	st := r.cfg.Store
	if st == nil || !st.IsLeader() {
		return
	}
	servers, err := st.Members()
	if err != nil {
		return
	}
	for _, s := range servers {
		if string(s.ID) == node {
			if s.Suffrage != raft.Voter {
				if err := st.Raft().AddVoter(s.ID, s.Address, 0, 5*time.Second).Error(); err != nil {
					r.log.Warn("promote to voter", "node", node, "err", err)
					return
				}
			}
		}
	}
	if old != "" {
		if err := st.Raft().RemoveServer(raft.ServerID(old), 0, 5*time.Second).Error(); err != nil {
			r.log.Warn("remove voter", "node", old, "err", err)
		}
	}
}

func (r *Runner) raftDemote(node string, to failover.Role) {
	st := r.cfg.Store
	if st == nil || !st.IsLeader() || node == r.cfg.Self {
		return
	}
	var err error
	if to == failover.RoleCandidate || to == failover.RoleBackup {
		err = st.Raft().DemoteVoter(raft.ServerID(node), 0, 5*time.Second).Error()
	} else {
		err = st.Raft().RemoveServer(raft.ServerID(node), 0, 5*time.Second).Error()
	}
	if err != nil {
		r.log.Warn("demote", "node", node, "to", to, "err", err)
	}
}

// reform forces this node's raft into the voters of a new generation.
func (r *Runner) reform(gen uint64, voters []string) {
	st := r.cfg.Store
	if st == nil {
		return
	}
	r.mu.Lock()
	if gen <= r.reformed {
		r.mu.Unlock()
		return
	}
	r.reformed = gen
	r.mu.Unlock()
	known, err := st.Members()
	if err != nil {
		r.log.Error("re-form: raft configuration", "err", err)
		return
	}
	var servers []raft.Server
	for _, v := range voters {
		for _, s := range known {
			if string(s.ID) == v {
				servers = append(servers, raft.Server{ID: s.ID, Address: s.Address, Suffrage: raft.Voter})
			}
		}
	}
	if len(servers) != len(voters) {
		r.log.Error("re-form: a voter never joined the replicated state", "voters", voters)
		return
	}
	r.log.Warn("re-forming the management group", "generation", gen, "voters", voters)
	if err := st.Reform(servers, gen); err != nil {
		r.log.Error("re-form", "err", err)
	}
}

// Status is the machine's status for the API; ok is false before this node knows a view.
func (r *Runner) Status() (failover.Status, failover.ClusterView, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		return failover.Status{}, failover.ClusterView{}, false
	}
	return r.m.Status(), r.m.View(), true
}

// Acting says whether this node is the master and holds leases from a majority.
func (r *Runner) Acting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m != nil && r.m.Acting()
}

// Transitions counts role changes on this node, for metrics.
func (r *Runner) Transitions() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.transitions {
		out[k] = v
	}
	return out
}

// Fenced says whether this node holds no lease now (a node that knows no view yet
// holds none).
func (r *Runner) Fenced() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m == nil || r.m.Fenced()
}
