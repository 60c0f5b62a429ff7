package daemon

import (
	"testing"

	"github.com/dvmproject/dvm/internal/api"
)

// TestDvmdRestartKeepsGuests: a dev cluster's dvmd stops (master, agents, API) and
// starts again on its data directory, as in an upgrade of its binary, while libvirt
// keeps its guests: they run on untouched, none restarted (same libvirt domain ids),
// and the cluster shows them running where they were.
func TestDvmdRestartKeepsGuests(t *testing.T) {
	dir := t.TempDir()
	d1, c1 := startDev(t, dir, 3)
	no := false
	for _, g := range []api.CreateGuest{
		{Name: "web", CPUs: 1, MemoryBytes: 1 << 30},
		{Name: "solo", CPUs: 1, MemoryBytes: 1 << 30, Failover: api.FailoverNone},
		{Name: "idle", CPUs: 1, MemoryBytes: 1 << 30, Start: &no},
	} {
		if err := c1.Do(t.Context(), "POST", "/v1/guests", g, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"web", "solo"} {
		waitFor(t, name+" running", func() bool { return guest(t, c1, name).State == api.GuestRunning })
	}
	before := running(t, d1.Nodes)
	d2, c2 := startDevWith(t, DevOptions{Nodes: 3, DataDir: dir, Hypervisors: d1.Detach()})
	for _, name := range []string{"web", "solo"} {
		waitFor(t, name+" running after the restart", func() bool { return guest(t, c2, name).State == api.GuestRunning })
	}
	if g := guest(t, c2, "idle"); g.State != api.GuestStopped {
		t.Fatalf("idle after the restart: %+v", g)
	}
	after := running(t, d2.Nodes)
	if len(after) != len(before) {
		t.Fatalf("running before %+v, after %+v", before, after)
	}
	for name, was := range before {
		if now := after[name]; len(now) != 1 || now[0] != was[0] {
			t.Errorf("guest %s ran as %+v before the restart and as %+v after", name, was, now)
		}
	}
}
