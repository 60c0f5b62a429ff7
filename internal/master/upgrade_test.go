package master

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/internal/version"
)

// reportAs reports node as an agent of dvmd ver does ("" for one from before versions
// were carried, which sends no Dvm-Version).
func reportAs(t *testing.T, c *api.Client, node, ver string) {
	t.Helper()
	body, _ := json.Marshal(api.NodeStatus{Address: "127.0.0.1:7460", LibvirtURI: "test:///" + node, Accelerator: "test",
		HostCPUs: 8, HostMemoryBytes: 16 * gib, CPUs: 8, MemoryBytes: 16 * gib, Guests: []api.ObservedGuest{}})
	req, _ := http.NewRequest("PUT", c.Addrs[0]+"/v1/nodes/"+node+"/status", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if ver != "" {
		req.Header.Set(api.HeaderVersion, ver)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("report %s as %s: %s", node, ver, resp.Status)
	}
}

func upgradeCheck(t *testing.T, c *api.Client, to string) api.UpgradeCheck {
	t.Helper()
	var res api.UpgradeCheck
	path := "/v1/cluster/upgrade-check"
	if to != "" {
		path += "?to=" + to
	}
	if err := c.Do(context.Background(), "GET", path, nil, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

func wantReason(t *testing.T, res api.UpgradeCheck, want string) {
	t.Helper()
	if res.Ready || !slices.ContainsFunc(res.Reasons, func(r string) bool { return strings.Contains(r, want) }) {
		t.Errorf("upgrade check %+v: want not ready because %q", res, want)
	}
}

// TestUpgradeCheck: every node's version is what its agent reports in Dvm-Version,
// and the check is ready only while every node is in reach, none is draining, and
// the versions, with the one asked about, are at most one release apart.
func TestUpgradeCheck(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	for _, n := range []string{"n1", "n2", "n3"} {
		reportAs(t, c, n, version.Version)
	}
	resp, err := http.Get(c.Addrs[0] + "/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get(api.HeaderVersion); got != version.Version {
		t.Fatalf("an answer names version %q, want %q", got, version.Version)
	}
	res := upgradeCheck(t, c, "")
	if !res.Ready || res.Oldest != version.Version || res.Newest != version.Version || len(res.Nodes) != 3 || res.Nodes[0].Version != version.Version {
		t.Fatalf("a cluster of one version: %+v", res)
	}
	v, _ := version.Parse(version.Version)
	next := version.V{Major: v.Major, Minor: v.Minor + 1}.String()
	skip := version.V{Major: v.Major, Minor: v.Minor + 2}.String()
	if res := upgradeCheck(t, c, next); !res.Ready {
		t.Fatalf("to the next minor release: %+v", res)
	}
	wantReason(t, upgradeCheck(t, c, skip), "skips a minor release")
	wantReason(t, upgradeCheck(t, c, version.V{Major: 0, Minor: 0, Patch: 1}.String()), "downgrades are not supported")
	if err := c.Do(context.Background(), "GET", "/v1/cluster/upgrade-check?to=latest", nil, nil); err == nil {
		t.Fatal("--to latest accepted")
	}

	// n3 half-way: its agent runs the next release.
	reportAs(t, c, "n3", next)
	if res := upgradeCheck(t, c, next); !res.Ready || res.Newest != next || res.Oldest != version.Version {
		t.Fatalf("one node on the next release: %+v", res)
	}
	wantReason(t, upgradeCheck(t, c, skip), "skips a minor release")
	// A node whose dvmd says no version (from before versions were carried).
	reportAs(t, c, "n2", "")
	if n, _ := m.st.Node("n2"); n.Version != "" {
		t.Fatalf("n2 recorded as %q", n.Version)
	}
	wantReason(t, upgradeCheck(t, c, ""), "from before versions were carried")
	reportAs(t, c, "n2", version.Version)

	// A step under way, and a node lost.
	if err := c.Stream(context.Background(), "POST", "/v1/nodes/n1/maintenance", nil, func([]byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	wantReason(t, upgradeCheck(t, c, ""), "node n1 is draining or in maintenance")
	if err := c.Do(context.Background(), "POST", "/v1/nodes/n1/undrain", nil, nil); err != nil {
		t.Fatal(err)
	}
	m.RecoverNode("n2", "test")
	wantReason(t, upgradeCheck(t, c, ""), "node n2 is lost")
}

// TestLostGuestFoundRunningOnItsReturnedNode: a guest of policy none lost with its
// node (as when a dvmd restart outlasts the lease) is no longer lost once the node is
// taken in again and reports it running; while the node is still held lost it stays
// lost.
func TestLostGuestFoundRunningOnItsReturnedNode(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	reportAs(t, c, "n1", version.Version)
	var g api.Guest
	if err := c.Do(context.Background(), "POST", "/v1/guests", api.CreateGuest{Name: "solo", CPUs: 1, MemoryBytes: gib, Failover: api.FailoverNone}, &g); err != nil || g.Node != "n1" {
		t.Fatalf("%+v %v", g, err)
	}
	m.RecoverNode("n1", "test")
	awaitGuest(t, m.st, "solo", "lost", func(g store.GuestRecord) bool { return g.Lost })
	reportRunning(t, c, "n1", "solo")
	if g, _ := m.st.Guest("solo"); !g.Lost {
		t.Fatal("a guest of a node still held lost is no longer lost")
	}
	m.Readmit("n1")
	reportRunning(t, c, "n1", "solo")
	if g := awaitGuest(t, m.st, "solo", "no longer lost", func(g store.GuestRecord) bool { return !g.Lost }); g.Node != "n1" {
		t.Fatalf("solo %+v", g)
	}
}
