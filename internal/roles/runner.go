// Package roles runs the role machine (failover.Machine) on a node: it feeds it
// membership and probes, carries its messages over the cluster's signed gossip
// transport, persists its hard state, and carries out its actions on raft, the master
// and the agent. failover decides; this package only wires.
package roles

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/dvmproject/dvm/failover"
	"github.com/dvmproject/dvm/internal/atomicfile"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/hashicorp/raft"
)

// Hooks are what the role machine's decisions do outside raft.
type Hooks struct {
	// Fence stops this node's restart and twin guests: its lease lapsed at since
	// (they get the fence grace from then, not from now). Unfence lets them run again.
	// Both are called on the machine's goroutine, in order: they must be quick and
	// must not call the runner.
	Fence   func(since time.Time)
	Unfence func()
	// DeclareLost runs on the master: node is lost and has fenced itself; its guests
	// are recovered elsewhere in the same write that records the loss. The machine
	// asks again until the replicated state records it, so it must be idempotent.
	DeclareLost func(node, why string)
	// Readmit runs on the master: a node recorded lost is back and was taken in again.
	// Asked again until the replicated state no longer records the loss.
	Readmit func(node string)
	// Join asks the master to take this node's replica into raft's configuration.
	Join func()
	// Event records something operators should see (a node on hold, given up, a
	// generation change, a merge).
	Event func(kind, node, detail string)
	// PowerFence powers node off through its power fence agent and returns nil only
	// once the agent confirmed it; nil: no power fencing (the machine asks for none
	// unless Failover.PowerFenceAfter is set). It runs off the machine's goroutine.
	PowerFence func(ctx context.Context, node string) error
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
	// Health measures this node's health (network, CPU, disk scores, uptime).
	Health func() failover.HealthReport
	// ProbeTLS, when set, gives the TLS configuration for asking a member's dvmd for
	// its health (its API listener speaks TLS); nil probes over plain HTTP.
	ProbeTLS func(node string) *tls.Config
}

// Runner is the role machine of one node, running.
type Runner struct {
	cfg  Config
	log  *slog.Logger
	http *http.Client

	probeMu sync.Mutex
	probes  map[string]*http.Client // node -> client that probes it over TLS

	mu          sync.Mutex
	m           *failover.Machine    // nil until this node knows a view (a joining node waits for its first lease)
	direct      map[string]time.Time // node -> last answered direct probe
	transitions map[string]int
	powerFences map[[2]string]int // node, result (off or failed) -> agent runs

	// Raft duties run one at a time each, off the machine's goroutine: a duty asked
	// while the last is still running is dropped (the machine asks again).
	busyMu sync.Mutex
	busy   map[string]bool
	// lost orders the master's recovery and readmission hooks: one worker, in the
	// order the machine asked.
	lost chan func()
	// handOvers are the hand-over messages on their way: raft's leadership moves to
	// the successor only once they are out (or handOverSendWait has passed), so that
	// the successor knows the old master stopped acting when raft makes it leader.
	handOvers sync.WaitGroup
}

// New prepares a runner. A node with a saved hard state resumes from it; the node that
// bootstraps a cluster starts as its master; any other node waits for the master's
// first lease request, which carries the view it joins.
func New(cfg Config) (*Runner, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cfg.Failover.Self = cfg.Self
	if err := cfg.Failover.Validate(); err != nil {
		return nil, err
	}
	cfg.Failover = cfg.Failover.WithDefaults()
	r := &Runner{cfg: cfg, log: cfg.Log.With("component", "roles"), http: &http.Client{Timeout: 400 * time.Millisecond},
		direct: map[string]time.Time{}, transitions: map[string]int{}, powerFences: map[[2]string]int{}, busy: map[string]bool{}, lost: make(chan func(), 64)}
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
	return atomicfile.Write(r.cfg.StateFile, b, 0o600)
}

// Run drives the machine until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	go r.probeLoop(ctx)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case f := <-r.lost:
				f()
			}
		}
	}()
	t := time.NewTicker(r.cfg.Failover.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-r.cfg.Members.Events():
			r.onMember(ev.Member)
		case msg := <-r.cfg.Members.Messages():
			r.onMessage(msg)
		case <-t.C:
			r.tick()
		}
	}
}

// step feeds one event, after the time: every event is taken to happen at the
// machine's clock, and a process that was stopped (SIGSTOP, a stall) must not
// weigh the messages that waited for it against the time it stopped at.
func (r *Runner) step(ev failover.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stepLocked(ev)
}

func (r *Runner) stepLocked(ev failover.Event) {
	if r.m == nil {
		return
	}
	before := r.m.Role()
	acts := r.m.Step(failover.Tick{Now: time.Now()})
	if _, tick := ev.(failover.Tick); !tick {
		acts = append(acts, r.m.Step(ev)...)
	}
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

// tick feeds the clock, probes, our own health, registrations and what the raft
// replica says.
func (r *Runner) tick() {
	now := time.Now()
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
		direct[n] = now.Sub(r.direct[n]) < 3*r.cfg.Failover.Tick+400*time.Millisecond
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
	if rep, ok := r.replica(); ok {
		r.step(rep)
	}
}

// replica reads what this node's raft replica says of itself, for the machine.
func (r *Runner) replica() (failover.Replica, bool) {
	st := r.cfg.Store
	if st == nil {
		return failover.Replica{}, false
	}
	servers, err := st.Members()
	if err != nil {
		return failover.Replica{}, false
	}
	if err := st.AdoptEpoch(); err != nil {
		r.log.Warn("raft epoch", "err", err)
	}
	epoch := st.Generation()
	lastTerm, lastIndex, term := st.Position()
	rep := failover.Replica{Epoch: epoch, Term: term,
		// The log's generation is the one its applied state records: a replica that
		// moved to a newer group holds none of that group's data until the group's
		// first write reached it.
		Log: failover.LogPos{Epoch: st.DataGeneration(), Term: lastTerm, Index: lastIndex}}
	// A follower keeps naming a leader it no longer hears from: silence, not the name,
	// tells that there is none.
	if leader := st.Leader(); leader != "" && st.LeaderSilence() < 2*r.cfg.Failover.ElectionTimeout {
		rep.Leader = leader
	}
	for _, s := range servers {
		rep.Servers = append(rep.Servers, string(s.ID))
		if s.Suffrage == raft.Voter {
			rep.Voters = append(rep.Voters, string(s.ID))
		}
	}
	nodes, _, _ := st.Snapshot()
	for _, n := range nodes {
		if !n.LostAt.IsZero() {
			rep.Lost = append(rep.Lost, n.Name)
		}
	}
	// A group's first write records its generation: its leader writes it once raft
	// has made it leader of the generation it was re-formed for.
	if st.IsLeader() && st.Epoch() != 0 && st.Epoch() > st.Meta().Generation {
		r.duty("record generation", func() {
			if _, err := st.Apply(store.Command{Op: store.OpSetMeta, Meta: &store.Meta{Generation: epoch}}); err != nil {
				r.log.Warn("record generation", "generation", epoch, "err", err)
			}
		})
	}
	return rep, true
}

// probeLoop asks every member's dvmd directly, a few times a second: the machine tells
// a node in direct reach from one only reachable through others.
func (r *Runner) probeLoop(ctx context.Context) {
	t := time.NewTicker(3 * r.cfg.Failover.Tick)
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
				client, scheme := r.probeClient(name)
				resp, err := client.Get(scheme + api + "/v1/health")
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

// probeClient is the client and scheme that probe node: over TLS, with a client of
// its own whose configuration names it, when ProbeTLS is set.
func (r *Runner) probeClient(node string) (*http.Client, string) {
	if r.cfg.ProbeTLS == nil {
		return r.http, "http://"
	}
	r.probeMu.Lock()
	defer r.probeMu.Unlock()
	c, ok := r.probes[node]
	if !ok {
		if r.probes == nil {
			r.probes = map[string]*http.Client{}
		}
		c = &http.Client{Timeout: r.http.Timeout, Transport: &http.Transport{TLSClientConfig: r.cfg.ProbeTLS(node)}}
		r.probes[node] = c
	}
	return c, "https://"
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
	h := r.cfg.Hooks
	for _, a := range acts {
		switch a := a.(type) {
		case failover.Send:
			b, err := json.Marshal(a.Msg)
			if err == nil {
				if a.Msg.Type == failover.MsgHandOver {
					r.handOvers.Add(1)
					go func() {
						defer r.handOvers.Done()
						r.cfg.Members.Send(a.Msg.To, b)
					}()
				} else {
					go r.cfg.Members.Send(a.Msg.To, b)
				}
			}
		// Fence and Unfence run here, in the machine's order: run apart, an Unfence
		// could overtake the Fence before it and leave the agent fenced while the
		// node holds its lease. They must be quick and must not call back into the
		// runner (the agent's are: flags under its own lock).
		case failover.Fence:
			if a.Node == r.cfg.Self && h.Fence != nil {
				r.log.Warn("fenced: lease lapsed", "at", a.Since)
				h.Fence(a.Since)
			}
		case failover.Unfence:
			if a.Node == r.cfg.Self && h.Unfence != nil {
				r.log.Info("unfenced: lease held")
				h.Unfence()
			}
		case failover.DeclareLost:
			// The event (node-lost) is the master's, which recovers the guests.
			r.log.Warn("node lost", "node", a.Node, "why", a.Why)
			if h.DeclareLost != nil {
				r.ordered(func() { h.DeclareLost(a.Node, a.Why) })
			}
		case failover.PowerFence:
			if h.PowerFence != nil {
				r.powerFence(a)
			}
		case failover.Readmit:
			if h.Readmit != nil {
				r.ordered(func() { h.Readmit(a.Node) })
			}
		case failover.Promote:
			r.event("promote", a.Node, string(a.To))
		case failover.ReplaceVoter:
			r.event("replace-voter", a.New, "replaces "+a.Old)
		case failover.Demote:
			r.event("demote", a.Node, string(a.To))
		case failover.ReForm:
			r.event("re-form", r.cfg.Self, fmt.Sprintf("generation %d with voters %v", a.Generation, a.Voters))
			r.reform(a.Generation)
		case failover.Rejoin:
			r.rejoin(a.Generation)
		case failover.Join:
			if h.Join != nil {
				r.duty("join", h.Join)
			}
		case failover.TransferLeadership:
			r.transfer(a.To)
		case failover.SetMembership:
			r.setMembership(a)
		case failover.Notify:
			// Where the machine acts and tells at once (hold and on-hold, give-up and
			// gave-up, solitude-shutdown and solitude), the event is what it tells.
			r.event(a.Kind, a.Node, a.Detail)
		case failover.Merge:
			// The machine follows the winner from now on; raft follows through Rejoin
			// once the winner's group speaks to this node.
			r.event("merge", r.cfg.Self, fmt.Sprintf("into the group of %s: %s", a.Into, a.Reason))
		case failover.RequestVotes:
			r.event("request-votes", r.cfg.Self, fmt.Sprintf("asking witness votes for generation %d", a.Generation))
		}
	}
}

// powerFence runs the power fence agent for node, one run per node at a time, and
// steps its answer into the machine.
func (r *Runner) powerFence(a failover.PowerFence) {
	node := a.Node
	r.duty("power-fence "+node, func() {
		r.log.Warn("powering off a silent node through its power fence agent", "node", node)
		start := time.Now()
		err := r.cfg.Hooks.PowerFence(context.Background(), node)
		ev := failover.PoweredOff{Node: node, Asked: a.Asked, OK: err == nil}
		result := "off"
		if err != nil {
			ev.Why, result = err.Error(), "failed"
			r.log.Error("power fence", "node", node, "err", err)
		} else {
			r.log.Warn("node powered off by its power fence agent", "node", node, "took", time.Since(start).Round(time.Millisecond))
		}
		r.mu.Lock()
		r.powerFences[[2]string{node, result}]++
		r.mu.Unlock()
		r.step(ev)
	})
}

// PowerFences counts the power fence agent's runs by node and result.
func (r *Runner) PowerFences() map[[2]string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.powerFences)
}

// ordered runs f on the lost-node worker, after what was asked before it.
func (r *Runner) ordered(f func()) {
	select {
	case r.lost <- f:
	default:
		r.log.Warn("recovery queue full: the role machine will ask again")
	}
}

// duty runs f in the background unless the duty of that name still runs.
func (r *Runner) duty(name string, f func()) {
	r.busyMu.Lock()
	if r.busy[name] {
		r.busyMu.Unlock()
		return
	}
	r.busy[name] = true
	r.busyMu.Unlock()
	go func() {
		defer func() {
			r.busyMu.Lock()
			delete(r.busy, name)
			r.busyMu.Unlock()
		}()
		f()
	}()
}

// reform starts the raft group of generation from this node's own log.
func (r *Runner) reform(generation uint64) {
	st := r.cfg.Store
	if st == nil {
		return
	}
	r.duty("reform", func() {
		r.log.Warn("re-forming the management group from this node's log", "generation", generation)
		if err := st.Reform(generation); err != nil {
			r.log.Error("re-form", "generation", generation, "err", err)
		}
	})
}

// rejoin moves this replica to the group of generation, led by the view's master,
// and asks that master to take it in.
func (r *Runner) rejoin(generation uint64) {
	st := r.cfg.Store
	if st == nil {
		return
	}
	master := r.m.View().Master
	addr := ""
	for _, m := range r.cfg.Members.Members() {
		if m.Name == master && m.MetaErr == nil {
			addr = m.Meta.Raft
		}
	}
	if addr == "" {
		r.log.Warn("rejoin: the master's raft address is not known yet", "master", master)
		return
	}
	join := r.cfg.Hooks.Join
	r.duty("rejoin", func() {
		r.log.Warn("this node's replica belongs to an older generation: moving it to the current group", "generation", generation, "master", master)
		if err := st.Rejoin(generation, raft.Server{ID: raft.ServerID(master), Address: raft.ServerAddress(addr)}); err != nil {
			r.log.Error("rejoin", "generation", generation, "err", err)
			return
		}
		if join != nil {
			join()
		}
	})
}

// transfer hands raft's leadership to the acting master.
func (r *Runner) transfer(to string) {
	st := r.cfg.Store
	if st == nil {
		return
	}
	r.duty("transfer", func() {
		r.handOversSent()
		servers, err := st.Members()
		if err != nil {
			return
		}
		for _, s := range servers {
			if string(s.ID) == to && s.Suffrage == raft.Voter {
				r.log.Info("handing raft leadership to the acting master", "master", to)
				if err := st.Raft().LeadershipTransferToServer(s.ID, s.Address).Error(); err != nil {
					r.log.Warn("hand raft leadership to the acting master", "master", to, "err", err)
				}
			}
		}
	})
}

// handOverSendWait bounds how long a leadership transfer waits for the hand-over
// messages before it: a node out of reach must not hold the transfer up for a TCP
// timeout (it learns of the new master from its lease requests).
const handOverSendWait = 500 * time.Millisecond

// handOversSent waits until the hand-over messages asked so far are sent, or
// handOverSendWait has passed.
func (r *Runner) handOversSent() {
	sent := make(chan struct{})
	go func() { r.handOvers.Wait(); close(sent) }()
	select {
	case <-sent:
	case <-time.After(handOverSendWait):
	}
}

// setMembership makes raft's configuration the role table's: the view's voters vote
// (those that joined), then no other server votes, and nodes declared lost leave.
func (r *Runner) setMembership(a failover.SetMembership) {
	st := r.cfg.Store
	if st == nil {
		return
	}
	r.duty("membership", func() {
		servers, err := st.Members()
		if err != nil {
			return
		}
		all := true
		for _, v := range a.Voters {
			i := slices.IndexFunc(servers, func(s raft.Server) bool { return string(s.ID) == v })
			switch {
			case i < 0:
				all = false
			case servers[i].Suffrage != raft.Voter:
				r.log.Info("raft voter for the role table", "node", v)
				if err := st.Raft().AddVoter(servers[i].ID, servers[i].Address, 0, 5*time.Second).Error(); err != nil {
					r.log.Warn("make voter", "node", v, "err", err)
					all = false
				}
			}
		}
		for _, s := range servers {
			switch {
			case slices.Contains(a.Remove, string(s.ID)) && s.Suffrage != raft.Voter:
				r.log.Info("raft server of a node declared lost removed", "node", s.ID)
				if err := st.Raft().RemoveServer(s.ID, 0, 5*time.Second).Error(); err != nil {
					r.log.Warn("remove server", "node", s.ID, "err", err)
				}
			case all && s.Suffrage == raft.Voter && !slices.Contains(a.Voters, string(s.ID)):
				r.log.Info("raft voter not in the role table: follows the log only", "node", s.ID)
				if err := st.Raft().DemoteVoter(s.ID, 0, 5*time.Second).Error(); err != nil {
					r.log.Warn("make non-voter", "node", s.ID, "err", err)
				}
			}
		}
	})
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
// It reads the machine at the time now, not at its last tick: a process that was
// stopped must not count leases that ran out while it was.
func (r *Runner) Acting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		return false
	}
	r.stepLocked(failover.Tick{Now: time.Now()})
	return r.m.Acting()
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

// ServiceUntil is until when this node's lease lets it run its HA guests, and
// false while it is fenced.
func (r *Runner) ServiceUntil() (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil || r.m.Fenced() {
		return time.Time{}, false
	}
	return r.m.ServiceUntil(), true
}

// Fenced says whether this node holds no lease now (a node that knows no view yet
// holds none).
func (r *Runner) Fenced() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m == nil || r.m.Fenced()
}

// Remove takes a host that is gone for good out of the role table: only the acting
// master can, and only for a node it holds lost.
func (r *Runner) Remove(node string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		return errors.New("this node knows no management view yet")
	}
	switch role := r.m.View().Role(node); {
	case role == "":
		return fmt.Errorf("node %q is not in the cluster's role table", node)
	case role != failover.RoleLost:
		return fmt.Errorf("node %s is %s, not lost: only a node the cluster holds lost can be removed (drain a node that is up)", node, role)
	}
	r.stepLocked(failover.Deregister{Node: node})
	if r.m.View().Role(node) != "" {
		return errors.New("this node is not the acting master now: retry in a moment")
	}
	return nil
}

// AckCopies is how many replicas must hold a client write before this master
// acknowledges it (failover.Machine.AckCopies); 1 before this node knows a view.
func (r *Runner) AckCopies() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		return 1
	}
	return r.m.AckCopies()
}

// HandOver, before dvmd stops, hands this node's master role to a backup if it acts
// (failover.HandOver), and waits, up to wait, for its messages to be sent and raft's
// leadership to move to the successor. It says whether it handed the role over; a
// node that is not an acting master has nothing to hand over.
func (r *Runner) HandOver(wait time.Duration) bool {
	r.mu.Lock()
	if r.m == nil {
		r.mu.Unlock()
		return false
	}
	before := r.m.Role()
	r.stepLocked(failover.HandOver{})
	handed := before == failover.RoleMaster && r.m.Role() != failover.RoleMaster
	r.mu.Unlock()
	if !handed {
		return false
	}
	deadline := time.Now().Add(wait)
	for st := r.cfg.Store; st != nil && st.IsLeader() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// Lease is the lease this node holds: the holder it granted it to and that
// holder's generation, while it is live. The agent starts HA guests only from an
// assignment that this holder wrote in this generation.
func (r *Runner) Lease() (holder string, generation uint64, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		return "", 0, false
	}
	r.stepLocked(failover.Tick{Now: time.Now()})
	if r.m.Fenced() {
		return "", 0, false
	}
	g := r.m.Grant()
	return g.Holder, g.Generation, time.Now().Before(g.Until)
}
