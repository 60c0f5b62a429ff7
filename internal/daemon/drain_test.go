package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
)

// TestDrainOnTestDriver: libvirt's test driver cannot migrate, which makes it the place
// to check the failure path: a running guest whose migration fails stays running where
// it was and is reported; a stopped guest is placed elsewhere; the node takes no new
// guests until undrained.
func TestDrainOnTestDriver(t *testing.T) {
	_, c := startDev(t, t.TempDir(), 2)
	ctx := context.Background()
	f := false
	// Running and stopped guests over both nodes; then n1 is drained.
	for i := 0; i < 4; i++ {
		if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: fmt.Sprintf("run%d", i), CPUs: 1, MemoryBytes: 1 << 30}, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: fmt.Sprintf("idle%d", i), CPUs: 1, MemoryBytes: 1 << 30, Start: &f}, nil); err != nil {
			t.Fatal(err)
		}
	}
	node := "n1"
	var running, stopped []string
	for i := 0; i < 4; i++ {
		r, s := fmt.Sprintf("run%d", i), fmt.Sprintf("idle%d", i)
		waitFor(t, r+" running", func() bool { return guest(t, c, r).State == api.GuestRunning })
		if guest(t, c, r).Node == node {
			running = append(running, r)
		}
		if guest(t, c, s).Node == node {
			stopped = append(stopped, s)
		}
	}
	if len(running) == 0 || len(stopped) == 0 {
		t.Fatalf("spread left %s without running (%v) or stopped (%v) guests", node, running, stopped)
	}
	var lines []api.DrainProgress
	err := c.Stream(ctx, "POST", "/v1/nodes/"+node+"/drain", nil, func(b []byte) error {
		var p api.DrainProgress
		if err := json.Unmarshal(b, &p); err != nil {
			return err
		}
		lines = append(lines, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	last := lines[len(lines)-1]
	if !last.Done || last.Moved != len(stopped) || last.Failed != len(running) || len(lines) != len(running)+len(stopped)+1 {
		t.Fatalf("drain summary %+v (lines %+v); running %v stopped %v", last, lines, running, stopped)
	}
	for _, r := range running {
		if g := guest(t, c, r); g.Node != node || g.State != api.GuestRunning || g.LastMigration == nil || g.LastMigration.OK {
			t.Fatalf("%s after a failed migration: %+v", r, g)
		}
	}
	for _, s := range stopped {
		if g := guest(t, c, s); g.Node == node || g.State != api.GuestStopped {
			t.Fatalf("%s not moved off the drained node: %+v", s, g)
		}
	}
	var nodes []api.Node
	// The drained node takes nothing new.
	for _, name := range []string{"new1", "new2", "new3"} {
		var g api.Guest
		if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: name, CPUs: 1, MemoryBytes: 1 << 30}, &g); err != nil {
			t.Fatal(err)
		}
		if g.Node == node {
			t.Fatalf("%s placed on drained node %s", name, node)
		}
	}
	if err := c.Do(ctx, "POST", "/v1/nodes/"+node+"/undrain", nil, nil); err != nil {
		t.Fatal(err)
	}
	c.Do(ctx, "GET", "/v1/nodes", nil, &nodes)
	for _, n := range nodes {
		if n.Name == node && (!n.Schedulable || n.Draining) {
			t.Fatalf("after undrain: %+v", n)
		}
	}
}
