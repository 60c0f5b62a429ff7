package cluster

import (
	"errors"
	"io"
	"log"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func testLog(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	// Registered before the members' Shutdown, so it runs after it: memberlist's
	// goroutines may still log a moment after Shutdown, and a log after the test ends
	// panics.
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func join(t testing.TB, creds *Credentials, meta Meta, peers ...string) (*Members, error) {
	m, err := Join(MemberConfig{Credentials: creds, BindAddr: "127.0.0.1", Peers: peers, Meta: meta, Log: testLog(t)})
	if err == nil {
		t.Cleanup(func() { m.Shutdown() })
	}
	return m, err
}

func mustJoin(t testing.TB, creds *Credentials, meta Meta, peers ...string) *Members {
	t.Helper()
	m, err := join(t, creds, meta, peers...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// waitEvent reads m's events until one satisfies ok, failing the test if the channel
// closes or the test nears its deadline first.
func waitEvent(t *testing.T, m *Members, what string, ok func(Event) bool) Event {
	t.Helper()
	deadline := untilDeadline(t)
	for {
		select {
		case ev, open := <-m.Events():
			if !open {
				t.Fatalf("%s: events closed while waiting for %s", m.Name(), what)
			}
			if ok(ev) {
				return ev
			}
		case <-deadline:
			t.Fatalf("%s: no %s", m.Name(), what)
		}
	}
}

// waitJoined waits until m has seen every named node join.
func waitJoined(t *testing.T, m *Members, names ...string) {
	t.Helper()
	missing := slices.Clone(names)
	for len(missing) > 0 {
		ev := waitEvent(t, m, "join of "+strings.Join(missing, ","), func(e Event) bool { return e.Kind == EventJoin })
		missing = slices.DeleteFunc(missing, func(n string) bool { return n == ev.Member.Name })
	}
}

func isEvent(kind EventKind, node string) func(Event) bool {
	return func(e Event) bool { return e.Kind == kind && e.Member.Name == node }
}

func TestMembersJoinFailLeave(t *testing.T) {
	_, creds := newCluster(t, "n1", "n2", "n3")
	up := time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)
	metaOf := func(n string) Meta {
		return Meta{API: "127.0.0.1:7460", Management: n != "n3", Network: 0.9, CPU: 0.8, Disk: 0.7, UpSince: up, Downtime: time.Minute}
	}
	n1 := mustJoin(t, creds["n1"], metaOf("n1"))
	n2 := mustJoin(t, creds["n2"], metaOf("n2"), n1.Addr())
	n3 := mustJoin(t, creds["n3"], metaOf("n3"), n1.Addr())
	all := []*Members{n1, n2, n3}
	for _, m := range all {
		waitJoined(t, m, "n1", "n2", "n3")
	}
	for _, m := range all {
		got := m.Members()
		if len(got) != 3 {
			t.Fatalf("%s sees %d members: %+v", m.Name(), len(got), got)
		}
		for i, want := range []string{"n1", "n2", "n3"} {
			g := got[i]
			if g.Name != want || g.State != StateAlive || g.MetaErr != nil || g.Meta != metaOf(want) || !g.Addr.Addr().IsLoopback() || g.Addr.Port() == 0 {
				t.Errorf("%s sees %+v, want %s alive with %+v", m.Name(), g, want, metaOf(want))
			}
		}
	}

	// Metadata changes reach the others as updates.
	newMeta := metaOf("n2")
	newMeta.CPU = 0.2
	if err := n2.UpdateMeta(newMeta); err != nil {
		t.Fatal(err)
	}
	if ev := waitEvent(t, n1, "update of n2", isEvent(EventUpdate, "n2")); ev.Member.Meta != newMeta {
		t.Errorf("n1 got n2's update with %+v, want %+v", ev.Member.Meta, newMeta)
	}

	// n3 stops without a word: the others declare it failed.
	if err := n3.Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Members{n1, n2} {
		ev := waitEvent(t, m, "failure of n3", isEvent(EventFailed, "n3"))
		if ev.Member.State != StateDead {
			t.Errorf("%s: n3 failed in state %s", m.Name(), ev.Member.State)
		}
	}
	// n2 leaves on purpose: n1 sees a leave, not a failure.
	if err := n2.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	// The notice may be handled after the departure (TCP and UDP): a failure may come
	// first, and the leave must follow it.
	ev := waitEvent(t, n1, "leave of n2", isEvent(EventLeave, "n2"))
	if ev.Member.State != StateLeft {
		t.Errorf("n1 saw n2 leave in state %s, want left", ev.Member.State)
	}
	n2.Shutdown()
	if got := n1.Alive(); !slices.Equal(got, []string{"n1"}) {
		t.Errorf("n1 sees %v alive after the others went", got)
	}
	got := n1.Members()
	if len(got) != 3 || got[1].State != StateLeft || got[2].State != StateDead {
		t.Errorf("n1's table after the others went: %+v", got)
	}
}

func TestMembersSend(t *testing.T) {
	_, creds := newCluster(t, "n1", "n2")
	n1 := mustJoin(t, creds["n1"], Meta{})
	n2 := mustJoin(t, creds["n2"], Meta{}, n1.Addr())
	// Each sends to the other: each must see the other alive (n2 takes n1 in only
	// once n1 has proved its name, which may come after n1 sees n2).
	waitJoined(t, n1, "n1", "n2")
	waitJoined(t, n2, "n1", "n2")

	if err := n1.Send("n2", []byte("lease g7")); err != nil {
		t.Fatal(err)
	}
	if err := n2.Send("n1", []byte("lease-grant g7")); err != nil {
		t.Fatal(err)
	}
	for m, want := range map[*Members]Message{n2: {From: "n1", Payload: []byte("lease g7")}, n1: {From: "n2", Payload: []byte("lease-grant g7")}} {
		select {
		case got := <-m.Messages():
			if got.From != want.From || string(got.Payload) != string(want.Payload) {
				t.Errorf("%s received %q from %s, want %q from %s", m.Name(), got.Payload, got.From, want.Payload, want.From)
			}
		case <-untilDeadline(t):
			t.Fatalf("%s received nothing", m.Name())
		}
	}
	if err := n1.Send("n9", []byte("x")); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("send to an unknown node: %v", err)
	}
	if err := n1.Send("n1", []byte("x")); err == nil {
		t.Error("send to self succeeded")
	}
	if n1.RefusedMessages() != 0 || n2.RefusedMessages() != 0 {
		t.Errorf("refused messages: n1 %d, n2 %d", n1.RefusedMessages(), n2.RefusedMessages())
	}
}

func TestHostWithoutGossipKeyCannotJoin(t *testing.T) {
	_, creds := newCluster(t, "n1")
	n1 := mustJoin(t, creds["n1"], Meta{})

	t.Run("another cluster's credentials", func(t *testing.T) {
		_, foreign := newCluster(t, "x1")
		_, err := join(t, foreign["x1"], Meta{}, n1.Addr())
		if err == nil || !strings.Contains(err.Error(), "no member answered") {
			t.Fatalf("foreign node joined: %v", err)
		}
	})
	t.Run("our certificate but a wrong gossip key", func(t *testing.T) {
		_, other := newCluster(t, "x2")
		c := *creds["n1"]
		c.node, c.gossipKey = "x2", other["x2"].gossipKey
		if _, err := join(t, &c, Meta{}, n1.Addr()); err == nil {
			t.Fatal("node with a wrong gossip key joined")
		}
	})
	t.Run("plain memberlist without key", func(t *testing.T) {
		conf := memberlist.DefaultLANConfig()
		conf.Name, conf.BindAddr, conf.BindPort = "x3", "127.0.0.1", 0
		conf.Logger = log.New(io.Discard, "", 0)
		ml, err := memberlist.Create(conf)
		if err != nil {
			t.Fatal(err)
		}
		defer ml.Shutdown()
		if n, err := ml.Join([]string{n1.Addr()}); err == nil || n != 0 {
			t.Fatalf("plain memberlist joined %d: %v", n, err)
		}
		if len(ml.Members()) != 1 {
			t.Errorf("the intruder learned members: %d", len(ml.Members()))
		}
	})
	if got := n1.Members(); len(got) != 1 {
		t.Errorf("n1 sees %+v, want only itself", got)
	}
}

func TestJoinBadConfig(t *testing.T) {
	_, creds := newCluster(t, "n1")
	if _, err := Join(MemberConfig{BindAddr: "127.0.0.1"}); err == nil || !strings.Contains(err.Error(), "no credentials") {
		t.Errorf("no credentials: %v", err)
	}
	_, err := Join(MemberConfig{Credentials: creds["n1"], BindAddr: "127.0.0.1", ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 200 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "probe timeout") {
		t.Errorf("probe timeout above interval: %v", err)
	}
	big := Meta{API: strings.Repeat("a", 600)}
	if _, err := Join(MemberConfig{Credentials: creds["n1"], BindAddr: "127.0.0.1", Meta: big}); !errors.Is(err, ErrMetaTooLarge) {
		t.Errorf("large meta at join: %v", err)
	}
	m := mustJoin(t, creds["n1"], Meta{})
	if err := m.UpdateMeta(big); !errors.Is(err, ErrMetaTooLarge) {
		t.Errorf("large meta update: %v", err)
	}
	if _, err := m.JoinPeers(); err == nil || !strings.Contains(err.Error(), "no peer addresses given") {
		t.Errorf("JoinPeers without addresses: %v", err)
	}
	if _, err := join(t, creds["n1"], Meta{}, "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "no member answered") {
		t.Errorf("join with no peer up: %v", err)
	}
}

func TestMessageEnvelope(t *testing.T) {
	_, creds := newCluster(t, "n1", "n2", "n3")
	_, foreign := newCluster(t, "n1")
	cache := func() *certCache { return &certCache{pool: creds["n2"].pool, names: map[[32]byte]verified{}} }
	now := time.Now()

	env, err := seal(creds["n1"], kindUser, "n2", []byte("vote g8"))
	if err != nil {
		t.Fatal(err)
	}
	c := cache()
	for range 2 { // the second goes through the cache
		kind, from, payload, err := open(c, "n2", env, now)
		if err != nil || kind != kindUser || from != "n1" || string(payload) != "vote g8" {
			t.Fatalf("open: %q %q %v", from, payload, err)
		}
	}

	tampered := []byte(strings.Replace(string(env), "vote g8", "vote g9", 1))
	forged := mustSeal(t, creds["n3"], "n2", "vote g8")
	forged = []byte(strings.Replace(string(forged), "n3", "n1", 1)) // claims n1, signed by n3
	for _, tc := range []struct {
		what, self string
		env        []byte
		now        time.Time
		wantErr    string
	}{
		{"tampered payload", "n2", tampered, now, "bad signature"},
		{"addressed to another node", "n3", env, now, `addressed to "n2", not this node "n3"`},
		{"sender name not its certificate's", "n2", forged, now, `claims to be from "n1" but is signed with node "n3"'s certificate`},
		{"another cluster's certificate", "n2", mustSeal(t, foreign["n1"], "n2", "vote g8"), now, "unknown authority"},
		{"expired sender certificate", "n2", env, now.Add(2 * NodeValidity), "certificate expired"},
		{"truncated", "n2", env[:len(env)-3], now, "malformed"},
		{"not an envelope", "n2", []byte("hello"), now, "not a dvm message"},
	} {
		if _, _, _, err := open(cache(), tc.self, tc.env, tc.now); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: err %v, want one containing %q", tc.what, err, tc.wantErr)
		}
	}
}

func mustSeal(t *testing.T, c *Credentials, to, payload string) []byte {
	t.Helper()
	b, err := seal(c, kindUser, to, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
