package daemon

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
)

// silentLibvirt is a libvirt socket that accepts connections and never answers: a
// migration to it waits in libvirt's connect until hangUp, then fails. It lets a test
// keep a real migration in flight as long as it needs.
type silentLibvirt struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	took  chan struct{} // closed on the first connection
}

func newSilentLibvirt(t *testing.T) (*silentLibvirt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "libvirt.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := &silentLibvirt{ln: ln, took: make(chan struct{})}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.conns == nil {
				close(s.took)
			}
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.hangUp)
	return s, "qemu+unix:///system?socket=" + path
}

// hangUp closes every connection: libvirt's connect fails at once.
func (s *silentLibvirt) hangUp() {
	s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = []net.Conn{}
}

// A live migration between nodes of a dev cluster, carried out by the source node's
// agent through libvirt, holds the guest's room on its destination until it ends:
// concurrent creates that can only go there get the room that is left and no more, the
// others wait with the reason; when the migration fails, the room comes back and the
// waiting guests are placed.
func TestMigrationHoldsRoomOnTestDriver(t *testing.T) {
	_, c := startDev(t, t.TempDir(), 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mover api.Guest
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "mover", CPUs: 2, MemoryBytes: 8 << 30}, &mover); err != nil {
		t.Fatal(err)
	}
	source := mover.Node
	waitFor(t, "mover running", func() bool { return guest(t, c, "mover").State == api.GuestRunning })
	// n3 has no agent: the test reports for it, as its agent would, with a libvirt that
	// never answers, so the migration to it stays in flight until the test hangs up.
	silent, uri := newSilentLibvirt(t)
	n3 := api.NodeStatus{Address: "127.0.0.1:1", LibvirtURI: uri, Accelerator: "test", HostCPUs: 8, HostMemoryBytes: 16 << 30,
		CPUs: 8, MemoryBytes: 16 << 30, Labels: map[string]string{"rack": "r9"}, Guests: []api.ObservedGuest{}}
	report := func() error { return c.Do(ctx, "PUT", "/v1/nodes/n3/status", n3, nil) }
	if err := report(); err != nil {
		t.Fatal(err)
	}
	reporting := make(chan struct{})
	go func() {
		defer close(reporting)
		for ctx.Err() == nil {
			report()
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	defer func() { cancel(); <-reporting }()

	migrated := make(chan error, 1)
	go func() {
		var res api.Migration
		migrated <- c.Do(ctx, "POST", "/v1/guests/mover/migrate", api.MigrateRequest{Node: "n3"}, &res)
	}()
	<-silent.took // the source's agent is in libvirt's connect to n3

	// Eight creates at once, each fitting only n3 (2 GiB of its 16, rack r9): the
	// migration holds 8 GiB there, so four fit and four wait.
	var wg sync.WaitGroup
	got := make([]api.Guest, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := api.CreateGuest{Name: fmt.Sprintf("r9-%d", i), CPUs: 1, MemoryBytes: 2 << 30, Constraints: map[string]string{"rack": "r9"}}
			if err := c.Do(ctx, "POST", "/v1/guests", req, &got[i]); err != nil {
				t.Errorf("create %s: %v", req.Name, err)
			}
		}()
	}
	wg.Wait()
	placed := 0
	for _, g := range got {
		switch {
		case g.Node == "n3":
			placed++
		case g.State != api.GuestPending || !strings.Contains(g.PendingReason, "1 node: not enough memory") ||
			!strings.Contains(g.PendingReason, "2 nodes: label constraint not met"):
			t.Errorf("%s: %s on %q, %q; want pending for want of memory on n3", g.Name, g.State, g.Node, g.PendingReason)
		}
	}
	if placed != 4 {
		t.Fatalf("%d guests placed on n3 while the migration holds 8 of its 16 GiB; want 4", placed)
	}
	if m := guest(t, c, "mover"); m.State != api.GuestMigrating || m.Node != source {
		t.Fatalf("mover %s on %s; want still migrating from %s", m.State, m.Node, source)
	}

	silent.hangUp()
	if err := <-migrated; err == nil {
		t.Fatal("migration to a libvirt that hung up succeeded")
	}
	m := guest(t, c, "mover")
	if m.Node != source || m.LastMigration == nil || m.LastMigration.OK {
		t.Fatalf("mover after the failed migration: %+v", m)
	}
	waitFor(t, "the waiting guests placed in the room the migration gave back", func() bool {
		for _, g := range got {
			if guest(t, c, g.Name).Node != "n3" {
				return false
			}
		}
		return true
	})
}
