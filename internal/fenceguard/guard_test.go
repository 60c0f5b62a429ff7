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

func TestFenceOnceStopsOnlyHAGuests(t *testing.T) {
	uri, err := hypervisor.TestDriverURI(t.TempDir(), "n1", hypervisor.Capacity{CPUs: 4, MemoryBytes: 8 << 30})
	if err != nil {
		t.Fatal(err)
	}
	node, err := hypervisor.Open(hypervisor.Options{URI: uri})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	for _, g := range []struct{ name, policy string }{{"ha1", "restart"}, {"tw1", "twin"}, {"plain", "none"}} {
		if err := node.Define(hypervisor.GuestSpec{Name: g.name, CPUs: 1, MemoryBytes: 1 << 30, Disk: &hypervisor.Disk{Path: "/d/" + g.name}, Failover: g.policy}); err != nil {
			t.Fatal(err)
		}
		if err := node.Start(g.name); err != nil {
			t.Fatal(err)
		}
	}
	n, err := FenceOnce(node, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || n != 2 {
		t.Fatalf("FenceOnce = %d, %v; want 2 HA guests stopped", n, err)
	}
	for name, want := range map[string]hypervisor.State{"ha1": hypervisor.StateStopped, "tw1": hypervisor.StateStopped, "plain": hypervisor.StateRunning} {
		if st, _ := node.State(name); st != want {
			t.Errorf("%s: %s, want %s", name, st, want)
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
