package master

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/metrics"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/hashicorp/raft"
)

// TestConsoleRelay: GET /v1/guests/NAME/console needs an operator token and a running
// guest, and is refused otherwise with nothing recorded (401, 403, 404, 409 naming
// the state, 400 without the Upgrade, 501 without nodes' TLS); an attach is relayed
// both ways to the node that runs the guest, at its console path, and its attach and
// detach are events naming the token. A node that no longer runs the guest makes it a
// 409.
func TestConsoleRelay(t *testing.T) {
	m, admin := newTestMaster(t)
	ctx := context.Background()
	reader := as(t, admin, mustToken(t, admin, "viewer", api.ScopeRead))
	ops := as(t, admin, mustToken(t, admin, "ops", api.ScopeOperator))
	anon := as(t, admin, "")

	var gone atomic.Bool
	var asked atomic.Value
	node := echoNodeWith(t, &gone, &asked)
	st := api.NodeStatus{Address: strings.TrimPrefix(node.URL, "https://"), LibvirtURI: "test:///n1", Accelerator: "test",
		HostCPUs: 8, HostMemoryBytes: 16 * gib, CPUs: 8, MemoryBytes: 16 * gib, Guests: []api.ObservedGuest{}}
	if err := admin.Do(ctx, "PUT", "/v1/nodes/n1/status", st, nil); err != nil {
		t.Fatal(err)
	}
	create(t, admin, "web", 1, 1)

	wantStatus(t, "no token", attachErr(anon, "web"), http.StatusUnauthorized, "token")
	wantStatus(t, "read token", attachErr(reader, "web"), http.StatusForbidden, `token "viewer" has scope read, and GET /v1/guests/web/console needs operator`)
	wantStatus(t, "unknown guest", attachErr(ops, "nope"), http.StatusNotFound, `guest "nope" not found`)
	wantStatus(t, "not yet running", attachErr(ops, "web"), http.StatusConflict, "guest web is starting, not running")
	_, _, err := api.DialConsole(ctx, ops.Addrs[0]+api.ConsolePath("web"), nil, nil)
	wantStatus(t, "the token alone", err, http.StatusUnauthorized, "token")
	noUpgrade := ops.Do(ctx, "GET", api.ConsolePath("web"), nil, nil)
	wantStatus(t, "no Upgrade", noUpgrade, http.StatusBadRequest, "Upgrade: dvm-console")

	st.Guests = []api.ObservedGuest{{Name: "web", State: "running"}}
	if err := admin.Do(ctx, "PUT", "/v1/nodes/n1/status", st, nil); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "a cluster without nodes' TLS", attachErr(ops, "web"), http.StatusNotImplemented, "no consoles")
	for _, e := range m.st.Events(0) {
		if e.Kind == EventConsole {
			t.Fatalf("a refused console was recorded: %+v", e)
		}
	}

	m.SetNodeTLS(func(string) *tls.Config { return node.Client().Transport.(*http.Transport).TLSClientConfig.Clone() })
	conn, on, err := ops.Console(ctx, "web")
	if err != nil || on != "n1" {
		t.Fatalf("attach: node %q, %v", on, err)
	}
	if p, _ := asked.Load().(string); p != api.NodeConsolePath("web") {
		t.Fatalf("the node was asked for %q, want %q", p, api.NodeConsolePath("web"))
	}
	if _, err := conn.Write([]byte("hello\r")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 6)
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != "HELLO\r" {
		t.Fatalf("relayed back %q, %v", got, err)
	}
	conn.Close()
	waitForEvents(t, m, func(evs []string) bool {
		return strings.Contains(strings.Join(evs, "\n"), "ops n1 web console attached on node n1") &&
			strings.Contains(strings.Join(evs, "\n"), "ops n1 web console detached after")
	})

	gone.Store(true)
	wantStatus(t, "the node no longer runs it", attachErr(ops, "web"), http.StatusConflict, "no such guest on this node")
}

// attachErr attaches through c (at once, no retry) and returns only why it could not.
func attachErr(c *api.Client, guest string) error {
	c.RetryFor = 0
	conn, _, err := c.Console(context.Background(), guest)
	if conn != nil {
		conn.Close()
	}
	return err
}

// waitForEvents waits until ok holds for the console events, each "token node guest
// detail".
func waitForEvents(t *testing.T, m *Master, ok func([]string) bool) {
	t.Helper()
	var evs []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		evs = evs[:0]
		for _, e := range m.st.Events(0) {
			if e.Kind == EventConsole {
				evs = append(evs, e.Token+" "+e.Node+" "+e.Guest+" "+e.Detail)
			}
		}
		if ok(evs) {
			return
		}
	}
	t.Fatalf("console events: %q", evs)
}

// TestConsoleThroughAFollower: a management node that is not the master passes a
// console attach on to the master, as it does other requests, Upgrade and all: the
// session works end to end through both, and the master records it.
func TestConsoleThroughAFollower(t *testing.T) {
	_, tr1 := raft.NewInmemTransport("m1")
	_, tr2 := raft.NewInmemTransport("m2")
	tr1.Connect("m2", tr2)
	tr2.Connect("m1", tr1)
	open := func(id string, tr raft.Transport, boot bool) *Master {
		st, err := store.Open(store.Config{NodeID: id, Dir: t.TempDir(), Transport: tr, Bootstrap: boot, LogOutput: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		m, err := New(st, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	m1, m2 := open("m1", tr1, true), open("m2", tr2, false)
	for deadline := time.Now().Add(10 * time.Second); !m1.IsLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("m1 never led")
		}
	}
	if err := m1.st.Raft().AddNonvoter("m2", "m2", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	srv1 := httptest.NewServer(Handler(m1, "m1", "tok", metrics.New()))
	defer srv1.Close()
	srv2 := httptest.NewServer(Handler(m2, "m2", "tok", metrics.New()))
	defer srv2.Close()
	admin, err := api.NewClient(srv1.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// m1's record names its API, where m2 forwards; the guest goes to n1, the node.
	node := echoNode(t)
	report := func() {
		for name, addr := range map[string]string{"m1": srv1.URL, "n1": node.URL} {
			st := api.NodeStatus{Address: addr[strings.Index(addr, "://")+3:], LibvirtURI: "test:///" + name, Accelerator: "test",
				HostCPUs: 8, HostMemoryBytes: 16 * gib, CPUs: 8, MemoryBytes: 16 * gib, Labels: map[string]string{"role": name}}
			if name == "n1" {
				st.Guests = []api.ObservedGuest{{Name: "web", State: "running"}}
			}
			if err := admin.Do(ctx, "PUT", "/v1/nodes/"+name+"/status", st, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	report()
	if err := admin.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "web", CPUs: 1, MemoryBytes: gib, Constraints: map[string]string{"role": "n1"}}, nil); err != nil {
		t.Fatal(err)
	}
	ops := as(t, admin, mustToken(t, admin, "ops", api.ScopeOperator))
	m1.SetNodeTLS(func(string) *tls.Config { return node.Client().Transport.(*http.Transport).TLSClientConfig.Clone() })
	ops.Addrs = []string{srv2.URL}
	var conn io.ReadWriteCloser
	var on string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		// m2 forwards once it has the leader's record and hears from it; the nodes
		// report meanwhile, as agents do, or the guest would show unknown.
		report()
		if conn, on, err = ops.Console(ctx, "web"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || on != "n1" {
		t.Fatalf("attach through m2: node %q, %v", on, err)
	}
	io.WriteString(conn, "through\r")
	got := make([]byte, 8)
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != "THROUGH\r" {
		t.Fatalf("relayed back %q, %v", got, err)
	}
	conn.Close()
	waitForEvents(t, m1, func(evs []string) bool {
		return strings.Contains(strings.Join(evs, "\n"), "ops n1 web console attached on node n1")
	})
}

func echoNode(t *testing.T) *httptest.Server {
	return echoNodeWith(t, new(atomic.Bool), new(atomic.Value))
}

// echoNodeWith is a node's API that serves a console session by echoing what it is
// sent, upper-cased, and records the path it was asked at; while gone is set, it
// says it does not run the guest.
func echoNodeWith(t *testing.T, gone *atomic.Bool, asked *atomic.Value) *httptest.Server {
	node := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Store(r.URL.Path)
		if gone.Load() {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":"guest \"web\": no such guest on this node"}`)
			return
		}
		conn, err := api.AcceptConsole(w)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		buf := make([]byte, 1024)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			conn.Write(bytes.ToUpper(buf[:n]))
		}
	}))
	t.Cleanup(node.Close)
	return node
}
