package store

import (
	"context"
	"io"
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
	var next *Store
	waitTrue(t, "a new leader", func() bool {
		for _, n := range names[1:] {
			if stores[n].IsLeader() {
				next = stores[n]
				return true
			}
		}
		return false
	})
	if _, err := next.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "after", Desired: DesiredRunning}}); err != nil {
		t.Fatalf("new leader refuses writes: %v", err)
	}
	_, g, _ := next.Snapshot()
	if len(g) != 41 {
		t.Fatalf("new leader has %d guests, want 41", len(g))
	}
}

// TestReformAfterQuorumLoss: of three voters two are gone for good; the survivor and a
// non-voter that followed the log re-form as a group of two, elect a leader that has
// every write, and accept new ones.
func TestReformAfterQuorumLoss(t *testing.T) {
	names := []string{"n1", "n2", "n3", "n4"}
	trs := map[string]*raft.InmemTransport{}
	for _, n := range names {
		_, trs[n] = raft.NewInmemTransport(raft.ServerAddress(n))
	}
	alive := names
	connect := func(nodes ...string) {
		alive = nodes
		for _, a := range names {
			trs[a].DisconnectAll()
		}
		for _, a := range nodes {
			for _, b := range nodes {
				if a != b {
					trs[a].Connect(raft.ServerAddress(b), trs[b])
				}
			}
		}
	}
	connect(names...)
	stores := map[string]*Store{}
	for _, n := range names {
		n := n
		// A fresh transport replaces the one raft closed, wired to the nodes alive now.
		renew := func() (raft.Transport, error) {
			_, trs[n] = raft.NewInmemTransport(raft.ServerAddress(n))
			connect(alive...)
			return trs[n], nil
		}
		s, err := Open(Config{NodeID: n, Dir: t.TempDir(), Transport: trs[n], NewTransport: renew, Bootstrap: n == "n1", LogOutput: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		stores[n] = s
		defer s.Close()
	}
	waitTrue(t, "n1 leads", stores["n1"].IsLeader)
	r := stores["n1"].Raft()
	for _, n := range []string{"n2", "n3"} {
		if err := r.AddVoter(raft.ServerID(n), raft.ServerAddress(n), 0, 0).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.AddNonvoter("n4", "n4", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := stores["n1"].Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "keep", Desired: DesiredRunning}}); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "n4 follows", func() bool { _, ok := stores["n4"].Guest("keep"); return ok })

	// n1 and n2 are lost: n3 alone has no quorum.
	connect("n3", "n4")
	waitTrue(t, "n3 without a leader", func() bool { return stores["n3"].Leader() == "" || stores["n3"].Leader() == "n1" })
	voters := []raft.Server{{ID: "n3", Address: "n3", Suffrage: raft.Voter}, {ID: "n4", Address: "n4", Suffrage: raft.Voter}}
	for _, n := range []string{"n3", "n4"} {
		if err := stores[n].Reform(voters, 2); err != nil {
			t.Fatalf("reform on %s: %v", n, err)
		}
	}
	var leader *Store
	waitTrue(t, "a leader of the re-formed group", func() bool {
		for _, n := range []string{"n3", "n4"} {
			if stores[n].IsLeader() {
				leader = stores[n]
				return true
			}
		}
		return false
	})
	if _, ok := leader.Guest("keep"); !ok {
		t.Fatal("the re-formed group lost a committed write")
	}
	if _, err := leader.Apply(Command{Op: OpSetMeta, Meta: &Meta{Generation: 2}}); err != nil {
		t.Fatalf("re-formed group refuses writes: %v", err)
	}
}

func TestEventsKeepOrderAndBound(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	for i := 0; i < MaxEvents+5; i++ {
		if _, err := s.Apply(Command{Op: OpEvent, Event: &EventRecord{Kind: "test", Detail: "x"}}); err != nil {
			t.Fatal(err)
		}
	}
	all := s.Events(0)
	if len(all) != MaxEvents || all[0].Seq != 6 || all[len(all)-1].Seq != MaxEvents+5 {
		t.Fatalf("%d events, seq %d..%d", len(all), all[0].Seq, all[len(all)-1].Seq)
	}
	if got := s.Events(MaxEvents + 3); len(got) != 2 {
		t.Fatalf("after %d: %d events", MaxEvents+3, len(got))
	}
}

// TestResetRejoins: a node whose group merged away throws its replica away and, added
// again by the leader, catches up from the leader's state.
func TestResetRejoins(t *testing.T) {
	names := []string{"n1", "n2"}
	trs := map[string]*raft.InmemTransport{}
	for _, n := range names {
		_, trs[n] = raft.NewInmemTransport(raft.ServerAddress(n))
	}
	link := func() {
		trs["n1"].Connect("n2", trs["n2"])
		trs["n2"].Connect("n1", trs["n1"])
	}
	link()
	stores := map[string]*Store{}
	for _, n := range names {
		n := n
		renew := func() (raft.Transport, error) {
			_, trs[n] = raft.NewInmemTransport(raft.ServerAddress(n))
			link()
			return trs[n], nil
		}
		s, err := Open(Config{NodeID: n, Dir: t.TempDir(), Transport: trs[n], NewTransport: renew, Bootstrap: true, LogOutput: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		stores[n] = s
		defer s.Close()
	}
	// Two groups of one, as after a partition; n2 wrote something of its own.
	waitTrue(t, "both lead", func() bool { return stores["n1"].IsLeader() && stores["n2"].IsLeader() })
	stores["n1"].Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "winner", Desired: DesiredRunning}})
	stores["n2"].Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "loser", Desired: DesiredRunning}})
	if err := stores["n2"].Reset(0); err != nil {
		t.Fatal(err)
	}
	if _, ok := stores["n2"].Guest("loser"); ok {
		t.Fatal("reset kept the merged group's state")
	}
	if err := stores["n1"].Raft().AddNonvoter("n2", "n2", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "n2 follows n1", func() bool { _, ok := stores["n2"].Guest("winner"); return ok })
}
