package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Probe defaults: a LAN where guests wait for a lost node's recovery. A dead node is
// declared about 1 to 2 s after it stops answering (BenchmarkFailureDetection: median
// 1.4 s, at most 1.7 s, three members on loopback): probed every 300 ms, 150 ms for the
// direct answer, then 3 other members probe it indirectly (the seed's "ask the others
// whether it is reachable through them"), then a suspicion period that starts at 3.6 s
// and shrinks to 0.9 s as other members confirm the suspicion, so that one member's bad
// link alone does not declare a node dead quickly. Members scale these up by themselves
// when their own host is overloaded (memberlist's awareness), which avoids false alarms
// from a busy host.
const (
	DefaultProbeInterval           = 300 * time.Millisecond
	DefaultProbeTimeout            = 150 * time.Millisecond
	DefaultSuspicionMult           = 3
	DefaultSuspicionMaxTimeoutMult = 4
	DefaultIndirectChecks          = 3
	// leaveNoticeWindow is how long after a member's leave notice its departure is
	// reported as a leave rather than a failure: Leave's timeout, with room.
	leaveNoticeWindow = 30 * time.Second
	// lateNoticeWindow is how long after a member was recorded failed its leave notice
	// still makes it a leave: the notice and the departure travel apart.
	lateNoticeWindow = 5 * time.Second
	// DefaultMessageBuffer is how many received messages wait unread before newer ones
	// are dropped (and counted): the role machine's messages tolerate loss.
	DefaultMessageBuffer = 1024
)

var (
	// ErrUnknownNode is returned by Send for a node that is not a live member.
	ErrUnknownNode = errors.New("no such live member")
	// ErrMetaTooLarge is returned when Meta does not fit memberlist's 512 bytes.
	ErrMetaTooLarge = errors.New("node metadata too large")
)

// Meta is what a node tells every member about itself, gossiped with its membership.
// Scores are 0..1, higher is better, as failover.HealthReport.
type Meta struct {
	// API is the host:port of the node's dvmd API.
	API string `json:"api,omitempty"`
	// Agent is the host:port of a management node's mutual-TLS listener for agents.
	Agent string `json:"agent,omitempty"`
	// Raft is the host:port of a management node's raft transport: a replica moving
	// to a re-formed group names its leader there.
	Raft string `json:"raft,omitempty"`
	// Management says the node may hold a management role (master, backup, candidate).
	Management bool    `json:"mgmt,omitempty"`
	Network    float64 `json:"net,omitempty"`
	CPU        float64 `json:"cpu,omitempty"`
	Disk       float64 `json:"disk,omitempty"`
	// UpSince is when the host came up; its uptime is the time since, so Meta need not
	// be updated as it grows.
	UpSince time.Time `json:"up,omitzero"`
	// Downtime is the host's downtime record over the tracked window.
	Downtime time.Duration `json:"down,omitempty"`
	// Version is the node's dvmd version: a master writes a newer kind of log entry
	// only once every replica's says it applies it (store.Store.SetPeerVersion).
	// Members ignore metadata fields they do not know: metadata only advises.
	Version string `json:"ver,omitempty"`
}

// MemberState is a member's state as this node last learned it. There is no "suspect":
// memberlist v0.7.0 does not tell its users which members it suspects
// (hashicorp/memberlist#293), so a member is alive until it is declared dead.
type MemberState string

const (
	StateAlive MemberState = "alive"
	StateDead  MemberState = "dead" // failed: suspected, then declared dead by failure detection
	StateLeft  MemberState = "left" // left on purpose (Leave)
)

// Member is one node as gossip knows it.
type Member struct {
	Name  string
	Addr  netip.AddrPort // gossip address
	State MemberState
	// Since is when this node learned the current State.
	Since time.Time
	Meta  Meta
	// MetaErr is set when the node's metadata could not be read (a newer or foreign
	// version); Meta is then zero.
	MetaErr error
}

// EventKind is what happened to a member.
type EventKind string

const (
	EventJoin   EventKind = "join"
	EventLeave  EventKind = "leave"  // left on purpose
	EventFailed EventKind = "failed" // suspected, then declared dead
	EventUpdate EventKind = "update" // its Meta changed
)

// Event is a membership change seen by this node.
type Event struct {
	Kind   EventKind
	Member Member
}

// Message is a user message received with Send. From is the sender's node name, checked
// against the sender's certificate from the cluster's CA.
type Message struct {
	From    string
	Payload []byte
}

// MemberConfig configures Join.
type MemberConfig struct {
	// Credentials give the node's name (from its certificate), the gossip key, and the
	// key that signs messages sent with Send. Required.
	Credentials *Credentials
	// BindAddr and BindPort are where gossip listens, UDP and TCP on the same port.
	// BindAddr defaults to 0.0.0.0; BindPort 0 lets the OS choose (tests), so a daemon
	// sets it (memberlist's usual port is 7946).
	BindAddr string
	BindPort int
	// AdvertiseAddr and AdvertisePort are what other members dial; defaults: the bound
	// address (a private address of the host when bound to 0.0.0.0) and port.
	AdvertiseAddr string
	AdvertisePort int
	// Peers are host:port gossip addresses of members to join. Empty starts alone.
	Peers []string
	Meta  Meta
	// Failure detection; zero values take the defaults above.
	ProbeInterval           time.Duration
	ProbeTimeout            time.Duration
	SuspicionMult           int
	SuspicionMaxTimeoutMult int
	IndirectChecks          int
	MessageBuffer           int
	// Log receives memberlist's own log lines at their levels; nil discards them.
	Log *slog.Logger
}

// Members is this node's membership in the cluster's gossip.
type Members struct {
	ml     *memberlist.Memberlist
	creds  *Credentials
	log    *slog.Logger
	events *queue[Event]
	msgs   *queue[Message]
	peers  certCache

	// table is every member seen, in its last state; leaving holds members that said
	// they are leaving (and when), so that their departure is reported as a leave, not
	// a failure.
	tableMu sync.Mutex
	table   map[string]Member
	leaving map[string]time.Time

	// ids binds other members' names to their certificates (identity.go).
	ids identities

	metaMu     sync.Mutex
	meta       []byte // signed, as gossiped
	gossipAddr string // this node's advertised gossip address, which meta is signed for

	droppedMsgs atomic.Uint64
	refused     atomic.Uint64
	refusedNews atomic.Uint64 // members' news refused for a wrong or missing proof of name
}

// Join starts gossip for the node of cfg.Credentials and joins cfg.Peers. Gossip (UDP)
// and push/pull and messages (TCP) are encrypted and authenticated with the gossip key
// (AES-256-GCM); packets without it are dropped, so a host without the key cannot join.
// Join fails if Peers is not empty and none of them could be joined; to wait for peers
// instead, give no Peers and call JoinPeers until it succeeds.
func Join(cfg MemberConfig) (*Members, error) {
	if cfg.Credentials == nil {
		return nil, errors.New("join: no credentials: load them with cluster.Load")
	}
	// Signed for no address yet: memberlist asks for the metadata before it knows its
	// address, and nobody hears this first version.
	metaJSON, err := signMeta(cfg.Credentials, cfg.Meta, "", time.Now())
	if err != nil {
		return nil, err
	}
	lg := cfg.Log
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	bufSize := cfg.MessageBuffer
	if bufSize <= 0 {
		bufSize = DefaultMessageBuffer
	}
	conf := memberlist.DefaultLANConfig()
	conf.Name = cfg.Credentials.Node()
	conf.SecretKey = cfg.Credentials.gossipKey
	conf.GossipVerifyIncoming = true
	conf.GossipVerifyOutgoing = true
	conf.BindAddr = or(cfg.BindAddr, "0.0.0.0")
	conf.BindPort = cfg.BindPort
	conf.AdvertiseAddr = cfg.AdvertiseAddr
	conf.AdvertisePort = cfg.AdvertisePort
	if conf.AdvertisePort == 0 {
		conf.AdvertisePort = conf.BindPort
	}
	conf.ProbeInterval = orDur(cfg.ProbeInterval, DefaultProbeInterval)
	conf.ProbeTimeout = orDur(cfg.ProbeTimeout, DefaultProbeTimeout)
	conf.SuspicionMult = orInt(cfg.SuspicionMult, DefaultSuspicionMult)
	conf.SuspicionMaxTimeoutMult = orInt(cfg.SuspicionMaxTimeoutMult, DefaultSuspicionMaxTimeoutMult)
	conf.IndirectChecks = orInt(cfg.IndirectChecks, DefaultIndirectChecks)
	if conf.ProbeTimeout >= conf.ProbeInterval {
		return nil, fmt.Errorf("join: probe timeout %s is not below probe interval %s: the indirect probes need the rest of the interval", conf.ProbeTimeout, conf.ProbeInterval)
	}
	// Spread news of a failure quickly; on a LAN the extra packets cost nothing.
	conf.GossipInterval = 100 * time.Millisecond
	// Bounds a Send to a node that stopped answering.
	conf.TCPTimeout = 5 * time.Second
	m := &Members{
		creds: cfg.Credentials, log: lg, meta: metaJSON,
		events: newQueue[Event](0), msgs: newQueue[Message](bufSize),
		peers: certCache{pool: cfg.Credentials.pool, names: map[[32]byte]verified{}},
		table: map[string]Member{}, leaving: map[string]time.Time{}, ids: newIdentities(),
	}
	conf.Delegate = (*delegate)(m)
	conf.Alive = (*aliveDelegate)(m)
	conf.Events = (*eventDelegate)(m)
	conf.Conflict = (*eventDelegate)(m)
	conf.Logger = log.New(&logWriter{lg}, "", 0)

	ml, err := memberlist.Create(conf)
	if err != nil {
		m.events.close()
		m.msgs.close()
		return nil, fmt.Errorf("join: start gossip on %s:%d: %w", conf.BindAddr, cfg.BindPort, err)
	}
	m.ml = ml
	m.metaMu.Lock()
	m.gossipAddr = ml.LocalNode().Address()
	m.metaMu.Unlock()
	if err := m.UpdateMeta(cfg.Meta); err != nil {
		m.Shutdown()
		return nil, fmt.Errorf("join: %w", err)
	}
	if len(cfg.Peers) > 0 {
		if _, err := m.JoinPeers(cfg.Peers...); err != nil {
			m.Shutdown()
			return nil, err
		}
	}
	return m, nil
}

// JoinPeers contacts members at the given host:port addresses and returns how many
// answered. It fails only when none did.
func (m *Members) JoinPeers(addrs ...string) (int, error) {
	if len(addrs) == 0 {
		return 0, errors.New("join: no peer addresses given: give host:port of a member's gossip")
	}
	n, err := m.ml.Join(addrs)
	if n == 0 {
		return 0, fmt.Errorf("join %s: no member answered: check that they are up and that this node has the cluster's gossip.key (a wrong key looks like no answer): %w",
			strings.Join(addrs, ","), err)
	}
	return n, nil
}

// Name is this node's name.
func (m *Members) Name() string { return m.creds.Node() }

// Addr is this node's advertised gossip address, for others' Peers.
func (m *Members) Addr() string { return m.ml.LocalNode().Address() }

// Members returns every member this node has seen since it started, this node included,
// in its last state (alive, dead or left), sorted by name.
func (m *Members) Members() []Member {
	m.tableMu.Lock()
	out := make([]Member, 0, len(m.table))
	for _, mem := range m.table {
		out = append(out, mem)
	}
	m.tableMu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Alive returns the names of the members currently alive, this node included, sorted.
func (m *Members) Alive() []string {
	var names []string
	for _, mem := range m.Members() {
		if mem.State == StateAlive {
			names = append(names, mem.Name)
		}
	}
	return names
}

// Events delivers membership changes in the order seen. It is never full (events queue
// in memory until read) and is closed by Shutdown.
func (m *Members) Events() <-chan Event { return m.events.out }

// Messages delivers messages sent to this node with Send. Messages not read in time are
// dropped beyond MessageBuffer (see DroppedMessages). Closed by Shutdown.
func (m *Members) Messages() <-chan Message { return m.msgs.out }

// DroppedMessages counts received messages dropped because Messages was not read.
func (m *Members) DroppedMessages() uint64 { return m.droppedMsgs.Load() }

// RefusedMessages counts received messages refused because their signature, certificate
// or addressee was wrong.
func (m *Members) RefusedMessages() uint64 { return m.refused.Load() }

// UpdateMeta replaces this node's Meta and gossips it; other members get EventUpdate.
func (m *Members) UpdateMeta(meta Meta) error {
	m.metaMu.Lock()
	b, err := signMeta(m.creds, meta, m.gossipAddr, time.Now())
	if err == nil {
		m.meta = b
	}
	m.metaMu.Unlock()
	if err != nil {
		return err
	}
	return m.ml.UpdateNode(5 * time.Second)
}

// Send sends msg to node over TCP, encrypted with the gossip key and signed with this
// node's certificate key, so the receiver learns the sender's name from its certificate.
// Receivers must treat payloads as possibly late or repeated (a message recorded on the
// wire can be sent again to the same node), as failover's messages are.
func (m *Members) Send(node string, msg []byte) error {
	if node == m.Name() {
		return fmt.Errorf("send to %q: that is this node", node)
	}
	var to *memberlist.Node
	for _, n := range m.ml.Members() {
		if n.Name == node {
			to = n
			break
		}
	}
	if to == nil {
		return fmt.Errorf("send to %q: %w", node, ErrUnknownNode)
	}
	env, err := seal(m.creds, kindUser, node, msg)
	if err != nil {
		return fmt.Errorf("send to %q: %w", node, err)
	}
	if err := m.ml.SendReliable(to, env); err != nil {
		return fmt.Errorf("send to %q: %w", node, err)
	}
	return nil
}

// Leave tells the other members that this node leaves, so they see EventLeave rather
// than EventFailed, waiting up to timeout for the news to go out. Call Shutdown after.
// A member that could not be told in time reports a failure instead.
func (m *Members) Leave(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	// memberlist marks a node that leaves as "left" but does not tell its users
	// (hashicorp/memberlist#293), so each member is first told with a signed notice.
	var wg sync.WaitGroup
	for _, n := range m.ml.Members() {
		if n.Name == m.Name() {
			continue
		}
		env, err := seal(m.creds, kindLeaving, n.Name, nil)
		if err != nil {
			return fmt.Errorf("leave: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.ml.SendReliable(n, env); err != nil {
				m.log.Warn("leave: could not tell a member; it will see a failure", "node", n.Name, "err", err)
			}
		}()
	}
	sent := make(chan struct{})
	go func() { wg.Wait(); close(sent) }()
	select {
	case <-sent:
	case <-time.After(time.Until(deadline)):
	}
	if err := m.ml.Leave(max(time.Until(deadline), time.Millisecond)); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	return nil
}

// Shutdown stops gossip at once, without telling anyone: others will declare this node
// failed. Events and Messages are closed.
func (m *Members) Shutdown() error {
	err := m.ml.Shutdown()
	m.events.close()
	m.msgs.close()
	return err
}

func toMember(n *memberlist.Node, state MemberState) Member {
	mem := Member{Name: n.Name, State: state, Since: time.Now()}
	if ip, ok := netip.AddrFromSlice(n.Addr); ok {
		mem.Addr = netip.AddrPortFrom(ip.Unmap(), n.Port)
	}
	if len(n.Meta) > 0 {
		if err := json.Unmarshal(n.Meta, &mem.Meta); err != nil {
			mem.Meta = Meta{}
			mem.MetaErr = fmt.Errorf("node %q metadata: %w", n.Name, err)
		}
	}
	return mem
}

// delegate is memberlist's Delegate. memberlist calls it from its network goroutines;
// every method returns quickly.
type delegate Members

func (d *delegate) NodeMeta(limit int) []byte {
	d.metaMu.Lock()
	defer d.metaMu.Unlock()
	return d.meta
}

func (d *delegate) NotifyMsg(b []byte) {
	m := (*Members)(d)
	kind, from, payload, err := open(&m.peers, m.Name(), b, time.Now())
	if err != nil {
		m.refused.Add(1)
		m.log.Warn("refused cluster message", "err", err)
		return
	}
	if kind == kindLeaving {
		m.tableMu.Lock()
		m.leaving[from] = time.Now()
		// The notice comes over TCP and the departure over UDP: the departure may be
		// handled first. A member recorded failed a moment ago is taken as left.
		var ev *Event
		if mem, ok := m.table[from]; ok && mem.State == StateDead && time.Since(mem.Since) < lateNoticeWindow {
			mem.State, mem.Since = StateLeft, time.Now()
			m.table[from] = mem
			delete(m.leaving, from)
			ev = &Event{Kind: EventLeave, Member: mem}
		}
		m.tableMu.Unlock()
		if ev != nil {
			m.events.push(*ev)
		}
		return
	}
	if !m.msgs.push(Message{From: from, Payload: payload}) {
		m.droppedMsgs.Add(1)
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return (*Members)(d).localState() }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     { (*Members)(d).mergeState(buf) }

// eventDelegate is memberlist's EventDelegate and ConflictDelegate. memberlist calls it
// with its node lock held, so it only records and queues. (The Node's State field is
// always "alive" in memberlist v0.7.0, hashicorp/memberlist#293: states come from which
// method is called and from leave notices.)
type eventDelegate Members

func (d *eventDelegate) record(kind EventKind, n *memberlist.Node) {
	d.tableMu.Lock()
	state := StateAlive
	switch kind {
	case EventJoin:
		delete(d.leaving, n.Name)
	case EventFailed:
		state = StateDead
		// A node that comes back may have signed its metadata by a clock set back.
		d.ids.forget(n.Name)
		// A notice counts only for a departure soon after it, so that a notice recorded
		// and replayed by someone on the network cannot make a later crash look like a
		// leave.
		if at, ok := d.leaving[n.Name]; ok && time.Since(at) < leaveNoticeWindow {
			kind, state = EventLeave, StateLeft
		}
		delete(d.leaving, n.Name)
	}
	mem := toMember(n, state)
	if old, ok := d.table[n.Name]; ok && old.State == state {
		mem.Since = old.Since
	}
	d.table[n.Name] = mem
	d.tableMu.Unlock()
	d.events.push(Event{Kind: kind, Member: mem})
}

func (d *eventDelegate) NotifyJoin(n *memberlist.Node)   { d.record(EventJoin, n) }
func (d *eventDelegate) NotifyLeave(n *memberlist.Node)  { d.record(EventFailed, n) }
func (d *eventDelegate) NotifyUpdate(n *memberlist.Node) { d.record(EventUpdate, n) }

func (d *eventDelegate) NotifyConflict(existing, other *memberlist.Node) {
	d.log.Error("two hosts gossip under one node name: give each host its own node credentials",
		"node", existing.Name, "known", existing.Address(), "other", other.Address())
}

// queue is an in-memory FIFO feeding a channel, so memberlist's goroutines never block
// on a slow reader. max > 0 bounds it (push reports false when full).
type queue[T any] struct {
	mu     sync.Mutex
	items  []T
	max    int
	closed bool
	wake   chan struct{}
	done   chan struct{}
	out    chan T
}

func newQueue[T any](max int) *queue[T] {
	q := &queue[T]{max: max, wake: make(chan struct{}, 1), done: make(chan struct{}), out: make(chan T)}
	go q.run()
	return q
}

func (q *queue[T]) push(v T) bool {
	q.mu.Lock()
	if q.closed || (q.max > 0 && len(q.items) >= q.max) {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, v)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

func (q *queue[T]) close() {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.done)
	}
	q.mu.Unlock()
}

func (q *queue[T]) run() {
	defer close(q.out)
	for {
		q.mu.Lock()
		if len(q.items) == 0 {
			q.mu.Unlock()
			select {
			case <-q.wake:
				continue
			case <-q.done:
				return
			}
		}
		v := q.items[0]
		var zero T
		q.items[0] = zero
		q.items = q.items[1:]
		q.mu.Unlock()
		select {
		case q.out <- v:
		case <-q.done:
			return
		}
	}
}

// logWriter turns memberlist's "[LEVEL] memberlist: msg" lines into slog records.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if strings.HasPrefix(line, prefix) {
			level = l
			line = strings.TrimSpace(strings.TrimPrefix(line, prefix))
			break
		}
	}
	if strings.Contains(line, errAwaitingCert.Error()) {
		level = slog.LevelDebug // a member's certificate comes right after its news when it joins
	}
	w.log.Log(context.Background(), level, strings.TrimPrefix(line, "memberlist: "), "component", "gossip")
	return len(p), nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orDur(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func orInt(i, def int) int {
	if i <= 0 {
		return def
	}
	return i
}
