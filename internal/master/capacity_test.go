package master

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// These tests run the real master over a real raft store and its HTTP API. The test
// plays the agents: it reports nodes (their pool share) and the end of live migrations
// as a node's agent does, through the same endpoints, so it decides when a migration
// ends.

const gib = int64(1) << 30

// capacityMaster is a master whose nodes stay ready however slow the machine (the
// tests assert no timing), with its placement loop running.
func capacityMaster(t *testing.T, opts Options) (*Master, *api.Client) {
	t.Helper()
	opts.NodeTimeout = time.Hour
	m, c := newTestMasterWith(t, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		m.Run(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return m, c
}

// report registers or refreshes a node as its agent does.
func report(t testing.TB, c *api.Client, name string, cpus int, memGiB int64) {
	t.Helper()
	st := api.NodeStatus{Address: "127.0.0.1:7460", LibvirtURI: "test:///" + name, Accelerator: "test",
		HostCPUs: cpus, HostMemoryBytes: memGiB * gib, CPUs: cpus, MemoryBytes: memGiB * gib, Guests: []api.ObservedGuest{}}
	if err := c.Do(context.Background(), "PUT", "/v1/nodes/"+name+"/status", st, nil); err != nil {
		t.Fatal(err)
	}
}

func create(t testing.TB, c *api.Client, name string, cpus int, memGiB int64) api.Guest {
	t.Helper()
	var g api.Guest
	if err := c.Do(context.Background(), "POST", "/v1/guests", api.CreateGuest{Name: name, CPUs: cpus, MemoryBytes: memGiB * gib}, &g); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return g
}

// awaitGuest waits for a change of the state that makes cond true for the guest's
// record; the deadline only bounds a broken run.
func awaitGuest(t testing.TB, st *store.Store, name, what string, cond func(g store.GuestRecord) bool) store.GuestRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		idx := st.Index()
		if g, ok := st.Guest(name); ok && cond(g) {
			return g
		}
		if st.Wait(ctx, idx); ctx.Err() != nil {
			g, _ := st.Guest(name)
			t.Fatalf("gave up waiting for guest %s: %s; it is %+v", name, what, g)
		}
	}
}

// endMigration reports the end of a guest's migration as its source node's agent does.
func endMigration(t testing.TB, c *api.Client, guest, source string, ok bool) {
	t.Helper()
	res := api.Migration{OK: ok, TotalSeconds: 1}
	if !ok {
		res.Error = "destination refused the incoming migration"
	}
	if err := c.Do(context.Background(), "POST", "/v1/guests/"+guest+"/migration?node="+source, res, nil); err != nil {
		t.Fatalf("report end of %s's migration: %v", guest, err)
	}
}

// migrate starts a live migration through the API; the answer comes on the channel
// once the migration ends. A test that fails first drops the request, so the server
// can close.
func migrate(t testing.TB, c *api.Client, guest, to string) <-chan error {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() {
		var res api.Migration
		done <- c.Do(ctx, "POST", "/v1/guests/"+guest+"/migrate", api.MigrateRequest{Node: to}, &res)
	}()
	return done
}

// overfilled lists the nodes where the guests holding room (as primary, twin, or
// destination of a migration in flight) need more than the node's share.
func overfilled(nodes []store.NodeRecord, guests []store.GuestRecord) []string {
	cpu, mem := map[string]int64{}, map[string]int64{}
	for _, g := range guests {
		if g.Node == "" {
			continue
		}
		for _, n := range []string{g.Node, g.TwinNode, g.MigrateTo} {
			if n != "" {
				cpu[n] += int64(g.CPUs)
				mem[n] += g.MemoryBytes
			}
		}
	}
	var out []string
	for _, n := range nodes {
		if cpu[n.Name] > int64(n.CPUs) || mem[n.Name] > n.MemoryBytes {
			out = append(out, fmt.Sprintf("%s: %d of %d CPUs, %d of %d GiB", n.Name, cpu[n.Name], n.CPUs, mem[n.Name]/gib, n.MemoryBytes/gib))
		}
	}
	return out
}

func why(t testing.TB, c *api.Client, guest string) api.Why {
	t.Helper()
	var w api.Why
	if err := c.Do(context.Background(), "GET", "/v1/guests/"+guest+"/why", nil, &w); err != nil {
		t.Fatal(err)
	}
	return w
}

// A live migration holds the guest's room on its destination from its start until it
// ends: creates meanwhile do not get it. On failure the destination's room is free
// again, on success the source's; a pending guest is then placed in it.
func TestMigrationHoldsRoomUntilItEnds(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	st := m.Store()
	report(t, c, "n1", 4, 8)
	if g := create(t, c, "mover", 2, 4); g.Node != "n1" {
		t.Fatalf("mover on %q", g.Node)
	}
	report(t, c, "n2", 4, 8)
	if g := create(t, c, "resident", 2, 4); g.Node != "n2" {
		t.Fatalf("resident on %q", g.Node)
	}

	// Failure: n2's held room comes back.
	done := migrate(t, c, "mover", "n2")
	awaitGuest(t, st, "mover", "migrating to n2", func(g store.GuestRecord) bool { return g.MigrateTo == "n2" })
	if g := create(t, c, "a", 2, 4); g.Node != "n1" {
		t.Fatalf("a on %q: n2's free room is held by the migration, only n1 has room", g.Node)
	}
	b := create(t, c, "b", 2, 4)
	if b.State != api.GuestPending || !strings.Contains(b.PendingReason, "2 nodes: not enough cpu") {
		t.Fatalf("b while the migration runs: %s %q; want pending, both nodes short of CPU", b.State, b.PendingReason)
	}
	if w := why(t, c, "b"); w.Reasons["not enough cpu"] != 2 || w.WouldPlaceOn != "" {
		t.Errorf("why b: %+v", w)
	}
	endMigration(t, c, "mover", "n1", false)
	if err := <-done; err == nil || !strings.Contains(err.Error(), "destination refused") {
		t.Fatalf("failed migration answered %v", err)
	}
	awaitGuest(t, st, "b", "placed on n2 once the failed migration gave its room back", func(g store.GuestRecord) bool { return g.Node == "n2" })
	if g, _ := st.Guest("mover"); g.Node != "n1" || g.MigrateTo != "" {
		t.Fatalf("mover after a failed migration: %+v", g)
	}

	// Success: the source's room comes back.
	report(t, c, "n3", 2, 4)
	done = migrate(t, c, "a", "n3")
	awaitGuest(t, st, "a", "migrating to n3", func(g store.GuestRecord) bool { return g.MigrateTo == "n3" })
	if g := create(t, c, "c", 2, 4); g.State != api.GuestPending || !strings.Contains(g.PendingReason, "3 nodes: not enough cpu") {
		t.Fatalf("c while a migrates: %s %q; want pending (n3's room is held for a, n1 still holds a)", g.State, g.PendingReason)
	}
	endMigration(t, c, "a", "n1", true)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	awaitGuest(t, st, "c", "placed on n1 once a left it", func(g store.GuestRecord) bool { return g.Node == "n1" })
	nodes, guests, _ := st.Snapshot()
	if o := overfilled(nodes, guests); len(o) > 0 {
		t.Fatalf("overfilled: %v", o)
	}
}

// Every placement is checked again where it is committed: a plan made on an older state
// is refused, with the reason, when the state no longer allows it, and nothing of it is
// written. The checks run on the state the store has under m.mu, as every placing write
// does.
func TestCommitRefusesStalePlacements(t *testing.T) {
	late := store.GuestRecord{Name: "late", UUID: "u", OS: "dragonfly", CPUs: 2, MemoryBytes: 4 * gib, Failover: "restart",
		Desired: store.DesiredRunning, Node: "n2"}
	cases := []struct {
		name      string
		meanwhile func(t *testing.T, m *Master) // what happened between plan and commit
		changes   func(base *store.GuestRecord) []change
		refused   []string // "guest@node: reason", in order
	}{
		{
			name: "room taken by a guest",
			meanwhile: func(t *testing.T, m *Master) {
				put(t, m, store.GuestRecord{Name: "filler", CPUs: 4, MemoryBytes: gib, Node: "n2", Desired: store.DesiredRunning})
			},
			refused: []string{`late@n2: not enough cpu: 0 of 4 free, the guest needs 2`},
		},
		{
			name: "memory taken by a guest",
			meanwhile: func(t *testing.T, m *Master) {
				put(t, m, store.GuestRecord{Name: "filler", CPUs: 1, MemoryBytes: 7 * gib, Node: "n2", Desired: store.DesiredRunning})
			},
			refused: []string{`late@n2: not enough memory: 1GiB of 8GiB free, the guest needs 4GiB`},
		},
		{
			name: "room held by a migration in flight",
			meanwhile: func(t *testing.T, m *Master) {
				put(t, m, store.GuestRecord{Name: "mover", CPUs: 3, MemoryBytes: gib, Node: "n1", MigrateTo: "n2", Desired: store.DesiredRunning})
			},
			refused: []string{`late@n2: not enough cpu: 1 of 4 free, the guest needs 2`},
		},
		{
			name: "room held by a drain's planned move",
			meanwhile: func(t *testing.T, m *Master) {
				put(t, m, store.GuestRecord{Name: "drained", CPUs: 3, MemoryBytes: gib, Node: "n1", Desired: store.DesiredRunning})
				m.mu.Lock()
				m.setHold("drained", hold{from: "n1", to: "n2", plan: 99})
				m.mu.Unlock()
			},
			refused: []string{`late@n2: not enough cpu: 1 of 4 free, the guest needs 2`},
		},
		{
			name: "node drained",
			meanwhile: func(t *testing.T, m *Master) {
				n, _ := m.st.Node("n2")
				n.Draining, n.Unschedulable = true, true
				putNode(t, m, n)
			},
			refused: []string{`late@n2: draining`},
		},
		{
			name: "node lost",
			meanwhile: func(t *testing.T, m *Master) {
				n, _ := m.st.Node("n2")
				n.LostAt = time.Now()
				putNode(t, m, n)
			},
			refused: []string{`late@n2: unschedulable: the node is lost`},
		},
		{
			name: "node stopped reporting",
			meanwhile: func(t *testing.T, m *Master) {
				m.obsMu.Lock()
				m.lastSeen["n2"] = time.Now().Add(-2 * m.opts.NodeTimeout)
				m.obsMu.Unlock()
			},
			refused: []string{`late@n2: unschedulable: no status report for over 1h0m0s`},
		},
		{
			name:      "unknown node",
			meanwhile: func(t *testing.T, m *Master) {},
			changes: func(*store.GuestRecord) []change {
				g := late
				g.Node = "n9"
				return []change{{next: g}}
			},
			refused: []string{`late@n9: no such node`},
		},
		{
			name: "name taken meanwhile",
			meanwhile: func(t *testing.T, m *Master) {
				put(t, m, store.GuestRecord{Name: "late", CPUs: 1, MemoryBytes: gib, Desired: store.DesiredStopped})
			},
			refused: []string{`late@: a guest of that name was created meanwhile`},
		},
		{
			name: "guest changed meanwhile",
			meanwhile: func(t *testing.T, m *Master) {
				g, _ := m.st.Guest("pending")
				g.Desired = store.DesiredDeleted
				put(t, m, g)
			},
			changes: func(base *store.GuestRecord) []change {
				next := *base
				next.Node = "n2"
				return []change{{base: base, next: next}}
			},
			refused: []string{`pending@: changed meanwhile (moved, stopped or deleted): plan it again`},
		},
		{
			name:      "one batch, the second placement does not fit after the first",
			meanwhile: func(t *testing.T, m *Master) {},
			changes: func(*store.GuestRecord) []change {
				big, next := late, late
				big.Name, big.CPUs = "big", 3
				return []change{{next: big}, {next: next}}
			},
			refused: []string{`late@n2: not enough cpu: 1 of 4 free, the guest needs 2`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, c := newTestMasterWith(t, Options{NodeTimeout: time.Hour})
			report(t, c, "n1", 4, 8)
			report(t, c, "n2", 4, 8)
			put(t, m, store.GuestRecord{Name: "pending", CPUs: 2, MemoryBytes: 4 * gib, Desired: store.DesiredRunning, PendingReason: "no nodes"})
			// The plan is made on the state as it is here.
			base, _ := m.st.Guest("pending")
			changes := []change{{next: late}}
			if tc.changes != nil {
				changes = tc.changes(&base)
			}
			tc.meanwhile(t, m)
			m.mu.Lock()
			before := m.st.Index()
			nodes, guests, _ := m.st.Snapshot()
			refused, err := m.commit(nodes, guests, changes)
			after := m.st.Index()
			m.mu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range refused {
				got = append(got, r.Guest+"@"+r.Node+": "+r.Reason)
				if !errors.Is(r, ErrConflict) || !strings.Contains(r.Error(), r.Reason) {
					t.Errorf("refusal %v: not a conflict, or its message lacks the reason", r)
				}
			}
			if strings.Join(got, "\n") != strings.Join(tc.refused, "\n") {
				t.Fatalf("refused:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.refused, "\n"))
			}
			if len(refused) == len(changes) && after != before {
				t.Errorf("everything refused, yet the state changed (index %d -> %d)", before, after)
			}
			if len(refused) < len(changes) && after == before {
				t.Errorf("admitted placements not written")
			}
			nodes, guests, _ = m.st.Snapshot()
			if o := overfilled(nodes, guests); len(o) > 0 {
				t.Fatalf("overfilled: %v", o)
			}
		})
	}
}

func put(t testing.TB, m *Master, g store.GuestRecord) {
	t.Helper()
	if _, err := m.st.Apply(store.Command{Op: store.OpPutGuest, Guest: &g}); err != nil {
		t.Fatal(err)
	}
}

func putNode(t testing.TB, m *Master, n store.NodeRecord) {
	t.Helper()
	if _, err := m.st.Apply(store.Command{Op: store.OpPutNode, Node: &n}); err != nil {
		t.Fatal(err)
	}
}

// Many concurrent creates, a migration into a node, a drain and the recovery of a lost
// node, all at once: no state the store ever applies has a node overfilled, and every
// create either got a node or is pending with the reason.
func TestConcurrentPlacementsNeverOverfill(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	st := m.Store()
	// Build the cluster node by node, so the spread puts each group where it is meant:
	// n1 will be lost, n3 drained, n4's big guest migrates to n2.
	report(t, c, "n1", 8, 16)
	for i := 0; i < 3; i++ {
		create(t, c, fmt.Sprintf("lost%d", i), 2, 2)
	}
	report(t, c, "n3", 8, 16)
	for i := 0; i < 3; i++ {
		create(t, c, fmt.Sprintf("drained%d", i), 2, 2)
	}
	report(t, c, "n4", 8, 16)
	create(t, c, "mover", 4, 8)
	report(t, c, "n2", 24, 48)
	create(t, c, "resident", 2, 4)
	for _, want := range [][2]string{{"lost0", "n1"}, {"lost2", "n1"}, {"drained0", "n3"}, {"drained2", "n3"}, {"mover", "n4"}, {"resident", "n2"}} {
		if g, _ := st.Guest(want[0]); g.Node != want[1] {
			t.Fatalf("%s on %q, want %s", want[0], g.Node, want[1])
		}
	}

	// Every state the store applies is checked.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var bad []string
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for idx := st.Index(); ctx.Err() == nil; {
			nodes, guests, at := st.Snapshot()
			if o := overfilled(nodes, guests); len(o) > 0 {
				bad = append(bad, fmt.Sprintf("index %d: %v", at, o))
			}
			idx = st.Wait(ctx, max(idx, at))
		}
	}()

	done := migrate(t, c, "mover", "n2")
	awaitGuest(t, st, "mover", "migrating to n2", func(g store.GuestRecord) bool { return g.MigrateTo == "n2" })
	// The drained node's agent: every migration off n3 ends at once, with success.
	go func() {
		for idx := st.Index(); ctx.Err() == nil; idx = st.Wait(ctx, idx) {
			_, guests, _ := st.Snapshot()
			for _, g := range guests {
				if g.Node == "n3" && g.MigrateTo != "" {
					c.Do(ctx, "POST", "/v1/guests/"+g.Name+"/migration?node=n3", api.Migration{OK: true}, nil)
				}
			}
		}
	}()
	var wg sync.WaitGroup
	var mu sync.Mutex
	created := map[string]api.Guest{}
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 6; i++ {
				name := fmt.Sprintf("new-%d-%d", w, i)
				var g api.Guest
				if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: name, CPUs: 1, MemoryBytes: 2 * gib}, &g); err != nil {
					t.Errorf("create %s: %v", name, err)
					return
				}
				mu.Lock()
				created[name] = g
				mu.Unlock()
			}
		}()
	}
	var drain []api.DrainProgress
	wg.Add(2)
	go func() {
		defer wg.Done()
		sum, err := m.Drain(ctx, "n3", false, func(p api.DrainProgress) { drain = append(drain, p) })
		if err != nil {
			t.Errorf("drain: %v", err)
		}
		drain = append(drain, sum)
	}()
	go func() {
		defer wg.Done()
		m.RecoverNode("n1", "test: declared lost")
	}()
	wg.Wait()
	endMigration(t, c, "mover", "n4", true)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	awaitGuest(t, st, "mover", "on n2", func(g store.GuestRecord) bool { return g.Node == "n2" && g.MigrateTo == "" })
	cancel()
	<-watched

	if len(bad) > 0 {
		t.Fatalf("overfilled states:\n%s", strings.Join(bad, "\n"))
	}
	nodes, guests, _ := st.Snapshot()
	if o := overfilled(nodes, guests); len(o) > 0 {
		t.Fatalf("overfilled at the end: %v", o)
	}
	var pending []string
	for _, g := range guests {
		switch {
		case g.Node == "n1":
			t.Errorf("%s still on the lost node", g.Name)
		case g.Node == "" && !strings.Contains(g.PendingReason, "not placeable"):
			t.Errorf("%s pending without a reason: %q", g.Name, g.PendingReason)
		case g.Node == "":
			pending = append(pending, g.Name)
		}
	}
	if len(created) != 24 {
		t.Fatalf("%d creates answered, want 24", len(created))
	}
	// 18 CPUs free on n2 and 4 on n4 (n1 lost, n3 drained) for 6 CPUs of drained guests,
	// 6 of restarts and 24 of creates: some creates must wait, some must get room.
	placedNew := 0
	for name, g := range created {
		if g.Node != "" {
			placedNew++
		} else if !strings.Contains(g.PendingReason, "not placeable") {
			t.Errorf("%s answered pending without a reason: %q", name, g.PendingReason)
		}
	}
	if len(pending) == 0 || placedNew == 0 {
		t.Errorf("%d guests pending, %d creates placed: the test needs both", len(pending), placedNew)
	}
	sort.Strings(pending)
	t.Logf("pending: %v; drain: %+v", pending, drain[len(drain)-1])
}

// startDrain drains node in the background and returns once the drain has planned its
// moves and holds their rooms: it plans and holds in the same step as it marks the node,
// under the master's lock, so once the mark is in the store and the lock is free, every
// commit after it sees the holds. The summary comes on the channel when the drain ends;
// the progress lines may be read after that.
func startDrain(t *testing.T, m *Master, node string) (<-chan api.DrainProgress, *[]api.DrainProgress) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	lines := new([]api.DrainProgress)
	drained := make(chan api.DrainProgress, 1)
	go func() {
		sum, err := m.Drain(ctx, node, false, func(p api.DrainProgress) { *lines = append(*lines, p) })
		if err != nil {
			t.Errorf("drain: %v", err)
		}
		drained <- sum
	}()
	st := m.Store()
	for idx := st.Index(); ; idx = st.Wait(ctx, idx) {
		if n, _ := st.Node(node); n.Draining {
			break
		}
	}
	m.mu.Lock()
	m.mu.Unlock()
	return drained, lines
}

// A drain holds the room of every move it planned until that move ends, waits for a
// migration that started before it, and plans a move again when its node can no longer
// take the guest.
func TestDrainHoldsRoomAndPlansAgain(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	st := m.Store()
	report(t, c, "n1", 8, 16)
	create(t, c, "g0", 2, 4)
	create(t, c, "g1", 2, 4)
	no := false
	if err := c.Do(context.Background(), "POST", "/v1/guests", api.CreateGuest{Name: "s1", CPUs: 2, MemoryBytes: 4 * gib, Start: &no}, nil); err != nil {
		t.Fatal(err)
	}
	report(t, c, "n2", 4, 8)
	report(t, c, "n3", 4, 8)
	g0 := migrate(t, c, "g0", "n2")
	awaitGuest(t, st, "g0", "migrating to n2", func(g store.GuestRecord) bool { return g.MigrateTo == "n2" })

	drained, lines := startDrain(t, m, "n1")
	holds := m.heldMoves()
	if len(holds) != 2 || holds["g1"].to == "" || holds["s1"].to == "" {
		t.Fatalf("drain holds %+v; want rooms for g1 and s1 (g0 is already moving)", holds)
	}
	// n2 and n3 have 8 CPUs: g0's migration holds 2, the drain 4; room for one more.
	if g := create(t, c, "filler1", 2, 4); g.Node == "" {
		t.Fatalf("filler1 pending: %s", g.PendingReason)
	}
	if g := create(t, c, "filler2", 2, 4); g.Node != "" {
		t.Fatalf("filler2 placed on %s, in room the drain holds", g.Node)
	}

	endMigration(t, c, "g0", "n1", true)
	if err := <-g0; err != nil {
		t.Fatal(err)
	}
	g1 := awaitGuest(t, st, "g1", "migrating", func(g store.GuestRecord) bool { return g.MigrateTo != "" })
	if g1.MigrateTo != holds["g1"].to {
		t.Fatalf("g1 migrates to %s, the drain held %s", g1.MigrateTo, holds["g1"].to)
	}
	// s1's planned node stops reporting; a new node joins (and takes filler2).
	gone := holds["s1"].to
	m.obsMu.Lock()
	m.lastSeen[gone] = time.Now().Add(-2 * m.opts.NodeTimeout)
	m.obsMu.Unlock()
	report(t, c, "n4", 8, 16)
	awaitGuest(t, st, "filler2", "placed on the new node", func(g store.GuestRecord) bool { return g.Node == "n4" })
	endMigration(t, c, "g1", "n1", true)

	sum := <-drained
	if sum.Moved != 3 || sum.Failed != 0 {
		t.Fatalf("drain %+v, lines %+v", sum, *lines)
	}
	s1, _ := st.Guest("s1")
	if s1.Node == gone || s1.Node == "n1" || s1.Node == "" {
		t.Fatalf("s1 on %q: not planned again away from %s", s1.Node, gone)
	}
	for _, p := range *lines {
		if p.Guest == "s1" && (p.To != s1.Node || p.Status != "moved") {
			t.Errorf("progress for s1 %+v; want moved to %s", p, s1.Node)
		}
	}
	if h := m.heldMoves(); len(h) != 0 {
		t.Errorf("holds left after the drain: %+v", h)
	}
	nodes, guests, _ := st.Snapshot()
	if o := overfilled(nodes, guests); len(o) > 0 {
		t.Fatalf("overfilled: %v", o)
	}
}

// A lost node's guests come before planned work: a restart takes room a drain holds
// for a move it has not begun (the drain plans that move again), never room a live
// migration in flight is using.
func TestRecoveryTakesRoomADrainHolds(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	st := m.Store()
	report(t, c, "n4", 2, 4)
	if g := create(t, c, "r1", 2, 4); g.Node != "n4" {
		t.Fatalf("r1 on %q, want n4 (the only node)", g.Node)
	}
	report(t, c, "n1", 8, 16)
	create(t, c, "g0", 2, 4)
	create(t, c, "g1", 2, 4)
	report(t, c, "n2", 4, 8)
	g0 := migrate(t, c, "g0", "n2")
	awaitGuest(t, st, "g0", "migrating to n2", func(g store.GuestRecord) bool { return g.MigrateTo == "n2" })

	drained, lines := startDrain(t, m, "n1")
	if h := m.heldMoves(); h["g1"].to != "n2" {
		t.Fatalf("drain holds %+v; want g1's room on n2", h)
	}
	// n2: g0's migration holds 2 CPUs, the drain 2 for g1: full. n4 is lost.
	m.RecoverNode("n4", "test: declared lost")
	r1, _ := st.Guest("r1")
	if r1.Node != "n2" {
		t.Fatalf("r1 on %q (pending: %q); want n2, in the room the drain held for g1", r1.Node, r1.PendingReason)
	}
	endMigration(t, c, "g0", "n1", true)
	if err := <-g0; err != nil {
		t.Fatal(err)
	}
	sum := <-drained
	g1, _ := st.Guest("g1")
	if g1.Node != "n1" || g1.MigrateTo != "" || sum.Failed != 1 {
		t.Fatalf("g1 on %q migrating to %q, drain %+v (lines %+v); want g1 left on n1, its move failed for want of room", g1.Node, g1.MigrateTo, sum, *lines)
	}
	nodes, guests, _ := st.Snapshot()
	if o := overfilled(nodes, guests); len(o) > 0 {
		t.Fatalf("overfilled: %v", o)
	}
}

// BenchmarkCommitCheck: what the plan applier adds under the lock to every placing
// write, without the write: the books of 5 000 guests on 100 nodes (9% migrating) and
// the check of one placement.
func BenchmarkCommitCheck(b *testing.B) {
	m, _ := newTestMasterWith(b, Options{NodeTimeout: time.Hour})
	var nodes []store.NodeRecord
	var guests []store.GuestRecord
	for i := 0; i < 100; i++ {
		nodes = append(nodes, store.NodeRecord{Name: fmt.Sprintf("n%02d", i), CPUs: 4096, MemoryBytes: 64 << 40})
		m.lastSeen[nodes[i].Name] = time.Now()
	}
	for i := 0; i < 5000; i++ {
		g := store.GuestRecord{Name: fmt.Sprintf("old%04d", i), CPUs: 2, MemoryBytes: 4 * gib, Node: fmt.Sprintf("n%02d", i%100)}
		if i%100 > 0 && i%100 < 10 {
			g.MigrateTo = fmt.Sprintf("n%02d", i%100*10)
		}
		guests = append(guests, g)
	}
	c := change{next: store.GuestRecord{Name: "new", CPUs: 1, MemoryBytes: gib, Node: "n42"}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r := m.books(nodes, guests).admit(&c); r != nil {
			b.Fatal(r)
		}
	}
}

// BenchmarkCreateGuest: creates from one client, 8 and 64 at once, through the master
// (creates made at the same time planned, checked and written in one batch, one raft
// entry each, on a store on disk) on 100 nodes already holding 5 000 guests, 9% of
// them migrating. It reports creates/s and the 99th percentile of a create's latency.
func BenchmarkCreateGuest(b *testing.B) {
	m, _ := newTestMasterWith(b, Options{NodeTimeout: time.Hour})
	for i := 0; i < 100; i++ {
		st := api.NodeStatus{CPUs: 4096, MemoryBytes: 64 << 40, Guests: []api.ObservedGuest{}}
		if err := m.ReportStatus(fmt.Sprintf("n%d", i), st); err != nil {
			b.Fatal(err)
		}
	}
	var cmds []store.Command
	for i := 0; i < 5000; i++ {
		g := store.GuestRecord{Name: fmt.Sprintf("old%d", i), OS: "dragonfly", CPUs: 2, MemoryBytes: 4 * gib, Failover: "restart",
			Desired: store.DesiredRunning, Node: fmt.Sprintf("n%d", i%100)}
		if i%100 < 10 {
			g.MigrateTo = fmt.Sprintf("n%d", i%100*10)
		}
		if g.MigrateTo == g.Node {
			g.MigrateTo = ""
		}
		cmds = append(cmds, store.Command{Op: store.OpPutGuest, Guest: &g})
		if len(cmds) == 500 {
			if _, err := m.st.Apply(cmds...); err != nil {
				b.Fatal(err)
			}
			cmds = cmds[:0]
		}
	}
	n := 0
	for _, clients := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			var mu sync.Mutex
			todo := b.N
			var lat []time.Duration
			var wg sync.WaitGroup
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						mu.Lock()
						if todo == 0 {
							mu.Unlock()
							return
						}
						todo--
						n++
						name := fmt.Sprintf("new%d", n)
						mu.Unlock()
						start := time.Now()
						g, err := m.CreateGuest(api.CreateGuest{Name: name, CPUs: 1, MemoryBytes: 1 * gib})
						took := time.Since(start)
						if err != nil || g.Node == "" {
							b.Errorf("create %s: %v %s", name, err, g.PendingReason)
							return
						}
						mu.Lock()
						lat = append(lat, took)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creates/s")
			if len(lat) > 0 {
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			}
		})
	}
}
