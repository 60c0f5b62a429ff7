package master

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// These tests play the agents, as capacity_test.go does: they report what each node
// runs through the agents' endpoint and read the nodes' assignments. The restore and
// its adoption run on the real master and store.

func reportRunning(t *testing.T, c *api.Client, node string, running ...string) {
	t.Helper()
	st := api.NodeStatus{Address: "127.0.0.1:7460", LibvirtURI: "test:///" + node, Accelerator: "test",
		HostCPUs: 8, HostMemoryBytes: 16 * gib, CPUs: 8, MemoryBytes: 16 * gib, Guests: []api.ObservedGuest{}}
	for _, g := range running {
		st.Guests = append(st.Guests, api.ObservedGuest{Name: g, State: "running"})
	}
	if err := c.Do(context.Background(), "PUT", "/v1/nodes/"+node+"/status", st, nil); err != nil {
		t.Fatal(err)
	}
}

func assignmentOf(t *testing.T, c *api.Client, node string) map[string]api.AssignedGuest {
	t.Helper()
	var a api.Assignment
	if err := c.Do(context.Background(), "GET", "/v1/nodes/"+node+"/assignment", nil, &a); err != nil {
		t.Fatal(err)
	}
	out := map[string]api.AssignedGuest{}
	for _, g := range a.Guests {
		out[g.Name] = g
	}
	return out
}

// savedCluster is a snapshot file of a cluster of three nodes with guests a..e placed
// on them (e of policy none) and a network, and where each guest was placed.
func savedCluster(t *testing.T) ([]byte, map[string]string) {
	t.Helper()
	_, c := capacityMaster(t, Options{})
	for _, n := range []string{"n1", "n2", "n3"} {
		reportRunning(t, c, n)
	}
	ctx := context.Background()
	if err := c.Do(ctx, "POST", "/v1/networks", api.CreateNetwork{Name: "blue", VNI: 7, CIDR: "10.7.0.0/24"}, nil); err != nil {
		t.Fatal(err)
	}
	placed := map[string]string{}
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		req := api.CreateGuest{Name: name, CPUs: 1, MemoryBytes: gib}
		if name == "e" {
			req.Failover = api.FailoverNone
		}
		var g api.Guest
		if err := c.Do(ctx, "POST", "/v1/guests", req, &g); err != nil || g.Node == "" {
			t.Fatalf("create %s: %+v %v", name, g, err)
		}
		placed[name] = g.Node
	}
	var file []byte
	if err := c.Do(ctx, "GET", "/v1/cluster/snapshot", nil, &file); err != nil {
		t.Fatal(err)
	}
	return file, placed
}

func otherNode(n string) string {
	return map[string]string{"n1": "n2", "n2": "n3", "n3": "n1"}[n]
}

// TestRestoreAdoptsWhereGuestsRun: after a restore onto a fresh master, a node is
// assigned only the guests it reports running (nothing that starts, moves or evicts
// one) until every node of the snapshot has reported; a guest that runs on another
// node than the snapshot's is adopted there and never assigned to the snapshot's
// node; nothing is created or moved meanwhile; once all have reported, a guest that
// runs nowhere is assigned to its one node to start.
func TestRestoreAdoptsWhereGuestsRun(t *testing.T) {
	file, placed := savedCluster(t)
	m, c := capacityMaster(t, Options{})
	ctx := context.Background()
	// The agents found the fresh master before the operator restored: they reported
	// their guests to an empty state, which placed nothing.
	for _, n := range []string{"n1", "n2", "n3"} {
		reportRunning(t, c, n)
	}
	var res api.SnapshotRestored
	if err := c.Do(ctx, "PUT", "/v1/cluster/snapshot?adopt_timeout=1h", file, &res); err != nil {
		t.Fatal(err)
	}
	if res.Guests != 5 || res.Nodes != 3 || res.Networks != 1 || !res.Adoption.Adopting || !slices.Equal(res.Adoption.Awaiting, []string{"n1", "n2", "n3"}) {
		t.Fatalf("restored %+v", res)
	}
	// What really runs: a where the snapshot placed it, b moved after the snapshot,
	// c stopped since (or fenced), d and e as placed.
	moved := otherNode(placed["b"])
	runsOn := map[string][]string{}
	for _, g := range []string{"a", "d", "e"} {
		runsOn[placed[g]] = append(runsOn[placed[g]], g)
	}
	runsOn[moved] = append(runsOn[moved], "b")

	// Before its report, a node is assigned nothing to start.
	for _, n := range []string{"n1", "n2", "n3"} {
		for name, g := range assignmentOf(t, c, n) {
			t.Fatalf("node %s is assigned %s (%+v) before it reported after the restore", n, name, g)
		}
	}
	err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "new", CPUs: 1, MemoryBytes: gib}, nil)
	wantStatus(t, "create while adopting", err, http.StatusConflict, "adopting its guests after a restore")
	// The node the snapshot placed b on reports first, without b.
	first := placed["b"]
	reportRunning(t, c, first, runsOn[first]...)
	if g, _ := m.st.Guest("b"); g.Node != first {
		t.Fatalf("b moved before the node that runs it reported: %+v", g)
	}
	for name, g := range assignmentOf(t, c, first) {
		if !slices.Contains(runsOn[first], name) || g.Evict || g.Twin || g.MigrateTo != "" || g.Incoming {
			t.Fatalf("while adopting, %s is assigned %+v; it runs %v", first, g, runsOn[first])
		}
	}
	for _, n := range []string{moved, otherNode(moved)} {
		if n != first {
			reportRunning(t, c, n, runsOn[n]...)
		}
	}
	b := awaitGuest(t, m.st, "b", "adopted on "+moved, func(g store.GuestRecord) bool { return g.Node == moved })
	if b.Desired != store.DesiredRunning {
		t.Fatalf("b adopted as %+v", b)
	}
	if a := m.st.Adoption(); a.Adopting() || a.DoneAt.IsZero() {
		t.Fatalf("adoption after every node reported: %+v", a)
	}
	// The ordinary assignments now: b only where it runs, c on its one node to start.
	for _, n := range []string{"n1", "n2", "n3"} {
		asg := assignmentOf(t, c, n)
		if g, ok := asg["b"]; ok != (n == moved) || (ok && g.Evict) {
			t.Fatalf("node %s: b assigned %v (%+v); it runs on %s", n, ok, g, moved)
		}
		if g, ok := asg["c"]; ok != (n == placed["c"]) || (ok && g.Desired != store.DesiredRunning) {
			t.Fatalf("node %s: c assigned %v (%+v); the snapshot placed it on %s", n, ok, g, placed["c"])
		}
	}
	// Events are recorded once the writes they tell of are done.
	var evs []api.Event
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := c.Do(ctx, "GET", "/v1/events", nil, &evs); err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(evs, func(e api.Event) bool { return e.Kind == "adopted" }) || time.Now().After(deadline) {
			break
		}
	}
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
		if e.Kind == "adopt" && (e.Guest != "b" || !strings.Contains(e.Detail, "adopted where it runs")) {
			t.Errorf("adopt event %+v", e)
		}
	}
	for _, k := range []string{"restore", "adopt", "adopted"} {
		if !slices.Contains(kinds, k) {
			t.Errorf("no %s event among %v", k, kinds)
		}
	}
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "new", CPUs: 1, MemoryBytes: gib}, nil); err != nil {
		t.Fatalf("create after the adoption: %v", err)
	}
}

// TestRestoreDeclaresSilentNodesLost: a node of the snapshot that does not report by
// the adoption deadline (and holds no lease) is declared lost: its restart guests are
// placed on the nodes that reported, its guest of policy none is lost, and the
// adoption ends.
func TestRestoreDeclaresSilentNodesLost(t *testing.T) {
	file, placed := savedCluster(t)
	m, c := capacityMaster(t, Options{})
	ctx := context.Background()
	if err := c.Do(ctx, "PUT", "/v1/cluster/snapshot?adopt_timeout=1s", file, nil); err != nil {
		t.Fatal(err)
	}
	silent := placed["e"]
	for _, n := range []string{"n1", "n2", "n3"} {
		if n != silent {
			var run []string
			for g, on := range placed {
				if on == n {
					run = append(run, g)
				}
			}
			reportRunning(t, c, n, run...)
		}
	}
	ok := func(g store.GuestRecord) bool { return true }
	awaitGuest(t, m.st, "e", "e lost with its node", func(g store.GuestRecord) bool { return g.Lost })
	for name, on := range placed {
		g := awaitGuest(t, m.st, name, "placed", ok)
		if on == silent && name != "e" && (g.Node == silent || g.Node == "") {
			t.Errorf("%s of the silent node %s: %+v", name, silent, g)
		}
	}
	if n, _ := m.st.Node(silent); n.LostAt.IsZero() {
		t.Fatalf("silent node %s not lost: %+v", silent, n)
	}
	if a := m.st.Adoption(); a.Adopting() {
		t.Fatalf("adoption still waits: %+v", a)
	}
}

// TestRestoreRefusesBadInput: a damaged, truncated or newer snapshot, a cluster that
// already holds guests, a token below admin: each refused with what is wrong, and the
// state unchanged.
func TestRestoreRefusesBadInput(t *testing.T) {
	file, _ := savedCluster(t)
	m, c := capacityMaster(t, Options{})
	ctx := context.Background()
	head, body, _ := bytes.Cut(file, []byte("\n"))
	var h map[string]any
	if err := json.Unmarshal(head, &h); err != nil {
		t.Fatal(err)
	}
	h["format"] = 9
	newer, _ := json.Marshal(h)
	damaged := bytes.Clone(file)
	damaged[len(damaged)-20] ^= 1
	ops := as(t, c, mustToken(t, c, "ops", api.ScopeOperator))
	before := m.st.Index()
	for _, tc := range []struct {
		what string
		c    *api.Client
		file []byte
		code int
		want string
	}{
		{"a changed byte", c, damaged, http.StatusBadRequest, "checksum mismatch"},
		{"a truncated file", c, file[:len(file)-50], http.StatusBadRequest, "truncated"},
		{"a newer format", c, append(append(newer, '\n'), body...), http.StatusBadRequest, "its format is 9"},
		{"not a snapshot", c, []byte(`{"guests":[]}`), http.StatusBadRequest, "not a whole snapshot header"},
		{"an operator token", ops, file, http.StatusForbidden, "needs admin"},
	} {
		err := tc.c.Do(ctx, "PUT", "/v1/cluster/snapshot", tc.file, nil)
		wantStatus(t, tc.what, err, tc.code, tc.want)
		if _, guests, _ := m.st.Snapshot(); len(guests) > 0 || m.st.Adoption() != nil {
			t.Fatalf("%s changed the state", tc.what)
		}
	}
	if m.st.Index() != before {
		t.Fatalf("refused restores wrote: index %d, was %d", m.st.Index(), before)
	}
	wantStatus(t, "an operator saves", ops.Do(ctx, "GET", "/v1/cluster/snapshot", nil, new([]byte)), http.StatusForbidden, "needs admin")
	if err := c.Do(ctx, "PUT", "/v1/cluster/snapshot", file, nil); err != nil {
		t.Fatal(err)
	}
	err := c.Do(ctx, "PUT", "/v1/cluster/snapshot", file, nil)
	wantStatus(t, "a restore onto a cluster with guests", err, http.StatusConflict, "restored only onto a new management group")
}
