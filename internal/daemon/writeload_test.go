package daemon

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/master"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/internal/writeload"
)

// TestWriteLoadOnDevCluster runs scripts/bench-writes' driver against a dev cluster
// over its HTTPS API with a token: creates of stopped guests from concurrent clients.
// Every create is acknowledged once, each guest is recorded once, stopped, and every
// write is an event naming its token. DVM_WRITES_CLIENTS and DVM_WRITES_COUNT make it
// larger, to try the driver; it asserts no speed.
func TestWriteLoadOnDevCluster(t *testing.T) {
	clients, count, err := writeload.FromEnv(8, 48)
	if err != nil {
		t.Fatal(err)
	}
	d, c := startDev(t, t.TempDir(), 2)
	ctx := context.Background()
	var before []api.Event
	if err := c.Do(ctx, "GET", "/v1/events", nil, &before); err != nil {
		t.Fatal(err)
	}
	var seq uint64
	if len(before) > 0 {
		seq = before[len(before)-1].Seq
	}
	res, err := writeload.Run(ctx, c, writeload.Options{Clients: clients, Count: count, Prefix: "load",
		Guest: api.CreateGuest{CPUs: 1, MemoryBytes: 64 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d clients: %s", clients, res)
	if res.Acknowledged != count || len(res.Failed) > 0 {
		t.Fatalf("%d of %d creates acknowledged: %s", res.Acknowledged, count, res)
	}
	_, guests, _ := d.master.Store().Snapshot()
	recorded := map[string]bool{}
	for _, g := range guests {
		if g.Desired != store.DesiredStopped {
			t.Errorf("guest %s desired %s, want stopped", g.Name, g.Desired)
		}
		recorded[g.Name] = true
	}
	for i := 1; i <= count; i++ {
		if name := fmt.Sprintf("load-%d", i); !recorded[name] {
			t.Errorf("%s acknowledged, not recorded", name)
		}
	}
	var evs []api.Event
	if err := c.Do(ctx, "GET", "/v1/events?after="+strconv.FormatUint(seq, 10), nil, &evs); err != nil {
		t.Fatal(err)
	}
	writes := map[string]int{}
	for _, e := range evs {
		if e.Kind == master.EventWrite && e.Token == api.BootstrapToken {
			writes[e.Guest]++
		}
	}
	if count <= store.MaxEvents/2 {
		for i := 1; i <= count; i++ {
			if name := fmt.Sprintf("load-%d", i); writes[name] != 1 {
				t.Errorf("%s: %d write events, want 1", name, writes[name])
			}
		}
	}
}
