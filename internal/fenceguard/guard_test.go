package fenceguard

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
)

// TestFenceOnceStopsOnlyHAGuests: with a paused guests' record the guard pauses the
// restart and twin guests and records each with the basis dvmd left; without one it
// destroys them; guests of policy none run on either way, and a paused HA guest the
// record does not hold is destroyed.
func TestFenceOnceStopsOnlyHAGuests(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, record := range []bool{false, true} {
		dir := t.TempDir()
		uri, err := hypervisor.TestDriverURI(dir, "n1", hypervisor.Capacity{CPUs: 4, MemoryBytes: 8 << 30})
		if err != nil {
			t.Fatal(err)
		}
		node, err := hypervisor.Open(hypervisor.Options{URI: uri})
		if err != nil {
			t.Fatal(err)
		}
		defer node.Close()
		for _, g := range []struct{ name, policy string }{{"ha1", "restart"}, {"tw1", "twin"}, {"plain", "none"}, {"byhand", "restart"}} {
			if err := node.Define(hypervisor.GuestSpec{Name: g.name, CPUs: 1, MemoryBytes: 1 << 30, Disk: &hypervisor.Disk{Path: "/d/" + g.name}, Failover: g.policy}); err != nil {
				t.Fatal(err)
			}
			if err := node.Start(g.name); err != nil {
				t.Fatal(err)
			}
		}
		if err := node.Suspend("byhand"); err != nil {
			t.Fatal(err)
		}
		stopped := hypervisor.StateStopped
		file := ""
		if record {
			file = filepath.Join(dir, "paused-guests.json")
			if err := UpdatePaused(file, func(p *Paused) { p.Losses, p.Counted = 4, true }); err != nil {
				t.Fatal(err)
			}
			stopped = hypervisor.StatePaused
		}
		n, err := FenceOnce(node, file, log)
		if err != nil || n != 3 {
			t.Fatalf("record %v: FenceOnce = %d, %v; want 3 HA guests stopped", record, n, err)
		}
		for name, want := range map[string]hypervisor.State{"ha1": stopped, "tw1": stopped, "plain": hypervisor.StateRunning, "byhand": hypervisor.StateStopped} {
			if st, _ := node.State(name); st != want {
				t.Errorf("record %v: %s: %s, want %s", record, name, st, want)
			}
		}
		if !record {
			continue
		}
		p, err := ReadPaused(file)
		if err != nil || len(p.Guests) != 2 || p.Guests["ha1"].Losses != 4 || !p.Guests["ha1"].Counted || p.Guests["ha1"].UUID == "" {
			t.Errorf("record %+v, %v; want ha1 and tw1 with losses 4, counted, and their UUIDs", p, err)
		}
		// Again: the paused guests stay paused, nothing more is stopped.
		if n, err := FenceOnce(node, file, log); err != nil || n != 0 {
			t.Errorf("second FenceOnce = %d, %v; want nothing more stopped", n, err)
		}
	}
}

func TestVouch(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lease")
	if !vouchedUntil(p).IsZero() {
		t.Fatal("a missing lease file must vouch for nothing")
	}
	until := time.Now().Add(time.Second)
	if err := Vouch(p, until); err != nil {
		t.Fatal(err)
	}
	if got := vouchedUntil(p); !got.Equal(time.Unix(0, until.UnixNano())) {
		t.Fatalf("read back as %v, want %v", got, until)
	}
	if err := Run(context.Background(), Options{}); err == nil {
		t.Fatal("a guard without a lease file or window started")
	}
}
