package daemon

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/master"
)

// TestAPISpeaksTLSOnly: a dev cluster's API speaks TLS with a certificate of its own
// CA, which its env file names; a client without that CA is refused at once with what
// to do, plain HTTP is told to use https, and the CA makes it work.
func TestAPISpeaksTLSOnly(t *testing.T) {
	dir := t.TempDir()
	d, c := startDev(t, dir, 1)
	if !strings.HasPrefix(d.Addr, "https://127.0.0.1:") {
		t.Fatalf("dev API at %s", d.Addr)
	}
	env, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "DVM_ADDR=" + d.Addr + "\nDVM_TOKEN=" + d.Token + "\nDVM_CA=" + d.CAFile + "\n"; string(env) != want {
		t.Fatalf("env file:\n%s\nwant:\n%s", env, want)
	}
	ctx := context.Background()
	bare, _ := api.NewClient(d.Addr, d.Token)
	var unanswered *api.NoAnswerError
	if err := bare.Do(ctx, "GET", "/v1/nodes", nil, nil); err == nil || errors.As(err, &unanswered) || !strings.Contains(err.Error(), "DVM_CA") {
		t.Fatalf("without the cluster's CA: %v; want a refusal naming DVM_CA", err)
	}
	plain, _ := api.NewClient("http://"+strings.TrimPrefix(d.Addr, "https://"), d.Token)
	if err := plain.RequireTLS(); err == nil {
		t.Fatal("vmctl's check let a plain-HTTP address through")
	}
	if err := plain.Do(ctx, "GET", "/v1/nodes", nil, nil); err == nil || !strings.Contains(err.Error(), "speaks TLS: use "+d.Addr) {
		t.Fatalf("plain HTTP: %v", err)
	}
	if err := c.Do(ctx, "GET", "/v1/nodes", nil, nil); err != nil {
		t.Fatalf("with the CA: %v", err)
	}
	// A restart keeps the CA the env file names, and the token.
	ca, _ := os.ReadFile(d.CAFile)
	d.Stop()
	d2, _ := startDev(t, dir, 1)
	if ca2, _ := os.ReadFile(d2.CAFile); string(ca2) != string(ca) || d2.Token != d.Token {
		t.Fatal("the dev cluster's CA or token changed across a restart")
	}
}

// newToken makes a token with the dev cluster's bootstrap (admin) token and returns a
// client that uses it.
func newToken(t *testing.T, d *Dev, admin *api.Client, name, scope string) *api.Client {
	t.Helper()
	var tc api.TokenCreated
	if err := admin.Do(context.Background(), "POST", "/v1/tokens", api.CreateToken{Name: name, Scope: scope}, &tc); err != nil {
		t.Fatalf("create token %s: %v", name, err)
	}
	c, err := api.NewClient(d.Addr, tc.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.TrustCA(d.CAFile); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestReadTokenRefusedWriteChangesNothing: over the real API, a read token lists
// guests and is refused every write with 403; guests, networks, tokens and events stay
// as they were.
func TestReadTokenRefusedWriteChangesNothing(t *testing.T) {
	d, admin := startDev(t, t.TempDir(), 2)
	ctx := context.Background()
	if err := admin.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "web", CPUs: 1, MemoryBytes: 1 << 30}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web running", func() bool { return guest(t, admin, "web").State == api.GuestRunning })
	reader := newToken(t, d, admin, "viewer", api.ScopeRead)
	type view struct {
		guests []api.Guest
		nets   []api.Network
		tokens []api.Token
		events []api.Event
	}
	look := func() view {
		var v view
		for path, out := range map[string]any{"/v1/guests": &v.guests, "/v1/networks": &v.nets, "/v1/tokens": &v.tokens, "/v1/events": &v.events} {
			if err := admin.Do(ctx, "GET", path, nil, out); err != nil {
				t.Fatal(err)
			}
		}
		return v
	}
	var gs []api.Guest
	if err := reader.Do(ctx, "GET", "/v1/guests", nil, &gs); err != nil || len(gs) != 1 {
		t.Fatalf("a read token lists guests: %v, %v", gs, err)
	}
	before := look()
	for _, w := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/v1/guests", api.CreateGuest{Name: "db", CPUs: 1, MemoryBytes: 1 << 30}},
		{"POST", "/v1/guests/web/stop", nil},
		{"DELETE", "/v1/guests/web", nil},
		{"POST", "/v1/guests/web/migrate", api.MigrateRequest{Node: "n2"}},
		{"POST", "/v1/networks", api.CreateNetwork{Name: "blue", VNI: 7, CIDR: "10.7.0.0/24"}},
		{"POST", "/v1/nodes/n1/drain", nil},
		{"POST", "/v1/tokens", api.CreateToken{Name: "mine", Scope: api.ScopeAdmin}},
		{"DELETE", "/v1/tokens/viewer", nil},
	} {
		err := reader.Do(ctx, w.method, w.path, w.body, nil)
		var se *api.StatusError
		if !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(se.Msg, "scope read") {
			t.Errorf("read token: %s %s: %v, want 403", w.method, w.path, err)
		}
	}
	after := look()
	if len(after.guests) != 1 || after.guests[0].Desired != api.GuestRunning || after.guests[0].Node != before.guests[0].Node ||
		len(after.nets) != len(before.nets) || len(after.tokens) != len(before.tokens) || len(after.events) != len(before.events) {
		t.Fatalf("refused writes changed the cluster:\nbefore %+v\nafter  %+v", before, after)
	}
}

// TestEveryWriteIsAnEventNamingItsToken: on a dev cluster, each kind of write an
// operator does is an event of kind write that names the operator's token, which
// `vmctl events` shows.
func TestEveryWriteIsAnEventNamingItsToken(t *testing.T) {
	d, admin := startDev(t, t.TempDir(), 2)
	ctx := context.Background()
	ops := newToken(t, d, admin, "ops", api.ScopeOperator)
	var last []api.Event
	admin.Do(ctx, "GET", "/v1/events", nil, &last)
	seq := last[len(last)-1].Seq
	writes := []struct {
		method, path string
		body         any
	}{
		{"POST", "/v1/networks", api.CreateNetwork{Name: "blue", VNI: 7, CIDR: "10.7.0.0/24"}},
		{"POST", "/v1/guests", api.CreateGuest{Name: "web", CPUs: 1, MemoryBytes: 1 << 30, Networks: []string{"blue"}}},
		{"POST", "/v1/guests/web/stop", nil},
		{"POST", "/v1/guests/web/start", nil},
		{"POST", "/v1/nodes/n1/maintenance", nil},
		{"POST", "/v1/nodes/n1/undrain", nil},
		{"POST", "/v1/nodes/n2/drain", nil},
		{"POST", "/v1/nodes/n2/undrain", nil},
		{"DELETE", "/v1/guests/web", nil},
	}
	for _, w := range writes {
		switch w.path {
		case "/v1/guests/web/stop":
			waitFor(t, "web running", func() bool { return guest(t, ops, "web").State == api.GuestRunning })
		case "/v1/guests/web/start":
			waitFor(t, "web stopped", func() bool { return guest(t, ops, "web").State == api.GuestStopped })
		}
		var err error
		if strings.HasSuffix(w.path, "/drain") || strings.HasSuffix(w.path, "/maintenance") {
			err = ops.Stream(ctx, w.method, w.path, nil, func([]byte) error { return nil })
		} else {
			err = ops.Do(ctx, w.method, w.path, w.body, nil)
		}
		if err != nil {
			t.Fatalf("%s %s: %v", w.method, w.path, err)
		}
	}
	waitFor(t, "web deleted", func() bool { return ops.Do(ctx, "GET", "/v1/guests/web", nil, nil) != nil })
	if err := admin.Do(ctx, "DELETE", "/v1/networks/blue", nil, nil); err != nil {
		t.Fatal(err)
	}

	var evs []api.Event
	if err := ops.Do(ctx, "GET", "/v1/events?after="+strconv.FormatUint(seq, 10), nil, &evs); err != nil {
		t.Fatal(err)
	}
	var got []api.Event
	for _, e := range evs {
		if e.Kind == master.EventWrite {
			got = append(got, e)
		}
	}
	if len(got) != len(writes)+1 {
		t.Fatalf("%d write events for %d writes: %+v", len(got), len(writes)+1, got)
	}
	for i, w := range writes {
		if e := got[i]; e.Token != "ops" || !strings.HasPrefix(e.Detail, w.method+" "+w.path+" (") {
			t.Errorf("write %d, %s %s: event %+v", i, w.method, w.path, e)
		}
	}
	if e := got[len(writes)]; e.Token != api.BootstrapToken || e.Detail != "DELETE /v1/networks/blue (204)" {
		t.Errorf("the admin's write: %+v", e)
	}
	if g := got[1]; g.Guest != "web" {
		t.Errorf("the create's event does not name its guest: %+v", g)
	}
	if n := got[4]; n.Node != "n1" {
		t.Errorf("the maintenance's event does not name its node: %+v", n)
	}
}

// testNode is a node's config on loopback over libvirt's test driver, with its
// credentials in credsDir.
func testNode(t *testing.T, dir, name, credsDir string) config.Node {
	t.Helper()
	uri, err := hypervisor.TestDriverURI(dir, name, hypervisor.Capacity{CPUs: 8, MemoryBytes: 16 << 30})
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.Name, cfg.LibvirtURI, cfg.AdvertiseLibvirtURI, cfg.CredentialsDir = name, uri, uri, credsDir
	cfg.Listen, cfg.Advertise, cfg.RaftListen, cfg.GossipListen, cfg.AgentListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir, cfg.TokenFile = filepath.Join(dir, name, "data"), filepath.Join(dir, name, "data", "token")
	return cfg
}

// startFirstNode starts node name, on the test driver with its credentials in
// credsDir, as the management node that forms the cluster, and returns it with a
// client of its admin token. It stops when the test ends.
func startFirstNode(t *testing.T, dir, name, credsDir string) (*Node, *api.Client) {
	t.Helper()
	cfg := testNode(t, dir, name, credsDir)
	cfg.Management, cfg.Bootstrap = true, true
	n, err := StartNode(context.Background(), cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	admin, err := n.Client()
	if err != nil {
		t.Fatal(err)
	}
	return n, admin
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestHostJoinsWithJoinToken: a management node holding the cluster's CA key lets a new
// host join with a join token: dvmd join writes its config and credentials (its key
// made on the host), and the host, started from them, registers, gossips and is ready.
// Without a valid join token — none, another cluster's, a wrong secret, another
// token's scope, a revoked one — or under a name in use, the host is refused with
// what was wrong and nothing is written.
func TestHostJoinsWithJoinToken(t *testing.T) {
	dir := t.TempDir()
	clusterDir := filepath.Join(dir, "cluster")
	if err := cluster.NewCA(clusterDir); err != nil {
		t.Fatal(err)
	}
	// n1's credentials directory is the cluster's own: it holds ca.key.
	if err := cluster.Issue(clusterDir, "n1", []net.IP{net.ParseIP("127.0.0.1")}, nil); err != nil {
		t.Fatal(err)
	}
	n1, admin := startFirstNode(t, dir, "n1", clusterDir)
	ctx := context.Background()
	waitFor(t, "n1 ready", func() bool {
		var ns []api.Node
		return admin.Do(ctx, "GET", "/v1/nodes", nil, &ns) == nil && len(ns) == 1 && ns[0].State == api.NodeReady
	})
	token := func(name, scope string) string {
		var tc api.TokenCreated
		if err := admin.Do(ctx, "POST", "/v1/tokens", api.CreateToken{Name: name, Scope: scope}, &tc); err != nil {
			t.Fatalf("token %s: %v", name, err)
		}
		return tc.Secret
	}
	good := token("rack2", api.ScopeJoin)
	jt, _ := api.ParseJoinToken(good)
	if len(jt.Masters) != 1 || jt.Masters[0] != n1.Addr {
		t.Fatalf("the join token names %v, want n1's API %s", jt.Masters, n1.Addr)
	}

	host := filepath.Join(dir, "n2-host")
	opts := func(tok string) JoinOptions {
		return JoinOptions{Token: tok, Name: "n2", IPs: []net.IP{net.ParseIP("127.0.0.1")},
			ConfigFile: filepath.Join(host, "etc", "dvmd.conf"), CredentialsDir: filepath.Join(host, "etc", "credentials"),
			DataDir: filepath.Join(host, "data")}
	}
	revoked := token("old", api.ScopeJoin)
	if err := admin.Do(ctx, "DELETE", "/v1/tokens/old", nil, nil); err != nil {
		t.Fatal(err)
	}
	wrongSecret := jt
	wrongSecret.Secret = strings.Repeat("ab", 32)
	asOperator := jt
	asOperator.Secret = token("ops", api.ScopeOperator)
	otherCluster := jt
	otherCluster.CA[0] ^= 1
	taken := opts(good)
	taken.Name = "n1"
	for _, tc := range []struct {
		what string
		o    JoinOptions
		want string
	}{
		{"no token", opts(""), "not a join token"},
		{"an API token, not a join token", opts(asOperator.Secret), "not a join token"},
		{"a wrong secret", opts(wrongSecret.String()), "unknown token"},
		{"an operator token's secret", opts(asOperator.String()), "needs join"},
		{"a revoked join token", opts(revoked), `token "old" was revoked`},
		{"another cluster's join token", opts(otherCluster.String()), "neither the CA the join token names"},
		{"a name in use", taken, `node "n1" conflict`},
	} {
		_, err := Join(ctx, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.what, err, tc.want)
		}
		if _, err := os.Stat(host); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s: something was written in %s", tc.what, host)
		}
	}

	joined, err := Join(ctx, opts(good))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Join(ctx, opts(good)); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("joining again over the written config: %v", err)
	}
	cfg2, err := config.Load(joined.ConfigFile)
	if err != nil {
		t.Fatalf("the config dvmd join wrote: %v", err)
	}
	if cfg2.Name != "n2" || cfg2.Management || cfg2.Master != n1.Addr || cfg2.CredentialsDir != joined.CredentialsDir || cfg2.Listen != "127.0.0.1:7460" {
		t.Fatalf("joined config %+v", cfg2)
	}
	// On loopback beside n1: ports of its own, the test driver, n1's gossip.
	run := testNode(t, dir, "n2", cfg2.CredentialsDir)
	run.Master, run.DataDir, run.TokenFile = cfg2.Master, cfg2.DataDir, cfg2.TokenFile
	run.GossipPeers, run.AgentListen = []string{n1.members.Addr()}, n1.AgentAddr
	n2, err := StartNode(ctx, run, quietLog())
	if err != nil {
		t.Fatalf("start the joined host: %v", err)
	}
	defer n2.Stop()
	if n2.Token != "" {
		t.Fatal("the joined host has a token: it needs none")
	}
	waitFor(t, "n2 registered and ready, by its certificate alone", func() bool {
		var ns []api.Node
		return admin.Do(ctx, "GET", "/v1/nodes", nil, &ns) == nil && len(ns) == 2 && ns[1].Name == "n2" && ns[1].State == api.NodeReady
	})
	waitFor(t, "n1 gossips with n2", func() bool { return slices.Contains(n1.members.Alive(), "n2") })
	var evs []api.Event
	admin.Do(ctx, "GET", "/v1/events", nil, &evs)
	found := false
	for _, e := range evs {
		found = found || (e.Kind == master.EventWrite && e.Token == "rack2" && e.Node == "n2" && strings.HasPrefix(e.Detail, "POST /v1/cluster/credentials (200)"))
	}
	if !found {
		t.Errorf("no event of n2's join naming the join token: %+v", evs)
	}
}

// TestOperatorCertificate: with api_tls_cert and api_tls_key the API shows the
// operator's certificate: a client trusting the operator's CA is served, one trusting
// only the cluster's CA is refused. Bad files stop the node with what is wrong.
func TestOperatorCertificate(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "cluster")
	other := filepath.Join(dir, "operator")
	for _, d := range []string{creds, other} {
		if err := cluster.NewCA(d); err != nil {
			t.Fatal(err)
		}
		if err := cluster.Issue(d, "n1", []net.IP{net.ParseIP("127.0.0.1")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testNode(t, dir, "n1", creds)
	cfg.Management, cfg.Bootstrap = true, true
	// The operator's certificate: from a CA the cluster does not know.
	cfg.APITLSCert, cfg.APITLSKey = filepath.Join(other, cluster.NodeCertFile("n1")), filepath.Join(other, cluster.NodeKeyFile("n1"))

	bad := cfg
	bad.APITLSKey = filepath.Join(creds, cluster.NodeKeyFile("n1")) // the cluster's key, not the certificate's
	if _, err := StartNode(context.Background(), bad, quietLog()); err == nil || !strings.Contains(err.Error(), "api_tls_cert, api_tls_key") {
		t.Fatalf("a key that does not match: %v", err)
	}
	n, err := StartNode(context.Background(), cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop()
	ctx := context.Background()
	cc, _ := n.Client()
	if err := cc.Do(ctx, "GET", "/v1/nodes", nil, nil); err == nil || !strings.Contains(err.Error(), "DVM_CA") {
		t.Fatalf("a client trusting only the cluster's CA: %v; want the operator's certificate refused", err)
	}
	c, _ := api.NewClient(n.Addr, n.Token)
	if err := c.TrustCA(cluster.CACertPath(other)); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, "GET", "/v1/nodes", nil, nil); err != nil {
		t.Fatalf("a client trusting the operator's CA: %v", err)
	}
}
