package master

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/metrics"
	"github.com/dvmproject/dvm/internal/store"
)

// as is a client of the test master's API with another token.
func as(t *testing.T, c *api.Client, secret string) *api.Client {
	t.Helper()
	other, err := api.NewClient(strings.Join(c.Addrs, ","), secret)
	if err != nil {
		t.Fatal(err)
	}
	return other
}

func mustToken(t *testing.T, c *api.Client, name, scope string) string {
	t.Helper()
	var tc api.TokenCreated
	if err := c.Do(context.Background(), "POST", "/v1/tokens", api.CreateToken{Name: name, Scope: scope}, &tc); err != nil {
		t.Fatalf("create token %s: %v", name, err)
	}
	if tc.Name != name || tc.Scope != scope || tc.State != api.TokenActive || len(tc.Secret) != 64 {
		t.Fatalf("created %+v", tc)
	}
	return tc.Secret
}

func wantStatus(t *testing.T, what string, err error, code int, text string) {
	t.Helper()
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != code || !strings.Contains(se.Msg, text) {
		t.Errorf("%s: %v; want %d saying %q", what, err, code, text)
	}
}

// TestScopes: a read token reads and is refused every write (403, nothing changed); an
// operator token does guest, network and node work but no token management and none of
// the agents' endpoints; admin does all; a join token nothing but a joining host's
// credentials.
func TestScopes(t *testing.T) {
	m, admin := newTestMaster(t)
	ctx := context.Background()
	reader := as(t, admin, mustToken(t, admin, "viewer", api.ScopeRead))
	ops := as(t, admin, mustToken(t, admin, "ops", api.ScopeOperator))

	var nets []api.Network
	if err := reader.Do(ctx, "GET", "/v1/networks", nil, &nets); err != nil {
		t.Fatalf("a read token reads: %v", err)
	}
	before, events := m.st.Index(), len(m.st.Events(0))
	for _, w := range []struct{ method, path string }{
		{"POST", "/v1/networks"}, {"DELETE", "/v1/networks/blue"}, {"POST", "/v1/guests"}, {"POST", "/v1/guests/web/stop"},
		{"POST", "/v1/nodes/n1/drain"}, {"DELETE", "/v1/nodes/n1"}, {"POST", "/v1/tokens"}, {"GET", "/v1/tokens"},
		{"PUT", "/v1/nodes/n1/status"},
	} {
		err := reader.Do(ctx, w.method, w.path, api.CreateNetwork{Name: "blue", VNI: 7, CIDR: "10.7.0.0/24"}, nil)
		wantStatus(t, "read token: "+w.method+" "+w.path, err, http.StatusForbidden, `token "viewer" has scope read`)
	}
	if m.st.Index() != before || len(m.st.Events(0)) != events {
		t.Fatal("refused writes changed the state")
	}

	if err := ops.Do(ctx, "POST", "/v1/networks", api.CreateNetwork{Name: "blue", VNI: 7, CIDR: "10.7.0.0/24"}, nil); err != nil {
		t.Fatalf("an operator token creates a network: %v", err)
	}
	wantStatus(t, "operator lists tokens", ops.Do(ctx, "GET", "/v1/tokens", nil, nil), http.StatusForbidden, "needs admin")
	wantStatus(t, "operator makes a token", ops.Do(ctx, "POST", "/v1/tokens", api.CreateToken{Name: "x", Scope: "read"}, nil), http.StatusForbidden, "needs admin")
	wantStatus(t, "operator reports a node's status", ops.Do(ctx, "PUT", "/v1/nodes/n1/status", api.NodeStatus{}, nil), http.StatusForbidden, "needs admin")

	var list []api.Token
	if err := admin.Do(ctx, "GET", "/v1/tokens", nil, &list); err != nil || len(list) != 2 {
		t.Fatalf("admin lists tokens: %+v, %v", list, err)
	}

	// A join token needs a master that can sign certificates.
	wantStatus(t, "join token without the CA key", admin.Do(ctx, "POST", "/v1/tokens", api.CreateToken{Name: "rack4", Scope: api.ScopeJoin}, nil),
		http.StatusConflict, "holds no ca.key")
	if _, ok := m.st.Token("rack4"); ok {
		t.Fatal("a refused join token was recorded")
	}
	dir := t.TempDir()
	if err := cluster.NewCA(dir); err != nil {
		t.Fatal(err)
	}
	iss, err := cluster.LoadIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	m.SetIssuer(iss)
	var jt api.TokenCreated
	if err := admin.Do(ctx, "POST", "/v1/tokens", api.CreateToken{Name: "rack4", Scope: api.ScopeJoin}, &jt); err != nil {
		t.Fatal(err)
	}
	parsed, err := api.ParseJoinToken(jt.Secret)
	if err != nil || parsed.CA != iss.CAHash() || len(parsed.Masters) != 1 {
		t.Fatalf("join token %q: %+v, %v", jt.Secret, parsed, err)
	}
	if d := time.Until(jt.ExpiresAt); d < api.DefaultJoinTTL-time.Minute || d > api.DefaultJoinTTL {
		t.Errorf("a join token without --ttl expires in %s", d)
	}
	joiner := as(t, admin, parsed.Secret)
	wantStatus(t, "join token reads guests", joiner.Do(ctx, "GET", "/v1/guests", nil, nil), http.StatusForbidden, "needs read")
	_, csr, _ := cluster.NodeRequest("n4")
	var creds api.HostCredentials
	if err := joiner.Do(ctx, "POST", "/v1/cluster/credentials", api.HostJoinRequest{Name: "n4", CSR: string(csr), IPs: []string{"10.0.0.14"}}, &creds); err != nil {
		t.Fatalf("join token fetches a host's credentials: %v", err)
	}
	if creds.CACert == "" || creds.Certificate == "" || creds.GossipKey == "" {
		t.Fatalf("credentials %+v", creds)
	}
	if err := ops.Do(ctx, "PUT", "/v1/nodes/n1/status", api.NodeStatus{Address: "10.0.0.11:7460", CPUs: 1, MemoryBytes: 1 << 30}, nil); err == nil {
		t.Fatal("an operator token reported a node's status")
	}
	if err := admin.Do(ctx, "PUT", "/v1/nodes/n1/status", api.NodeStatus{Address: "10.0.0.11:7460", CPUs: 1, MemoryBytes: 1 << 30}, nil); err != nil {
		t.Fatal(err)
	}
	_, csr5, _ := cluster.NodeRequest("n5")
	err = joiner.Do(ctx, "POST", "/v1/cluster/credentials", api.HostJoinRequest{Name: "n5", CSR: string(csr5), IPs: []string{"10.0.0.11"}}, nil)
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != 400 || se.Field != "ips" || !strings.Contains(se.Msg, "node n1's address") {
		t.Errorf("a host asking for another node's address: %v", err)
	}
	wantStatus(t, "a host's credentials with an operator token",
		ops.Do(ctx, "POST", "/v1/cluster/credentials", api.HostJoinRequest{Name: "n5", CSR: string(csr), IPs: []string{"10.0.0.15"}}, nil),
		http.StatusForbidden, "needs join")
}

// TestWritesAreEventsNamingTheToken: every write done through the API is an event of
// kind write naming its token and what it was about; reads and refused writes are not.
func TestWritesAreEventsNamingTheToken(t *testing.T) {
	m, admin := newTestMaster(t)
	ctx := context.Background()
	ops := as(t, admin, mustToken(t, admin, "ops", api.ScopeOperator))
	writes := []struct {
		method, path string
		body         any
		guest        string
	}{
		{"POST", "/v1/networks", api.CreateNetwork{Name: "blue", VNI: 7, CIDR: "10.7.0.0/24"}, ""},
		{"POST", "/v1/guests", api.CreateGuest{Name: "web", CPUs: 1, MemoryBytes: 1 << 30}, "web"},
		{"POST", "/v1/guests/web/stop", nil, "web"},
		{"DELETE", "/v1/guests/web", nil, "web"},
		{"DELETE", "/v1/networks/blue", nil, ""},
	}
	after := m.st.Events(0)
	seq := after[len(after)-1].Seq
	for _, w := range writes {
		if err := ops.Do(ctx, w.method, w.path, w.body, nil); err != nil {
			t.Fatalf("%s %s: %v", w.method, w.path, err)
		}
		ops.Do(ctx, "GET", "/v1/guests", nil, nil)
		ops.Do(ctx, "POST", "/v1/guests/ghost/start", nil, nil) // 404: not done, not recorded
	}
	var evs []api.Event
	for _, e := range m.Events(ctx, seq, 0) {
		if e.Kind == EventWrite {
			evs = append(evs, e)
		}
	}
	if len(evs) != len(writes) {
		t.Fatalf("%d write events for %d writes: %+v", len(evs), len(writes), evs)
	}
	for i, w := range writes {
		e := evs[i]
		if e.Token != "ops" || e.Guest != w.guest || !strings.HasPrefix(e.Detail, w.method+" "+w.path+" (") {
			t.Errorf("write %s %s: event %+v", w.method, w.path, e)
		}
	}
	// The token's own making is recorded too, by the token that made it.
	for _, e := range m.st.Events(0) {
		if e.Kind == EventWrite && strings.HasPrefix(e.Detail, "POST /v1/tokens") {
			if e.Token != api.BootstrapToken || !strings.Contains(e.Detail, "token ops, scope operator") {
				t.Errorf("token creation event %+v", e)
			}
			return
		}
	}
	t.Error("no event for the token's creation")
}

// TestTokenBadInput: a bad name, an unknown scope, a bad lifetime, a name in use, an
// unknown, revoked or expired token are each refused with what was wrong, and change
// nothing.
func TestTokenBadInput(t *testing.T) {
	m, admin := newTestMaster(t)
	ctx := context.Background()
	ops := mustToken(t, admin, "ops", api.ScopeOperator)
	before := m.st.Tokens()
	for _, tc := range []struct {
		req   api.CreateToken
		code  int
		field string
		text  string
	}{
		{api.CreateToken{Name: "Bad_Name", Scope: "read"}, 400, "name", "not a valid name"},
		{api.CreateToken{Name: "ci", Scope: "root"}, 400, "scope", `unknown scope "root"`},
		{api.CreateToken{Name: "ci", Scope: "read", TTL: "forever"}, 400, "ttl", "not a duration"},
		{api.CreateToken{Name: "ci", Scope: "read", TTL: "5s"}, 400, "ttl", "out of range"},
		{api.CreateToken{Name: "ops", Scope: "read"}, 409, "", "exists; revoke it first"},
	} {
		err := admin.Do(ctx, "POST", "/v1/tokens", tc.req, nil)
		var se *api.StatusError
		if !errors.As(err, &se) || se.Code != tc.code || se.Field != tc.field || !strings.Contains(se.Msg, tc.text) {
			t.Errorf("%+v: %v; want %d in %q saying %q", tc.req, err, tc.code, tc.field, tc.text)
		}
	}
	wantStatus(t, "revoke an unknown token", admin.Do(ctx, "DELETE", "/v1/tokens/nobody", nil, nil), 404, "not found")
	wantStatus(t, "an unknown secret", as(t, admin, strings.Repeat("0", 64)).Do(ctx, "GET", "/v1/guests", nil, nil), 401, "unknown token")
	wantStatus(t, "no token", as(t, admin, "").Do(ctx, "GET", "/v1/guests", nil, nil), 401, "missing bearer token")
	if after := m.st.Tokens(); len(after) != len(before) {
		t.Fatalf("refused requests changed the tokens: %+v", after)
	}

	if err := admin.Do(ctx, "DELETE", "/v1/tokens/ops", nil, nil); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "a revoked token", as(t, admin, ops).Do(ctx, "GET", "/v1/guests", nil, nil), 401, `token "ops" was revoked`)
	wantStatus(t, "revoke it again", admin.Do(ctx, "DELETE", "/v1/tokens/ops", nil, nil), 409, "revoked already")
	// Its name may be used again, with a new secret; the old one stays refused.
	fresh := mustToken(t, admin, "ops", api.ScopeRead)
	if err := as(t, admin, fresh).Do(ctx, "GET", "/v1/guests", nil, nil); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "the old secret of a name made again", as(t, admin, ops).Do(ctx, "GET", "/v1/guests", nil, nil), 401, "unknown token")

	old := store.TokenRecord{Name: "old", Scope: api.ScopeAdmin, Hash: api.HashSecret("old-secret"), CreatedAt: time.Now().Add(-2 * time.Hour), ExpiresAt: time.Now().Add(-time.Hour)}
	if _, err := m.st.Apply(store.Command{Op: store.OpPutToken, Token: &old}); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "an expired token", as(t, admin, "old-secret").Do(ctx, "GET", "/v1/guests", nil, nil), 401, `token "old" expired`)
}

// TestBootstrapToken: the token file's secret is the admin token "bootstrap" until the
// cluster records it, and then by its record: revoked, it is refused, and the file does
// not bring it back. The last admin token cannot be revoked.
func TestBootstrapToken(t *testing.T) {
	m, admin := newTestMaster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, ok := m.st.Token(api.BootstrapToken); ok {
		t.Fatal("recorded before KeepBootstrapToken")
	}
	if err := admin.Do(ctx, "GET", "/v1/tokens", nil, nil); err != nil {
		t.Fatalf("the token file's secret before it is recorded: %v", err)
	}
	m.KeepBootstrapToken(ctx, "tok") // returns once recorded: this master acts
	rec, ok := m.st.Token(api.BootstrapToken)
	if !ok || rec.Scope != api.ScopeAdmin || rec.Hash != api.HashSecret("tok") {
		t.Fatalf("bootstrap token recorded as %+v", rec)
	}
	wantStatus(t, "revoke the only admin token", admin.Do(ctx, "DELETE", "/v1/tokens/bootstrap", nil, nil), 409, "last active admin token")
	boss := as(t, admin, mustToken(t, admin, "boss", api.ScopeAdmin))
	if err := boss.Do(ctx, "DELETE", "/v1/tokens/bootstrap", nil, nil); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "the revoked bootstrap token", admin.Do(ctx, "GET", "/v1/guests", nil, nil), 401, `token "bootstrap" was revoked`)
}

// TestScopeFor pins who may do what, route by route.
func TestScopeFor(t *testing.T) {
	for route, want := range map[string]string{
		"GET /v1/nodes": api.ScopeRead, "GET /v1/guests/{name}/why": api.ScopeRead, "GET /v1/events": api.ScopeRead,
		"POST /v1/guests": api.ScopeOperator, "DELETE /v1/nodes/{name}": api.ScopeOperator, "POST /v1/nodes/{name}/drain": api.ScopeOperator,
		"POST /v1/networks": api.ScopeOperator, "POST /v1/guests/{name}/migrate": api.ScopeOperator, "POST /v1/guests/{name}/eject": api.ScopeOperator,
		"GET /v1/guests/{name}/console": api.ScopeOperator, "GET /v1/guests/{name}/vnc": api.ScopeOperator,
		"GET /v1/images": api.ScopeRead, "GET /v1/images/{name}": api.ScopeRead,
		"PUT /v1/images/{name}": api.ScopeOperator, "DELETE /v1/images/{name}": api.ScopeOperator,
		"GET /v1/tokens": api.ScopeAdmin, "POST /v1/tokens": api.ScopeAdmin, "DELETE /v1/tokens/{name}": api.ScopeAdmin,
		"POST /v1/cluster/credentials": api.ScopeJoin,
		"PUT /v1/nodes/{name}/status":  scopeAgent, "GET /v1/nodes/{name}/assignment": scopeAgent,
		"POST /v1/guests/{name}/migration": scopeAgent, "POST /v1/cluster/join": scopeAgent,
	} {
		method, path, _ := strings.Cut(route, " ")
		if got := scopeFor(method, path); got != want {
			t.Errorf("%s needs %s, want %s", route, got, want)
		}
	}
}

// TestAgentCertificateSpeaksForItsNodeOnly: on the agents' listener a node's
// certificate is enough for its own status report, and refused for another node's.
func TestAgentCertificateSpeaksForItsNodeOnly(t *testing.T) {
	m, _ := newTestMaster(t)
	dir := t.TempDir()
	if err := cluster.NewCA(dir); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"m1", "n1"} {
		if err := cluster.Issue(dir, n, []net.IP{net.ParseIP("127.0.0.1")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	server, _ := cluster.Load(dir, "m1")
	n1, _ := cluster.Load(dir, "n1")
	srv := httptest.NewUnstartedServer(AgentHandler(m, "m1", "", metrics.New()))
	srv.TLS = server.ServerTLS()
	srv.StartTLS()
	defer srv.Close()
	c, err := api.NewClient(srv.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	c.UseTLS(n1.ClientTLS())
	ctx := context.Background()
	st := api.NodeStatus{Address: "127.0.0.1:7460", CPUs: 4, MemoryBytes: 8 << 30}
	if err := c.Do(ctx, "PUT", "/v1/nodes/n1/status", st, nil); err != nil {
		t.Fatalf("n1 reports for itself with its certificate: %v", err)
	}
	wantStatus(t, "n1 reports for n2", c.Do(ctx, "PUT", "/v1/nodes/n2/status", st, nil), http.StatusForbidden, "cannot speak for node n2")
	wantStatus(t, "n1 asks to take n2 in", c.Do(ctx, "POST", "/v1/cluster/join", api.JoinRequest{Name: "n2", RaftAddress: "127.0.0.1:1"}, nil),
		http.StatusForbidden, "cannot ask to take node n2 in")
	wantStatus(t, "n1's certificate lists guests", c.Do(ctx, "GET", "/v1/guests", nil, nil), http.StatusUnauthorized, "missing bearer token")
	if _, ok := m.st.Node("n2"); ok {
		t.Fatal("a refused report registered n2")
	}
}

// wantsCopies is the role machine as far as durability goes: acting, and asking for
// more copies of a write than a one-replica store can hold.
type wantsCopies struct{}

func (wantsCopies) Acting() bool   { return true }
func (wantsCopies) AckCopies() int { return 3 }

// TestTokenNotDurableKeepsItsSecret: a token made while the cluster cannot acknowledge
// writes is answered with its secret and a warning, not with a 504 that would lose the
// secret (the cluster does not keep it).
func TestTokenNotDurableKeepsItsSecret(t *testing.T) {
	m, admin := newTestMaster(t)
	m.SetAuthority(wantsCopies{})
	var tc api.TokenCreated
	if err := admin.Do(context.Background(), "POST", "/v1/tokens", api.CreateToken{Name: "ci", Scope: api.ScopeRead}, &tc); err != nil {
		t.Fatal(err)
	}
	if len(tc.Secret) != 64 || !strings.Contains(tc.Warning, "make it again") {
		t.Fatalf("answer %+v: want the secret and a warning", tc)
	}
	if err := as(t, admin, tc.Secret).Do(context.Background(), "GET", "/v1/guests", nil, nil); err != nil {
		t.Fatalf("the token, not yet durable, is in use: %v", err)
	}
}
