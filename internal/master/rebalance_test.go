package master

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/scheduler"
)

// reportAll reports every node of names as its agent would, 8 CPUs and 16 GiB each,
// observing as running every guest placed there that is meant to run.
func reportAll(t testing.TB, c *api.Client, st *store.Store, names ...string) {
	t.Helper()
	_, guests, _ := st.Snapshot()
	for _, n := range names {
		obs := []api.ObservedGuest{}
		for _, g := range guests {
			if g.Node == n && g.Desired == store.DesiredRunning {
				obs = append(obs, api.ObservedGuest{Name: g.Name, State: "running"})
			}
		}
		s := api.NodeStatus{Address: "127.0.0.1:7460", LibvirtURI: "test:///" + n, Accelerator: "test",
			HostCPUs: 8, HostMemoryBytes: 16 * gib, CPUs: 8, MemoryBytes: 16 * gib, Guests: obs}
		if err := c.Do(context.Background(), "PUT", "/v1/nodes/"+n+"/status", s, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// pile creates guests of 1 CPU and 2 GiB that all land on n1 (the only node then),
// stopped ones with start false.
func pile(t testing.TB, c *api.Client, running, stopped []string) {
	t.Helper()
	f := false
	for _, list := range [][]string{running, stopped} {
		for _, name := range list {
			req := api.CreateGuest{Name: name, CPUs: 1, MemoryBytes: 2 * gib}
			if contains(stopped, name) {
				req.Start = &f
			}
			var g api.Guest
			if err := c.Do(context.Background(), "POST", "/v1/guests", req, &g); err != nil || g.Node != "n1" {
				t.Fatalf("create %s: on %q, %v", name, g.Node, err)
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// events lists the details of the events of kind.
func events(st *store.Store, kind string) []string {
	var out []string
	for _, e := range st.Events(0) {
		if e.Kind == kind {
			out = append(out, e.Detail)
		}
	}
	return out
}

// `vmctl cluster rebalance`'s API: the plan (GET) changes nothing and moves only running
// guests; the run (POST) makes the plan's moves one after another as live migrations,
// holding their room, streams each, refuses a second run meanwhile, reports a failed
// migration and goes on, and records it all as events.
func TestRebalanceMovesRunningGuestsLive(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	st := m.Store()
	ctx := context.Background()
	reportAll(t, c, st, "n1")
	pile(t, c, []string{"g1", "g2", "g3", "g4"}, []string{"idle"})
	reportAll(t, c, st, "n1", "n2", "n3")

	var plan api.RebalancePlan
	if err := c.Do(ctx, "GET", "/v1/cluster/rebalance", nil, &plan); err != nil {
		t.Fatal(err)
	}
	if len(plan.Moves) < 2 || plan.Before.Hot != "n1" || plan.After.Spread >= plan.Before.Spread || plan.Staying[stayStopped] != 1 {
		t.Fatalf("plan %+v", plan)
	}
	for _, mv := range plan.Moves {
		if mv.From != "n1" || mv.To == "n1" || !strings.HasPrefix(mv.Guest, "g") || mv.CPUs != 1 || mv.MemoryBytes != 2*gib {
			t.Fatalf("move %+v: only running guests leave n1", mv)
		}
	}
	idx := st.Index()
	if h := m.heldMoves(); len(h) != 0 || len(events(st, "rebalance")) != 0 {
		t.Fatalf("the plan changed something: holds %v, events %v", h, events(st, "rebalance"))
	}

	type result struct {
		lines []api.RebalanceProgress
		err   error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.err = c.Stream(ctx, "POST", "/v1/cluster/rebalance", nil, func(b []byte) error {
			var p api.RebalanceProgress
			if err := json.Unmarshal(b, &p); err != nil {
				return err
			}
			r.lines = append(r.lines, p)
			return nil
		})
		done <- r
	}()
	// The test is the source node's agent: it ends each migration, the second one with a
	// failure.
	for i, mv := range plan.Moves {
		awaitGuest(t, st, mv.Guest, "migrating to "+mv.To, func(g store.GuestRecord) bool { return g.MigrateTo == mv.To })
		_, guests, _ := st.Snapshot()
		for _, g := range guests {
			if g.MigrateTo != "" && g.Name != mv.Guest {
				t.Fatalf("%s migrates while %s does: one move at a time", g.Name, mv.Guest)
			}
		}
		// The moves not yet made hold their room; the one under way holds it as a migration.
		if h := m.heldMoves(); len(h) != len(plan.Moves)-i-1 && len(h) != len(plan.Moves)-i {
			t.Fatalf("move %d: holds %v", i, h)
		}
		if i == 0 {
			err := c.Stream(ctx, "POST", "/v1/cluster/rebalance", nil, func([]byte) error { return nil })
			if code, _ := statusOf(err); code != http.StatusConflict || !strings.Contains(err.Error(), "a rebalance is running now") {
				t.Fatalf("a second rebalance meanwhile: %v, want 409", err)
			}
		}
		endMigration(t, c, mv.Guest, "n1", i != 1)
		reportAll(t, c, st, "n1", "n2", "n3")
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if len(r.lines) != len(plan.Moves)+2 || r.lines[0].Plan == nil || len(r.lines[0].Plan.Moves) != len(plan.Moves) {
		t.Fatalf("lines %+v: want the plan, a line per move, the summary", r.lines)
	}
	sum := r.lines[len(r.lines)-1]
	if !sum.Done || sum.Moved != len(plan.Moves)-1 || sum.Failed != 1 || sum.After == nil || sum.After.Spread >= plan.Before.Spread || sum.Unacknowledged {
		t.Fatalf("summary %+v", sum)
	}
	for i, mv := range plan.Moves {
		p := r.lines[i+1]
		g, _ := st.Guest(mv.Guest)
		switch {
		case i == 1 && (p.Status != "failed" || !strings.Contains(p.Error, "destination refused") || g.Node != "n1"):
			t.Fatalf("failed move: line %+v, guest on %s", p, g.Node)
		case i != 1 && (p.Status != "moved" || g.Node != mv.To || g.MigrateTo != ""):
			t.Fatalf("move %+v: line %+v, guest %+v", mv, p, g)
		}
	}
	if g, _ := st.Guest("idle"); g.Node != "n1" {
		t.Fatalf("the stopped guest moved to %s", g.Node)
	}
	if h := m.heldMoves(); len(h) != 0 {
		t.Fatalf("holds left after the rebalance: %v", h)
	}
	ev := strings.Join(events(st, "rebalance"), "\n")
	for _, want := range []string{"rebalance started: ", "moved to ", "not moved to ", "rebalance done in "} {
		if !strings.Contains(ev, want) {
			t.Errorf("events lack %q:\n%s", want, ev)
		}
	}
	if st.Index() == idx {
		t.Fatal("the run wrote nothing")
	}
}

// Bad input to the rebalance endpoints is a 400 that says what was wrong, and nothing
// changes: no hold, no migration, no event.
func TestRebalanceRefusesBadInputAndChangesNothing(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	st := m.Store()
	ctx := context.Background()
	reportAll(t, c, st, "n1")
	pile(t, c, []string{"g1", "g2"}, nil)
	reportAll(t, c, st, "n1", "n2")
	before := len(st.Events(0))
	cases := []struct {
		method, path string
		body         any
		field, msg   string
	}{
		{"POST", "/v1/cluster/rebalance", map[string]any{"dry_run": true}, "dry_run", "unknown field"},
		{"POST", "/v1/cluster/rebalance", map[string]any{"max_moves": 3}, "max_moves", "unknown field"},
		{"POST", "/v1/cluster/rebalance", []int{1}, "body", "must be a JSON object"},
		{"POST", "/v1/cluster/rebalance?dry_run=true", nil, "query", "takes no parameters"},
		{"GET", "/v1/cluster/rebalance?max_moves=1", nil, "query", "takes no parameters"},
	}
	for _, tc := range cases {
		err := c.Do(ctx, tc.method, tc.path, tc.body, nil)
		code, field := statusOf(err)
		if code != http.StatusBadRequest || field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s %s %v: %v (field %q), want 400 on %s saying %q", tc.method, tc.path, tc.body, err, field, tc.field, tc.msg)
		}
	}
	_, guests, _ := st.Snapshot()
	for _, g := range guests {
		if g.Node != "n1" || g.MigrateTo != "" {
			t.Fatalf("%s changed: %+v", g.Name, g)
		}
	}
	if h := m.heldMoves(); len(h) != 0 || len(st.Events(0)) != before {
		t.Fatalf("holds %v, events %v", h, st.Events(0)[before:])
	}
}

// Who may not move: twins, guests not running or not running yet, guests moving, and
// (with a cooldown) guests that moved recently.
func TestStayReason(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	st := m.Store()
	reportAll(t, c, st, "n1")
	pile(t, c, []string{"run"}, nil)
	reportAll(t, c, st, "n1")
	g, _ := st.Guest("run")
	now := time.Now()
	if why := m.stayReason(&g, nil, now, time.Hour); why != "" {
		t.Fatalf("a running guest stays: %s", why)
	}
	recent := func(ago time.Duration) store.GuestRecord {
		r := g
		r.LastMigration, _ = json.Marshal(api.Migration{OK: true, FinishedAt: now.Add(-ago)})
		return r
	}
	cases := map[string]struct {
		g        store.GuestRecord
		holds    map[string]hold
		cooldown time.Duration
		want     string
	}{
		"twin":             {func() store.GuestRecord { r := g; r.Failover = api.FailoverTwin; return r }(), nil, 0, stayTwin},
		"stopped":          {func() store.GuestRecord { r := g; r.Desired = store.DesiredStopped; return r }(), nil, 0, stayStopped},
		"deleted":          {func() store.GuestRecord { r := g; r.Desired = store.DesiredDeleted; return r }(), nil, 0, stayStopped},
		"migrating":        {func() store.GuestRecord { r := g; r.MigrateTo = "n2"; return r }(), nil, 0, stayMoving},
		"a drain's move":   {g, map[string]hold{"run": {from: "n1", to: "n2", plan: 1}}, 0, stayMoving},
		"not seen running": {func() store.GuestRecord { r := g; r.Name = "other"; return r }(), nil, 0, stayStarting},
		"moved recently":   {recent(time.Minute), nil, time.Hour, stayRecent},
		"moved long ago":   {recent(2 * time.Hour), nil, time.Hour, ""},
		"no cooldown":      {recent(time.Second), nil, 0, ""},
	}
	for name, tc := range cases {
		if why := m.stayReason(&tc.g, tc.holds, now, tc.cooldown); why != tc.want {
			t.Errorf("%s: %q, want %q", name, why, tc.want)
		}
	}
}

// The automatic balancer, one round at a time (balanceRound is what BalanceLoop runs
// every interval): above the threshold it moves one guest per round until the spread is
// at most the target, then rests; between target and threshold it starts nothing (the
// hysteresis band); it waits while another move is under way; it does nothing on a
// master that does not act.
func TestBalancerHysteresis(t *testing.T) {
	auth := &switchAuthority{}
	auth.acting.Store(true)
	m, c := capacityMaster(t, Options{Authority: auth})
	st := m.Store()
	reportAll(t, c, st, "n1")
	pile(t, c, []string{"g1", "g2", "g3", "g4"}, nil)
	reportAll(t, c, st, "n1", "n2", "n3")
	// n1 holds 4 of 8 CPUs: spread 50%.
	m.opts.Balance = scheduler.Balance{Threshold: 0.30, Target: 0.15, Interval: time.Second, Cooldown: time.Hour}
	ctx := context.Background()
	var active, stuck bool
	// round runs one round, playing the source agents: it ends every migration the
	// balancer starts. A migration of a guest in byHand (started by the test) is left
	// alone; with still, the balancer must start none.
	round := func(still bool, byHand ...string) bool {
		t.Helper()
		again := make(chan bool, 1)
		go func() { again <- m.balanceRound(ctx, &active, &stuck) }()
		for {
			select {
			case a := <-again:
				return a
			default:
			}
			_, guests, _ := st.Snapshot()
			var moving []store.GuestRecord
			for _, g := range guests {
				if g.MigrateTo != "" && !slices.Contains(byHand, g.Name) {
					moving = append(moving, g)
				}
			}
			if len(moving) > 0 && still {
				t.Fatalf("the balancer moved %s when it should not act", moving[0].Name)
			}
			if len(moving) > 1 {
				t.Fatalf("the balancer moves %d guests at once", len(moving))
			}
			if len(moving) == 1 {
				endMigration(t, c, moving[0].Name, moving[0].Node, true)
				reportAll(t, c, st, "n1", "n2", "n3")
			}
			idx := st.Index()
			wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			st.Wait(wctx, idx)
			cancel()
		}
	}
	onN1 := func() int {
		_, guests, _ := st.Snapshot()
		n := 0
		for _, g := range guests {
			if g.Node == "n1" {
				n++
			}
		}
		return n
	}
	// 50% → 37.5% → 25%... each round one move, until the spread is at most 15%.
	for moves := 1; round(false); moves++ {
		if onN1() != 4-moves {
			t.Fatalf("after round %d: %d guests on n1", moves, onN1())
		}
		if moves > 4 {
			t.Fatal("the balancer does not stop")
		}
	}
	if round(true) || active {
		t.Fatal("the balancer goes on after the spread reached the target")
	}
	ev := strings.Join(events(st, "rebalance"), "\n")
	for _, want := range []string{"is above balance_threshold 30%", "automatic rebalance: moved to", "balanced, spread"} {
		if !strings.Contains(ev, want) {
			t.Errorf("events lack %q:\n%s", want, ev)
		}
	}
	settled := onN1()

	// Between target and threshold nothing starts: one more guest on n1.
	before := len(events(st, "rebalance"))
	putOn(t, m, "n1", "g5")
	reportAll(t, c, st, "n1", "n2", "n3")
	nodes, guests, _ := st.Snapshot()
	s, _ := m.rebalanceView(nodes, guests, 0)
	if sp := s.Imbalance().Spread(); sp <= 0.15 || sp > 0.30 {
		t.Fatalf("spread %v: the test wants it inside the band", sp)
	}
	if round(true) || onN1() != settled+1 || len(events(st, "rebalance")) != before {
		t.Fatalf("the balancer acted inside the band: %d on n1, events %v", onN1(), events(st, "rebalance")[before:])
	}

	// Above the threshold again, but a migration started by hand is under way: it waits.
	putOn(t, m, "n1", "g7", "g8")
	reportAll(t, c, st, "n1", "n2", "n3")
	mig := migrate(t, c, "g7", "n3")
	awaitGuest(t, st, "g7", "migrating", func(g store.GuestRecord) bool { return g.MigrateTo == "n3" })
	if round(true, "g7") || active {
		t.Fatal("the balancer acted while a migration was under way")
	}
	endMigration(t, c, "g7", "n1", true)
	if err := <-mig; err != nil {
		t.Fatal(err)
	}
	reportAll(t, c, st, "n1", "n2", "n3")

	// A master that does not act does nothing.
	auth.acting.Store(false)
	if round(true) || active {
		t.Fatal("the balancer acted on a master that does not act")
	}
	auth.acting.Store(true)
	// Acting again, it moves.
	n := onN1()
	if !round(false) || onN1() != n-1 {
		t.Fatalf("the balancer did not move a guest off n1 above the threshold: %d there, was %d", onN1(), n)
	}
}

// putOn writes running guests of 1 CPU and 2 GiB onto node, as if placed there.
func putOn(t *testing.T, m *Master, node string, names ...string) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, name := range names {
		g := store.GuestRecord{Name: name, UUID: name, OS: "dragonfly", CPUs: 1, MemoryBytes: 2 * gib, Failover: "restart",
			Desired: store.DesiredRunning, Node: node}
		if _, err := m.st.Apply(store.Command{Op: store.OpPutGuest, Guest: &g}); err != nil {
			t.Fatal(err)
		}
	}
}

// switchAuthority is an Authority a test turns on and off.
type switchAuthority struct{ acting atomic.Bool }

func (a *switchAuthority) Acting() bool { return a.acting.Load() }

// A migration whose source node is lost never gets its agent's report: its waiter (a
// migrate request, a drain, a rebalance, the balancer) is told when the node is
// recovered, instead of waiting for ever.
func TestMigrationWaiterLearnsOfNodeLoss(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	st := m.Store()
	reportAll(t, c, st, "n1")
	pile(t, c, []string{"g"}, nil)
	reportAll(t, c, st, "n1", "n2", "n3")
	done := migrate(t, c, "g", "n2")
	awaitGuest(t, st, "g", "migrating", func(g store.GuestRecord) bool { return g.MigrateTo == "n2" })
	m.RecoverNode("n1", "test: declared lost")
	if err := <-done; err == nil || !strings.Contains(err.Error(), "node n1 was lost during the migration") {
		t.Fatalf("the migrate request answered %v", err)
	}
	if g, _ := st.Guest("g"); g.Node == "n1" || g.MigrateTo != "" {
		t.Fatalf("g after its node was lost: %+v", g)
	}
}

// A node that stops being the master while it waits for a migration's end never hears
// of it (the agent reports to the new master): the rebalance learns it, ends without
// starting more moves, and leaves no rebalance marked running, so a later one on this
// node, master again, is not refused.
func TestRebalanceEndsWhenTheMasterChanges(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	st := m.Store()
	reportAll(t, c, st, "n1")
	pile(t, c, []string{"g1", "g2", "g3", "g4"}, nil)
	reportAll(t, c, st, "n1", "n2", "n3")
	type result struct {
		lines []api.RebalanceProgress
		sum   api.RebalanceProgress
		err   error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.sum, r.err = m.Rebalance(context.Background(), func(p api.RebalanceProgress) { r.lines = append(r.lines, p) })
		done <- r
	}()
	var first string
	awaitGuest(t, st, "g1", "a move under way", func(store.GuestRecord) bool {
		_, guests, _ := st.Snapshot()
		for _, g := range guests {
			if g.MigrateTo != "" {
				first = g.Name
				return true
			}
		}
		return false
	})
	if err := st.Raft().Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if len(r.lines) != 2 || r.lines[0].Plan == nil || len(r.lines[0].Plan.Moves) < 2 {
		t.Fatalf("lines %+v: want the plan and the one move begun", r.lines)
	}
	if p := r.lines[1]; p.Guest != first || p.Status != "failed" || !strings.Contains(p.Error, "stopped being the master") || !strings.Contains(p.Error, "the migration goes on") {
		t.Fatalf("the move under way: %+v", p)
	}
	if !r.sum.Done || r.sum.Moved != 0 || !strings.Contains(r.sum.Error, "the rebalance ends here") {
		t.Fatalf("summary %+v", r.sum)
	}
	if m.rebalancing.Load() {
		t.Fatal("a rebalance is still marked running")
	}
	m.migMu.Lock()
	defer m.migMu.Unlock()
	if len(m.pending) != 0 {
		t.Fatalf("waiters left: %v", m.pending)
	}
}

// After a restore nothing moves until the nodes have reported: a rebalance is refused
// (409, saying why) and the balancer waits, and nothing changes.
func TestRebalanceWaitsForTheAdoption(t *testing.T) {
	m, c := capacityMaster(t, Options{Balance: scheduler.Balance{Threshold: 0.2, Target: 0.1, Interval: time.Second, Cooldown: time.Hour}})
	st := m.Store()
	reportAll(t, c, st, "n1")
	pile(t, c, []string{"g1", "g2", "g3", "g4"}, nil)
	reportAll(t, c, st, "n1", "n2", "n3")
	m.mu.Lock()
	_, err := st.Apply(store.Command{Op: store.OpSetAdoption, Adoption: &store.Adoption{RestoredAt: time.Now(), Awaiting: []string{"n4"}, Deadline: time.Now().Add(time.Hour)}})
	m.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	before, idx := len(events(st, "rebalance")), st.Index()
	err = c.Stream(context.Background(), "POST", "/v1/cluster/rebalance", nil, func([]byte) error { return nil })
	if code, _ := statusOf(err); code != http.StatusConflict || !strings.Contains(err.Error(), "adopting its guests after a restore") {
		t.Fatalf("rebalance while adopting: %v, want 409", err)
	}
	var active, stuck bool
	if m.balanceRound(context.Background(), &active, &stuck) || active {
		t.Fatal("the balancer acted while the cluster adopts")
	}
	_, guests, _ := st.Snapshot()
	for _, g := range guests {
		if g.Node != "n1" || g.MigrateTo != "" {
			t.Fatalf("%s moved while adopting: %+v", g.Name, g)
		}
	}
	if h := m.heldMoves(); len(h) != 0 || len(events(st, "rebalance")) != before || m.rebalancing.Load() {
		t.Fatalf("holds %v, rebalance events %v, running %v", h, events(st, "rebalance")[before:], m.rebalancing.Load())
	}
	if st.Index() != idx {
		t.Fatalf("%d writes while refused", st.Index()-idx)
	}
}
