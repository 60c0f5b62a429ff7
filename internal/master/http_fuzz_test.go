package master

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/metrics"
	"github.com/dvmproject/dvm/internal/store"
)

// The API body fuzzers send arbitrary bodies (and names in the path) through the same
// handler dvmd serves, token check and body bound included, to a real master over a
// real raft store. One master serves a whole fuzzing process (a raft store per input
// would be too slow); each target puts back what an accepted request changed, so every
// input meets the same cluster. What they check:
//   - no panic, and only the answers the API documents: no 5xx;
//   - an error answer is JSON with a message, and a 400 names the field;
//   - a refused request changes nothing (the store's index does not move);
//   - an accepted one did what the body said, as strict decoding and Normalize read it.

type fuzzCluster struct {
	m *Master
	h http.Handler
	// nodes and guests as they were set up, put back after an input changed them.
	nodes  []store.NodeRecord
	guests []store.GuestRecord
}

// newFuzzCluster is a master with network blue and, with nodes, nodes n1 and n2 holding
// a running guest web (on n1) and a stopped guest idle.
func newFuzzCluster(f *testing.F, nodes bool) *fuzzCluster {
	m, _ := newTestMasterWith(f, Options{NodeTimeout: 24 * time.Hour})
	if _, err := m.CreateNetwork(api.CreateNetwork{Name: "blue", VNI: 42, CIDR: "192.168.42.0/24"}); err != nil {
		f.Fatal(err)
	}
	if nodes {
		for _, n := range []string{"n1", "n2"} {
			st := api.NodeStatus{Address: "10.0.0.1:7460", LibvirtURI: "test:///" + n, CPUs: 8, MemoryBytes: 16 << 30, Guests: []api.ObservedGuest{}}
			if err := m.ReportStatus(n, st); err != nil {
				f.Fatal(err)
			}
			if n == "n1" {
				no := false
				for _, g := range []api.CreateGuest{{Name: "web", CPUs: 2, MemoryBytes: 2 << 30}, {Name: "idle", CPUs: 1, MemoryBytes: 1 << 30, Start: &no}} {
					if _, err := m.CreateGuest(g); err != nil {
						f.Fatal(err)
					}
				}
			}
		}
	}
	c := &fuzzCluster{m: m, h: Handler(m, "m1", "tok", metrics.New())}
	c.nodes, c.guests, _ = m.st.Snapshot()
	return c
}

// serve sends one request as a client would; ok is false when no client could send it.
func (c *fuzzCluster) serve(ctx context.Context, method, path string, body []byte) (*httptest.ResponseRecorder, bool) {
	req, err := http.NewRequestWithContext(ctx, method, path, bytes.NewReader(body))
	if err != nil {
		return nil, false
	}
	req.Header.Set("Authorization", "Bearer tok")
	rec := httptest.NewRecorder()
	c.h.ServeHTTP(rec, req)
	return rec, true
}

// checkAnswer checks the status is one the endpoint may give and that an error answer
// says what was wrong.
func checkAnswer(t *testing.T, rec *httptest.ResponseRecorder, allowed ...int) {
	t.Helper()
	if !containsInt(allowed, rec.Code) {
		t.Fatalf("status %d (allowed %v): %s", rec.Code, allowed, rec.Body)
	}
	if rec.Code < 400 {
		return
	}
	var e api.Error
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || e.Error == "" {
		t.Fatalf("error answer %d is not an api.Error with a message: %q (%v)", rec.Code, rec.Body, err)
	}
	if rec.Code == http.StatusBadRequest && e.Field == "" {
		t.Fatalf("400 without the field: %+v", e)
	}
}

func containsInt(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// strict decodes a body as the API must: unknown fields and trailing data refused.
func strict(body []byte, v any) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if dec.Decode(v) != nil {
		return false
	}
	return !dec.More()
}

// unchanged fails unless a refused request left the state alone.
func (c *fuzzCluster) unchanged(t *testing.T, before uint64, rec *httptest.ResponseRecorder) {
	t.Helper()
	if after := c.m.st.Index(); after != before {
		t.Fatalf("refused with %d (%s), yet the state changed (index %d -> %d)", rec.Code, strings.TrimSpace(rec.Body.String()), before, after)
	}
}

// restore puts nodes and guests back as they were set up, and drops guests made since.
func (c *fuzzCluster) restore(t *testing.T) {
	t.Helper()
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	_, guests, _ := c.m.st.Snapshot()
	var cmds []store.Command
	for i := range c.nodes {
		cmds = append(cmds, store.Command{Op: store.OpPutNode, Node: &c.nodes[i]})
	}
	keep := map[string]bool{}
	for i := range c.guests {
		keep[c.guests[i].Name] = true
		cmds = append(cmds, store.Command{Op: store.OpPutGuest, Guest: &c.guests[i]})
	}
	for _, g := range guests {
		if !keep[g.Name] {
			cmds = append(cmds, store.Command{Op: store.OpDeleteGuest, Name: g.Name})
		}
	}
	if _, err := c.m.st.Apply(cmds...); err != nil {
		t.Fatal(err)
	}
}

// normalizer is a create request, whose Normalize validates it.
type normalizer[T any] interface {
	*T
	Normalize() *api.FieldError
}

// postCreate posts a create body; for an answer with code ok it checks that the API
// accepted what strict decoding and Normalize accept, and returns the request as they
// read it. A refusal must have changed nothing.
func postCreate[T any, P normalizer[T]](t *testing.T, c *fuzzCluster, path string, body []byte, ok int) (T, *httptest.ResponseRecorder, bool) {
	t.Helper()
	var want T
	before := c.m.st.Index()
	rec, _ := c.serve(context.Background(), "POST", path, body)
	checkAnswer(t, rec, ok, http.StatusBadRequest, http.StatusConflict)
	if rec.Code != ok {
		c.unchanged(t, before, rec)
		return want, rec, false
	}
	if !strict(body, &want) {
		t.Fatalf("accepted a body strict decoding refuses: %q", body)
	}
	if fe := P(&want).Normalize(); fe != nil {
		t.Fatalf("accepted a body Normalize refuses (%v): %q", fe, body)
	}
	return want, rec, true
}

func FuzzCreateGuestBody(f *testing.F) {
	f.Add([]byte(`{"name":"web","os":"dragonfly","cpus":2,"memory_bytes":2147483648,"failover":"restart","networks":["blue"]}`))
	f.Add([]byte(`{"name":"web","os":"linux","cpus":1,"memory_bytes":1073741824,"vnc":true,"cloud_init":{"ssh_keys":["ssh-ed25519 AAAA a@b"],"user_data":"#cloud-config\n"}}`))
	f.Add([]byte(`{"name":"inst","cpus":1,"memory_bytes":1073741824,"iso":"dfly"}`))
	c := newFuzzCluster(f, false)
	f.Fuzz(func(t *testing.T, body []byte) {
		// No node: a guest that is created waits, pending.
		want, rec, ok := postCreate[api.CreateGuest](t, c, "/v1/guests", body, http.StatusAccepted)
		if !ok {
			return
		}
		var got api.Guest
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		if got.Name != want.Name || got.OS != want.OS || got.CPUs != want.CPUs || got.MemoryBytes != want.MemoryBytes ||
			got.DiskBytes != want.DiskBytes || got.Image != want.Image || got.Failover != want.Failover ||
			len(got.Constraints) != len(want.Constraints) || len(got.NICs) != len(want.Networks) || got.State != api.GuestPending ||
			got.ISO != want.ISO || (got.VNC != nil) != want.VNC || (got.CloudInit != nil) != (want.CloudInit != nil) {
			t.Fatalf("created %+v from %+v", got, want)
		}
		for i, nic := range got.NICs {
			if nic.Network != want.Networks[i] || nic.MAC == "" || nic.IP == "" {
				t.Fatalf("nic %d: %+v for network %q", i, nic, want.Networks[i])
			}
		}
		rec, _ = c.serve(context.Background(), "DELETE", "/v1/guests/"+url.PathEscape(got.Name), nil)
		checkAnswer(t, rec, http.StatusAccepted)
		if _, ok := c.m.st.Guest(got.Name); ok {
			t.Fatalf("pending guest %s not deleted at once", got.Name)
		}
	})
}

func FuzzCreateNetworkBody(f *testing.F) {
	f.Add([]byte(`{"name":"red","vni":7,"cidr":"10.7.0.0/16","mtu":1400}`))
	c := newFuzzCluster(f, false)
	f.Fuzz(func(t *testing.T, body []byte) {
		want, rec, ok := postCreate[api.CreateNetwork](t, c, "/v1/networks", body, http.StatusCreated)
		if !ok {
			return
		}
		var got api.Network
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		if got.Name != want.Name || got.VNI != want.VNI || got.CIDR != want.CIDR || got.MTU != want.MTU {
			t.Fatalf("created %+v from %+v", got, want)
		}
		rec, _ = c.serve(context.Background(), "DELETE", "/v1/networks/"+url.PathEscape(got.Name), nil)
		checkAnswer(t, rec, http.StatusNoContent)
	})
}

// endMigrations fails every migration that the request started, as the source node's
// agent reports one, until the request has answered; it says whether one was started.
func (c *fuzzCluster) endMigrations(served <-chan struct{}) bool {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-served
		cancel()
	}()
	started := false
	for idx := c.m.st.Index(); ctx.Err() == nil; idx = c.m.st.Wait(ctx, idx) {
		_, guests, _ := c.m.st.Snapshot()
		for _, g := range guests {
			if g.MigrateTo != "" {
				started = true
				c.m.MigrationDone(g.Node, g.Name, api.Migration{OK: false, Error: "the fuzz target fails every migration"})
			}
		}
	}
	return started
}

func FuzzMigrateBody(f *testing.F) {
	f.Add("web", []byte(`{"node":"n2"}`))
	c := newFuzzCluster(f, true)
	f.Fuzz(func(t *testing.T, guest string, body []byte) {
		if !pathSegment(guest) {
			return
		}
		before := c.m.st.Index()
		served := make(chan struct{})
		var rec *httptest.ResponseRecorder
		var sent bool
		go func() {
			defer close(served)
			rec, sent = c.serve(context.Background(), "POST", "/v1/guests/"+url.PathEscape(guest)+"/migrate", body)
		}()
		started := c.endMigrations(served)
		if !sent {
			return
		}
		checkAnswer(t, rec, http.StatusBadRequest, http.StatusNotFound, http.StatusConflict)
		if !started {
			c.unchanged(t, before, rec)
			return
		}
		var want api.MigrateRequest
		if !strict(body, &want) || api.ValidateName("node", want.Node) != nil {
			t.Fatalf("a migration started from a body the API must refuse: %q", body)
		}
		g, _ := c.m.st.Guest(guest)
		var last api.Migration
		if rec.Code != http.StatusConflict || g.Node != "n1" || g.MigrateTo != "" || json.Unmarshal(g.LastMigration, &last) != nil || last.To != want.Node || last.OK {
			t.Fatalf("after a failed migration to %s: answer %d, guest %+v", want.Node, rec.Code, g)
		}
		c.restore(t)
	})
}

func FuzzDrainBody(f *testing.F) {
	f.Add("n1", false, []byte(``))
	c := newFuzzCluster(f, true)
	f.Fuzz(func(t *testing.T, node string, maintenance bool, body []byte) {
		if !pathSegment(node) {
			return
		}
		before := c.m.st.Index()
		path := "/v1/nodes/" + url.PathEscape(node) + "/drain"
		if maintenance {
			path = "/v1/nodes/" + url.PathEscape(node) + "/maintenance"
		}
		served := make(chan struct{})
		var rec *httptest.ResponseRecorder
		var sent bool
		go func() {
			defer close(served)
			rec, sent = c.serve(context.Background(), "POST", path, body)
		}()
		c.endMigrations(served)
		if !sent {
			return
		}
		checkAnswer(t, rec, http.StatusOK, http.StatusBadRequest, http.StatusNotFound)
		if rec.Code != http.StatusOK {
			c.unchanged(t, before, rec)
			return
		}
		if len(bytes.TrimSpace(body)) > 0 && !strict(body, &struct{}{}) {
			t.Fatalf("a drain accepted a body with parameters: %q", body)
		}
		// The answer is a progress line per guest, then the totals.
		var lines []api.DrainProgress
		sc := bufio.NewScanner(bytes.NewReader(rec.Body.Bytes()))
		for sc.Scan() {
			var p api.DrainProgress
			if !strict(sc.Bytes(), &p) || p.Node != node {
				t.Fatalf("drain progress line %q", sc.Bytes())
			}
			lines = append(lines, p)
		}
		n, _ := c.m.st.Node(node)
		last := lines[len(lines)-1]
		if !last.Done || last.Moved+last.Failed != len(lines)-1 || !n.Draining || n.Maintenance != maintenance {
			t.Fatalf("drain of %s: node %+v, answer %+v", node, n, lines)
		}
		if n.Name == "n1" && (last.Moved != 1 || last.Failed != 1) {
			t.Fatalf("drain of n1: idle moves, web's migration fails: %+v", lines)
		}
		if h := c.m.heldMoves(); len(h) > 0 {
			t.Fatalf("holds left after the drain: %+v", h)
		}
		c.restore(t)
		if n, _ := c.m.st.Node(node); !reflect.DeepEqual(n, findNode(c.nodes, node)) {
			t.Fatalf("restore left %+v", n)
		}
	})
}

// pathSegment: a client can name it in a path (no empty or dot segment, which the HTTP
// router cleans away with a redirect).
func pathSegment(s string) bool { return s != "" && s != "." && s != ".." }

func findNode(nodes []store.NodeRecord, name string) store.NodeRecord {
	for _, n := range nodes {
		if n.Name == name {
			return n
		}
	}
	return store.NodeRecord{}
}
