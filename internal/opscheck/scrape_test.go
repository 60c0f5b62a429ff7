package opscheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/daemon"
)

// synthetic are series Prometheus makes itself for every target, not dvmd.
var synthetic = map[string]bool{"up": true}

// TestConfigMetricsInScrape: every metric name in every dashboard query and alert rule
// is one dvmd really exports. Two real scrapes are taken: a dev cluster (cluster state,
// guests by state and policy, twins, a failed migration, libvirt errors) and a cluster
// of three real nodes (StartNode over libvirt's test driver, with raft, gossip, leases
// and the role machine) in which one node is stopped until the others declare it lost
// (roles, generation, voters, leases, fencing, lost nodes, recoveries).
func TestConfigMetricsInScrape(t *testing.T) {
	used := map[string][]string{} // metric name -> where it is used
	for where, e := range dashboardExprs(t) {
		names, err := MetricNames(e)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		if len(names) == 0 {
			t.Errorf("%s: reads no metric: %s", where, e)
		}
		for _, n := range names {
			used[n] = append(used[n], where)
		}
	}
	for _, r := range alertRules(t) {
		names, err := MetricNames(r.Expr)
		if err != nil {
			t.Fatalf("alert %s: %v", r.Alert, err)
		}
		if len(names) == 0 {
			t.Errorf("alert %s reads no metric: %s", r.Alert, r.Expr)
		}
		for _, n := range names {
			used[n] = append(used[n], "alert "+r.Alert)
		}
	}

	have := map[string]bool{}
	for n := range scrapeDev(t) {
		have[n] = true
	}
	for n := range scrapeNodes(t) {
		have[n] = true
	}
	var missing []string
	for n, where := range used {
		if !have[n] && !synthetic[n] {
			sort.Strings(where)
			missing = append(missing, fmt.Sprintf("%s (used in %s)", n, strings.Join(where, "; ")))
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("no dvmd exports %s", m)
	}
	t.Logf("%d metric names used in configs, %d of them missing from the scrapes (%d names)", len(used), len(missing), len(have))
}

// scrape returns the metric names of one /metrics, with their sample lines, as
// Prometheus scrapes it: over TLS, checking the node's certificate against caFile.
func scrape(t *testing.T, addr, caFile string) map[string][]string {
	t.Helper()
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := client.Get(addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape %s: %v %s", addr, err, resp.Status)
	}
	out := map[string][]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		name := l
		if i := strings.IndexAny(l, "{ "); i >= 0 {
			name = l[:i]
		}
		out[name] = append(out[name], l)
	}
	return out
}

// waitFor polls cond; the limit only bounds a broken run, it asserts no speed.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting after %s: %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func guestState(c *api.Client, name string) string {
	var g api.Guest
	if c.Do(context.Background(), "GET", "/v1/guests/"+name, nil, &g) != nil {
		return ""
	}
	return g.State
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// scrapeDev scrapes a dev cluster of three nodes with guests of every policy, a pending
// guest, and a live migration that fails (libvirt's test driver cannot migrate).
func scrapeDev(t *testing.T) map[string][]string {
	d, err := daemon.StartDev(context.Background(), daemon.DevOptions{Nodes: 3, Listen: "127.0.0.1:0", DataDir: t.TempDir(), Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	c, err := d.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	waitFor(t, "three dev nodes ready", 30*time.Second, func() bool {
		var ns []api.Node
		return c.Do(ctx, "GET", "/v1/nodes", nil, &ns) == nil && len(ns) == 3
	})
	for _, g := range []api.CreateGuest{
		{Name: "web", CPUs: 1, MemoryBytes: 1 << 30, Failover: api.FailoverRestart},
		{Name: "db", CPUs: 1, MemoryBytes: 1 << 30, Failover: api.FailoverTwin},
		{Name: "batch", CPUs: 1, MemoryBytes: 1 << 30, Failover: api.FailoverNone},
	} {
		if err := c.Do(ctx, "POST", "/v1/guests", g, nil); err != nil {
			t.Fatalf("create %s: %v", g.Name, err)
		}
	}
	// Too big for any node: stays pending.
	c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "huge", CPUs: 1, MemoryBytes: 1 << 40}, nil)
	waitFor(t, "web running", 30*time.Second, func() bool { return guestState(c, "web") == api.GuestRunning })
	var web api.Guest
	if err := c.Do(ctx, "GET", "/v1/guests/web", nil, &web); err != nil {
		t.Fatal(err)
	}
	to := "n1"
	if web.Node == to {
		to = "n2"
	}
	// The migration fails on the test driver: that counts it, and a libvirt error. The
	// master answers a failed migration with 502, which the client takes for "no master
	// here" and retries for RetryFor: once is enough.
	c.RetryFor = 0
	err = c.Do(ctx, "POST", "/v1/guests/web/migrate", api.MigrateRequest{Node: to}, nil)
	t.Logf("migrate web to %s on the test driver: %v", to, err)
	s := scrape(t, d.Addr, d.CAFile)
	if len(s["dvm_migrations_total"]) == 0 {
		t.Errorf("dev scrape has no dvm_migrations_total after a migration")
	}
	return s
}

// freeAddr is a loopback address with a port nothing listens on now, over TCP and UDP
// (memberlist binds both).
func freeAddr(t *testing.T) string {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			u.Close()
			return addr
		}
	}
}

// scrapeNodes runs three real management nodes over libvirt's test driver, with cluster
// credentials from internal/cluster, creates guests, stops n3 and waits until a survivor
// declared it lost. It returns the union of the survivors' scrapes.
func scrapeNodes(t *testing.T) map[string][]string {
	dir := t.TempDir()
	ca := filepath.Join(dir, "cluster")
	if err := cluster.NewCA(ca); err != nil {
		t.Fatal(err)
	}
	names := []string{"n1", "n2", "n3"}
	type addrs struct{ api, raft, gossip string }
	var as []addrs
	for range names {
		as = append(as, addrs{freeAddr(t), freeAddr(t), freeAddr(t)})
	}
	nodes := map[string]*daemon.Node{}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.Stop()
		}
	})
	token := ""
	for i, name := range names {
		nd := filepath.Join(dir, name)
		cfg := config.Defaults()
		cfg.Name, cfg.Management, cfg.Bootstrap = name, true, i == 0
		cfg.CredentialsDir = filepath.Join(nd, "credentials")
		if err := cluster.IssueTo(ca, cfg.CredentialsDir, name, []net.IP{net.ParseIP("127.0.0.1")}, nil); err != nil {
			t.Fatal(err)
		}
		uri, err := hypervisor.TestDriverURI(nd, name, hypervisor.Capacity{CPUs: 8, MemoryBytes: 32 << 30})
		if err != nil {
			t.Fatal(err)
		}
		cfg.LibvirtURI, cfg.AdvertiseLibvirtURI = uri, uri
		cfg.Listen, cfg.Advertise, cfg.RaftListen, cfg.GossipListen = as[i].api, as[i].api, as[i].raft, as[i].gossip
		cfg.DataDir, cfg.TokenFile = filepath.Join(nd, "data"), filepath.Join(nd, "data", "token")
		cfg.Labels = map[string]string{"rack": "r" + name[1:]}
		if i > 0 {
			// Joiners: the cluster's token, the first node's API and gossip.
			cfg.Master, cfg.GossipPeers = "https://"+as[0].api, []string{as[0].gossip}
			if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(cfg.TokenFile, []byte(token+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		n, err := daemon.StartNode(context.Background(), cfg, quiet().With("node", name))
		if err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		nodes[name] = n
		token = n.Token
	}
	began := time.Now()
	c, err := api.NewClient("https://"+as[0].api+",https://"+as[1].api, token)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.TrustCA(cluster.CACertPath(ca)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	waitFor(t, "three nodes ready and a master acting", time.Minute, func() bool {
		var ns []api.Node
		if c.Do(ctx, "GET", "/v1/nodes", nil, &ns) != nil || len(ns) != 3 {
			return false
		}
		for _, n := range ns {
			if n.State != api.NodeReady {
				return false
			}
		}
		return strings.Contains(strings.Join(scrape(t, nodes["n1"].Addr, nodes["n1"].CAFile)["dvm_master_acting"], "\n"), " 1")
	})
	for i := 0; i < 3; i++ {
		g := api.CreateGuest{Name: fmt.Sprintf("g%d", i), CPUs: 1, MemoryBytes: 1 << 30, Failover: api.FailoverRestart}
		if err := c.Do(ctx, "POST", "/v1/guests", g, nil); err != nil {
			t.Fatalf("create %s: %v", g.Name, err)
		}
	}
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("g%d", i)
		waitFor(t, name+" running", time.Minute, func() bool { return guestState(c, name) == api.GuestRunning })
	}

	t.Logf("three nodes ready, guests running after %.1fs", time.Since(began).Seconds())
	stopped := time.Now()
	nodes["n3"].Stop()
	delete(nodes, "n3")
	all := map[string][]string{}
	waitFor(t, "n3 declared lost by a survivor", 2*time.Minute, func() bool {
		for _, n := range []string{"n1", "n2"} {
			for name, lines := range scrape(t, nodes[n].Addr, nodes[n].CAFile) {
				all[name] = append(all[name], lines...)
			}
		}
		return strings.Contains(strings.Join(all["dvm_node_lost_seconds"], "\n"), `node="n3"`)
	})
	t.Logf("n3 declared lost %.1fs after it stopped", time.Since(stopped).Seconds())
	removeLostNode(t, c)
	return all
}

// removeLostNode: an operator removes n3, which is gone for good, once its guests were
// recovered; removing n2, which is up, is refused and changes nothing.
func removeLostNode(t *testing.T, c *api.Client) {
	ctx := context.Background()
	var se *api.StatusError
	if err := c.Do(ctx, "DELETE", "/v1/nodes/n2", nil, nil); !errors.As(err, &se) || se.Code != http.StatusConflict || !strings.Contains(err.Error(), "not lost") {
		t.Fatalf("removing n2, which is up: %v; want 409 saying it is not lost", err)
	}
	waitFor(t, "n3's guests recovered elsewhere", time.Minute, func() bool {
		var gs []api.Guest
		if c.Do(ctx, "GET", "/v1/guests", nil, &gs) != nil {
			return false
		}
		for _, g := range gs {
			if g.Node == "n3" {
				return false
			}
		}
		return true
	})
	// With n3 gone, two of the three management nodes hold the state: a client write
	// is applied but not acknowledged, since the loss of both could take it away.
	late := api.CreateGuest{Name: "late", CPUs: 1, MemoryBytes: 1 << 30, Failover: api.FailoverRestart}
	if err := c.Do(ctx, "POST", "/v1/guests", late, nil); !errors.As(err, &se) || se.Code != http.StatusGatewayTimeout ||
		!strings.Contains(err.Error(), "not yet on enough management nodes") {
		t.Fatalf("a create with two of three management nodes: %v; want 504 saying it is not on enough of them", err)
	}
	if err := c.Do(ctx, "DELETE", "/v1/guests/late", nil, nil); err != nil && !errors.As(err, &se) {
		t.Fatalf("delete the unacknowledged guest: %v", err)
	}
	waitFor(t, "n3 removed", time.Minute, func() bool { return c.Do(ctx, "DELETE", "/v1/nodes/n3", nil, nil) == nil })
	// Two management-capable nodes left: a write is acknowledged on both.
	late.Name = "after-removal"
	waitFor(t, "a create acknowledged on the two nodes left", time.Minute, func() bool { return c.Do(ctx, "POST", "/v1/guests", late, nil) == nil })
	var ns []api.Node
	if err := c.Do(ctx, "GET", "/v1/nodes", nil, &ns); err != nil || len(ns) != 2 {
		t.Fatalf("nodes after removing n3: %v, %v", ns, err)
	}
	var st api.ClusterStatus
	waitFor(t, "n3 out of the role table", time.Minute, func() bool {
		if c.Do(ctx, "GET", "/v1/cluster", nil, &st) != nil {
			return false
		}
		for _, n := range st.Nodes {
			if n.Name == "n3" {
				return false
			}
		}
		return !slices.Contains(st.Voters, "n3")
	})
}
