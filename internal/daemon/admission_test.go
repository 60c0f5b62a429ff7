package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/scheduler"
)

// TestHAAdmissionRefusesAndChangesNothing: with room kept for the restart guests of one
// lost node, creates go through until the next one would eat that room; that one is
// refused with the reason, and nothing is created.
func TestHAAdmissionRefusesAndChangesNothing(t *testing.T) {
	d, err := StartDev(context.Background(), DevOptions{Nodes: 2, Listen: "127.0.0.1:0", DataDir: t.TempDir(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Scheduler: &scheduler.Options{Strategy: scheduler.Spread, HAReserveNodes: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	c, err := d.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	waitFor(t, "nodes ready", func() bool {
		var ns []api.Node
		return c.Do(ctx, "GET", "/v1/nodes", nil, &ns) == nil && len(ns) == 2 && ns[0].State == api.NodeReady && ns[1].State == api.NodeReady
	})
	// n1 offers 63 GiB, n2 95 GiB: 16 GiB guests fit until a lost n2 could not be absorbed.
	var refused *api.StatusError
	created := 0
	for i := 0; i < 20 && refused == nil; i++ {
		err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: fmt.Sprintf("ha%d", i), CPUs: 1, MemoryBytes: 16 << 30}, nil)
		switch {
		case err == nil:
			created++
		case errors.As(err, &refused):
		default:
			t.Fatal(err)
		}
	}
	if refused == nil || refused.Code != 409 || !strings.Contains(refused.Msg, "HA admission control") {
		t.Fatalf("no refusal by admission control after %d creates: %v", created, refused)
	}
	var guests []api.Guest
	c.Do(ctx, "GET", "/v1/guests", nil, &guests)
	if len(guests) != created || created == 0 {
		t.Fatalf("%d guests exist, %d were created: a refused create left something behind", len(guests), created)
	}
	// Guests with failover none need no reserve and are still admitted.
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "scratch", CPUs: 1, MemoryBytes: 1 << 30, Failover: api.FailoverNone}, nil); err != nil {
		t.Fatalf("a failover-none guest was refused: %v", err)
	}
}
