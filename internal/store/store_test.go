package store

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// single opens a one-node cluster in dir, as `dvmd dev` does.
func single(t *testing.T, dir string) *Store {
	t.Helper()
	_, tr := raft.NewInmemTransport("")
	s, err := Open(Config{NodeID: "n1", Dir: dir, Transport: tr, Bootstrap: true, LogOutput: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "leadership", s.IsLeader)
	return s
}

func waitTrue(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStoreSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s := single(t, dir)
	if _, err := s.Apply(Command{Op: OpPutNode, Node: &NodeRecord{Name: "n1", CPUs: 8}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(
		Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "web", Node: "n1", Desired: DesiredRunning}},
		Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "db", Desired: DesiredStopped}},
	); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(Command{Op: OpDeleteGuest, Name: "db"}, Command{Op: OpSetMeta, Meta: &Meta{Generation: 3}}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = single(t, dir)
	defer s.Close()
	waitTrue(t, "log replayed", func() bool { _, ok := s.Guest("web"); return ok })
	nodes, guests, _ := s.Snapshot()
	if len(nodes) != 1 || nodes[0].CPUs != 8 || len(guests) != 1 || guests[0].Node != "n1" || s.Meta().Generation != 3 {
		t.Fatalf("after reopen: nodes %+v guests %+v meta %+v", nodes, guests, s.Meta())
	}
}

func TestApplyRefusesBadCommands(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	before := s.Index()
	for _, c := range []Command{{Op: "drop_tables"}, {Op: OpPutGuest}, {Op: OpDeleteNode}, {Op: OpSetMeta}} {
		if _, err := s.Apply(c); err == nil {
			t.Errorf("Apply(%+v) accepted", c)
		}
	}
	if s.Index() != before {
		t.Fatal("a refused command reached the log")
	}
}

func TestWaitReturnsOnChange(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	start := s.Index()
	got := make(chan uint64)
	go func() { got <- s.Wait(context.Background(), start) }()
	idx, err := s.Apply(Command{Op: OpPutNode, Node: &NodeRecord{Name: "n1"}})
	if err != nil {
		t.Fatal(err)
	}
	if w := <-got; w < idx {
		t.Fatalf("Wait returned %d before the write at %d", w, idx)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if w := s.Wait(ctx, idx); w != idx {
		t.Fatalf("Wait with nothing new returned %d, want %d", w, idx)
	}
}

func TestSecondOpenFails(t *testing.T) {
	dir := t.TempDir()
	s := single(t, dir)
	defer s.Close()
	_, tr := raft.NewInmemTransport("")
	if _, err := Open(Config{NodeID: "n1", Dir: dir, Transport: tr, Bootstrap: true, LogOutput: io.Discard}); err == nil {
		t.Fatal("a second dvmd could open the same state")
	}
}

// TestThreeVotersReplicateAndFailOver: writes on the leader reach both followers; a
// follower's write is refused with ErrNotLeader; after the leader stops, the two left
// elect a new one that has every write and accepts new ones; a snapshot keeps the log
// short and a fresh replica catches up from it.
func TestThreeVotersReplicateAndFailOver(t *testing.T) {
	names := []string{"n1", "n2", "n3"}
	trs := map[string]*raft.InmemTransport{}
	for _, n := range names {
		_, trs[n] = raft.NewInmemTransport(raft.ServerAddress(n))
	}
	for _, a := range names {
		for _, b := range names {
			if a != b {
				trs[a].Connect(raft.ServerAddress(b), trs[b])
			}
		}
	}
	stores := map[string]*Store{}
	for _, n := range names {
		s, err := Open(Config{NodeID: n, Dir: t.TempDir(), Transport: trs[n], Bootstrap: n == "n1", SnapshotThreshold: 16, LogOutput: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		stores[n] = s
		defer s.Close()
	}
	leader := stores["n1"]
	waitTrue(t, "n1 leads", leader.IsLeader)
	for _, n := range names[1:] {
		if err := leader.Raft().AddVoter(raft.ServerID(n), raft.ServerAddress(n), 0, 0).Error(); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 40; i++ {
		if _, err := leader.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "g" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Desired: DesiredRunning}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names[1:] {
		s := stores[n]
		waitTrue(t, n+" replicated", func() bool { _, g, _ := s.Snapshot(); return len(g) == 40 })
		if _, err := s.Apply(Command{Op: OpPutNode, Node: &NodeRecord{Name: "x"}}); err == nil || !isNotLeader(err) {
			t.Fatalf("write on follower %s: %v, want ErrNotLeader", n, err)
		}
	}
	if err := leader.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	leader.Close()
	for _, tr := range trs {
		tr.Disconnect("n1")
	}
	next := leaderAmong(t, stores, names[1:])
	if _, err := next.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "after", Desired: DesiredRunning}}); err != nil {
		t.Fatalf("new leader refuses writes: %v", err)
	}
	_, g, _ := next.Snapshot()
	if len(g) != 41 {
		t.Fatalf("new leader has %d guests, want 41", len(g))
	}
}

// memCluster is a group of stores on raft's in-memory transports, whose links
// can be cut and restored.
type memCluster struct {
	t      *testing.T
	names  []string
	trs    map[string]*raft.InmemTransport
	alive  []string
	stores map[string]*Store
}

func newMemCluster(t *testing.T, names ...string) *memCluster {
	c := &memCluster{t: t, names: names, trs: map[string]*raft.InmemTransport{}, stores: map[string]*Store{}}
	for _, n := range names {
		_, c.trs[n] = raft.NewInmemTransport(raft.ServerAddress(n))
	}
	c.connect(names...)
	for _, n := range names {
		// A fresh transport replaces the one raft closed, wired to the nodes alive now.
		renew := func() (raft.Transport, error) {
			_, c.trs[n] = raft.NewInmemTransport(raft.ServerAddress(n))
			c.connect(c.alive...)
			return c.trs[n], nil
		}
		dir := t.TempDir()
		epoch, err := OpenEpoch(dir)
		if err != nil {
			t.Fatal(err)
		}
		s, err := Open(Config{NodeID: n, Dir: dir, Transport: c.trs[n], NewTransport: renew, Bootstrap: n == names[0], LogOutput: io.Discard, Epoch: epoch})
		if err != nil {
			t.Fatal(err)
		}
		c.stores[n] = s
		t.Cleanup(func() { s.Close() })
	}
	waitTrue(t, names[0]+" leads", c.stores[names[0]].IsLeader)
	return c
}

// connect links exactly the nodes given, each with each.
func (c *memCluster) connect(nodes ...string) {
	c.alive = nodes
	for _, a := range c.names {
		c.trs[a].DisconnectAll()
	}
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				c.trs[a].Connect(raft.ServerAddress(b), c.trs[b])
			}
		}
	}
}

func (c *memCluster) put(on, guest string) error {
	_, err := c.stores[on].Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: guest, Desired: DesiredRunning}})
	return err
}

func (c *memCluster) has(on, guest string) func() bool {
	return func() bool { _, ok := c.stores[on].Guest(guest); return ok }
}

// TestReformFromOneReplica: of three voters two are gone for good; the survivor
// re-forms the group alone from its own log (it holds every write), leads it at
// once and accepts writes; a non-voter that followed the old group moves to the
// new one keeping its log, is taken in and follows.
func TestReformFromOneReplica(t *testing.T) {
	c := newMemCluster(t, "n1", "n2", "n3", "n4")
	r := c.stores["n1"].Raft()
	for _, n := range []string{"n2", "n3"} {
		if err := r.AddVoter(raft.ServerID(n), raft.ServerAddress(n), 0, 0).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.AddNonvoter("n4", "n4", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.put("n1", "keep"); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "n3 and n4 follow", func() bool { return c.has("n3", "keep")() && c.has("n4", "keep")() })

	// n1 and n2 are lost: n3 alone has no quorum.
	c.connect("n3", "n4")
	waitTrue(t, "n3 without a leader", func() bool { return c.stores["n3"].LeaderSilence() > time.Second })
	if err := c.stores["n3"].Reform(2); err != nil {
		t.Fatalf("reform: %v", err)
	}
	waitTrue(t, "n3 leads the re-formed group", c.stores["n3"].IsLeader)
	if !c.has("n3", "keep")() {
		t.Fatal("the re-formed group lost a committed write")
	}
	if err := c.put("n3", "after"); err != nil {
		t.Fatalf("re-formed group refuses writes: %v", err)
	}
	if err := c.stores["n4"].Rejoin(2, raft.Server{ID: "n3", Address: "n3"}); err != nil {
		t.Fatal(err)
	}
	if !c.has("n4", "keep")() {
		t.Fatal("rejoining threw the replica's copy away")
	}
	if err := c.stores["n3"].Raft().AddNonvoter("n4", "n4", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "n4 follows the new group", c.has("n4", "after"))
	if got := c.stores["n4"].Epoch(); got != 2 {
		t.Fatalf("n4's epoch %d, want 2", got)
	}
}

// TestRejoinReplacesADivergedLog: two groups of one, as after a partition, each
// wrote something; the loser moves to the winner's group keeping its log until
// the winner's state replaces it.
func TestRejoinReplacesADivergedLog(t *testing.T) {
	c := newMemCluster(t, "n1", "n2")
	if err := c.stores["n1"].Raft().AddVoter("n2", "n2", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.put("n1", "base"); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "n2 follows", c.has("n2", "base"))
	// Cut apart, each side forms a group of its own from its log.
	c.connect()
	for n, gen := range map[string]uint64{"n2": 2, "n1": 3} {
		if err := c.stores[n].Reform(gen); err != nil {
			t.Fatal(err)
		}
		waitTrue(t, n+" leads alone", c.stores[n].IsLeader)
	}
	if err := c.put("n2", "loser"); err != nil {
		t.Fatal(err)
	}
	if err := c.put("n1", "winner"); err != nil {
		t.Fatal(err)
	}
	c.connect("n1", "n2")
	if err := c.stores["n2"].Rejoin(3, raft.Server{ID: "n1", Address: "n1"}); err != nil {
		t.Fatal(err)
	}
	if !c.has("n2", "loser")() {
		t.Fatal("rejoining threw the replica's state away before the leader replaced it")
	}
	if err := c.stores["n1"].Raft().AddNonvoter("n2", "n2", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "n2 has the winner's state", func() bool { return c.has("n2", "winner")() && !c.has("n2", "loser")() })
}

// TestWaitDurable: a write raft commits on two of three voters is not durable on
// three replicas until a third (here a non-voter) stores it.
func TestWaitDurable(t *testing.T) {
	c := newMemCluster(t, "n1", "n2", "n3", "n4")
	r := c.stores["n1"].Raft()
	for _, n := range []string{"n2", "n3"} {
		if err := r.AddVoter(raft.ServerID(n), raft.ServerAddress(n), 0, 0).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.AddNonvoter("n4", "n4", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	leader := c.stores["n1"]
	idx, err := leader.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "a", Desired: DesiredRunning}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := leader.WaitDurable(ctx, idx, 4, nil); err != nil {
		t.Fatalf("all four connected: %v", err)
	}
	c.connect("n1", "n2")
	if idx, err = leader.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "b", Desired: DesiredRunning}}); err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if err := leader.WaitDurable(short, idx, 3, nil); !errors.Is(err, ErrNotDurable) {
		t.Fatalf("committed on two: got %v, want ErrNotDurable", err)
	}
	if err := leader.WaitDurable(ctx, idx, 3, func() bool { return false }); !errors.Is(err, ErrNotDurable) {
		t.Fatalf("a master that stopped acting: got %v, want ErrNotDurable", err)
	}
	c.connect("n1", "n2", "n4")
	if err := leader.WaitDurable(ctx, idx, 3, nil); err != nil {
		t.Fatalf("with the non-voter back: %v", err)
	}
}

// TestGuardAdmitsVotersOnly: a replica that votes takes raft requests only from
// voters of its configuration; one that does not vote takes them from anyone.
func TestGuardAdmitsVotersOnly(t *testing.T) {
	_, tr := raft.NewInmemTransport("n1")
	conf := raft.Configuration{Servers: []raft.Server{
		{ID: "n1", Address: "n1", Suffrage: raft.Voter}, {ID: "n2", Address: "n2", Suffrage: raft.Voter},
		{ID: "n3", Address: "n3", Suffrage: raft.Nonvoter}}}
	g := newGuard(tr, "n1", func() (raft.Configuration, bool) { return conf, true })
	defer g.Close()
	_, peer := raft.NewInmemTransport("peer")
	peer.Connect("n1", tr)
	send := func(from string) error {
		var resp raft.AppendEntriesResponse
		return peer.AppendEntries("n1", "n1", &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ID: []byte(from)}, Term: 9}, &resp)
	}
	served := make(chan string, 4)
	go func() {
		for rpc := range g.Consumer() {
			served <- string(rpc.Command.(*raft.AppendEntriesRequest).RPCHeader.ID)
			rpc.Respond(&raft.AppendEntriesResponse{Success: true}, nil)
		}
	}()
	if err := send("n2"); err != nil {
		t.Fatalf("a voter was refused: %v", err)
	}
	for _, from := range []string{"n3", "n9"} {
		if err := send(from); err == nil || !strings.Contains(err.Error(), "no voter") {
			t.Fatalf("%s (not a voter) was admitted: %v", from, err)
		}
	}
	if got := <-served; got != "n2" {
		t.Fatalf("served %s", got)
	}
	conf.Servers[0].Suffrage = raft.Nonvoter
	if err := send("n9"); err != nil {
		t.Fatalf("a replica that does not vote refused a leader: %v", err)
	}
}

func TestEventsKeepOrderAndBound(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	// Past twice the bound, where the oldest are dropped in bulk, checked at every
	// entry, a hundred events each.
	written := uint64(0)
	for written < 2*MaxEvents+5 {
		var cmds []Command
		for range 100 {
			cmds = append(cmds, Command{Op: OpEvent, Event: &EventRecord{Kind: "test", Detail: "x"}})
		}
		if _, err := s.Apply(cmds...); err != nil {
			t.Fatal(err)
		}
		written += 100
		all := s.Events(0)
		first := max(written, MaxEvents) - MaxEvents + 1
		if uint64(len(all)) != min(written, MaxEvents) || all[0].Seq != first || all[len(all)-1].Seq != written {
			t.Fatalf("after %d: %d events, seq %d..%d", written, len(all), all[0].Seq, all[len(all)-1].Seq)
		}
		if got := s.Events(written - 2); len(got) != 2 {
			t.Fatalf("after %d: %d events after %d", written, len(got), written-2)
		}
		if st := s.State(); !slices.Equal(st.Events, all) {
			t.Fatalf("after %d: the state's events differ from Events", written)
		}
	}
}

// leaderAmong waits for one of the named stores to lead, and returns it.
func leaderAmong(t *testing.T, stores map[string]*Store, names []string) *Store {
	t.Helper()
	var leader *Store
	waitTrue(t, "a leader among "+strings.Join(names, ", "), func() bool {
		for _, n := range names {
			if stores[n].IsLeader() {
				leader = stores[n]
				return true
			}
		}
		return false
	})
	return leader
}
