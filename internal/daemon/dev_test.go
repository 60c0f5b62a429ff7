package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"libvirt.org/go/libvirtxml"
)

func startDev(t *testing.T, dir string, nodes int) (*Dev, *api.Client) {
	t.Helper()
	return startDevWith(t, DevOptions{Nodes: nodes, DataDir: dir})
}

// startDevWith starts a dev cluster as o says, on a free port and with its log
// discarded, and waits until its nodes are ready.
func startDevWith(t *testing.T, o DevOptions) (*Dev, *api.Client) {
	t.Helper()
	nodes := o.Nodes
	o.Listen, o.Log = "127.0.0.1:0", slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := StartDev(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	c, err := d.Client()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all nodes ready", func() bool {
		var ns []api.Node
		if c.Do(context.Background(), "GET", "/v1/nodes", nil, &ns) != nil || len(ns) != nodes {
			return false
		}
		for _, n := range ns {
			if n.State != api.NodeReady {
				return false
			}
		}
		return true
	})
	return d, c
}

// waitFor polls cond; the deadline only bounds a broken run, it asserts no speed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func guest(t *testing.T, c *api.Client, name string) api.Guest {
	t.Helper()
	var g api.Guest
	if err := c.Do(context.Background(), "GET", "/v1/guests/"+name, nil, &g); err != nil {
		t.Fatal(err)
	}
	return g
}

func nodeNamed(d *Dev, name string) *hypervisor.Node {
	for i, n := range d.Nodes {
		if name == "n"+string(rune('1'+i)) {
			return n
		}
	}
	return nil
}

func TestDevClusterGuestLifecycle(t *testing.T) {
	d, c := startDev(t, t.TempDir(), 3)
	ctx := context.Background()
	var g api.Guest
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "web", CPUs: 2, MemoryBytes: 2 << 30}, &g); err != nil {
		t.Fatal(err)
	}
	if g.Node == "" || g.OS != "dragonfly" || g.Failover != api.FailoverRestart || g.DiskBytes != api.DefaultDisk {
		t.Fatalf("created %+v", g)
	}
	waitFor(t, "web running", func() bool { return guest(t, c, "web").State == api.GuestRunning })

	// The domain exists on the chosen node, and only there, with the right definition.
	for i, n := range d.Nodes {
		name := []string{"n1", "n2", "n3"}[i]
		st, err := n.State("web")
		if name == g.Node {
			if err != nil || st != hypervisor.StateRunning {
				t.Fatalf("on %s: %s %v", name, st, err)
			}
			x, err := n.DomainXML("web")
			if err != nil {
				t.Fatal(err)
			}
			var dom libvirtxml.Domain
			if err := dom.Unmarshal(x); err != nil {
				t.Fatal(err)
			}
			if dom.VCPU.Value != 2 || dom.UUID != g.UUID || len(dom.Devices.Disks) != 1 || dom.Devices.Disks[0].Target.Bus != "virtio" {
				t.Fatalf("definition on %s: vcpu %d uuid %s disks %+v", name, dom.VCPU.Value, dom.UUID, dom.Devices.Disks)
			}
			if m, ok := hypervisor.ParseMetadata(dom.Metadata.XML); !ok || m.OS != "dragonfly" {
				t.Fatalf("metadata %q", dom.Metadata.XML)
			}
		} else if !errors.Is(err, hypervisor.ErrNotFound) {
			t.Fatalf("guest web also on %s: %s %v", name, st, err)
		}
	}

	if err := c.Do(ctx, "POST", "/v1/guests/web/stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web stopped", func() bool { return guest(t, c, "web").State == api.GuestStopped })
	if err := c.Do(ctx, "POST", "/v1/guests/web/start", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web running again", func() bool { return guest(t, c, "web").State == api.GuestRunning })

	// A guest killed behind dvm's back while wanted running is started again.
	if err := nodeNamed(d, g.Node).Destroy("web"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web restarted by its agent", func() bool {
		st, _ := nodeNamed(d, g.Node).State("web")
		return st == hypervisor.StateRunning
	})

	if err := c.Do(ctx, "DELETE", "/v1/guests/web", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web gone", func() bool {
		var se *api.StatusError
		err := c.Do(ctx, "GET", "/v1/guests/web", nil, nil)
		return errors.As(err, &se) && se.Code == 404
	})
	if _, err := nodeNamed(d, g.Node).State("web"); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("domain still on %s after delete: %v", g.Node, err)
	}
}

func TestDevClusterSpreadsAndReportsPending(t *testing.T) {
	_, c := startDev(t, t.TempDir(), 3)
	ctx := context.Background()
	// Spread: six 30GiB guests use all three nodes (pack would fill the tightest node
	// first and leave the largest empty).
	used := map[string]int{}
	for _, name := range []string{"a", "b", "c", "d", "e", "f"} {
		var g api.Guest
		if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: name, CPUs: 1, MemoryBytes: 30 << 30}, &g); err != nil {
			t.Fatal(err)
		}
		used[g.Node]++
	}
	if len(used) != 3 {
		t.Fatalf("six 30GiB guests used nodes %v: spread should use all three", used)
	}
	var g api.Guest
	err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "huge", CPUs: 1, MemoryBytes: 1 << 40}, &g)
	if err != nil || g.State != api.GuestPending || !strings.Contains(g.PendingReason, "not enough memory") {
		t.Fatalf("huge: %+v %v", g, err)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	d, c := startDev(t, dir, 2)
	ctx := context.Background()
	for _, name := range []string{"keep1", "keep2"} {
		if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: name, CPUs: 1, MemoryBytes: 1 << 30}, nil); err != nil {
			t.Fatal(err)
		}
	}
	f := false
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "idle", CPUs: 1, MemoryBytes: 1 << 30, Start: &f}, nil); err != nil {
		t.Fatal(err)
	}
	before := map[string]api.Guest{}
	for _, name := range []string{"keep1", "keep2", "idle"} {
		before[name] = guest(t, c, name)
	}
	token := d.Token
	d.Stop()

	d2, c2 := startDev(t, dir, 2)
	if d2.Token != token {
		t.Fatal("token changed across a restart")
	}
	for name, b := range before {
		want := api.GuestRunning
		if name == "idle" {
			want = api.GuestStopped
		}
		waitFor(t, name+" back as "+want, func() bool { return guest(t, c2, name).State == want })
		a := guest(t, c2, name)
		if a.UUID != b.UUID || a.Node != b.Node || a.MemoryBytes != b.MemoryBytes {
			t.Fatalf("%s changed across restart: %+v -> %+v", name, b, a)
		}
	}
}

func TestAPIRefusesBadInputAndChangesNothing(t *testing.T) {
	d, c := startDev(t, t.TempDir(), 1)
	ctx := context.Background()
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "ok", CPUs: 1, MemoryBytes: 1 << 30}, nil); err != nil {
		t.Fatal(err)
	}
	var before []api.Guest
	c.Do(ctx, "GET", "/v1/guests", nil, &before)

	post := func(token, body string) (int, api.Error) {
		req, _ := http.NewRequest("POST", d.Addr+"/v1/guests", strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := httpsClient(t, d.CAFile).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e api.Error
		b, _ := io.ReadAll(resp.Body)
		_ = json.Unmarshal(b, &e)
		return resp.StatusCode, e
	}
	good := `{"name":"new","cpus":1,"memory_bytes":1073741824}`
	if code, _ := post("", good); code != 401 {
		t.Fatalf("no token: %d, want 401", code)
	}
	if code, _ := post(strings.Repeat("x", 64), good); code != 401 {
		t.Fatalf("wrong token: %d, want 401", code)
	}
	cases := []struct{ body, field string }{
		{`{"name":"Bad_Name","cpus":1,"memory_bytes":1073741824}`, "name"},
		{`{"name":"","cpus":1,"memory_bytes":1073741824}`, "name"},
		{`{"name":"x","cpus":0,"memory_bytes":1073741824}`, "cpus"},
		{`{"name":"x","cpus":1000,"memory_bytes":1073741824}`, "cpus"},
		{`{"name":"x","cpus":1,"memory_bytes":1000}`, "memory_bytes"},
		{`{"name":"x","cpus":1,"memory_bytes":1073741825}`, "memory_bytes"},
		{`{"name":"x","cpus":1,"memory_bytes":1073741824,"os":"windows"}`, "os"},
		{`{"name":"x","cpus":1,"memory_bytes":1073741824,"failover":"sometimes"}`, "failover"},
		{`{"name":"x","cpus":1,"memory_bytes":1073741824,"disk_bytes":-5}`, "disk_bytes"},
		{`{"name":"x","cpus":1,"memory_bytes":1073741824,"image":"../etc"}`, "image"},
		{`{"name":"x","cpus":1,"memory_bytes":1073741824,"constraints":{"rack":"a b"}}`, "constraints"},
		{`{"name":"x","cpus":"two","memory_bytes":1073741824}`, "cpus"},
		{`{"name":"x","cpus":1,"memory_bytes":1073741824,"colour":"blue"}`, "colour"},
		{`{"name":"x"`, "body"},
		{``, "body"},
		{`{"name":"x","cpus":1,"memory_bytes":1073741824} {}`, "body"},
		{`{"name":"` + strings.Repeat("a", 70000) + `"}`, "body"},
		{`{"name":"ok","cpus":1,"memory_bytes":1073741824}`, ""}, // exists: 409
	}
	for _, tc := range cases {
		code, e := post(d.Token, tc.body)
		want := 400
		if tc.field == "" {
			want = 409
		}
		if code != want || e.Field != tc.field || e.Error == "" {
			b := tc.body
			if len(b) > 80 {
				b = b[:80]
			}
			t.Errorf("body %s: %d field %q (%s); want %d field %q", b, code, e.Field, e.Error, want, tc.field)
		}
	}
	var after []api.Guest
	c.Do(ctx, "GET", "/v1/guests", nil, &after)
	if len(after) != len(before) {
		t.Fatalf("bad requests changed the guests: %d before, %d after", len(before), len(after))
	}
	// Reads need the token too; health and metrics do not.
	for path, want := range map[string]int{"/v1/guests": 401, "/v1/nodes": 401, "/v1/health": 200, "/metrics": 200, "/v1/nope": 401} {
		resp, err := httpsClient(t, d.CAFile).Get(d.Addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s without token: %d, want %d", path, resp.StatusCode, want)
		}
	}
	// Unknown guests are 404, migration to an unknown node is refused.
	var se *api.StatusError
	if err := c.Do(ctx, "POST", "/v1/guests/ghost/start", nil, nil); !errors.As(err, &se) || se.Code != 404 {
		t.Errorf("start ghost: %v", err)
	}
	if err := c.Do(ctx, "POST", "/v1/guests/ok/migrate", api.MigrateRequest{Node: "n9"}, nil); !errors.As(err, &se) || se.Code != 404 {
		t.Errorf("migrate to unknown node: %v", err)
	}
	if err := c.Do(ctx, "POST", "/v1/guests/ok/migrate", api.MigrateRequest{Node: "n1"}, nil); !errors.As(err, &se) || se.Code != 400 {
		t.Errorf("migrate to own node: %v", err)
	}
}

// httpsClient is an HTTP client that trusts the CA in caFile, for requests the API
// client does not make (bodies as sent, no token).
func httpsClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	b, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("%s holds no certificate", caFile)
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}
