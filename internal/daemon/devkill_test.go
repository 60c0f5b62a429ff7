package daemon

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
)

func eventsOf(t *testing.T, c *api.Client) []api.Event {
	t.Helper()
	var evs []api.Event
	if err := c.Do(context.Background(), "GET", "/v1/events", nil, &evs); err != nil {
		t.Fatal(err)
	}
	return evs
}

// `dvmd dev kill` is how a node of a dev cluster dies: its guests are destroyed with it
// at once, the dev cluster declares it lost once the master shows it unreachable, and
// the master brings every guest back on the other nodes, never two copies at once. A
// second kill of it, or of a node that is not there, is refused and changes nothing; a
// restart of the dev cluster takes the node back, empty.
func TestDevKillBringsGuestsBack(t *testing.T) {
	dir := t.TempDir()
	d, c := startDev(t, dir, 3)
	ctx := context.Background()
	on := map[string][]string{}
	for i := 1; i <= 6; i++ {
		var g api.Guest
		name := fmt.Sprintf("g%d", i)
		if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: name, CPUs: 1, MemoryBytes: 4 << 30}, &g); err != nil {
			t.Fatal(err)
		}
		on[g.Node] = append(on[g.Node], name)
	}
	victim := ""
	for n, gs := range on {
		if victim == "" || len(gs) > len(on[victim]) {
			victim = n
		}
	}
	lost := on[victim]
	slices.Sort(lost)
	waitFor(t, "every guest running", func() bool {
		for _, gs := range on {
			for _, g := range gs {
				if guest(t, c, g).State != api.GuestRunning {
					return false
				}
			}
		}
		return true
	})

	detail, err := KillDevNode(dir, victim)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(detail, "node "+victim+" killed") || !strings.Contains(detail, strings.Join(lost, ", ")) {
		t.Fatalf("kill said %q; want %s and its guests %v", detail, victim, lost)
	}
	for g, copies := range running(t, d.Nodes) {
		for _, c := range copies {
			if c.node == victim {
				t.Fatalf("%s still runs on the killed %s", g, victim)
			}
		}
	}
	waitFor(t, "the guests of "+victim+" running on the other nodes", func() bool {
		for g, copies := range running(t, d.Nodes) {
			if len(copies) > 1 {
				t.Fatalf("%s runs on %v at once", g, copies)
			}
		}
		for _, g := range lost {
			if got := guest(t, c, g); got.State != api.GuestRunning || got.Node == victim || got.Node == "" {
				return false
			}
		}
		return true
	})
	for g, copies := range running(t, d.Nodes) {
		if len(copies) != 1 || copies[0].node == victim {
			t.Fatalf("%s runs on %v", g, copies)
		}
	}
	var nodes []api.Node
	if err := c.Do(ctx, "GET", "/v1/nodes", nil, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == victim && n.State != api.NodeLost {
			t.Fatalf("%s is %s, want lost", victim, n.State)
		}
	}
	// The events tell it in the order it happened: the loss, each guest's restart
	// elsewhere, that guest running there (the agents of a dev cluster start a guest at
	// once: a restart recorded after the write that made it came after its recovered).
	var seq map[string]uint64
	waitFor(t, "an event of each guest recovered", func() bool {
		seq = map[string]uint64{}
		for _, e := range eventsOf(t, c) {
			seq[e.Kind+" "+e.Node+" "+e.Guest] = e.Seq
		}
		for _, g := range lost {
			if seq["recovered "+guest(t, c, g).Node+" "+g] == 0 {
				return false
			}
		}
		return true
	})
	for _, g := range lost {
		lostAt, restart, running := seq["node-lost "+victim+" "], seq["recovery "+victim+" "+g], seq["recovered "+guest(t, c, g).Node+" "+g]
		if lostAt == 0 || restart <= lostAt || running <= restart {
			t.Errorf("%s: events node-lost %d, recovery %d, recovered %d: want them in that order", g, lostAt, restart, running)
		}
	}

	// Refused, and nothing changes.
	before := len(eventsOf(t, c))
	for node, want := range map[string]string{
		victim: "node " + victim + " is killed already",
		"n9":   "no node n9 in this dev cluster: its nodes are n1 to n3",
		"N_2":  "node: ",
	} {
		if _, err := KillDevNode(dir, node); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("kill %s: %v, want %q", node, err, want)
		}
	}
	conn, err := net.Dial("unix", ControlSocket(dir))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "reboot n1\n")
	answer, _ := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if !strings.HasPrefix(answer, `error unknown request "reboot"`) {
		t.Errorf("reboot n1: %q", answer)
	}
	if after := eventsOf(t, c); len(after) != before {
		t.Fatalf("a refused kill changed something: %+v", after[before:])
	}
	for g, copies := range running(t, d.Nodes) {
		if len(copies) != 1 || copies[0].node == victim {
			t.Fatalf("after refused kills %s runs on %v", g, copies)
		}
	}

	// Started again, the dev cluster takes the killed node back (startDev waits for
	// every node ready); the guests stay where they were brought back.
	where := map[string]string{}
	for _, g := range lost {
		where[g] = guest(t, c, g).Node
	}
	d.Stop()
	_, c2 := startDev(t, dir, 3)
	for _, g := range lost {
		if got := guest(t, c2, g); got.Node != where[g] {
			t.Fatalf("%s moved across the restart: %s -> %s", g, where[g], got.Node)
		}
	}
	waitFor(t, victim+" taken back", func() bool {
		for _, e := range eventsOf(t, c2) {
			if e.Kind == "node-returned" && e.Node == victim {
				return true
			}
		}
		return false
	})
}
