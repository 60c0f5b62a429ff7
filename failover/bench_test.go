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
