package failovertest_test

import (
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/failover"
	"github.com/dvmproject/dvm/failover/failovertest"
)

func newCluster(t *testing.T) *failovertest.Cluster {
	t.Helper()
	v := failover.ClusterView{Generation: 1, Version: 1, Master: "a", Voters: []string{"a", "b", "c"},
		Nodes: []failover.NodeState{
			{Name: "a", Role: failover.RoleMaster, Capable: true},
			{Name: "b", Role: failover.RoleBackup, Capable: true},
			{Name: "c", Role: failover.RoleBackup, Capable: true},
			{Name: "d", Role: failover.RoleNode},
		}}
	h := failover.HealthReport{Network: 1, CPU: 1, Disk: 1}
	c, err := failovertest.New(failover.Config{}, v, map[string]failover.HealthReport{"a": h, "b": h, "c": h, "d": h})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBadInput(t *testing.T) {
	c := newCluster(t)
	for _, tc := range []struct {
		err  error
		want string
	}{
		{c.Kill("x"), `unknown node "x"`},
		{c.Cut("a", "x"), `unknown node "x"`},
		{c.Partition([]string{"a", "b"}, []string{"b", "c", "d"}), `"b" is in two groups`},
		{c.Partition([]string{"a", "b"}, []string{"c"}), `"d" is in no group`},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("got %v, want an error naming %s", tc.err, tc.want)
		}
	}
}

func TestLinks(t *testing.T) {
	c := newCluster(t)
	if err := c.CutOneWay("a", "d"); err != nil {
		t.Fatal(err)
	}
	if c.Linked("a", "d") || c.Linked("d", "a") || !c.Linked("a", "b") {
		t.Fatal("a one-way cut must count as cut for probes and raft, and touch no other pair")
	}
	c.Heal("d", "a")
	if !c.Linked("a", "d") {
		t.Fatal("Heal must restore both directions")
	}
	if err := c.Partition([]string{"a", "b", "c"}, []string{"d"}); err != nil {
		t.Fatal(err)
	}
	if c.Linked("c", "d") || !c.Linked("a", "c") {
		t.Fatal("Partition cuts exactly the links between groups")
	}
	c.HealAll()
	if !c.Linked("c", "d") {
		t.Fatal("HealAll")
	}
}

// TestKillStopsGuests: a killed node runs nothing, a revived one starts
// fenced and serves again once it holds a lease from the acting master.
func TestKillStopsGuests(t *testing.T) {
	c := newCluster(t)
	if err := c.Run(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !c.RunsGuests("d") {
		t.Fatal("d should serve under an acting master")
	}
	c.Kill("d")
	if c.RunsGuests("d") || c.Alive("d") {
		t.Fatal("a killed node runs nothing")
	}
	if err := c.Revive("d"); err != nil {
		t.Fatal(err)
	}
	if c.RunsGuests("d") || !c.Machine("d").Fenced() {
		t.Fatal("a revived node starts fenced")
	}
	if err := c.Run(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !c.RunsGuests("d") {
		t.Fatalf("d should serve again: %s", c.Roles())
	}
}
