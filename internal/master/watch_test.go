package master

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
)

// TestGuestBlockingQuery: GET /v1/guests/NAME?index=V&wait=D is answered when the
// guest's view changes (by a write to the store, by its node's report, by its node
// falling silent) or when the wait is over, and a guest deleted meanwhile is a 404.
func TestGuestBlockingQuery(t *testing.T) {
	m, c := newTestMasterWith(t, Options{NodeTimeout: time.Second})
	ctx := context.Background()
	report := func(guests ...api.ObservedGuest) {
		t.Helper()
		st := api.NodeStatus{Address: "127.0.0.1:7460", LibvirtURI: "test:///n1", CPUs: 8, MemoryBytes: 16 << 30, Guests: append([]api.ObservedGuest{}, guests...)}
		if err := m.ReportStatus("n1", st); err != nil {
			t.Fatal(err)
		}
	}
	running := api.ObservedGuest{Name: "web", State: "running"}
	report()
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "web", CPUs: 1, MemoryBytes: 128 << 20}, nil); err != nil {
		t.Fatal(err)
	}
	// watch asks as vmctl does; its own bound (10 s) only ends a query that never wakes,
	// long before the minute it waits.
	watch := func(index string, wait time.Duration, during func()) (api.Guest, string, error) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if during != nil {
			go func() {
				time.Sleep(100 * time.Millisecond)
				during()
			}()
		}
		var g api.Guest
		v, err := c.Watch(wctx, "/v1/guests/web", index, wait, &g)
		return g, v, err
	}
	g, v1, err := watch("", 0, nil)
	if err != nil || g.State != api.GuestStarting || v1 == "" {
		t.Fatalf("first answer: %+v, index %q, %v", g, v1, err)
	}
	report() // the node's regular report, the same: no change
	start := time.Now()
	g, v, err := watch(v1, 300*time.Millisecond, nil)
	if err != nil || v != v1 || g.State != api.GuestStarting || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("nothing changed: %+v, index %q (was %q), %v after %s; want the same answer after the wait", g, v, v1, err, time.Since(start))
	}
	g, v2, err := watch(v1, time.Minute, func() { report(running) })
	if err != nil || g.State != api.GuestRunning || v2 == v1 {
		t.Fatalf("its node reports it running: %+v, index %q, %v", g, v2, err)
	}
	stop := func() {
		if err := c.Do(ctx, "POST", "/v1/guests/web/stop", nil, nil); err != nil {
			t.Error(err)
		}
	}
	g, v3, err := watch(v2, time.Minute, stop)
	if err != nil || g.State != api.GuestStopping || v3 == v2 {
		t.Fatalf("stopped (a write): %+v, index %q, %v", g, v3, err)
	}
	g, v4, err := watch(v3, time.Minute, nil)
	if err != nil || g.State != api.GuestUnknown {
		t.Fatalf("its node falls silent: %+v, index %q, %v; want unknown after the node timeout", g, v4, err)
	}
	g, v5, err := watch(v4, time.Minute, func() { report() })
	if err != nil || g.State != api.GuestStopped {
		t.Fatalf("its node reports again, without it running: %+v, index %q, %v", g, v5, err)
	}
	if err := c.Do(ctx, "DELETE", "/v1/guests/web", nil, nil); err != nil {
		t.Fatal(err)
	}
	g, v6, err := watch(v5, time.Minute, nil)
	if err != nil || g.State != api.GuestDeleting {
		t.Fatalf("deleted: %+v, index %q, %v", g, v6, err)
	}
	_, _, err = watch(v6, time.Minute, func() { report() })
	if code, _ := statusOf(err); code != http.StatusNotFound {
		t.Fatalf("its node reports it gone: %v; want 404", err)
	}
	if code, field := statusOf(c.Do(ctx, "GET", "/v1/guests/web?index=x&wait=forever", nil, nil)); code != http.StatusBadRequest || field != "wait" {
		t.Fatalf("a bad wait: %d %q; want 400 wait", code, field)
	}
}

// TestFencedHoldIsStarting: a guest its node holds back while it has no lease (the
// agent's FencedHold), or until the cluster vouches for its start (HoldPrefix), is starting, with that as its error, not failed: the agent
// starts it once the lease is back, and vmctl's wait for it goes on.
func TestFencedHoldIsStarting(t *testing.T) {
	m, c := newTestMaster(t)
	ctx := context.Background()
	report := func(guests ...api.ObservedGuest) {
		t.Helper()
		st := api.NodeStatus{Address: "127.0.0.1:7460", LibvirtURI: "test:///n1", CPUs: 8, MemoryBytes: 16 << 30, Guests: guests}
		if err := m.ReportStatus("n1", st); err != nil {
			t.Fatal(err)
		}
	}
	report()
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "web", CPUs: 1, MemoryBytes: 128 << 20, Failover: api.FailoverRestart}, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		obs  api.ObservedGuest
		want string
	}{
		{api.ObservedGuest{Name: "web", State: "stopped", Error: api.FencedHold}, api.GuestStarting},
		{api.ObservedGuest{Name: "web", State: "paused", Error: api.FencedHold}, api.GuestStarting},
		{api.ObservedGuest{Name: "web", State: "stopped", Error: api.HoldPrefix + "waiting for an assignment read since this node got its lease back"}, api.GuestStarting},
		{api.ObservedGuest{Name: "web", State: "stopped", Error: "start: no such image"}, api.GuestFailed},
		{api.ObservedGuest{Name: "web", State: "running"}, api.GuestRunning},
	} {
		report(tc.obs)
		g, err := m.Guest("web")
		if err != nil {
			t.Fatal(err)
		}
		if g.State != tc.want || g.Error != tc.obs.Error {
			t.Errorf("reported %+v: guest %s (%q), want %s (%q)", tc.obs, g.State, g.Error, tc.want, tc.obs.Error)
		}
	}
}
