package failover_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/failover"
)

func testView() failover.ClusterView {
	return failover.ClusterView{Generation: 1, Version: 1, Master: "n1", Voters: []string{"n1", "n2", "n3"},
		Nodes: []failover.NodeState{
			{Name: "n1", Role: failover.RoleMaster, Capable: true},
			{Name: "n2", Role: failover.RoleBackup, Capable: true},
			{Name: "n3", Role: failover.RoleBackup, Capable: true},
			{Name: "n4", Role: failover.RoleCandidate, Capable: true},
			{Name: "n5", Role: failover.RoleNode},
		}}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  failover.Config
		want string // in the error; "" for valid
	}{
		{"defaults", failover.Config{Self: "n1"}, ""},
		{"no self", failover.Config{}, "Self is empty"},
		{"margin", failover.Config{Self: "n1", Timing: failover.Timing{LeaseDuration: time.Second, LeaseMargin: time.Second}}, "lease_margin"},
		{"renew", failover.Config{Self: "n1", Timing: failover.Timing{LeaseDuration: 2 * time.Second, RenewInterval: 500 * time.Millisecond}}, "renew_interval"},
		{"negative", failover.Config{Self: "n1", GiveUpAfter: -time.Second}, "negative"},
		{"health", failover.Config{Self: "n1", MinHealth: 1.5}, "MinHealth"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !errors.Is(err, failover.ErrBadConfig) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: got %v, want ErrBadConfig naming %q", tc.name, err, tc.want)
		}
	}
	if got := (failover.Config{Spares: -1}).WithDefaults().Spares; got != 0 {
		t.Errorf("Spares -1 means none, got %d", got)
	}
	if got := (failover.Config{}).WithDefaults().Spares; got != failover.DefaultSpares {
		t.Errorf("Spares 0 means the default, got %d", got)
	}
}

func TestViewValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(v *failover.ClusterView)
		want   string
	}{
		{"valid", func(v *failover.ClusterView) {}, ""},
		{"duplicate", func(v *failover.ClusterView) { v.Nodes[4].Name = "n4" }, "registered twice"},
		{"unknown role", func(v *failover.ClusterView) { v.Nodes[4].Role = "boss" }, "unknown role"},
		{"semi-master", func(v *failover.ClusterView) { v.Nodes[3].Role = failover.RoleSemiMaster }, "never written"},
		{"incapable backup", func(v *failover.ClusterView) { v.Nodes[2].Capable = false }, "not management-capable"},
		{"four voters", func(v *failover.ClusterView) { v.Voters = append(v.Voters, "n4") }, "4 voters"},
		{"no voters", func(v *failover.ClusterView) { v.Voters = nil }, "0 voters"},
		{"master not voter", func(v *failover.ClusterView) { v.Master = "n4" }, "not among the voters"},
		{"unregistered voter", func(v *failover.ClusterView) { v.Voters[2] = "n9" }, "not registered"},
		{"backup not voter", func(v *failover.ClusterView) { v.Nodes[3].Role = failover.RoleBackup }, "not a voter"},
		{"empty", func(v *failover.ClusterView) { v.Nodes = nil }, "no registered nodes"},
	} {
		v := testView()
		tc.change(&v)
		err := v.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !errors.Is(err, failover.ErrBadView) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: got %v, want ErrBadView naming %q", tc.name, err, tc.want)
		}
	}
	if _, err := failover.NewMachine(failover.Config{Self: "n9"}, testView()); err == nil || !strings.Contains(err.Error(), `"n9"`) {
		t.Errorf("NewMachine with an unregistered Self: %v", err)
	}
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// reply steps m with msg and returns its one Send, failing otherwise.
func reply(t *testing.T, m *failover.Machine, msg failover.Message) failover.Message {
	t.Helper()
	for _, a := range m.Step(msg) {
		if s, ok := a.(failover.Send); ok {
			return s.Msg
		}
	}
	t.Fatalf("%s sent nothing in answer to %v", m.Self(), msg)
	return failover.Message{}
}

// TestLeaseRule checks the rule the safety rests on, on one node: one holder
// at a time, a new holder only after expiry, never an older generation, and
// the same holder may move its lease to its next generation (scenario 3).
func TestLeaseRule(t *testing.T) {
	m, err := failover.NewMachine(failover.Config{Self: "n5"}, testView())
	if err != nil {
		t.Fatal(err)
	}
	req := func(typ failover.MsgType, from string, gen uint64) failover.Message {
		return failover.Message{Type: typ, From: from, To: "n5", Generation: gen, SentAt: t0}
	}
	if out := m.Step(req(failover.MsgLease, "n1", 1)); out != nil {
		t.Fatalf("before its first Tick the machine must ignore requests, got %v", out)
	}
	m.Step(failover.Tick{Now: t0})
	if r := reply(t, m, req(failover.MsgLease, "n1", 1)); r.Type != failover.MsgLeaseGrant {
		t.Fatalf("first request: %v", r)
	}
	m.Step(failover.Tick{Now: t0.Add(time.Second)})
	if r := reply(t, m, req(failover.MsgVote, "n2", 2)); r.Type != failover.MsgRefuse || r.Holder != "n1" {
		t.Fatalf("a vote for another holder while the lease to n1 holds must be refused naming n1: %v", r)
	}
	if r := reply(t, m, req(failover.MsgVote, "n1", 2)); r.Type != failover.MsgVoteGrant {
		t.Fatalf("the holder itself may move the lease to generation 2: %v", r)
	}
	if r := reply(t, m, req(failover.MsgLease, "n1", 1)); r.Type != failover.MsgRefuse {
		t.Fatalf("the same holder may not go back to generation 1 while the lease holds: %v", r)
	}
	expired := t0.Add(time.Second + failover.DefaultLeaseDuration)
	m.Step(failover.Tick{Now: expired})
	// One vote a generation, as raft votes once a term: generation 2's went to n1,
	// and two groups re-formed as one generation would be taken for one.
	if r := reply(t, m, req(failover.MsgVote, "n2", 2)); r.Type != failover.MsgRefuse || r.Generation != 2 {
		t.Fatalf("after expiry, a vote for generation 2 (given to n1) to another holder: %v; want a refusal at generation 2", r)
	}
	if r := reply(t, m, req(failover.MsgVote, "n2", 3)); r.Type != failover.MsgVoteGrant {
		t.Fatalf("after expiry another holder may get the vote for a newer generation: %v", r)
	}
	if g := m.Grant(); g.Holder != "n2" || g.Generation != 3 || !g.Until.Equal(expired.Add(failover.DefaultLeaseDuration)) {
		t.Fatalf("grant %+v", g)
	}
	if hs := m.HardState(); hs.Grant != m.Grant() || hs.Voted != (failover.Vote{Generation: 3, Holder: "n2"}) {
		t.Fatalf("HardState must carry the grant and the vote: %+v", hs)
	}
}

// TestFenceBeforeLost: a node serves only within the master's majority lease
// and its own grant, and fences itself when that runs out.
func TestFenceBeforeLost(t *testing.T) {
	m, err := failover.NewMachine(failover.Config{Self: "n5"}, testView())
	if err != nil {
		t.Fatal(err)
	}
	if !m.Fenced() {
		t.Fatal("a new node must start fenced")
	}
	m.Step(failover.Tick{Now: t0})
	acting := t0.Add(1500 * time.Millisecond)
	out := m.Step(failover.Message{Type: failover.MsgLease, From: "n1", To: "n5", Generation: 1, SentAt: t0,
		ActingUntil: acting, Acting: true, Role: failover.RoleMaster})
	if m.Fenced() || !slices.ContainsFunc(out, func(a failover.Action) bool { return a == failover.Unfence{Node: "n5"} }) {
		t.Fatalf("a lease to an acting master must unfence: %v", out)
	}
	if out := m.Step(failover.Tick{Now: acting.Add(-time.Millisecond)}); m.Fenced() || len(out) != 0 {
		t.Fatalf("fenced early: %v", out)
	}
	if out := m.Step(failover.Tick{Now: acting}); !m.Fenced() || !slices.Contains(out, failover.Action(failover.Fence{Node: "n5", Since: acting})) {
		t.Fatalf("must fence when the master's majority lease runs out: %v", out)
	}
}

func TestRankKeepsInput(t *testing.T) {
	in := []failover.CandidateInfo{{Node: "b"}, {Node: "a"}}
	out := failover.Rank(in, t0, failover.Config{})
	if in[0].Node != "b" || out[0].Node != "a" {
		t.Fatalf("Rank must sort a copy: in %v out %v", in, out)
	}
}

// TestRegisterGrowsANewCluster: a cluster starts as one management node; hosts that
// join are registered, get leases at once, and the first two capable ones become
// backups, so the group reaches a master and two backups with no operator step.
func TestRegisterGrowsANewCluster(t *testing.T) {
	view := failover.ClusterView{Generation: 1, Version: 1, Master: "n1", Voters: []string{"n1"},
		Nodes: []failover.NodeState{{Name: "n1", Role: failover.RoleMaster, Capable: true}}}
	m, err := failover.NewMachine(failover.Config{Self: "n1"}, view)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	good := failover.HealthReport{Network: 1, CPU: 1, Disk: 1}
	m.Step(failover.Tick{Now: now})
	if !m.Acting() {
		t.Fatal("a master alone in a one-node cluster must act")
	}
	promoted := map[string]bool{}
	for i, n := range []string{"n2", "n3", "n4"} {
		acts := m.Step(failover.Register{Node: n, Capable: true})
		var lease *failover.Message
		for _, a := range acts {
			if s, ok := a.(failover.Send); ok && s.Msg.To == n && s.Msg.Type == failover.MsgLease {
				msg := s.Msg
				lease = &msg
			}
		}
		if lease == nil {
			t.Fatalf("register %s sent it no lease request: %v", n, acts)
		}
		if lease.View == nil || lease.View.Role(n) != failover.RoleCandidate {
			t.Fatalf("the view sent to %s does not list it as a candidate", n)
		}
		m.Step(failover.Health{Node: n, Report: good})
		m.Step(failover.Probe{Node: n, Reachable: true})
		m.Step(failover.Message{Type: failover.MsgLeaseGrant, From: n, To: "n1", Generation: lease.Generation, SentAt: lease.SentAt})
		now = now.Add(time.Duration(i+1) * 100 * time.Millisecond)
		for _, a := range m.Step(failover.Tick{Now: now}) {
			if p, ok := a.(failover.Promote); ok && p.To == failover.RoleBackup {
				promoted[p.Node] = true
			}
		}
	}
	v := m.View()
	if len(v.Voters) != 3 || !promoted["n2"] || !promoted["n3"] || promoted["n4"] || v.Role("n4") != failover.RoleCandidate {
		t.Fatalf("voters %v, promoted %v, n4 %s", v.Voters, promoted, v.Role("n4"))
	}
	if m.Step(failover.Register{Node: "n2", Capable: true}) != nil && m.View().Version != v.Version {
		t.Fatal("registering a known node changed the view")
	}
}
