package failover_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/dvmproject/dvm/failover"
	"github.com/dvmproject/dvm/failover/failovertest"
)

func bigView(n int) failover.ClusterView {
	v := failover.ClusterView{Generation: 1, Version: 1, Master: "n0000", Voters: []string{"n0000", "n0001", "n0002"}}
	for i := range n {
		ns := failover.NodeState{Name: fmt.Sprintf("n%04d", i), Role: failover.RoleCandidate, Capable: true}
		switch {
		case i == 0:
			ns.Role = failover.RoleMaster
		case i < 3:
			ns.Role = failover.RoleBackup
		case i >= 10:
			ns.Role, ns.Capable = failover.RoleNode, false
		}
		v.Nodes = append(v.Nodes, ns)
	}
	return v
}

// BenchmarkClusterStep measures one 100ms step of a whole simulated cluster
// (every machine ticked, its messages and probe changes delivered, the
// invariants checked), in steady state.
func BenchmarkClusterStep(b *testing.B) {
	for _, n := range []int{7, 31, 101} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			health := map[string]failover.HealthReport{}
			v := bigView(n)
			for _, ns := range v.Nodes {
				health[ns.Name] = failover.HealthReport{Network: 0.9, CPU: 0.9, Disk: 0.9}
			}
			c, err := failovertest.New(failover.Config{}, v, health)
			if err != nil {
				b.Fatal(err)
			}
			if err := c.Run(5 * time.Second); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				c.Step()
			}
			if err := c.Err(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkMasterRound measures a master of a 1000-node cluster: one renewal
// round (a Tick that sends 999 lease requests) and the 999 grants coming back.
func BenchmarkMasterRound(b *testing.B) {
	v := bigView(1000)
	m, err := failover.NewMachine(failover.Config{Self: "n0000"}, v)
	if err != nil {
		b.Fatal(err)
	}
	now := t0
	round := func() {
		now = now.Add(failover.DefaultRenewInterval)
		for _, a := range m.Step(failover.Tick{Now: now}) {
			if s, ok := a.(failover.Send); ok && s.Msg.Type == failover.MsgLease {
				m.Step(failover.Message{Type: failover.MsgLeaseGrant, From: s.Msg.To, To: "n0000",
					Generation: s.Msg.Generation, SentAt: s.Msg.SentAt})
			}
		}
	}
	round()
	round()
	if !m.Acting() {
		b.Fatal("master not acting after two rounds")
	}
	b.ResetTimer()
	for b.Loop() {
		round()
	}
}

// BenchmarkRecovery reports, as sim-s/op, the simulated time from the kill to
// a recovered group: an acting master whose three voters all run and hold
// master or backup (with the default Config, 7 nodes, 100ms steps):
// scenario 4 (master), 2 (master and a backup), 3 (both backups). The figure
// comes from the simulated clock, so it is exact and the same on any machine;
// ns/op is the cost of simulating it.
func BenchmarkRecovery(b *testing.B) {
	for _, tc := range []struct {
		name string
		kill []string
	}{
		{"master", []string{"n1"}},
		{"master+backup", []string{"n1", "n2"}},
		{"both-backups", []string{"n2", "n3"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var took time.Duration
			for b.Loop() {
				h := &harness{}
				if _, err := h.do("cluster master=n1 backups=n2,n3 candidates=n4,n5,n6 nodes=n7", nil); err != nil {
					b.Fatal(err)
				}
				for _, n := range tc.kill {
					h.c.Kill(n)
				}
				start := h.c.Elapsed()
				for {
					h.c.Step()
					if err := h.c.Err(); err != nil {
						b.Fatal(err)
					}
					if recovered(h) {
						break
					}
					if h.c.Elapsed()-start > time.Minute {
						b.Fatal("no acting master a minute after the kill")
					}
				}
				took = h.c.Elapsed() - start
			}
			b.ReportMetric(took.Seconds(), "sim-s/op")
		})
	}
}

func recovered(h *harness) bool {
	for _, n := range h.c.Nodes() {
		m := h.c.Machine(n)
		if m == nil || !m.Acting() {
			continue
		}
		v := m.View()
		for _, voter := range v.Voters {
			if r := v.Role(voter); h.c.Machine(voter) == nil || (r != failover.RoleMaster && r != failover.RoleBackup) {
				return false
			}
		}
		return true
	}
	return false
}
