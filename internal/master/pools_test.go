package master

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
)

// reportPools registers a node as its agent does, with storage pools.
func reportPools(t *testing.T, c *api.Client, name string, pools map[string]string) {
	t.Helper()
	st := api.NodeStatus{Address: "127.0.0.1:7460", LibvirtURI: "test:///" + name, Accelerator: "test",
		HostCPUs: 8, HostMemoryBytes: 16 * gib, CPUs: 8, MemoryBytes: 16 * gib, Guests: []api.ObservedGuest{}, Pools: pools}
	if err := c.Do(context.Background(), "PUT", "/v1/nodes/"+name+"/status", st, nil); err != nil {
		t.Fatal(err)
	}
}

func TestStoragePoolPlacement(t *testing.T) {
	m, c := newTestMaster(t)
	ctx := context.Background()
	reportPools(t, c, "n1", map[string]string{"ceph": "rbd", "local": "dir"})
	reportPools(t, c, "n2", map[string]string{"ceph": "rbd", "local": "dir"})
	reportPools(t, c, "n3", map[string]string{"local": "dir", "mixed": "shared"})
	reportPools(t, c, "n4", map[string]string{"mixed": "rbd"})
	var nodes []api.Node
	if err := c.Do(ctx, "GET", "/v1/nodes", nil, &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 4 || nodes[0].Pools["ceph"] != "rbd" || nodes[2].Pools["local"] != "dir" {
		t.Fatalf("nodes show pools %+v", nodes)
	}

	for _, tc := range []struct {
		req  api.CreateGuest
		want string
	}{
		{api.CreateGuest{Pool: "nope"}, `no node has storage pool "nope": the nodes have ceph, local, mixed`},
		{api.CreateGuest{Pool: "local"}, "a restart guest on it could not come back on another node with its data"},
		{api.CreateGuest{Pool: "mixed", Failover: api.FailoverNone}, "is of kinds rbd,shared on different nodes"},
		{api.CreateGuest{Pool: "Bad_Name"}, "pool"},
	} {
		tc.req.Name, tc.req.CPUs, tc.req.MemoryBytes = "bad", 1, gib
		err := c.Do(ctx, "POST", "/v1/guests", tc.req, nil)
		if code, field := statusOf(err); code != http.StatusBadRequest || field != "pool" || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("create on pool %q (%s): %v (%d, field %q), want a 400 on pool containing %q", tc.req.Pool, tc.req.Failover, err, code, field, tc.want)
		}
	}
	if err := c.Do(ctx, "GET", "/v1/guests/bad", nil, nil); err == nil {
		t.Fatal("a refused create left guest bad")
	}

	// A guest goes only where its pool is: ceph is on n1 and n2, not on n3 and n4.
	for _, name := range []string{"c1", "c2", "c3", "c4"} {
		var g api.Guest
		if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: name, CPUs: 1, MemoryBytes: gib, Pool: "ceph"}, &g); err != nil {
			t.Fatal(err)
		}
		if g.Pool != "ceph" || (g.Node != "n1" && g.Node != "n2") {
			t.Fatalf("%s on pool %q placed on %q, want pool ceph on n1 or n2", name, g.Pool, g.Node)
		}
		var asg api.Assignment
		if err := c.Do(ctx, "GET", "/v1/nodes/"+g.Node+"/assignment", nil, &asg); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, ag := range asg.Guests {
			found = found || (ag.Name == name && ag.Pool == "ceph")
		}
		if !found {
			t.Fatalf("%s's assignment on %s does not name pool ceph: %+v", name, g.Node, asg.Guests)
		}
	}
	// On a directory of its node's own, a guest does not move.
	var loc api.Guest
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "loc", CPUs: 1, MemoryBytes: gib, Pool: "local", Failover: api.FailoverNone}, &loc); err != nil {
		t.Fatal(err)
	}
	to := "n1"
	if loc.Node == "n1" {
		to = "n2"
	}
	err := c.Do(ctx, "POST", "/v1/guests/loc/migrate", api.MigrateRequest{Node: to}, nil)
	if code, _ := statusOf(err); code != http.StatusConflict || !strings.Contains(err.Error(), "kind dir") {
		t.Fatalf("migrate of a guest on a dir pool: %v, want a 409 naming kind dir", err)
	}
	// Neither does a drain move it, running or stopped: it stays, reported.
	for _, stopped := range []bool{false, true} {
		if stopped {
			if err := c.Do(ctx, "POST", "/v1/guests/loc/stop", nil, nil); err != nil {
				t.Fatal(err)
			}
		}
		var lines []api.DrainProgress
		sum, err := m.Drain(ctx, loc.Node, false, func(p api.DrainProgress) { lines = append(lines, p) })
		if err != nil {
			t.Fatal(err)
		}
		failed := false
		for _, p := range lines {
			failed = failed || (p.Guest == "loc" && p.Status == "failed" && strings.Contains(p.Error, "kind dir"))
		}
		if !failed || sum.Failed == 0 {
			t.Fatalf("drain of %s (loc stopped: %v): %+v, want loc failed naming kind dir", loc.Node, stopped, lines)
		}
		if g, _ := m.st.Guest("loc"); g.Node != loc.Node {
			t.Fatalf("a drain moved loc, on a dir pool, from %s to %s", loc.Node, g.Node)
		}
		if err := m.Undrain(loc.Node); err != nil {
			t.Fatal(err)
		}
	}
}
