package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"libvirt.org/go/libvirtxml"
)

// copy is one guest's domain as a hypervisor runs it: on which node, under which
// libvirt domain id (a new id is a new start).
type copy struct {
	node string
	id   int
}

// running lists every running dvm guest of the hypervisors, with all its copies.
func running(t *testing.T, hvs []*hypervisor.Node) map[string][]copy {
	t.Helper()
	out := map[string][]copy{}
	for i, hv := range hvs {
		list, err := hv.List()
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range list {
			if g.State != hypervisor.StateRunning {
				continue
			}
			x, err := hv.DomainXML(g.Name)
			if err != nil {
				t.Fatal(err)
			}
			var dom libvirtxml.Domain
			if err := dom.Unmarshal(x); err != nil || dom.ID == nil {
				t.Fatalf("domain %s: id %v, %v", g.Name, dom.ID, err)
			}
			out[g.Name] = append(out[g.Name], copy{node: fmt.Sprintf("n%d", i+1), id: *dom.ID})
		}
	}
	return out
}

// TestRestoreOntoFreshDevCluster: a dev cluster's whole management (its master, its
// state, its API, every agent) is thrown away while its guests keep running on their
// hypervisors, a fresh one takes the hypervisors over and the snapshot saved earlier
// is restored onto it. Every guest the snapshot holds is listed and runs on exactly
// one node; the ones that ran throughout run on, not restarted (same libvirt domain
// id), including one that moved after the snapshot (adopted where it runs, not
// started where the snapshot placed it) and one started after it; one stopped after
// the snapshot is started again, once; one made after the snapshot keeps running.
func TestRestoreOntoFreshDevCluster(t *testing.T) {
	dir1 := t.TempDir()
	d1, c1 := startDev(t, dir1, 3)
	ctx := context.Background()
	no := false
	for _, g := range []api.CreateGuest{
		{Name: "web", CPUs: 1, MemoryBytes: 1 << 30},
		{Name: "db", CPUs: 2, MemoryBytes: 2 << 30},
		{Name: "solo", CPUs: 1, MemoryBytes: 1 << 30, Failover: api.FailoverNone},
		{Name: "moved", CPUs: 1, MemoryBytes: 1 << 30},
		{Name: "gone", CPUs: 1, MemoryBytes: 1 << 30},
		{Name: "idle", CPUs: 1, MemoryBytes: 1 << 30, Start: &no},
	} {
		if err := c1.Do(ctx, "POST", "/v1/guests", g, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"web", "db", "solo", "moved", "gone"} {
		waitFor(t, name+" running", func() bool { return guest(t, c1, name).State == api.GuestRunning })
	}
	snapNode := map[string]string{}
	for _, name := range []string{"web", "db", "solo", "moved", "gone", "idle"} {
		snapNode[name] = guest(t, c1, name).Node
	}
	var file []byte
	if err := c1.Do(ctx, "GET", "/v1/cluster/snapshot", nil, &file); err != nil {
		t.Fatal(err)
	}

	// After the snapshot: moved goes to another node (stopped, its node drained, then
	// started where the drain put it); gone is stopped; idle is started; late is made.
	from := snapNode["moved"]
	if err := c1.Do(ctx, "POST", "/v1/guests/moved/stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "moved stopped", func() bool { return guest(t, c1, "moved").State == api.GuestStopped })
	if err := c1.Stream(ctx, "POST", "/v1/nodes/"+from+"/drain", nil, func([]byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := c1.Do(ctx, "POST", "/v1/nodes/"+from+"/undrain", nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"/v1/guests/moved/start", "/v1/guests/gone/stop", "/v1/guests/idle/start"} {
		if err := c1.Do(ctx, "POST", op, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := c1.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "late", CPUs: 1, MemoryBytes: 1 << 30}, nil); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"moved", "idle", "late"} {
		waitFor(t, name+" running", func() bool { return guest(t, c1, name).State == api.GuestRunning })
	}
	waitFor(t, "gone stopped", func() bool { return guest(t, c1, "gone").State == api.GuestStopped })
	if n := guest(t, c1, "moved").Node; n == from {
		t.Fatalf("moved stayed on %s", n)
	}

	// Every management part goes; the guests stay.
	before := running(t, d1.Nodes)
	hvs := d1.Detach()
	// The operator kept the old bootstrap token (the snapshot's tokens come back).
	tok, err := os.ReadFile(filepath.Join(dir1, "token"))
	if err != nil {
		t.Fatal(err)
	}
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, "token"), tok, 0o600); err != nil {
		t.Fatal(err)
	}
	d2, c2 := startDevWith(t, DevOptions{Nodes: 3, DataDir: dir2, Hypervisors: hvs})
	var res api.SnapshotRestored
	if err := c2.Do(ctx, "PUT", "/v1/cluster/snapshot", file, &res); err != nil {
		t.Fatal(err)
	}
	if res.Guests != 6 || !slices.Equal(res.Adoption.Awaiting, []string{"n1", "n2", "n3"}) {
		t.Fatalf("restored %+v", res)
	}
	waitFor(t, "the adoption done", func() bool {
		var st api.ClusterStatus
		return c2.Do(ctx, "GET", "/v1/cluster", nil, &st) == nil && st.Adoption != nil && !st.Adoption.Adopting
	})
	for _, name := range []string{"web", "db", "solo", "moved", "gone", "idle"} {
		waitFor(t, name+" running after the restore", func() bool { return guest(t, c2, name).State == api.GuestRunning })
	}
	after := running(t, d2.Nodes)
	for name, copies := range after {
		if len(copies) != 1 {
			t.Errorf("guest %s runs %d times: %+v", name, len(copies), copies)
		}
	}
	for name, was := range before {
		if now := after[name]; len(now) != 1 || now[0] != was[0] {
			t.Errorf("guest %s ran as %+v before the restore and as %+v after: restarted or moved", name, was, now)
		}
		if name == "late" {
			continue
		}
		if g := guest(t, c2, name); g.Node != was[0].node {
			t.Errorf("guest %s runs on %s and the state places it on %s", name, was[0].node, g.Node)
		}
	}
	if now := after["gone"]; len(now) != 1 || now[0].node != snapNode["gone"] {
		t.Errorf("gone, stopped after the snapshot, runs as %+v; the snapshot placed it on %s", now, snapNode["gone"])
	}
	var gs []api.Guest
	if err := c2.Do(ctx, "GET", "/v1/guests", nil, &gs); err != nil || len(gs) != 6 {
		t.Fatalf("guests after the restore: %d, %v", len(gs), err)
	}
	// The adoption writes its events as it decides, beside the reports that show
	// the guests running: they may land a moment after.
	said := map[string]bool{}
	var late api.Event
	waitFor(t, "adopt events for moved and late", func() bool {
		var evs []api.Event
		if err := c2.Do(ctx, "GET", "/v1/events", nil, &evs); err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Kind == "adopt" {
				said[e.Guest] = true
				if e.Guest == "late" {
					late = e
				}
			}
		}
		return said["moved"] && said["late"]
	})
	if !strings.Contains(late.Detail, "does not hold") {
		t.Errorf("event about late: %+v", late)
	}
}
