package failovertest

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/dvmproject/dvm/failover"
)

// config is a raft configuration: who votes, and every server (voters and
// non-voters). As in raft, it lives in the log, a replica follows the newest one
// its log holds, and the leader changes it one server at a time, each change
// committed before the next.
type config struct {
	voters, servers []string
}

func (c *config) has(n string) bool   { return c != nil && slices.Contains(c.servers, n) }
func (c *config) votes(n string) bool { return c != nil && slices.Contains(c.voters, n) }

// entry is one raft log entry: a client write, a recorded loss (with the
// recovery of the lost node's guests), a readmission, a placement, a
// configuration, or a no-op a new leader writes. seq is unique in the
// simulation: two logs with the same seq at an index are the same up to it
// (raft's log matching).
type entry struct {
	term    uint64
	epoch   uint64  // the generation of the data up to here: a re-formation's first entry raises it
	cfg     *config // the configuration in force from here (set on every entry)
	newCfg  bool    // this entry changes it
	seq     int
	write   bool
	lost    string
	readmit string
	place   map[string]string // guest -> node ("" pending)
}

// state is what a replica's applied entries say: where each guest is placed and
// which nodes are recorded lost.
type state struct {
	place map[string]string
	lost  map[string]bool
}

func (s *state) apply(e entry) {
	if e.lost != "" {
		s.lost[e.lost] = true
	}
	if e.readmit != "" {
		delete(s.lost, e.readmit)
	}
	maps.Copy(s.place, e.place)
}

func newState() state { return state{place: map[string]string{}, lost: map[string]bool{}} }

// replica is a node's raft replica, kept across kills and pauses as on a disk.
type replica struct {
	epoch   uint64
	term    uint64
	log     []entry
	commit  int  // entries known committed, and so applied
	joining bool // moved to a newer group as a non-voter: waits to be taken in
	leads   bool // leader of its epoch in term
	leader  string
	heard   time.Time     // last accepted word from a leader (or its own leading)
	stood   time.Time     // last time it stood for election
	timeout time.Duration // its election timeout, drawn anew each election

	st      state // fold of log[:applied]
	applied int
}

func (r *replica) last() failover.LogPos {
	if len(r.log) == 0 {
		return failover.LogPos{}
	}
	e := r.log[len(r.log)-1]
	return failover.LogPos{Epoch: e.epoch, Term: e.term, Index: uint64(len(r.log))}
}

// cfg is the configuration the replica follows; a joining replica follows none
// (it votes in no election until the new leader's log reaches it).
func (r *replica) cfg() *config {
	if r.joining || len(r.log) == 0 {
		return nil
	}
	return r.log[len(r.log)-1].cfg
}

// setLog replaces the log with the leader's (sharing its entries), keeping the
// applied state when the applied prefix is the same.
func (r *replica) setLog(log []entry, commit int) {
	same := r.applied <= len(log) && (r.applied == 0 || r.applied <= len(r.log) && r.log[r.applied-1].seq == log[r.applied-1].seq)
	r.log = log[:len(log):len(log)]
	if !same {
		r.st, r.applied = newState(), 0
	}
	r.commit = min(max(r.commit, commit), len(r.log))
	r.applyCommitted()
}

func (r *replica) applyCommitted() {
	for ; r.applied < r.commit; r.applied++ {
		r.st.apply(r.log[r.applied])
	}
}

// pendingWrite is a client write the leader waits on: acknowledged once
// committed, on AckCopies replicas and while its master still acts; dropped if
// the leader loses its term.
type pendingWrite struct {
	seq, index int
	node       string
	epoch      uint64
	term       uint64
}

type ackedWrite struct {
	seq, index int
}

type raftSim struct {
	replicas map[string]*replica
	seq      int
	pending  []pendingWrite
	acked    []ackedWrite
	verified map[string][3]int // node -> {log length, acked count, seq at the log's end} last verified
}

func (r *raftSim) init() {
	r.replicas = map[string]*replica{}
	r.verified = map[string][3]int{}
}

// startRaft gives every capable node a replica of the view's generation: the
// view's voters vote, every capable node is a server, and the first entry places
// the guests.
func (c *Cluster) startRaft(view failover.ClusterView) {
	var servers []string
	for _, n := range c.names {
		if c.capable[n] {
			servers = append(servers, n)
		}
	}
	c.seq++
	first := entry{term: 1, epoch: view.Generation, seq: c.seq, place: maps.Clone(c.initial), newCfg: true,
		cfg: &config{voters: slices.Clone(view.Voters), servers: servers}}
	for _, n := range servers {
		r := &replica{epoch: view.Generation, term: 1, st: newState(), leader: view.Master, heard: c.now}
		r.setLog([]entry{first}, 1)
		r.timeout = c.electionTimeout()
		c.replicas[n] = r
	}
	c.replicas[view.Master].leads = true
}

// electionTimeout draws a replica's election timeout: ElectionTimeout to twice
// that, as raft randomizes it.
func (c *Cluster) electionTimeout() time.Duration {
	if c.Rand == nil {
		return c.ElectionTimeout
	}
	return c.ElectionTimeout + time.Duration(c.Rand.Int64N(int64(c.ElectionTimeout)))
}

// append writes e at the end of r's log in its term, carrying the data epoch and
// configuration on, and returns its index.
func (c *Cluster) append(r *replica, e entry) int {
	c.seq++
	e.term, e.seq = r.term, c.seq
	if len(r.log) > 0 {
		prev := r.log[len(r.log)-1]
		if e.epoch == 0 {
			e.epoch = prev.epoch
		}
		if e.cfg == nil {
			e.cfg = prev.cfg
		}
	}
	r.log = append(r.log, e)
	return len(r.log)
}

// leads returns node n's replica and whether n leads raft in its epoch.
func (c *Cluster) leads(n string) (*replica, bool) {
	r := c.replicas[n]
	if r == nil || !c.up(n) {
		return nil, false
	}
	return r, r.leads
}

// accepts is the admission rule the store's transport enforces: a replica takes
// raft's requests (appends, snapshots, votes) only from a voter of its own
// configuration, or from anyone while it has none (fresh, or moved to a newer
// group). A server removed while it was away, back with an old configuration, so
// never disrupts the current members; raft's own rule (a voter grants only to a
// candidate that votes in its configuration) is the same for votes.
func (r *replica) accepts(from string) bool {
	cf := r.cfg()
	return cf == nil || cf.votes(from)
}

// hearsLeader reports whether r heard from a leader within its election timeout:
// then it grants no vote (raft's leader stickiness) and stands for none.
func (c *Cluster) hearsLeader(r *replica) bool {
	return r.leads || c.now.Sub(r.heard) < r.timeout
}

// raftStep plays raft. Each leader (lowest term first) sends to the servers of
// its configuration it reaches that accept it: one with a newer term makes it
// step down; the others take its term and log. A leader that reaches no majority
// of its voters steps down. A voter that heard from no leader within its
// election timeout stands: it wins if a majority of its configuration's voters
// grant (each reached, not hearing a leader, with a log no further than its
// own, and counting it a voter), and writes a no-op.
func (c *Cluster) raftStep() {
	var leaders []string
	for _, n := range c.names {
		if r, ok := c.leads(n); ok && r != nil {
			leaders = append(leaders, n)
		}
	}
	slices.SortStableFunc(leaders, func(a, b string) int { return cmpTerm(c.replicas[a].term, c.replicas[b].term) })
	for _, n := range leaders {
		c.replicate(n)
	}
	for _, n := range c.names {
		r := c.replicas[n]
		if r == nil || !c.up(n) || r.leads || r.joining || !r.cfg().votes(n) || c.hearsLeader(r) || c.now.Sub(r.stood) < r.timeout {
			continue
		}
		c.campaign(n, false)
	}
}

func cmpTerm(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (c *Cluster) stepDown(n string, term uint64) {
	r := c.replicas[n]
	if r.leads {
		c.record(n, fmt.Sprintf("raft: no longer leads generation %d (term %d)", r.epoch, r.term))
	}
	r.leads = false
	r.term = max(r.term, term)
	r.stood = c.now
}

// campaign is an election by n (a transfer skips the others' stickiness). It
// is preceded by raft's pre-vote: n stands (raising its term) only if a
// majority would grant, so a replica that cannot win never disrupts the others
// with a newer term.
func (c *Cluster) campaign(n string, transfer bool) {
	r := c.replicas[n]
	r.stood, r.timeout = c.now, c.electionTimeout()
	term := r.term + 1
	grant := []string{}
	for _, u := range r.cfg().voters {
		ru := c.replicas[u]
		if u == n || ru == nil || !c.up(u) || ru.epoch != r.epoch || !c.Linked(n, u) {
			continue
		}
		if ru.term >= term {
			r.term = max(r.term, ru.term) // learned from the refusal; it stands again later
			return
		}
		if ru.accepts(n) && (transfer || !c.hearsLeader(ru)) && !r.last().Less(ru.last()) {
			grant = append(grant, u)
		}
	}
	if len(grant)+1 <= len(r.cfg().voters)/2 {
		return
	}
	r.term = term
	for _, u := range grant {
		c.replicas[u].term = term
	}
	r.leads, r.leader, r.heard = true, n, c.now
	c.append(r, entry{})
	c.record(n, fmt.Sprintf("raft: leads generation %d (term %d)", r.epoch, r.term))
}

// replicate: leader n brings the servers it reaches level, takes in joining
// replicas, commits, or steps down.
func (c *Cluster) replicate(n string) {
	r := c.replicas[n]
	reached := 1
	for _, s := range c.names {
		o := c.replicas[s]
		if s == n || o == nil || !c.up(s) || o.epoch != r.epoch || !c.Linked(n, s) {
			continue
		}
		if o.joining && !r.cfg().has(s) && !r.st.lost[s] {
			c.changeConfig(r, func(cf *config) { cf.servers = append(cf.servers, s) })
		}
		if !r.cfg().has(s) || !o.accepts(n) {
			continue
		}
		if o.term > r.term {
			c.stepDown(n, o.term)
			return
		}
		if o.leads {
			c.stepDown(s, r.term)
		}
		o.joining = false
		o.term, o.leader, o.heard = r.term, n, c.now
		o.setLog(r.log, r.commit)
		if r.cfg().votes(s) {
			reached++
		}
	}
	cf := r.cfg()
	if !cf.votes(n) || reached <= len(cf.voters)/2 {
		c.stepDown(n, r.term)
		return
	}
	r.heard = c.now
	for i := len(r.log); i > r.commit; i-- {
		if r.log[i-1].term != r.term {
			break
		}
		k := 0
		for _, v := range cf.voters {
			if rv := c.replicas[v]; rv != nil && rv.epoch == r.epoch && len(rv.log) >= i && rv.log[i-1].seq == r.log[i-1].seq {
				k++
			}
		}
		if k > len(cf.voters)/2 {
			r.commit = i
			break
		}
	}
	r.applyCommitted()
}

// changeConfig appends one configuration change on leader replica r, as raft
// does: only once the last change is committed.
func (c *Cluster) changeConfig(r *replica, change func(*config)) bool {
	for i := len(r.log); i > r.commit; i-- {
		if r.log[i-1].newCfg {
			return false
		}
	}
	old := r.cfg()
	cf := &config{voters: slices.Clone(old.voters), servers: slices.Clone(old.servers)}
	change(cf)
	slices.Sort(cf.servers)
	c.append(r, entry{cfg: cf, newCfg: true})
	return true
}

// replicaReport is the failover.Replica event of node n.
func (c *Cluster) replicaReport(n string) failover.Replica {
	r := c.replicas[n]
	rep := failover.Replica{Epoch: r.epoch, Term: r.term, Log: r.last()}
	if cf := r.cfg(); cf != nil {
		rep.Voters, rep.Servers = slices.Clone(cf.voters), slices.Clone(cf.servers)
	}
	// A leader sends every step: a follower that heard nothing since names none.
	switch {
	case r.leads:
		rep.Leader = n
	case c.now.Sub(r.heard) < 2*c.TickEvery:
		rep.Leader = r.leader
	}
	for _, node := range slices.Sorted(maps.Keys(r.st.lost)) {
		rep.Lost = append(rep.Lost, node)
	}
	return rep
}

// reform: the node's replica becomes the only voter of a new group of epoch gen,
// keeping its log, leads it, and records the generation as its first write.
func (c *Cluster) reform(n string, gen uint64) {
	r := c.replicas[n]
	if r == nil || r.epoch >= gen {
		return
	}
	r.epoch, r.joining, r.leads, r.leader = gen, false, true, n
	r.term++
	r.heard = c.now
	c.append(r, entry{epoch: gen, cfg: &config{voters: []string{n}, servers: []string{n}}, newCfg: true})
	c.record(n, fmt.Sprintf("raft: leads generation %d (term %d)", gen, r.term))
	r.commit = len(r.log)
	r.applyCommitted()
}

// rejoin moves the node's replica to the group of epoch gen as a non-voter that
// keeps its log (what it held stays until the new leader's log replaces it) and
// waits to be taken in.
func (c *Cluster) rejoin(n string, gen uint64) {
	r := c.replicas[n]
	if r == nil || r.epoch >= gen {
		return
	}
	r.epoch, r.joining, r.leads = gen, true, false
}

// join asks to be taken into the group of epoch gen again: the leader takes it
// in (as a non-voter) when it reaches it, unless its state records the node
// lost (the master's join refuses those until they are readmitted).
func (c *Cluster) join(n string, gen uint64) {
	r := c.replicas[n]
	if r == nil || r.epoch != gen && r.epoch != 0 {
		return
	}
	for _, l := range c.names {
		if rl, ok := c.leads(l); ok && rl.epoch == gen && c.Linked(n, l) && !rl.st.lost[n] && !rl.cfg().has(n) {
			r.epoch, r.joining, r.leads = gen, true, false
		}
	}
}

func (c *Cluster) transfer(n, to string) {
	r, ok := c.leads(n)
	if !ok || !r.cfg().votes(to) || !c.up(to) || !c.Linked(n, to) {
		return
	}
	rt := c.replicas[to]
	if rt == nil || rt.epoch != r.epoch || rt.last().Less(r.last()) {
		return
	}
	c.stepDown(n, r.term)
	c.campaign(to, true)
}

// setMembership makes the first change raft's configuration needs to become the
// one asked: a server of the asked voters votes, then a voter not asked stops
// voting, then a server asked removed leaves. The machine asks again for the rest.
func (c *Cluster) setMembership(n string, a failover.SetMembership) {
	r, ok := c.leads(n)
	if !ok {
		return
	}
	cf := r.cfg()
	for _, v := range a.Voters {
		if cf.has(v) && !cf.votes(v) {
			c.changeConfig(r, func(x *config) { x.voters = append(x.voters, v) })
			return
		}
	}
	for _, v := range cf.voters {
		if v != n && !slices.Contains(a.Voters, v) {
			c.changeConfig(r, func(x *config) { x.voters = slices.DeleteFunc(x.voters, func(s string) bool { return s == v }) })
			return
		}
	}
	for _, s := range a.Remove {
		if cf.has(s) && !cf.votes(s) {
			c.changeConfig(r, func(x *config) { x.servers = slices.DeleteFunc(x.servers, func(y string) bool { return y == s }) })
			return
		}
	}
}

// recordLoss writes the loss of node (and the recovery of its guests) when the
// declaring master leads raft in its generation, as the real master's recovery
// does; otherwise nothing is written and the machine asks again.
func (c *Cluster) recordLoss(master, node string) {
	r, ok := c.leads(master)
	if !ok || r.epoch != c.machines[master].Epoch() || r.st.lost[node] {
		return
	}
	c.append(r, entry{lost: node, place: c.recover(r.st, node)})
}

func (c *Cluster) recordReadmit(master, node string) {
	r, ok := c.leads(master)
	if !ok || r.epoch != c.machines[master].Epoch() || !r.st.lost[node] {
		return
	}
	c.append(r, entry{readmit: node})
}

// write is the clients' and the scheduler's part: the acting master that leads
// raft in its generation writes one client write a step (Writes) and places
// pending guests.
func (c *Cluster) write() {
	for _, n := range c.names {
		m := c.machines[n]
		r, ok := c.leads(n)
		if !ok || m == nil || !m.Acting() || r.epoch != m.Epoch() {
			continue
		}
		if c.Writes {
			idx := c.append(r, entry{write: true})
			c.pending = append(c.pending, pendingWrite{seq: c.seq, index: idx, node: n, epoch: r.epoch, term: r.term})
		}
		if p := c.placePending(r.st); len(p) > 0 {
			c.append(r, entry{place: p})
		}
	}
}

// acknowledge acknowledges each pending write once it is committed, on as many
// replicas as its master's AckCopies, and its master still acts, as the store
// does before it answers.
func (c *Cluster) acknowledge() {
	keep := c.pending[:0]
	for _, w := range c.pending {
		r, ok := c.leads(w.node)
		m := c.machines[w.node]
		if !ok || r.term != w.term || r.epoch != w.epoch || m == nil {
			continue // the leader lost its term: the write fails (it may or may not survive)
		}
		copies := 0
		for _, s := range r.cfg().servers {
			if o := c.replicas[s]; o != nil && o.epoch == w.epoch && !o.joining && len(o.log) >= w.index && o.log[w.index-1].seq == w.seq {
				copies++
			}
		}
		// A write that reaches its copies after its master stopped acting (a newer
		// group may have formed) is not acknowledged.
		if w.index <= r.commit && copies >= m.AckCopies() && m.Acting() {
			c.acked = append(c.acked, ackedWrite{seq: w.seq, index: w.index})
			continue
		}
		keep = append(keep, w)
	}
	c.pending = keep
}

// checkAcked: an acting master that leads raft in its generation must hold every
// acknowledged write in its log.
func (c *Cluster) checkAcked(n string) {
	r, ok := c.leads(n)
	if !ok || r.epoch != c.machines[n].Epoch() {
		return
	}
	from := 0
	if v, ok := c.verified[n]; ok && v[0] > 0 && v[0] <= len(r.log) && r.log[v[0]-1].seq == v[2] {
		// The log only grew since (the entry at the old end is the same one): what
		// was verified still holds.
		from = v[1]
	}
	for _, w := range c.acked[from:] {
		if w.index > len(r.log) || r.log[w.index-1].seq != w.seq {
			c.fail("acting master %s (generation %d) lacks the acknowledged write at index %d: it was lost", n, r.epoch, w.index)
			return
		}
	}
	if len(r.log) > 0 {
		c.verified[n] = [3]int{len(r.log), len(c.acked), r.log[len(r.log)-1].seq}
	}
}

// Acked is how many client writes were acknowledged.
func (c *Cluster) Acked() int { return len(c.acked) }

func (c *Cluster) raftConverged(master string, v failover.ClusterView) error {
	r, ok := c.leads(master)
	if !ok || r.epoch != v.Epoch {
		return fmt.Errorf("raft: %s does not lead the group of generation %d; %s", master, v.Epoch, c.RaftSummary())
	}
	if got := slices.Sorted(slices.Values(r.cfg().voters)); !slices.Equal(got, slices.Sorted(slices.Values(v.Voters))) {
		return fmt.Errorf("raft voters %v, the view's %v; %s", got, v.Voters, c.RaftSummary())
	}
	delete(c.verified, master)
	c.checkAcked(master)
	return c.err
}

// RaftSummary describes every replica: epoch, term, log position, and who leads.
func (c *Cluster) RaftSummary() string {
	var parts []string
	for _, n := range c.names {
		r := c.replicas[n]
		if r == nil {
			continue
		}
		s := fmt.Sprintf("%s:e%d/%v", n, r.epoch, r.last())
		if r.leads {
			s += "/leader"
		}
		if r.joining {
			s += "/joining"
		}
		parts = append(parts, s)
	}
	return "replicas " + strings.Join(parts, " ")
}
