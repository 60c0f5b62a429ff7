package master

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// reportGuests sends a node's report with pool local (kind dir) and these guests.
func reportGuests(t *testing.T, c *api.Client, name string, guests ...api.ObservedGuest) {
	t.Helper()
	st := api.NodeStatus{Address: "127.0.0.1:7460", LibvirtURI: "test:///" + name, Accelerator: "test",
		HostCPUs: 8, HostMemoryBytes: 16 * gib, CPUs: 8, MemoryBytes: 16 * gib, Guests: append([]api.ObservedGuest{}, guests...),
		Pools: map[string]string{"local": "dir"}}
	if err := c.Do(context.Background(), "PUT", "/v1/nodes/"+name+"/status", st, nil); err != nil {
		t.Fatal(err)
	}
}

func assignedOn(t *testing.T, c *api.Client, node, guest string) (api.AssignedGuest, bool) {
	t.Helper()
	var asg api.Assignment
	if err := c.Do(context.Background(), "GET", "/v1/nodes/"+node+"/assignment", nil, &asg); err != nil {
		t.Fatal(err)
	}
	for _, g := range asg.Guests {
		if g.Name == guest {
			return g, true
		}
	}
	return api.AssignedGuest{}, false
}

// TestMirroredTwinProtection: a twin on a pool of kind dir is mirrored; the master
// passes the standby's export to the guest's node, records the copy in step only on
// that node's word about that standby, and promotes the standby when the guest's
// node is lost only if the copy was recorded in step.
func TestMirroredTwinProtection(t *testing.T) {
	m, c := newTestMaster(t)
	ctx := context.Background()
	for _, n := range []string{"n1", "n2", "n3"} {
		reportGuests(t, c, n)
	}
	create := func(name string) api.Guest {
		var g api.Guest
		if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: name, CPUs: 1, MemoryBytes: gib, Pool: "local", Failover: api.FailoverTwin}, &g); err != nil {
			t.Fatal(err)
		}
		if g.Node == "" || g.TwinNode == "" || g.TwinNode == g.Node {
			t.Fatalf("%s placed on %q, standby on %q", name, g.Node, g.TwinNode)
		}
		if g.Protection == nil || g.Protection.State != api.ProtectionUnprotected {
			t.Fatalf("%s just created: protection %+v, want unprotected", name, g.Protection)
		}
		return g
	}
	tw := create("tw")
	p, s := tw.Node, tw.TwinNode

	// The standby's node serves the copy; the guest's node is told where.
	if ag, ok := assignedOn(t, c, s, "tw"); !ok || !ag.Twin || !ag.Mirrored {
		t.Fatalf("standby's assignment on %s: %+v (listed %v), want twin and mirrored", s, ag, ok)
	}
	if ag, _ := assignedOn(t, c, p, "tw"); !ag.Mirrored || ag.Mirror == nil || ag.Mirror.Node != s || ag.Mirror.Address != "" {
		t.Fatalf("before the standby serves: %+v, want mirrored to %s, no address yet", ag.Mirror, s)
	}
	const export = "10.0.0.9:10809"
	reportGuests(t, c, s, api.ObservedGuest{Name: "tw", State: "standby", Standby: export})
	ag, _ := assignedOn(t, c, p, "tw")
	if ag.Mirror == nil || ag.Mirror.Node != s || ag.Mirror.Address != export || ag.Mirror.Protected {
		t.Fatalf("guest's node told %+v, want the export %s on %s, not protected", ag.Mirror, export, s)
	}

	// In step about another standby says nothing; syncing is shown with its progress.
	running := func(prot *api.Protection) api.ObservedGuest {
		return api.ObservedGuest{Name: "tw", State: "running", Protection: prot}
	}
	reportGuests(t, c, p, running(&api.Protection{State: api.ProtectionProtected, Node: "n9"}))
	if g, _ := m.st.Guest("tw"); g.TwinProtected {
		t.Fatal("recorded in step on a report about another standby")
	}
	reportGuests(t, c, p, running(&api.Protection{State: api.ProtectionSyncing, Node: s, Done: 10, Total: 40}))
	if g, _ := m.Guest("tw"); g.Protection.State != api.ProtectionSyncing || g.Protection.Done != 10 {
		t.Fatalf("syncing shown as %+v", g.Protection)
	}
	reportGuests(t, c, p, running(&api.Protection{State: api.ProtectionProtected, Node: s, Done: 40, Total: 40}))
	if g, _ := m.st.Guest("tw"); !g.TwinProtected {
		t.Fatal("in step not recorded")
	}
	if g, _ := m.Guest("tw"); g.Protection.State != api.ProtectionProtected {
		t.Fatalf("protected shown as %+v", g.Protection)
	}
	if ag, _ := assignedOn(t, c, p, "tw"); ag.Mirror == nil || !ag.Mirror.Protected {
		t.Fatalf("guest's node not told the copy is recorded in step: %+v", ag.Mirror)
	}
	reportGuests(t, c, p, running(&api.Protection{State: api.ProtectionUnprotected, Node: s, Reason: "mirror failed: broken pipe"}))
	if g, _ := m.st.Guest("tw"); g.TwinProtected {
		t.Fatal("a broken mirror left the copy recorded in step")
	}
	// Events are written after the report's own write.
	var kinds []string
	for deadline := time.Now().Add(5 * time.Second); len(kinds) < 2 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		kinds = nil
		for _, e := range m.Events(ctx, 0, 0) {
			if e.Guest == "tw" && strings.HasPrefix(e.Kind, "twin-") {
				kinds = append(kinds, e.Kind+": "+e.Detail)
			}
		}
	}
	if len(kinds) != 2 || !strings.HasPrefix(kinds[0], "twin-protected") || !strings.Contains(kinds[1], "broken pipe") {
		t.Fatalf("events %q, want twin-protected then twin-unprotected with the reason", kinds)
	}

	// Not in step when its node is lost: not promoted, it waits for its node.
	m.RecoverNode(p, "test: declared lost")
	if g, _ := m.st.Guest("tw"); g.Node != p || g.TwinNode != s || g.Lost {
		t.Fatalf("a twin whose copy was not in step was moved: node %q, standby %q, lost %v", g.Node, g.TwinNode, g.Lost)
	}

	// In step: promoted, and a new standby that starts unprotected.
	reportGuests(t, c, "n1")
	reportGuests(t, c, "n2")
	reportGuests(t, c, "n3")
	tw2 := create("tw2")
	reportGuests(t, c, tw2.TwinNode, api.ObservedGuest{Name: "tw2", State: "standby", Standby: export})
	reportGuests(t, c, tw2.Node, api.ObservedGuest{Name: "tw2", State: "running", Protection: &api.Protection{State: api.ProtectionProtected, Node: tw2.TwinNode}})
	if g, _ := m.st.Guest("tw2"); !g.TwinProtected {
		t.Fatal("tw2 in step not recorded")
	}
	m.RecoverNode(tw2.Node, "test: declared lost")
	g, _ := m.st.Guest("tw2")
	if g.Node != tw2.TwinNode || g.TwinProtected || g.TwinNode == tw2.Node {
		t.Fatalf("after its node was lost tw2 is on %q (standby %q, in step %v), want promoted on %s and a new copy not yet in step", g.Node, g.TwinNode, g.TwinProtected, tw2.TwinNode)
	}
}

// TestTwinProtectedClearedOnMove: the state never carries a copy's in-step mark
// across a change of the guest's node or standby, whoever writes it.
func TestTwinProtectedClearedOnMove(t *testing.T) {
	m, c := newTestMaster(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		reportGuests(t, c, n)
	}
	var g api.Guest
	if err := c.Do(context.Background(), "POST", "/v1/guests", api.CreateGuest{Name: "tw", CPUs: 1, MemoryBytes: gib, Pool: "local", Failover: api.FailoverTwin}, &g); err != nil {
		t.Fatal(err)
	}
	rec, _ := m.st.Guest("tw")
	rec.TwinProtected = true
	if _, err := m.st.Apply(store.Command{Op: store.OpPutGuest, Guest: &rec}); err != nil {
		t.Fatal(err)
	}
	rec.TwinNode = "n3"
	if rec.Node == "n3" || g.TwinNode == "n3" {
		rec.TwinNode = "n1"
		if rec.Node == "n1" {
			rec.TwinNode = "n2"
		}
	}
	if _, err := m.st.Apply(store.Command{Op: store.OpPutGuest, Guest: &rec}); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.st.Guest("tw"); got.TwinProtected {
		t.Fatalf("standby moved %s -> %s with the copy still marked in step", g.TwinNode, got.TwinNode)
	}
}

// TestTwinWithoutStandbyGetsOne: a twin left without a standby (none could be placed
// when its last one was lost) gets one once a node can take it, with no operator
// action, and an event says so.
func TestTwinWithoutStandbyGetsOne(t *testing.T) {
	m, c := newTestMaster(t)
	for _, n := range []string{"n1", "n2"} {
		reportGuests(t, c, n)
	}
	var g api.Guest
	if err := c.Do(context.Background(), "POST", "/v1/guests", api.CreateGuest{Name: "tw", CPUs: 1, MemoryBytes: gib, Pool: "local", Failover: api.FailoverTwin}, &g); err != nil {
		t.Fatal(err)
	}
	rec, _ := m.st.Guest("tw")
	rec.TwinNode = ""
	if _, err := m.st.Apply(store.Command{Op: store.OpPutGuest, Guest: &rec}); err != nil {
		t.Fatal(err)
	}
	if p := m.view(rec, time.Now()).Protection; p.State != api.ProtectionUnprotected || p.Reason == "" {
		t.Fatalf("without a standby: %+v", p)
	}
	m.placePending()
	got, _ := m.st.Guest("tw")
	if got.TwinNode == "" || got.TwinNode == got.Node || got.Node != rec.Node {
		t.Fatalf("after placePending: node %q, standby %q; want a standby beside %s", got.Node, got.TwinNode, rec.Node)
	}
}
