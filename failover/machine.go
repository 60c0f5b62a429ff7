package failover

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Grant is the lease a node has granted: to at most one holder at a time.
// It must survive a restart (see HardState).
type Grant struct {
	Holder     string
	Generation uint64
	Until      time.Time
}

// HardState is what a node must write to its own disk before it carries out
// the actions of a Step, and restore with RestartMachine: a node that forgot
// its grant could grant a second lease while the first still holds.
type HardState struct {
	View  ClusterView
	Grant Grant
	// Term is the raft term in which this node last led (or saw led) its
	// generation; a restarted old master keeps its old term and so loses to
	// the leader raft elected meanwhile.
	Term uint64
	// Voted is the newest generation this node gave a witness vote for, and to
	// whom: it votes for each generation once, as raft votes once a term, so that
	// two groups are never re-formed as one generation (their logs, compared as one
	// group's, would let one lose what the other acknowledged).
	Voted Vote
}

// Vote is a witness vote given: for Generation, to Holder.
type Vote struct {
	Generation uint64
	Holder     string
}

// lease is a grant received by a holder, timed on the holder's own clock.
type lease struct {
	until      time.Time // request SentAt + LeaseDuration: never later than the granting node's own expiry
	generation uint64
}

// holderInfo is what a node last heard from the holder of its grant.
type holderInfo struct {
	role   Role
	acting bool
	since  time.Time
	epoch  uint64
	term   uint64
	log    LogPos // a semi-master's raft log position, from its vote request
}

// Machine is the role machine of one node. It is not safe for concurrent use:
// one goroutine feeds it, as etcd-io/raft's RawNode.
type Machine struct {
	cfg  Config
	view ClusterView
	role Role
	now  time.Time

	grant        Grant
	voted        Vote   // see HardState.Voted
	term         uint64 // raft term of the view's generation, from LeaderObserved
	holder       holderInfo
	serviceUntil time.Time
	fenced       bool
	shutDown     bool

	reach       map[string]Probe
	suspect     map[string]time.Time // not directly reachable since
	health      map[string]HealthReport
	lonelySince time.Time
	lastActing  time.Time // last lease request from an acting master, or acting ourselves

	// Held by a master or semi-master.
	since           time.Time // when the current management role began
	leases          map[string]lease
	lastRenew       time.Time
	quorumLostSince time.Time
	stopped         map[string]bool
	proposed        uint64
	waiting         string
	voterServers    map[string][]string // semi-master: each voter's raft servers, from its vote
	shortSince      time.Time           // semi-master: witness majority held, backups but no spare, since

	// lastGrant survives role changes: a node may be declared lost only
	// LeaseDuration+LeaseMargin after its last grant arrived here. It is not
	// persisted: after a restart, started (the first Tick) stands in for it,
	// since nothing promised before the restart outlives it by more than
	// LeaseDuration.
	lastGrant map[string]time.Time
	started   time.Time

	// seen is the newest acting master this node heard from directly.
	seen struct {
		master     string
		generation uint64
		at         time.Time
	}

	// What this node's raft replica said last (management-capable nodes).
	replica    Replica
	hasReplica bool
	// Raft duties, each carried out by the caller and asked again until the replica
	// shows it done: the generation last re-formed or rejoined, and when.
	reformed, rejoined   uint64
	reformAt, rejoinAt   time.Time
	joinAt, leaderSilent time.Time
	ledRaft              time.Time // last time this node led raft (or was no master)
	handedBack, synced   time.Time
	declaredAt, readmit  map[string]time.Time // per node: last DeclareLost / Readmit asked
	// Power fencing (Config.PowerFenceAfter), per node: when this master last asked
	// for it, and when the agent's confirmation arrived. In memory only: a new
	// master asks again, and powering off a node that is off changes nothing.
	powerFenceAsked, poweredOff map[string]time.Time

	// handedOver is when this node last handed its master's role over (HandOver); it
	// does not take the role back from raft for ConfirmTimeout after, while raft's
	// leadership moves to the successor.
	handedOver time.Time
	// goneTenure is the last master tenure (holder and Since) that handed over: its
	// late lease requests are refused, so that they hold no node from the successor.
	goneTenure struct {
		holder string
		since  time.Time
	}
	// handOverSeen is when a master's hand-over last reached this node. Nodes that let
	// their grants go at that moment still serve until the old master's acting time,
	// which may run up to LeaseDuration past it: a master declares no node lost within
	// LeaseDuration + LeaseMargin of it (checkLost), as it would not within that much
	// of the node's last grant to it.
	handOverSeen time.Time
	// handOff reserves the grant a hand-over let go for the successor alone until
	// the old grant would have run out: any other holder (a semi-master asking for
	// votes) still waits for that, as if the grant held, so the rule that a group
	// forms only after the last master's leases ran out holds for every group but
	// the successor's, which continues the same raft group.
	handOff struct {
		to    string
		until time.Time
	}

	// behind: proposers whose log this node saw behind its own, since when.
	behind map[string]time.Time

	// yield is the better proposer this node gave way to: it proposes no group of
	// its own while that one is still asking (see proposerFirst).
	yield struct {
		to    string
		until time.Time
	}

	out []Action
}

// NewMachine returns the Machine of node cfg.Self in a cluster whose role table
// is view. The node starts fenced: it serves HA guests only once it holds a
// lease from an acting master.
func NewMachine(cfg Config, view ClusterView) (*Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := view.Validate(); err != nil {
		return nil, err
	}
	if view.node(cfg.Self) == nil {
		return nil, fmt.Errorf("%w: node %q (Config.Self) is not registered: add it to the view's Nodes", ErrBadView, cfg.Self)
	}
	if view.Epoch == 0 {
		view.Epoch = view.Generation // a view from before epochs existed
	}
	m := &Machine{
		cfg:        cfg.WithDefaults(),
		view:       view.Clone(),
		fenced:     true,
		reach:      map[string]Probe{},
		suspect:    map[string]time.Time{},
		health:     map[string]HealthReport{},
		leases:     map[string]lease{},
		stopped:    map[string]bool{},
		lastGrant:  map[string]time.Time{},
		declaredAt: map[string]time.Time{},
		behind:     map[string]time.Time{},
		readmit:    map[string]time.Time{},

		powerFenceAsked: map[string]time.Time{},
		poweredOff:      map[string]time.Time{},
	}
	m.role = m.view.Role(cfg.Self)
	return m, nil
}

// RestartMachine returns the Machine of a node restarting from hs.
func RestartMachine(cfg Config, hs HardState) (*Machine, error) {
	m, err := NewMachine(cfg, hs.View)
	if err != nil {
		return nil, err
	}
	m.grant = hs.Grant
	m.term = hs.Term
	m.voted = hs.Voted
	return m, nil
}

// Self is this node's name.
func (m *Machine) Self() string { return m.cfg.Self }

// Role is this node's own role.
func (m *Machine) Role() Role { return m.role }

// Generation is the generation of the view this node follows.
func (m *Machine) Generation() uint64 { return m.view.Generation }

// Epoch is the generation the raft group of the view this node follows was
// re-formed in.
func (m *Machine) Epoch() uint64 { return m.view.Epoch }

// View returns a copy of the role table this node follows.
func (m *Machine) View() ClusterView { return m.view.Clone() }

// Fenced reports whether this node must not run restart or twin guests.
func (m *Machine) Fenced() bool { return m.fenced }

// ServiceUntil is until when this node may run its restart and twin guests
// (meaningful while it is not fenced).
func (m *Machine) ServiceUntil() time.Time { return m.serviceUntil }

// Grant returns the lease this node has granted.
func (m *Machine) Grant() Grant { return m.grant }

// HardState returns what must be persisted before acting on a Step's actions.
func (m *Machine) HardState() HardState {
	return HardState{View: m.view.Clone(), Grant: m.grant, Term: m.term, Voted: m.voted}
}

// ShutDown reports whether the node shut its management down after solitude.
func (m *Machine) ShutDown() bool { return m.shutDown }

// Acting reports whether this node is a master holding unexpired leases from a
// majority of all registered nodes: only then may it schedule or declare nodes
// lost.
func (m *Machine) Acting() bool {
	return m.role == RoleMaster && m.freshLeases(0) >= m.view.Majority()
}

// Status is what `vmctl cluster status` and the metrics show of one node.
type Status struct {
	Self       string
	Role       Role
	Generation uint64
	Acting     bool
	Fenced     bool
	Grant      Grant
	// LeaseAges (master or semi-master): time left on each node's lease.
	LeaseAges map[string]time.Duration
	// Candidates are the table's candidates, best first.
	Candidates []CandidateInfo
}

// Status returns this node's status.
func (m *Machine) Status() Status {
	var cands []CandidateInfo
	for _, n := range m.view.Nodes {
		if n.Role == RoleCandidate {
			cands = append(cands, CandidateInfo{Node: n.Name, Health: m.health[n.Name], LostAt: n.LostAt})
		}
	}
	return Status{Self: m.cfg.Self, Role: m.role, Generation: m.view.Generation, Acting: m.Acting(),
		Fenced: m.fenced, Grant: m.grant, LeaseAges: m.LeaseAges(), Candidates: Rank(cands, m.now, m.cfg)}
}

// LeaseAges returns, for a master or semi-master, how long each node's lease
// (or vote) has left, keyed by node; expired leases are left out.
func (m *Machine) LeaseAges() map[string]time.Duration {
	out := map[string]time.Duration{}
	for n, l := range m.leases {
		if l.until.After(m.now) {
			out[n] = l.until.Sub(m.now)
		}
	}
	return out
}

// Step feeds one event and returns the actions to carry out, in order. Persist
// HardState before carrying out Send actions. The first event must be a Tick:
// until the Machine knows the time, it ignores every event but Health (a
// grant timed from a zero clock would expire before it was given).
func (m *Machine) Step(ev Event) []Action {
	if m.shutDown {
		return nil
	}
	if _, ok := ev.(Tick); !ok && m.now.IsZero() {
		if h, ok := ev.(Health); ok {
			m.health[h.Node] = h.Report
		}
		return nil
	}
	switch e := ev.(type) {
	case Tick:
		if e.Now.Before(m.now) {
			return nil
		}
		jumped := !m.started.IsZero() && e.Now.Sub(m.now) > 5*m.cfg.Tick
		if m.started.IsZero() {
			m.started, m.since = e.Now, e.Now
		}
		m.now = e.Now
		if jumped {
			m.stalled()
		}
		m.tick()
	case Probe:
		m.probe(e)
	case Health:
		m.health[e.Node] = e.Report
	case Register:
		m.register(e)
	case Deregister:
		m.deregister(e)
	case Replica:
		m.replica, m.hasReplica = e, true
		m.raftDuties()
	case Message:
		if e.To == m.cfg.Self {
			m.receive(e)
		}
	case HandOver:
		m.handOver()
	case PoweredOff:
		if m.powerFenceAnswer(e) {
			m.tick() // declare the node lost now, not a tick later
		}
	}
	out := m.out
	m.out = nil
	return out
}

func (m *Machine) emit(a ...Action) { m.out = append(m.out, a...) }

// stalled: the clock jumped (the node was paused or its process stalled), so
// what it knew of others' reach is stale. Its timers for suspicion, solitude and
// silence start again from now: they may only ever make it wait longer, never act
// on news it slept through. Leases and grants keep their absolute times.
func (m *Machine) stalled() {
	for n := range m.suspect {
		m.suspect[n] = m.now
	}
	if !m.lonelySince.IsZero() {
		m.lonelySince = m.now
	}
	m.lastActing = m.now
}

func (m *Machine) tick() {
	if m.lastActing.IsZero() || m.Acting() {
		m.lastActing = m.now
	}
	m.checkFence()
	m.checkSolitude()
	if m.shutDown {
		return
	}
	switch m.role {
	case RoleMaster:
		m.tickMaster()
	case RoleSemiMaster:
		m.tickSemi()
	case RoleBackup:
		m.tickBackup()
	}
	if m.role != RoleMaster && m.role != RoleSemiMaster {
		m.checkOrphan()
	}
}

// checkOrphan covers what the seed's scenarios leave open: every survivor of
// the management group merged away or was never told of the new one. A
// functional management-capable node that has heard from no acting master for
// twice ConfirmTimeout (plus a stagger by its place in the table, so that not
// all start at once), while the master it knows is out of reach, becomes
// semi-master. Leases keep this safe; the scenario 5 rules settle rivals.
func (m *Machine) checkOrphan() {
	self := m.cfg.Self
	n := m.view.node(self)
	if n == nil || !n.Capable || !m.functional(self) {
		return
	}
	wait := 2 * m.cfg.ConfirmTimeout
	for i := range m.view.Nodes {
		if m.view.Nodes[i].Name == self {
			wait += time.Duration(i) * m.cfg.RenewInterval
		}
	}
	if m.now.Sub(m.lastActing) < wait || m.yielding() {
		return
	}
	// A live grant to another holder (a witness vote for a semi-master that is
	// still asking) means a re-formation is under way: a second semi-master
	// proposing a newer generation would only make it start over.
	if m.grant.Holder != "" && m.grant.Holder != self && m.now.Before(m.grant.Until) {
		return
	}
	if m.view.Master != self && !m.outFor(m.view.Master, m.cfg.ConfirmTimeout, true) {
		return
	}
	m.becomeSemi("no acting master heard from for " + wait.String())
}

func (m *Machine) checkFence() {
	if !m.fenced && !m.now.Before(m.serviceUntil) {
		m.fenced = true
		m.emit(Fence{Node: m.cfg.Self, Since: m.serviceUntil})
	}
}

func (m *Machine) checkSolitude() {
	for _, n := range m.view.Nodes {
		if n.Name == m.cfg.Self {
			continue
		}
		if p, ok := m.reach[n.Name]; !ok || p.Reachable {
			m.lonelySince = time.Time{}
			return
		}
	}
	if m.lonelySince.IsZero() {
		m.lonelySince = m.now
	}
	if m.now.Sub(m.lonelySince) >= m.cfg.SolitudeAfter {
		m.checkFence()
		m.shutDown = true
		m.emit(SolitudeShutdown{Node: m.cfg.Self},
			Notify{Node: m.cfg.Self, Kind: "solitude", Detail: fmt.Sprintf("reached no node for %v: state written, management shut down", m.cfg.SolitudeAfter)})
	}
}

func (m *Machine) probe(p Probe) {
	if p.Node == m.cfg.Self {
		return
	}
	m.reach[p.Node] = p
	if p.Reachable && p.Via == "" {
		delete(m.suspect, p.Node)
		delete(m.stopped, p.Node) // it is back in contact: the seed contacts it again
	} else if _, ok := m.suspect[p.Node]; !ok {
		m.suspect[p.Node] = m.now
	}
}

// direct reports whether n answered a direct probe. A node never probed
// counts as reachable.
func (m *Machine) direct(n string) bool {
	p, ok := m.reach[n]
	return !ok || (p.Reachable && p.Via == "")
}

func (m *Machine) reachable(n string) bool {
	p, ok := m.reach[n]
	return !ok || p.Reachable
}

// outFor reports whether n has been without a direct probe (any path if
// noPath) for at least d.
func (m *Machine) outFor(n string, d time.Duration, noPath bool) bool {
	p, ok := m.reach[n]
	if !ok || (p.Reachable && (p.Via == "" || !noPath)) {
		return false
	}
	return m.now.Sub(m.suspect[n]) >= d
}

func (m *Machine) functional(n string) bool {
	h, ok := m.health[n]
	return ok && h.Functional(m.cfg.MinHealth)
}

// lease is 1 if node's lease is fresh, else 0.
func (m *Machine) lease(node string) int {
	if l, ok := m.leases[node]; ok && l.until.After(m.now) && l.generation >= m.view.Generation {
		return 1
	}
	return 0
}

func (m *Machine) freshLeases(generation uint64) int {
	k := 0
	for _, l := range m.leases {
		if l.until.After(m.now) && l.generation >= generation {
			k++
		}
	}
	return k
}

// actingUntil is when the majority lease runs out, less the margin, so that
// nodes stop serving before another master may act. Zero if not acting.
func (m *Machine) actingUntil() time.Time {
	if !m.Acting() {
		return time.Time{}
	}
	var until []time.Time
	for _, l := range m.leases {
		if l.until.After(m.now) {
			until = append(until, l.until)
		}
	}
	slices.SortFunc(until, func(a, b time.Time) int { return b.Compare(a) })
	return until[m.view.Majority()-1].Add(-m.cfg.LeaseMargin)
}

// mayGrant is the lease rule that makes two acting holders impossible, and
// keeps nodes with a working master.
func (m *Machine) mayGrant(holder string, generation uint64, vote bool, log LogPos) bool {
	// The generation never goes back, not even below one this node voted for: a
	// group that re-formed on those votes may have written since, and an older
	// group's master must not act on a stale log again.
	return generation >= m.floor() && m.mayGrantAbove(holder, generation, vote, log)
}

// mayGrantAbove is mayGrant's rule for a generation at or above the floor.
func (m *Machine) mayGrantAbove(holder string, generation uint64, vote bool, log LogPos) bool {
	self := m.cfg.Self
	if generation < m.view.Generation {
		return false
	}
	if vote && m.voted.Generation == generation && m.voted.Holder != "" && m.voted.Holder != holder {
		return false // one vote a generation: this one went to another proposer
	}
	if vote && holder != self {
		if n := m.view.node(self); !m.hasReplica && n != nil && n.Capable {
			return false // its own log is not known yet (just restarted): it cannot compare
		}
		if m.hasReplica && log.Less(m.replica.Log) {
			return false // the group re-forms from the furthest log: this one is further
		}
	}
	if (m.role == RoleMaster || m.role == RoleSemiMaster) && holder != self {
		return false // a holder merges before it follows another
	}
	live := m.now.Before(m.grant.Until)
	if live && m.grant.Holder != holder {
		return false // one holder at a time: wait for the lease to expire
	}
	if m.now.Before(m.handOff.until) && holder != m.handOff.to {
		return false // a grant handed over is the successor's until it would have run out
	}
	if m.seen.master != "" && m.seen.master != holder && m.now.Sub(m.seen.at) < m.cfg.LeaseDuration {
		if m.seen.generation > generation {
			return false // an acting master of a newer generation asked: let this lease lapse
		}
		if vote && m.seen.generation >= m.view.Generation {
			return false // a witness vote is for when no master acts; one just asked
		}
	}
	return true
}

// floor is the lowest generation this node grants to: that of its view or of its
// last grant, whichever is newer.
func (m *Machine) floor() uint64 { return max(m.view.Generation, m.grant.Generation) }

// doGrant records a grant. A lease grant to an acting master lets the node
// serve until the earlier of its own lease expiry and the master's majority
// lease; a vote does not extend service.
func (m *Machine) doGrant(holder string, generation uint64, vote bool, actingUntil time.Time) {
	until := m.now.Add(m.cfg.LeaseDuration)
	m.grant = Grant{Holder: holder, Generation: generation, Until: until}
	if vote && generation > m.voted.Generation {
		m.voted = Vote{Generation: generation, Holder: holder}
	}
	if holder == m.cfg.Self {
		m.holder = holderInfo{role: m.role, acting: !actingUntil.IsZero(), since: m.since, epoch: m.holderEpoch(), term: m.term}
	}
	if vote {
		return
	}
	serve := until
	if actingUntil.Before(serve) {
		serve = actingUntil
	}
	if serve.After(m.serviceUntil) {
		m.serviceUntil = serve
	}
	if m.fenced && m.now.Before(m.serviceUntil) {
		m.fenced = false
		m.emit(Unfence{Node: m.cfg.Self})
	}
}

func (m *Machine) send(msg Message) {
	msg.From = m.cfg.Self
	m.emit(Send{Msg: msg})
}

func (m *Machine) receive(msg Message) {
	switch msg.Type {
	case MsgLease, MsgVote:
		acting := msg.Type == MsgLease && msg.Acting
		if acting {
			m.lastActing = m.now
		}
		m.noteGroup(msg.From, msg.Role, msg.Generation, msg.Epoch, msg.Term, acting, msg.Since, msg.Log, true)
		vote := msg.Type == MsgVote
		handedOver := msg.From == m.goneTenure.holder && msg.Since.Equal(m.goneTenure.since)
		// A late request of an earlier tenure of the holder this node grants now (it
		// restarted since) is refused: granting it would make the grant that tenure's
		// again, which its hand-over may then release under the new tenure's lease.
		earlier := msg.From == m.grant.Holder && m.now.Before(m.grant.Until) && msg.Since.Before(m.holder.since)
		if handedOver || earlier || !m.mayGrant(msg.From, msg.Generation, vote, msg.Log) {
			m.send(m.refusal(msg))
			if vote {
				m.challenge(msg)
			}
			return
		}
		delete(m.behind, msg.From)
		m.doGrant(msg.From, msg.Generation, vote, msg.ActingUntil)
		m.holder = holderInfo{role: msg.Role, acting: acting, since: msg.Since, epoch: msg.Epoch, term: msg.Term, log: msg.Log}
		if !vote && msg.View != nil {
			m.adopt(*msg.View)
		}
		grant := Message{Type: MsgLeaseGrant, To: msg.From, Generation: msg.Generation, SentAt: msg.SentAt}
		if vote {
			grant.Type = MsgVoteGrant
			if m.hasReplica {
				grant.Servers = slices.Clone(m.replica.Servers)
			}
		}
		m.send(grant)
	case MsgLeaseGrant, MsgVoteGrant:
		m.lastGrant[msg.From] = m.now
		// A grant counts only for a request of this tenure: one answered before a
		// hand-over may have been released since.
		ok := (m.role == RoleMaster && msg.Type == MsgLeaseGrant && msg.Generation <= m.view.Generation && !msg.SentAt.Before(m.since)) ||
			(m.role == RoleSemiMaster && msg.Type == MsgVoteGrant && msg.Generation == m.proposed)
		if ok {
			wasActing := m.role == RoleMaster && m.Acting()
			defer func() {
				// The grant that makes a master act is answered with a renewal at once:
				// it carries the acting time that lets the nodes serve on, which a master
				// not yet acting could not give (a new master after a hand-over or a
				// loss, before the nodes' service from the last one runs out).
				if !wasActing && m.role == RoleMaster && m.Acting() {
					m.renew()
				}
			}()
			until := msg.SentAt.Add(m.cfg.leaseCount())
			if l := m.leases[msg.From]; until.After(l.until) {
				m.leases[msg.From] = lease{until: until, generation: msg.Generation}
			}
			if msg.Type == MsgVoteGrant {
				m.voterServers[msg.From] = msg.Servers
			}
		}
	case MsgRelease:
		// Only the grant of that very proposal: a release that comes late, after
		// the node voted for a later proposal of the same semi-master, frees nothing.
		if m.grant.Holder == msg.From && m.grant.Generation == msg.Generation && m.holder.role == RoleSemiMaster &&
			m.holder.since.Equal(msg.Since) && m.now.Before(m.grant.Until) {
			m.grant.Until = m.now
		}
	case MsgHandOver:
		// Only the grant of that very tenure: a hand-over that comes late, after the
		// sender became master again, frees nothing. The node still serves until its
		// service time runs out, which the successor extends with its first grants.
		if m.grant.Holder == msg.From && m.holder.role == RoleMaster && m.holder.since.Equal(msg.Since) && m.now.Before(m.grant.Until) {
			m.handOff.to, m.handOff.until = msg.Holder, m.grant.Until
			m.grant.Until = m.now
			m.holder.acting = false
		}
		if m.seen.master == msg.From {
			m.seen.master, m.seen.at = "", time.Time{}
		}
		m.goneTenure.holder, m.goneTenure.since = msg.From, msg.Since
		m.handOverSeen = m.now
	case MsgRefuse:
		known := msg.Holder != "" && m.reachable(msg.Holder)
		if known {
			m.noteGroup(msg.Holder, msg.Role, msg.HolderGeneration, msg.Epoch, msg.Term, msg.Acting, msg.Since, msg.HolderLog, false)
		}
		// The node grants no generation below msg.Generation: move past it.
		// Only an acting master raises (its log is the group's); one that does
		// not act gets there through a semi-master's votes (tickMaster).
		switch {
		case m.role == RoleMaster && m.Acting() && msg.Generation > m.view.Generation:
			m.raise(msg.Generation + 1)
		case m.role == RoleSemiMaster && msg.Generation >= m.proposed:
			m.propose(msg.Generation + 1)
		}
	}
}

// refusal says which group this node follows, so the requester can apply the
// scenario 5 rule.
func (m *Machine) refusal(req Message) Message {
	r := Message{Type: MsgRefuse, To: req.From, Generation: m.floor(), SentAt: req.SentAt, Log: m.log()}
	switch {
	case m.role == RoleMaster || m.role == RoleSemiMaster:
		r.Holder, r.Role, r.Acting, r.Since, r.Epoch, r.Term = m.cfg.Self, m.role, m.Acting(), m.since, m.holderEpoch(), m.term
		r.HolderGeneration, r.HolderLog = m.view.Generation, m.log()
		if m.role == RoleSemiMaster {
			r.HolderGeneration = m.proposed
		}
	case m.now.Before(m.grant.Until):
		r.Holder, r.HolderGeneration = m.grant.Holder, m.grant.Generation
		r.Role, r.Acting, r.Since, r.Epoch, r.Term = m.holder.role, m.holder.acting, m.holder.since, m.holder.epoch, m.holder.term
		r.HolderLog = m.holder.log
	}
	return r
}

// adopt follows the role table of the master this node granted its lease to.
func (m *Machine) adopt(v ClusterView) {
	if v.Generation < m.view.Generation {
		return
	}
	m.view = v.Clone()
	if m.role != RoleMaster && m.role != RoleSemiMaster {
		if r := m.view.Role(m.cfg.Self); r != "" {
			m.role = r
		}
	}
}

// noteGroup applies scenario 5 when this node meets another holder. Two
// masters of one generation: raft's newer term leads. Otherwise the group
// whose master holds the majority lease wins; where neither does, the lower
// generation the group was formed in, then the longer uptime (earlier Since),
// then the lower name. Every input is fixed for the life of a group, so both
// sides pick the same winner however late their news. A semi-master yields to
// any master it can reach (the seed: if another management node is reachable,
// the survivor is the one cut off), and to a semi-master further along.
func (m *Machine) noteGroup(holder string, role Role, generation, epoch, term uint64, acting bool, since time.Time, log LogPos, direct bool) {
	self := m.cfg.Self
	if holder == "" || holder == self {
		return
	}
	if direct && role == RoleSemiMaster && holder == m.yield.to {
		m.yield.until = m.now.Add(m.yieldFor()) // it still asks: stay out
	}
	if direct && acting && role == RoleMaster && generation >= m.seen.generation {
		m.seen.master, m.seen.generation, m.seen.at = holder, generation, m.now
	}
	switch m.role {
	case RoleMaster:
		if role != RoleMaster {
			return // semi-masters yield to masters
		}
		mine := m.Acting()
		switch {
		case epoch == m.view.Epoch && term != m.term:
			// Two masters of one raft group: raft's newer term is the leader,
			// whatever the leases say this instant (the old leader's lapse
			// soon); raft reconciles their logs.
			if term > m.term {
				m.merge(holder, "raft elected it in a newer term")
			}
			return
		case acting && mine:
			return // impossible while leases hold; the simulation checks it
		case acting:
			m.merge(holder, "its master holds the majority lease")
			return
		case !mine && epoch > m.view.Epoch:
			// A group re-forms only on a majority's votes, from the furthest log
			// among its voters, and those voters grant no older generation again:
			// its data supersedes this one's. (The seed let the lower generation
			// win; with a replicated log that would throw away what the newer
			// group wrote.) A raise moves no epoch, so only re-formations count.
			m.merge(holder, "neither holds the majority lease; its group was re-formed later")
			return
		}
		// Only an acting master raises its generation past the other group's:
		// one that does not act yet would re-form its stale raft with voters
		// that belong to the other group. Where neither acts, the loser merges
		// and the winner waits; if it never gains the lease, a survivor re-forms
		// a newer generation (checkOrphan).
		if mine && generation > m.view.Generation {
			m.raise(generation + 1)
		}
	case RoleSemiMaster:
		switch {
		case role == RoleMaster && acting:
			// A master that acts speaks for the group. One that does not is as
			// stuck as this node: it steps down itself after a while, and then
			// the proposers' tie-break applies.
			m.merge(holder, "a master that acts is in reach")
		case role == RoleSemiMaster && proposerFirst(log, holder, m.log(), self):
			m.merge(holder, fmt.Sprintf("another semi-master goes first (raft log %v against this node's %v)", log, m.log()))
			m.yield.to, m.yield.until = holder, m.now.Add(m.yieldFor())
		}
	}
}

// proposerFirst is the one tie-break between two semi-masters, applied the same
// way by both and by every voter: the further raft log goes first (the group must
// re-form from it), then the name that sorts first. Neither input changes while
// no group acts (no master writes), so both sides reach the same answer however
// late their news, and the one that gives way stays out while the other asks.
func proposerFirst(log LogPos, name string, than LogPos, thanName string) bool {
	if log != than {
		return than.Less(log)
	}
	return name < thanName
}

// holderEpoch is the epoch this node speaks for as a holder: its group's, or as
// a semi-master the one it proposes.
func (m *Machine) holderEpoch() uint64 {
	if m.role == RoleSemiMaster {
		return m.proposed
	}
	return m.view.Epoch
}

// yieldFor is how long a node that gave way to a better proposer stays out after
// it last heard from it: long enough for that proposer's votes to come in.
func (m *Machine) yieldFor() time.Duration { return m.cfg.LeaseDuration + m.cfg.ConfirmTimeout }

// yielding reports whether this node gave way to a proposer that still asks.
func (m *Machine) yielding() bool { return m.yield.to != "" && m.now.Before(m.yield.until) }

// challenge: a semi-master asked for this node's vote with a raft log behind this
// node's own. The group must re-form from the furthest log, so this node proposes
// itself (the other gives way when it hears of it), unless an acting master spoke
// for the group lately or this node already gave way to a better proposer.
func (m *Machine) challenge(req Message) {
	n := m.view.node(m.cfg.Self)
	if !m.hasReplica || !req.Log.Less(m.replica.Log) {
		delete(m.behind, req.From)
		return
	}
	if n == nil || !n.Capable || m.role == RoleMaster || m.role == RoleSemiMaster || m.yielding() ||
		m.now.Sub(m.lastActing) < m.cfg.ConfirmTimeout {
		return
	}
	// The proposer's log may only lag by a message (raft brought both level a
	// moment ago): it must still be behind a renewal later.
	if first, ok := m.behind[req.From]; !ok || m.now.Sub(first) < m.cfg.RenewInterval {
		if !ok {
			m.behind[req.From] = m.now
		}
		return
	}
	delete(m.behind, req.From)
	m.becomeSemi(fmt.Sprintf("%s proposes generation %d from raft log %v, behind this node's %v", req.From, req.Generation, req.Log, m.replica.Log))
}

// log is this node's raft log position (zero without a replica).
func (m *Machine) log() LogPos {
	if m.hasReplica {
		return m.replica.Log
	}
	return LogPos{}
}

// raise moves a winning master past a generation the other group's nodes have
// seen: they never go back, so they would not grant to it otherwise.
func (m *Machine) raise(generation uint64) {
	// The raft group of the new generation starts from this node's log: only its
	// raft leader's log holds everything the group committed. A master that acts
	// on leases alone (restarted with an old log while raft elected another) must
	// not carry its log into a new group.
	if generation <= m.view.Generation || m.hasReplica && !(m.epochCurrent() && m.replica.Leader == m.cfg.Self) {
		return
	}
	m.view.Generation = generation
	m.view.Version = 1
	m.emit(Notify{Node: m.cfg.Self, Kind: "raise", Detail: fmt.Sprintf("generation %d, past what the other group's nodes saw (raft's group stays the same)", generation)})
	m.lastRenew = time.Time{}
}

// propose moves a semi-master's witness vote to a newer generation.
func (m *Machine) propose(generation uint64) {
	if generation <= m.proposed {
		return
	}
	m.proposed = generation
	m.leases = map[string]lease{}
	m.voterServers = map[string][]string{}
	m.shortSince = time.Time{}
	m.lastRenew = time.Time{}
	m.waiting = ""
	m.emit(RequestVotes{Generation: generation})
}

func (m *Machine) merge(into, why string) {
	wasSemi, proposed, since := m.role == RoleSemiMaster, m.proposed, m.since
	m.emit(Merge{Into: into, Reason: why})
	m.lastActing = m.now // give the winner time before this node tries again
	// A backup that turned semi-master is still a voter of its group's raft: it
	// stays backup, so that raft may elect it (scenario 4). Others go back on
	// the list until the winner's view says more.
	self := m.cfg.Self
	m.role = m.view.listRole(self)
	if m.view.Master != self && slices.Contains(m.view.Voters, self) && m.view.Role(self) == RoleBackup {
		m.role = RoleBackup
	}
	m.leases = map[string]lease{}
	m.proposed = 0
	m.quorumLostSince = time.Time{}
	// Its vote for itself counted for nobody but itself, and it counts no votes
	// now: it may vote for the winner at once rather than after the vote expires,
	// and so may the nodes it asked.
	if m.grant.Holder == self && m.holder.role == RoleSemiMaster {
		m.grant.Until = m.now
	}
	if wasSemi {
		for _, n := range m.view.Nodes {
			if n.Name != self {
				m.send(Message{Type: MsgRelease, To: n.Name, Generation: proposed, SentAt: m.now, Since: since})
			}
		}
	}
}

func (m *Machine) leaderObserved(leader string, term uint64) {
	self := m.cfg.Self
	if term < m.term {
		return
	}
	switch {
	case leader == self && term > m.term && (m.role == RoleBackup || m.role == RoleSemiMaster && slices.Contains(m.view.Voters, self)):
		// A semi-master that raft elects after all (its generation's voters
		// still have a quorum) takes scenario 4's way: no re-formation needed.
		// Scenario 4: raft elected this backup. The old master stays a voter
		// with role backup until it is declared lost and replaced. While the
		// master still acts and is in reach (raft moved on a hiccup, or after
		// a re-formation elected another voter) it keeps its role: the
		// runner hands raft's leadership back to it (MasterToLead).
		old := m.view.Master
		if old != self && m.actingMasterInReach(old) {
			return
		}
		if old == self && !m.handedOver.IsZero() && m.now.Sub(m.handedOver) < m.cfg.ConfirmTimeout {
			return // raft's leadership is on its way to the successor
		}
		m.term = term
		if old != self && m.view.Role(old) == RoleMaster {
			m.view.setRole(old, RoleBackup)
		}
		m.view.Master = self
		m.view.setRole(self, RoleMaster)
		m.view.Version++
		m.proposed = 0
		m.becomeHolder(RoleMaster)
		m.emit(Promote{Node: self, To: RoleMaster})
		m.renew() // its first lease requests now, not at its next tick
	case leader != self && m.role == RoleMaster:
		if m.Acting() {
			// Still holding the majority lease (a raft leader of a stale
			// configuration, or one elected in a hiccup): raft's leadership comes
			// back to this node, not the other way round.
			return
		}
		// The view stays as it is: the raft leader sends its own view with its
		// first lease request if it becomes master. Naming it master here, when it
		// may never become one, would leave this node waiting on it for ever.
		m.term = term
		m.role = RoleBackup
		m.leases = map[string]lease{}
		m.emit(Demote{Node: self, To: RoleBackup})
	default:
		m.term = term
	}
}

// actingMasterInReach reports whether node is a master that still acts for
// this node: its lease request came within the last few renewals, or it is in
// direct reach and either asked within a lease duration or holds this node's
// live grant (a semi-master that just re-formed the group: its first lease
// request may come after raft's first election).
func (m *Machine) actingMasterInReach(node string) bool {
	// A lease request within the last few renewals is proof enough that it is
	// alive and reaches us: a probe that failed once under load is not proof of
	// the opposite. A dead master sends none, so this lapses within a second.
	since := m.now.Sub(m.seen.at)
	if m.seen.master == node && since < 3*m.cfg.RenewInterval {
		return true
	}
	if !m.direct(node) {
		return false
	}
	heard := m.seen.master == node && since < m.cfg.LeaseDuration
	granted := m.grant.Holder == node && m.now.Before(m.grant.Until)
	return heard || granted
}

// MasterToLead names the master that raft's leadership belongs to when this
// node leads raft but is not that master: an acting master in reach. The
// runner transfers leadership to it.
func (m *Machine) MasterToLead() (string, bool) {
	if m.role == RoleMaster || m.role == RoleSemiMaster {
		return "", false
	}
	if master := m.view.Master; master != m.cfg.Self && m.actingMasterInReach(master) {
		return master, true
	}
	return "", false
}

func (m *Machine) becomeHolder(r Role) {
	m.role = r
	m.since = m.now
	m.leases = map[string]lease{}
	m.lastRenew = time.Time{}
	m.quorumLostSince = time.Time{}
	m.waiting = ""
	m.shortSince = time.Time{}
}

// mayDeclareLost says whether a master may declare a node lost now: not within
// LeaseDuration + LeaseMargin of a hand-over reaching it. The nodes that let their
// grants go to the successor serve on under the old master's acting time, which runs
// out at most LeaseDuration after the hand-over, and fence within LeaseMargin of that.
func (m *Machine) mayDeclareLost() bool {
	return m.handOverSeen.IsZero() || !m.now.Before(m.handOverSeen.Add(m.cfg.LeaseDuration+m.cfg.LeaseMargin))
}

// handOver: see HandOver. The master stops acting before it tells anyone (its leases
// are dropped, and grants still on the way count no more once it is a backup), so
// the nodes that let the successor in at once never have two acting holders. With no
// backup in direct reach to take over it does nothing: the stop is then a loss, as
// if it crashed.
func (m *Machine) handOver() {
	self := m.cfg.Self
	if m.role != RoleMaster || !m.Acting() {
		return
	}
	to := ""
	for _, v := range m.view.Voters {
		if v != self && m.view.Role(v) == RoleBackup && m.direct(v) && m.functional(v) {
			to = v
			break
		}
	}
	if to == "" {
		m.emit(Notify{Node: self, Kind: "hand-over", Detail: "no backup in reach to hand the master's role to: the nodes wait for its leases to lapse"})
		return
	}
	since := m.since
	m.role = RoleBackup
	m.handedOver = m.now
	m.leases = map[string]lease{}
	m.lastRenew = time.Time{}
	if m.grant.Holder == self && m.now.Before(m.grant.Until) {
		m.grant.Until = m.now
	}
	m.emit(Demote{Node: self, To: RoleBackup})
	for _, n := range m.view.Nodes {
		if n.Name != self {
			m.send(Message{Type: MsgHandOver, To: n.Name, Generation: m.view.Generation, SentAt: m.now, Since: since, Holder: to})
		}
	}
	m.emit(TransferLeadership{To: to},
		Notify{Node: self, Kind: "hand-over", Detail: "master's role handed to " + to + " before this node stops"})
}

// tickBackup: scenario 2. When the master is out of reach even through other
// nodes and the other backup is out of direct reach, raft cannot elect: the
// backup becomes semi-master. If the master is reachable through others, this
// backup is the one cut off (scenario 1 seen from the lost backup): it waits,
// fenced once its lease lapses.
func (m *Machine) tickBackup() {
	self, ct := m.cfg.Self, m.cfg.ConfirmTimeout
	if m.view.Master == self || !m.outFor(m.view.Master, ct, true) {
		return
	}
	for _, v := range m.view.Voters {
		if v != self && v != m.view.Master && m.view.Role(v) != RoleLost && !m.outFor(v, ct, false) {
			return
		}
	}
	if m.yielding() || m.grant.Holder != "" && m.grant.Holder != self && m.now.Before(m.grant.Until) && m.holder.role == RoleSemiMaster {
		return // another survivor is re-forming the group: this one voted for it
	}
	m.becomeSemi("master and the other backup out of reach")
}

func (m *Machine) becomeSemi(why string) {
	m.becomeHolder(RoleSemiMaster)
	m.proposed = 0
	m.emit(Notify{Node: m.cfg.Self, Kind: "semi-master", Detail: why})
	m.propose(max(m.view.Generation, m.grant.Generation) + 1)
}

func (m *Machine) tickSemi() {
	self := m.cfg.Self
	if m.lastRenew.IsZero() || m.now.Sub(m.lastRenew) >= m.cfg.RenewInterval {
		m.lastRenew = m.now
		if m.mayGrant(self, m.proposed, true, m.log()) {
			m.doGrant(self, m.proposed, true, time.Time{})
			m.leases[self] = lease{until: m.now.Add(m.cfg.leaseCount()), generation: m.proposed}
		}
		for _, n := range m.view.Nodes {
			if n.Name != self {
				m.send(Message{Type: MsgVote, To: n.Name, Generation: m.proposed, SentAt: m.now,
					Role: RoleSemiMaster, Since: m.since, Epoch: m.proposed, Log: m.log()})
			}
		}
	}
	votes := m.freshLeases(m.proposed)
	var cands []CandidateInfo
	for _, n := range m.view.Nodes {
		l := m.leases[n.Name]
		if n.Name != self && n.Capable && m.functional(n.Name) && m.direct(n.Name) &&
			l.until.After(m.now) && l.generation == m.proposed {
			cands = append(cands, CandidateInfo{Node: n.Name, Health: m.health[n.Name], LostAt: n.LostAt})
		}
	}
	need := 2 + m.cfg.Spares
	if votes < m.view.Majority() {
		var have []string
		for _, n := range m.view.Nodes {
			if l := m.leases[n.Name]; l.until.After(m.now) && l.generation == m.proposed {
				have = append(have, n.Name)
			}
		}
		if w := fmt.Sprintf("witness votes from %s, %d of %d needed", strings.Join(have, ","), len(have), m.view.Majority()); w != m.waiting {
			m.waiting = w
			m.emit(Notify{Node: self, Kind: "waiting", Detail: w})
		}
		m.shortSince = time.Time{}
		return
	}
	// Every client write was acknowledged on AckCopies replicas. If all but
	// AckCopies-1 of the replicas that may hold one voted, one of them holds it,
	// and every voter's log is behind this one's (the vote rule): so this log
	// holds every acknowledged write. With more of them silent it waits.
	if m.hasReplica && (m.replica.Log.Epoch == 0 || len(m.replica.Servers) == 0) {
		if w := "this node's replica holds no group's data yet"; w != m.waiting {
			m.waiting = w
			m.emit(Notify{Node: self, Kind: "waiting", Detail: "witness majority held, but " + w})
		}
		m.shortSince = time.Time{}
		return
	}
	if missing := m.silentReplicas(); len(missing) > m.AckCopies()-1 {
		if w := fmt.Sprintf("no vote yet from replicas %s", strings.Join(missing, ",")); w != m.waiting {
			m.waiting = w
			m.emit(Notify{Node: self, Kind: "waiting", Detail: "witness majority held, " + w +
				fmt.Sprintf(": more than %d silent replicas may hold acknowledged writes this log lacks", m.AckCopies()-1)})
		}
		m.shortSince = time.Time{}
		return
	}
	if len(cands) < need {
		if w := fmt.Sprintf("%d of %d candidates", len(cands), need); w != m.waiting {
			m.waiting = w
			m.emit(Notify{Node: self, Kind: "waiting", Detail: "witness majority held, " + w})
		}
		// The seed waits for a spare beyond the two backups; a small cluster may
		// never have one (four nodes, one lost). With the two backups at hand the
		// group re-forms after ConfirmTimeout rather than stay without a master,
		// and at once when no other capable node is in reach to become one.
		if len(cands) < 2 {
			m.shortSince = time.Time{}
			return
		}
		if m.shortSince.IsZero() {
			m.shortSince = m.now
		}
		if m.now.Sub(m.shortSince) < m.cfg.ConfirmTimeout && len(cands)+m.possibleSpares(cands) >= need {
			return
		}
		m.emit(Notify{Node: self, Kind: "no-spare", Detail: fmt.Sprintf("re-forming with two backups and no spare (%v waited)", m.now.Sub(m.shortSince))})
	}
	m.shortSince = time.Time{}
	m.reForm(Rank(cands, m.now, m.cfg))
}

// possibleSpares counts the capable nodes in reach, other than this one and the
// candidates at hand, that could still become candidates (vote, or be healthy).
func (m *Machine) possibleSpares(cands []CandidateInfo) int {
	k := 0
	for _, n := range m.view.Nodes {
		if n.Capable && n.Name != m.cfg.Self && n.Role != RoleLost && m.reachable(n.Name) &&
			!slices.ContainsFunc(cands, func(c CandidateInfo) bool { return c.Node == n.Name }) {
			k++
		}
	}
	return k
}

// silentReplicas are the replicas that may hold a client write and have not
// voted for the generation this node proposes: every management-capable node of
// its view and every server of its own or its voters' raft configurations (a
// node that joined while this one was cut off). Nodes the table holds lost count
// too: this node's table may be older than their readmission, and a host that is
// gone for good is removed from the cluster by its operator.
func (m *Machine) silentReplicas() []string {
	if !m.hasReplica {
		return nil
	}
	may := map[string]bool{}
	for _, n := range m.view.Nodes {
		if n.Capable {
			may[n.Name] = true
		}
	}
	for _, s := range m.replica.Servers {
		may[s] = true
	}
	for n, servers := range m.voterServers {
		if l := m.leases[n]; l.until.After(m.now) && l.generation == m.proposed {
			for _, s := range servers {
				may[s] = true
			}
		}
	}
	var out []string
	for _, s := range slices.Sorted(maps.Keys(may)) {
		if s == m.cfg.Self {
			continue
		}
		if l := m.leases[s]; !l.until.After(m.now) || l.generation != m.proposed {
			out = append(out, s)
		}
	}
	return out
}

// reForm is the end of scenarios 2 and 3: with witness votes from a majority
// of all registered nodes and enough candidates, the semi-master re-forms the
// management group as generation g+1. The votes are leases, so it acts at
// once; the old voters lose management status and are declared lost by the
// master's loop if they stay out of reach.
func (m *Machine) reForm(ranked []CandidateInfo) {
	self := m.cfg.Self
	b1, b2 := ranked[0].Node, ranked[1].Node
	v := &m.view
	old := v.Voters
	v.Generation, v.Epoch, v.Version, v.Master = m.proposed, m.proposed, 1, self
	v.Voters = []string{self, b1, b2}
	for i := range v.Nodes {
		n := &v.Nodes[i]
		switch {
		case n.Name == self:
			n.Role = RoleMaster
		case n.Name == b1 || n.Name == b2:
			n.Role = RoleBackup
		case slices.Contains(old, n.Name) && (n.Role == RoleMaster || n.Role == RoleBackup):
			n.Role = v.listRole(n.Name)
		}
	}
	leases := m.leases
	m.term = 1                 // forced recovery starts a new raft configuration
	m.becomeHolder(RoleMaster) // formed: the new generation
	m.leases = leases
	m.proposed = 0
	m.reformed, m.reformAt = v.Generation, m.now
	m.emit(ReForm{Generation: v.Generation, Voters: slices.Clone(v.Voters)},
		Promote{Node: b1, To: RoleBackup}, Promote{Node: b2, To: RoleBackup})
	m.renew()
}

func (m *Machine) renew() {
	self := m.cfg.Self
	m.lastRenew = m.now
	au := m.actingUntil()
	g := m.view.Generation
	// A master that voted for a newer generation which never formed is below
	// its own floor. If a majority of the others grant it, no group of that
	// generation can ever form (its voters would be among them, and they grant
	// no older generation), so it may count itself again.
	others := m.freshLeases(g) - m.lease(self)
	if m.mayGrant(self, g, false, LogPos{}) || others >= m.view.Majority() && m.mayGrantAbove(self, g, false, LogPos{}) {
		m.doGrant(self, g, false, au)
		m.leases[self] = lease{until: m.now.Add(m.cfg.leaseCount()), generation: g}
		m.lastGrant[self] = m.now
	}
	v := m.view.Clone()
	for _, n := range m.view.Nodes {
		if n.Name == self || m.stopped[n.Name] {
			continue
		}
		// A node serves no longer than its last grant that reached us plus
		// LeaseDuration: a grant lost on the way must not let it serve past
		// the moment checkLost may declare it lost.
		until := au
		if limit := m.lastGrant[n.Name].Add(m.cfg.LeaseDuration); limit.Before(until) {
			until = limit
		}
		if n.Role == RoleLost || n.Role == RoleOnHold {
			// Declared lost: its guests are (being) restarted elsewhere. It serves
			// none until it is taken in again, after its loss is written.
			until = time.Time{}
		}
		m.send(Message{Type: MsgLease, To: n.Name, Generation: g, SentAt: m.now, ActingUntil: until,
			Acting: !au.IsZero(), View: &v, Role: RoleMaster, Since: m.since, Epoch: m.view.Epoch, Term: m.term})
	}
}

func (m *Machine) tickMaster() {
	self := m.cfg.Self
	if m.lastRenew.IsZero() || m.now.Sub(m.lastRenew) >= m.cfg.RenewInterval {
		m.renew()
	}
	// Scenario 3: no other voter in direct reach means raft has no quorum;
	// the master steps down to semi-master.
	// Raft commits with a majority of the voters: count self and the backups in
	// direct reach. A group of one (a new cluster) is its own quorum. Raft's own
	// voters count where the replica says them: they may not be the table's yet
	// (a voter promoted a moment before another died), and it is raft's quorum
	// that writes need.
	voters, raftVoters := m.view.Voters, false
	if m.epochCurrent() && slices.Contains(m.replica.Voters, self) {
		voters, raftVoters = m.replica.Voters, true
	}
	inReach := 1
	for _, v := range voters {
		if v != self && (raftVoters || m.view.Role(v) == RoleBackup) && m.direct(v) {
			inReach++
		}
	}
	live := inReach > len(voters)/2
	if live {
		m.quorumLostSince = time.Time{}
	} else {
		// Without a voter in reach nothing can be committed: no node is
		// declared lost and no voter replaced until the group re-forms.
		if m.quorumLostSince.IsZero() {
			m.quorumLostSince = m.now
		}
		if m.now.Sub(m.quorumLostSince) >= m.cfg.ConfirmTimeout {
			m.becomeSemi(fmt.Sprintf("raft's voters %v out of reach: no quorum", voters))
		}
		return
	}
	if !m.Acting() {
		// A master no majority grants to for this long is stuck: nodes that voted
		// for a newer generation grant it nothing, or its group was split off. It
		// steps down to semi-master and re-forms through the vote rule, which
		// picks the furthest log, rather than act again on a log that may be stale.
		if wait := m.cfg.LeaseDuration + 2*m.cfg.ConfirmTimeout; m.now.Sub(m.lastActing) >= wait && m.now.Sub(m.since) >= wait {
			m.becomeSemi(fmt.Sprintf("no majority lease for %v", wait))
		}
		return
	}
	changed := false
	for i := range m.view.Nodes {
		n := &m.view.Nodes[i]
		switch {
		case n.Name == self:
		case m.direct(n.Name):
			changed = m.checkReturn(n) || changed
		case n.Role == RoleLost:
			m.checkGiveUp(n)
		default:
			changed = m.checkLost(n) || changed
		}
	}
	changed = m.fillVoters() || changed
	if changed {
		m.view.Version++
		m.renew()
	}
}

// checkLost: scenarios 1 and 4. A node out of reach through any path, or
// reachable only through others for ConfirmTimeout, is declared lost, but
// never before LeaseDuration+LeaseMargin after its last grant: by then it has
// fenced itself.
func (m *Machine) checkLost(n *NodeState) bool {
	p := m.reach[n.Name]
	why := "no path to it"
	if p.Reachable {
		if m.now.Sub(m.suspect[n.Name]) < m.cfg.ConfirmTimeout {
			return false
		}
		why = fmt.Sprintf("reachable only via %s for %v", p.Via, m.cfg.ConfirmTimeout)
	}
	last := m.lastGrant[n.Name]
	if last.Before(m.started) {
		last = m.started
	}
	if !m.mayDeclareLost() {
		return false
	}
	if m.now.Before(last.Add(m.cfg.LeaseDuration + m.cfg.LeaseMargin)) {
		if !m.powerFenced(n.Name, last) {
			return false
		}
		why += "; powered off by its power fence agent"
	}
	n.Role, n.LostAt = RoleLost, m.now
	m.declaredAt[n.Name] = m.now
	m.emit(DeclareLost{Node: n.Name, Why: why})
	return true
}

// powerFenced reports whether the power fence agent confirmed node off since its
// last grant (last), the one thing that lets a master declare it lost before the
// lease rule's wait: it runs nothing once it is off. Until then it asks for power
// fencing once PowerFenceAfter has passed since last, and again every retryRaft
// while no confirmation comes. Without power fencing it is always false.
func (m *Machine) powerFenced(node string, last time.Time) bool {
	if m.cfg.PowerFenceAfter == 0 {
		return false
	}
	if off := m.poweredOff[node]; !off.IsZero() && !off.Before(last) {
		return true
	}
	asked := m.powerFenceAsked[node]
	if m.now.Before(last.Add(m.cfg.PowerFenceAfter)) || asked.After(last) && m.now.Sub(asked) < retryRaft {
		return false
	}
	m.powerFenceAsked[node] = m.now
	m.emit(PowerFence{Node: node, Asked: m.now})
	return false
}

// powerFenceAnswer takes the power fence agent's answer, for a node this master
// asked about. A confirmation says the node was off at some moment after e.Asked;
// it counts as of e.Asked, and not at all if the node was heard from since (a
// reboot that brought it back before the answer came): only a node silent from
// the moment it was asked about until now is known off. It reports whether the
// node is now known off.
func (m *Machine) powerFenceAnswer(e PoweredOff) bool {
	if m.role != RoleMaster || m.powerFenceAsked[e.Node].IsZero() || e.Asked.IsZero() || m.view.node(e.Node) == nil {
		return false
	}
	if !e.OK {
		m.emit(Notify{Node: e.Node, Kind: "power-fence-failed", Detail: e.Why + ": it is declared lost by the lease rule alone"})
		return false
	}
	if m.lastGrant[e.Node].After(e.Asked) {
		return false
	}
	m.poweredOff[e.Node] = e.Asked
	m.emit(Notify{Node: e.Node, Kind: "power-fenced", Detail: "its power fence agent confirmed it off"})
	return true
}

// checkReturn: a lost node back in direct contact that has granted a lease
// since is demoted and put back on the list, or held when not functional.
func (m *Machine) checkReturn(n *NodeState) bool {
	if n.Role != RoleLost && n.Role != RoleOnHold {
		return false
	}
	if !m.lastGrant[n.Name].After(n.LostAt) || !m.lossRecorded(n.Name) {
		return false
	}
	if m.functional(n.Name) {
		to := m.view.listRole(n.Name)
		n.Role = to
		m.emit(Demote{Node: n.Name, To: to})
		return true
	}
	if n.Role == RoleOnHold {
		return false
	}
	why := "no health report"
	if h, ok := m.health[n.Name]; ok {
		why = fmt.Sprintf("network %.2f cpu %.2f disk %.2f, below %.2f", h.Network, h.CPU, h.Disk, m.cfg.MinHealth)
	}
	n.Role = RoleOnHold
	m.emit(Hold{Node: n.Name, Why: why}, Notify{Node: n.Name, Kind: "on-hold", Detail: why})
	return true
}

func (m *Machine) checkGiveUp(n *NodeState) {
	if m.stopped[n.Name] || m.now.Sub(n.LostAt) < m.cfg.GiveUpAfter {
		return
	}
	m.stopped[n.Name] = true
	m.emit(GiveUp{Node: n.Name},
		Notify{Node: n.Name, Kind: "gave-up", Detail: fmt.Sprintf("lost for %v: check the host", m.cfg.GiveUpAfter)})
}

// register is "pop in more hardware": the master puts a joining host on its
// table and sends it a lease request at once, so it is counted, ranked and can
// serve HA guests without any other step.
func (m *Machine) register(e Register) {
	if m.role != RoleMaster || e.Node == "" || m.view.node(e.Node) != nil {
		return
	}
	r := RoleNode
	if e.Capable {
		r = RoleCandidate
	}
	m.view.Nodes = append(m.view.Nodes, NodeState{Name: e.Node, Role: r, Capable: e.Capable})
	slices.SortFunc(m.view.Nodes, func(a, b NodeState) int { return strings.Compare(a.Name, b.Name) })
	m.view.Version++
	m.renew()
}

// deregister removes a lost node from the table (see Deregister).
func (m *Machine) deregister(e Deregister) {
	n := m.view.node(e.Node)
	if m.role != RoleMaster || !m.Acting() || n == nil || n.Role != RoleLost || e.Node == m.cfg.Self {
		return
	}
	m.view.Nodes = slices.DeleteFunc(m.view.Nodes, func(x NodeState) bool { return x.Name == e.Node })
	m.view.Voters = slices.DeleteFunc(m.view.Voters, func(v string) bool { return v == e.Node })
	for _, t := range []map[string]time.Time{m.lastGrant, m.suspect, m.declaredAt, m.readmit, m.powerFenceAsked, m.poweredOff} {
		delete(t, e.Node)
	}
	delete(m.leases, e.Node)
	delete(m.reach, e.Node)
	delete(m.health, e.Node)
	delete(m.stopped, e.Node)
	m.view.Version++
	m.emit(Notify{Node: e.Node, Kind: "node-removed", Detail: "removed from the cluster by an operator: gone for good"})
	m.fillVoters()
	m.renew()
}

// fillVoters replaces each voter that is no longer a backup with the best
// ranked candidate that is functional, in direct reach and holding our lease.
func (m *Machine) fillVoters() bool {
	self := m.cfg.Self
	changed := false
	for i, v := range m.view.Voters {
		if v == self || m.view.Role(v) == RoleBackup {
			continue
		}
		var cands []CandidateInfo
		for _, n := range m.view.Nodes {
			if n.Role != RoleCandidate || !n.Capable || !m.functional(n.Name) || !m.direct(n.Name) ||
				!m.leases[n.Name].until.After(m.now) {
				continue
			}
			if n.Name != v && slices.Contains(m.view.Voters, n.Name) {
				continue
			}
			cands = append(cands, CandidateInfo{Node: n.Name, Health: m.health[n.Name], LostAt: n.LostAt})
		}
		if len(cands) == 0 {
			continue
		}
		best := Rank(cands, m.now, m.cfg)[0].Node
		if best != v {
			m.view.Voters[i] = best
			m.emit(ReplaceVoter{Old: v, New: best})
		}
		m.view.setRole(best, RoleBackup)
		m.emit(Promote{Node: best, To: RoleBackup})
		changed = true
	}
	// A group formed with fewer voters (a new cluster starts with one) grows to
	// the master and two backups as candidates arrive.
	for len(m.view.Voters) < 3 {
		var cands []CandidateInfo
		for _, n := range m.view.Nodes {
			if n.Role == RoleCandidate && n.Capable && m.functional(n.Name) && m.direct(n.Name) &&
				m.leases[n.Name].until.After(m.now) && !slices.Contains(m.view.Voters, n.Name) {
				cands = append(cands, CandidateInfo{Node: n.Name, Health: m.health[n.Name], LostAt: n.LostAt})
			}
		}
		if len(cands) == 0 {
			break
		}
		best := Rank(cands, m.now, m.cfg)[0].Node
		m.view.Voters = append(m.view.Voters, best)
		m.view.setRole(best, RoleBackup)
		m.emit(Promote{Node: best, To: RoleBackup})
		changed = true
	}
	return changed
}
