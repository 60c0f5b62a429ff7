package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/dvmproject/dvm/internal/strictjson"
	"github.com/dvmproject/dvm/internal/version"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	bolt "go.etcd.io/bbolt"
)

// Config says how this node takes part in the replicated state.
type Config struct {
	// NodeID is this node's name; raft's server ID.
	NodeID string
	// Dir holds raft.db (log and stable store, bbolt) and snapshots/.
	Dir string
	// Transport carries raft between management nodes; on a real cluster it is mutual
	// TLS with the cluster's credentials. Its local address is this node's raft address.
	Transport raft.Transport
	// NewTransport makes a fresh transport on the same address. raft closes its
	// transport when it stops, so Reform, which stops and starts raft, needs it.
	NewTransport func() (raft.Transport, error)
	// Bootstrap forms a new cluster with this node as its only voter when it has no
	// state yet. Exactly one node does this when a cluster is created; the others join.
	Bootstrap bool
	// Timing. Zero values take LAN defaults, tighter than raft's own because guests are
	// waiting: a master loss is noticed within about a second.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// SnapshotThreshold is how many log entries may accumulate before a snapshot
	// truncates the log.
	SnapshotThreshold uint64
	LogOutput         io.Writer
	// Epoch, if set, is this replica's raft epoch: Reform sets it to the new
	// generation, Reset clears it. Give the same one to the transport.
	Epoch *Epoch
}

// LeaderSilence is how long this replica has not heard from a raft leader (zero on the
// leader itself). A follower keeps naming a leader that died, a non-voter until it
// hears from a new one: silence, not the name, tells that there is none.
func (s *Store) LeaderSilence() time.Duration {
	if s.IsLeader() {
		return 0
	}
	return time.Since(s.Raft().LastContact())
}

// ID is this replica's raft server ID: its node's name.
func (s *Store) ID() string { return string(s.rc.LocalID) }

// Generation is the generation of the raft group this replica belongs to (its
// epoch): for a replica of the first group, which keeps no epoch, 1 once it holds
// any state; 0 for a fresh replica that has joined no group yet.
func (s *Store) Generation() uint64 {
	if e := s.Epoch(); e != 0 {
		return e
	}
	return s.DataGeneration()
}

// DataGeneration is the generation of the group whose writes this replica holds:
// the one its applied state records (a re-formed group's first write records it),
// 1 for the first group's, 0 for a replica that holds nothing yet.
func (s *Store) DataGeneration() uint64 {
	if g := s.Meta().Generation; g != 0 {
		return g
	}
	if s.Index() > 0 {
		return 1
	}
	return 0
}

// Position is where this replica's raft log ends, and its current term.
func (s *Store) Position() (lastTerm, lastIndex, term uint64) {
	st := s.Raft().Stats()
	lastTerm, _ = strconv.ParseUint(st["last_log_term"], 10, 64)
	lastIndex, _ = strconv.ParseUint(st["last_log_index"], 10, 64)
	term, _ = strconv.ParseUint(st["term"], 10, 64)
	return lastTerm, lastIndex, term
}

// Epoch returns the replica's raft epoch (zero when unknown or not kept).
func (s *Store) Epoch() uint64 { return s.epoch.Get() }

// AdoptEpoch sets the epoch of a replica that has none yet (a fresh or rejoined one)
// to the generation its log has recorded, once it has.
func (s *Store) AdoptEpoch() error {
	if s.epoch == nil || s.epoch.Get() != 0 {
		return nil
	}
	if g := s.Meta().Generation; g > 0 {
		return s.epoch.Set(g)
	}
	return nil
}

// Open opens (or creates) this node's replica of the cluster state.
func Open(cfg Config) (*Store, error) {
	if cfg.NodeID == "" || cfg.Dir == "" || cfg.Transport == nil {
		return nil, errors.New("store: node id, directory and transport are required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = or(cfg.HeartbeatTimeout, 500*time.Millisecond)
	rc.ElectionTimeout = or(cfg.ElectionTimeout, 500*time.Millisecond)
	rc.LeaderLeaseTimeout = or(cfg.LeaderLeaseTimeout, 250*time.Millisecond)
	rc.CommitTimeout = 20 * time.Millisecond
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	if rc.SnapshotThreshold == 0 {
		rc.SnapshotThreshold = 2048
	}
	rc.TrailingLogs = 1024
	rc.SnapshotInterval = 30 * time.Second
	out := cfg.LogOutput
	if out == nil {
		out = os.Stderr
	}
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: out})

	logs, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db"), BoltOptions: &bolt.Options{Timeout: 2 * time.Second}})
	if err != nil {
		return nil, fmt.Errorf("open raft log %s: %w (is another dvmd using it?)", filepath.Join(cfg.Dir, "raft.db"), err)
	}
	snaps, err := raft.NewFileSnapshotStore(cfg.Dir, 2, out)
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	s := newState()
	s.rc, s.logs, s.snaps, s.newTrans, s.dir, s.epoch = rc, logs, snaps, cfg.NewTransport, cfg.Dir, cfg.Epoch
	s.trans = s.guarded(cfg.Transport)
	s.closers = append(s.closers, logs.Close)
	if cfg.Bootstrap {
		has, err := raft.HasExistingState(logs, logs, snaps)
		if err != nil {
			logs.Close()
			return nil, err
		}
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: cfg.Transport.LocalAddr(), Suffrage: raft.Voter}}}
			if err := raft.BootstrapCluster(rc, logs, logs, snaps, cfg.Transport, conf); err != nil {
				logs.Close()
				return nil, fmt.Errorf("bootstrap cluster: %w", err)
			}
		}
	}
	r, err := raft.NewRaft(rc, (*fsm)(s), logs, logs, snaps, s.trans)
	if err != nil {
		logs.Close()
		if h := s.Halted(); h != nil {
			// raft says only that no snapshot could be loaded; this says why.
			return nil, fmt.Errorf("start raft: %w", h)
		}
		return nil, fmt.Errorf("start raft: %w", err)
	}
	s.setRaft(r)
	s.stop = make(chan struct{})
	go s.watchConfiguration(s.stop)
	return s, nil
}

// guarded wraps a raft transport of this replica in its guard (see guard).
func (s *Store) guarded(t raft.Transport) *guard {
	g := newGuard(t, s.rc.LocalID, s.configuration)
	s.gmu.Lock()
	s.guard = g
	s.gmu.Unlock()
	return g
}

func (s *Store) setRaft(r *raft.Raft) {
	s.gmu.Lock()
	s.r = r
	s.gmu.Unlock()
	s.conf.Store(nil)
}

// configuration is the replica's latest raft configuration, as the guard needs
// it on every request: kept fresh by watchConfiguration, and read from raft the
// first time. False while raft is starting.
func (s *Store) configuration() (raft.Configuration, bool) {
	if c := s.conf.Load(); c != nil {
		return *c, true
	}
	s.gmu.Lock()
	r := s.r
	s.gmu.Unlock()
	if r == nil {
		return raft.Configuration{}, false
	}
	f := r.GetConfiguration()
	if f.Error() != nil {
		return raft.Configuration{}, false
	}
	c := f.Configuration()
	s.conf.Store(&c)
	return c, true
}

// watchConfiguration refreshes the configuration the guard reads, ten times a
// second: a voter added or removed is known to it within that.
func (s *Store) watchConfiguration(stop <-chan struct{}) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		s.gmu.Lock()
		r := s.r
		s.gmu.Unlock()
		if f := r.GetConfiguration(); f.Error() == nil {
			c := f.Configuration()
			s.conf.Store(&c)
		}
	}
}

func or(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Close stops this node's raft and closes its files.
func (s *Store) Close() error {
	s.stopOnce.Do(func() {
		if s.stop != nil {
			close(s.stop)
		}
	})
	// raft closes its transport when it shuts down.
	err := s.Raft().Shutdown().Error()
	for _, c := range s.closers {
		if cerr := c(); err == nil {
			err = cerr
		}
	}
	return err
}

// Raft is the underlying raft instance, for membership changes and leadership.
func (s *Store) Raft() *raft.Raft {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	return s.r
}

// IsLeader says whether this node is the raft leader, that is the master.
func (s *Store) IsLeader() bool { return s.Raft().State() == raft.Leader }

// Leader returns the leader's node name, or "" when there is none now.
func (s *Store) Leader() string {
	_, id := s.Raft().LeaderWithID()
	return string(id)
}

// WaitLeader blocks until some node leads, or timeout passes.
func (s *Store) WaitLeader(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for s.Leader() == "" {
		if time.Now().After(deadline) {
			return fmt.Errorf("no master elected within %s", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// fsm is the Store seen as raft's finite state machine. raft calls Apply, Snapshot and
// Restore from one goroutine; reads of the Store take its lock.
type fsm Store

func (f *fsm) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	s := (*Store)(f)
	if err := s.Halted(); err != nil {
		// Nothing after an entry this replica could not apply: the state would be
		// one no replica that applies the log in order ever holds.
		return err
	}
	cmds, err := decodeEntry(l.Data, l.Index, l.Term)
	if err != nil {
		var h *HaltError
		if errors.As(err, &h) {
			s.stopApplying(h)
		}
		return err
	}
	s.applyBatch(cmds, l.Index)
	return nil
}

// StateFormat is the format of State this build writes and the newest it reads.
// Format 1 was written before State carried a format (0 on the wire).
const StateFormat = 1

// State is the whole replicated state at one index: what a raft snapshot holds and
// what a cluster snapshot file carries (snapshot.go).
type State struct {
	Format   int             `json:"format"`
	Version  string          `json:"version,omitempty"` // the dvmd that wrote it
	Index    uint64          `json:"index"`
	Nodes    []NodeRecord    `json:"nodes"`
	Guests   []GuestRecord   `json:"guests"`
	Networks []NetworkRecord `json:"networks"`
	Events   []EventRecord   `json:"events"`
	Tokens   []TokenRecord   `json:"tokens,omitempty"`
	// Images is left out when there are none, so that a state without images stays
	// one that a dvmd from before images reads.
	Images   []ImageRecord `json:"images,omitempty"`
	Meta     Meta          `json:"meta"`
	Adoption *Adoption     `json:"adoption,omitempty"`
}

// State copies the whole state at the index it was last applied at, under one lock.
func (s *Store) State() State {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := State{Format: StateFormat, Version: version.Version, Index: s.index, Meta: s.meta,
		Nodes: make([]NodeRecord, 0, len(s.nodes)), Guests: make([]GuestRecord, 0, len(s.guests)),
		Networks: make([]NetworkRecord, 0, len(s.nets)), Tokens: make([]TokenRecord, 0, len(s.tokens)),
		Events: slices.Clone(s.kept())}
	for _, name := range sortedKeys(s.nodes) {
		st.Nodes = append(st.Nodes, *s.nodes[name])
	}
	for _, name := range sortedKeys(s.guests) {
		st.Guests = append(st.Guests, *s.guests[name])
	}
	for _, name := range sortedKeys(s.nets) {
		st.Networks = append(st.Networks, *s.nets[name])
	}
	for _, name := range sortedKeys(s.tokens) {
		st.Tokens = append(st.Tokens, *s.tokens[name])
	}
	for _, name := range sortedKeys(s.images) {
		st.Images = append(st.Images, *s.images[name])
	}
	if s.adopt != nil {
		a := *s.adopt
		a.Awaiting = slices.Clone(a.Awaiting)
		st.Adoption = &a
	}
	return st
}

// DecodeState reads a State strictly: a format newer than StateFormat, or a field or
// op this build does not know, is refused with a *HaltError that names it. index is
// where it comes from, for the message.
func DecodeState(data []byte) (State, error) {
	var head struct {
		Format  int    `json:"format"`
		Version string `json:"version"`
		Index   uint64 `json:"index"`
	}
	halt := &HaltError{Snap: true, Writer: version.Unknown, Running: version.Version}
	if err := json.Unmarshal(data, &head); err != nil {
		halt.Reason = "not a state snapshot: " + err.Error()
		return State{}, halt
	}
	halt.Index, halt.Writer = head.Index, version.Or(head.Version)
	if head.Format > StateFormat {
		halt.Reason = fmt.Sprintf("its format %d is newer than this build's (%d)", head.Format, StateFormat)
		return State{}, halt
	}
	var st State
	if err := strictjson.Decode(data, &st); err != nil {
		if f, ok := strictjson.UnknownField(err); ok {
			halt.Field = f
		} else {
			halt.Reason = err.Error()
		}
		return State{}, halt
	}
	if st.Format == 0 {
		st.Format = 1
	}
	return st, nil
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	s := (*Store)(f)
	if err := s.Halted(); err != nil {
		// A snapshot now would record raft's index past the entry this replica did
		// not apply, and the log before it would be compacted away: the entry would
		// be lost for good. Kept in the log, it is applied by a dvmd that knows it.
		return nil, err
	}
	st := s.State()
	return &st, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s := (*Store)(f)
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read state snapshot: %w", err)
	}
	snap, err := DecodeState(data)
	if err != nil {
		var h *HaltError
		if errors.As(err, &h) {
			s.stopApplying(h)
		}
		return err
	}
	s.load(snap)
	return nil
}

// load replaces the whole state with snap.
func (s *Store) load(snap State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes = map[string]*NodeRecord{}
	s.guests = map[string]*GuestRecord{}
	s.nets = map[string]*NetworkRecord{}
	s.images = map[string]*ImageRecord{}
	for i := range snap.Images {
		s.images[snap.Images[i].Name] = &snap.Images[i]
	}
	s.tokens, s.byHash = map[string]*TokenRecord{}, map[string]string{}
	for _, t := range snap.Tokens {
		s.putToken(t)
	}
	for i := range snap.Networks {
		s.nets[snap.Networks[i].Name] = &snap.Networks[i]
	}
	for i := range snap.Nodes {
		s.nodes[snap.Nodes[i].Name] = &snap.Nodes[i]
	}
	for i := range snap.Guests {
		s.guests[snap.Guests[i].Name] = &snap.Guests[i]
	}
	s.events = snap.Events
	s.meta = snap.Meta
	s.adopt = snap.Adoption
	s.index = snap.Index
	s.placementWrites++
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *State) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *State) Release() {}

// Members returns the servers of this node's raft configuration (voters and
// non-voters), as this node last knew it; it needs no leader.
func (s *Store) Members() ([]raft.Server, error) {
	f := s.Raft().GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	return f.Configuration().Servers, nil
}

// Reform starts the management group of a new generation from this replica's own
// log (the seed's scenarios 2 and 3, made safe by the role machine's witness
// votes, which only a replica with the furthest log among the voters wins, and by
// a raise of the generation, which only raft's leader makes): raft is stopped, its
// configuration replaced by this node alone as voter, and started again, so it
// leads at once. The other members join it afresh (Rejoin) and are made voters.
// Only the role machine may call it.
func (s *Store) Reform(generation uint64) error {
	return s.recover(generation, func(self raft.Server) []raft.Server { return []raft.Server{self} })
}

// Rejoin moves this replica to the raft group of a newer generation, led by
// leader: it keeps its log (a copy of what it held stays until the new leader's
// log replaces it; throwing it away first could leave the group's data on one
// node), follows as a non-voter and never stands for election until the leader's
// configuration says it votes. The node must then ask the master to take it in.
func (s *Store) Rejoin(generation uint64, leader raft.Server) error {
	if leader.ID == s.rc.LocalID {
		return errors.New("rejoin: this node is the leader named")
	}
	return s.recover(generation, func(self raft.Server) []raft.Server {
		self.Suffrage = raft.Nonvoter
		leader.Suffrage = raft.Voter
		return []raft.Server{leader, self}
	})
}

// recover stops raft, moves the replica to epoch generation with the
// configuration conf gives (from this replica's own server entry), and starts
// raft again. raft.RecoverCluster keeps the state: it applies the log onto the
// last snapshot and compacts it into a new one.
func (s *Store) recover(generation uint64, conf func(self raft.Server) []raft.Server) error {
	if s.newTrans == nil {
		return errors.New("the store was opened without NewTransport")
	}
	s.reformMu.Lock()
	defer s.reformMu.Unlock()
	if s.epoch.Get() >= generation && generation != 0 {
		return nil // done already (a retry)
	}
	if err := s.Raft().Shutdown().Error(); err != nil {
		return fmt.Errorf("stop raft: %w", err)
	}
	// From here on the old group's members are not peers any more.
	if err := s.epoch.Set(generation); err != nil {
		return err
	}
	trans, err := s.newTrans()
	if err != nil {
		return fmt.Errorf("transport: %w", err)
	}
	g := s.guarded(trans)
	self := raft.Server{ID: s.rc.LocalID, Address: trans.LocalAddr(), Suffrage: raft.Voter}
	has, err := raft.HasExistingState(s.logs, s.logs, s.snaps)
	if err != nil {
		return err
	}
	if has {
		if err := raft.RecoverCluster(s.rc, (*fsm)(s), s.logs, s.logs, s.snaps, g, raft.Configuration{Servers: conf(self)}); err != nil {
			return fmt.Errorf("recover configuration: %w", err)
		}
	}
	// Raft's log matching (the same index and term mean the same entry) holds
	// within one group. Two groups formed apart (the two sides of a partition)
	// would each elect leaders in the same terms and could write different
	// entries at the same index and term; a replica moving from one to the other
	// would then keep its own entry as if it were the leader's. So each generation
	// has terms of its own, from generation<<termShift on.
	if t, err := s.logs.GetUint64(keyCurrentTerm); err == nil && t < generation<<termShift {
		if err := s.logs.SetUint64(keyCurrentTerm, generation<<termShift); err != nil {
			return fmt.Errorf("raft term of generation %d: %w", generation, err)
		}
	}
	s.trans = g
	r, err := raft.NewRaft(s.rc, (*fsm)(s), s.logs, s.logs, s.snaps, g)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	s.setRaft(r)
	return nil
}

// keyCurrentTerm is where raft keeps its current term in the stable store
// (hashicorp/raft's own key).
var keyCurrentTerm = []byte("CurrentTerm")

// termShift splits raft's terms between generations: generation g uses the terms
// from g<<termShift on.
const termShift = 32

// ErrNotDurable: a client write is applied, but not yet on as many management
// nodes as it must be before it is acknowledged.
var ErrNotDurable = errors.New("the change is applied but not yet on enough management nodes to survive the loss of the master and a backup")

// WaitDurable waits until the log entry at index is stored on copies replicas
// (this leader included) in the leader's current term, and acting still says
// this master acts, or ctx ends. Only then may a client write be acknowledged:
// raft's commit (a majority of the voters) alone can be lost with the master and
// a backup.
func (s *Store) WaitDurable(ctx context.Context, index uint64, copies int, acting func() bool) error {
	for {
		if !s.IsLeader() {
			return ErrNotLeader
		}
		if acting != nil && !acting() {
			return fmt.Errorf("%w: this master stopped acting meanwhile", ErrNotDurable)
		}
		_, _, term := s.Position()
		conf, _ := s.configuration()
		s.gmu.Lock()
		g := s.guard
		s.gmu.Unlock()
		k, changed := g.copies(conf.Servers, term, index)
		if k+1 >= copies {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%d of %d copies): retry when more management nodes are in reach", ErrNotDurable, k+1, copies)
		case <-changed:
		case <-time.After(50 * time.Millisecond):
		}
	}
}
