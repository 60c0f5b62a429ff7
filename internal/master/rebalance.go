package master

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/scheduler"
)

// Why a guest on a node that takes guests stays where it is in a rebalance: only a
// guest that runs, and can move live now, moves.
const (
	stayTwin     = "twin"            // its standby is placed against its node (a mirrored twin's copy is filled from it)
	stayStopped  = "not running"     // desired stopped or deleted: nothing to move live
	stayStarting = "not running yet" // starting, failed, or its state unknown
	stayMoving   = "moving"          // a migration or a drain's planned move is under way
	stayRecent   = "moved recently"  // the automatic balancer's cooldown
	stayNodePool = "node's own pool" // its disks are on a storage pool of kind dir
)

// stayReason says why g may not move in a rebalance now, "" when it may. cooldown > 0
// keeps a guest whose last migration (made or failed) ended less than cooldown ago.
func (m *Master) stayReason(g *store.GuestRecord, holds map[string]hold, now time.Time, cooldown time.Duration) string {
	switch {
	case g.Failover == api.FailoverTwin:
		return stayTwin
	case m.onNodePool(*g):
		return stayNodePool
	case g.Desired != store.DesiredRunning:
		return stayStopped
	case moveTo(g, holds) != "":
		return stayMoving
	case m.state(*g, now, new(string)) != api.GuestRunning:
		return stayStarting
	}
	if cooldown > 0 && len(g.LastMigration) > 0 {
		var last api.Migration
		if json.Unmarshal(g.LastMigration, &last) == nil && now.Sub(last.FinishedAt) < cooldown {
			return stayRecent
		}
	}
	return ""
}

// rebalanceView is the scheduler's view with every guest that may not move marked to
// stay, and the count of those on nodes that take guests, by why.
func (m *Master) rebalanceView(nodes []store.NodeRecord, guests []store.GuestRecord, cooldown time.Duration) (*scheduler.Scheduler, map[string]int) {
	now := time.Now()
	holds := m.heldMoves()
	accepting := map[string]bool{}
	for _, n := range nodes {
		accepting[n.Name] = !n.Unschedulable && !n.Draining && n.LostAt.IsZero() && m.nodeReady(n.Name, now)
	}
	staying := map[string]int{}
	s := m.schedulerViewWith(nodes, guests, holds, func(g *store.GuestRecord) bool {
		why := m.stayReason(g, holds, now, cooldown)
		if why != "" && accepting[g.Node] {
			staying[why]++
		}
		return why != ""
	})
	return s, staying
}

func imbalanceOf(im scheduler.Imbalance) api.Imbalance {
	return api.Imbalance{Hot: im.Hot, HotShare: im.HotShare, Cold: im.Cold, ColdShare: im.ColdShare, Spread: im.Spread()}
}

// planRebalance plans at most maxMoves moves (0: as many as help) on the state given,
// with the balance before and after them.
func (m *Master) planRebalance(nodes []store.NodeRecord, guests []store.GuestRecord, maxMoves int, cooldown time.Duration) api.RebalancePlan {
	if maxMoves <= 0 {
		maxMoves = len(guests) // each guest moves at most once
	}
	s, staying := m.rebalanceView(nodes, guests, cooldown)
	out := api.RebalancePlan{Moves: []api.RebalanceMove{}, Before: imbalanceOf(s.Imbalance()), Staying: staying}
	byName := make(map[string]int, len(guests))
	for i := range guests {
		byName[guests[i].Name] = i
	}
	after := append([]store.GuestRecord(nil), guests...)
	for _, mv := range s.Rebalance(maxMoves).Moves {
		g := &after[byName[mv.Guest]]
		out.Moves = append(out.Moves, api.RebalanceMove{Guest: mv.Guest, From: mv.From, To: mv.To, CPUs: g.CPUs, MemoryBytes: g.MemoryBytes})
		g.Node = mv.To
	}
	out.After = out.Before
	if len(out.Moves) > 0 {
		out.After = imbalanceOf(m.schedulerView(nodes, after).Imbalance())
	}
	return out
}

// RebalancePlan is what a rebalance would do now; it changes nothing.
func (m *Master) RebalancePlan() api.RebalancePlan {
	nodes, guests, _ := m.st.Snapshot()
	return m.planRebalance(nodes, guests, 0, 0)
}

// Rebalance evens out load over the nodes that take guests by live migration, as the
// scheduler's Rebalance plan says, one move after another: a guest goes from the most
// used node to where Spread would put it, only while that narrows the gap. Only guests
// that run and can move live now move (stayReason); a guest on a node that is draining,
// lost, cordoned or silent is never moved, and no guest moves to such a node. The room
// of every planned move is held from the plan until that move ends, as a drain's is. A
// move whose guest changed meanwhile, or whose destination can no longer take it, is
// reported failed and the others go on; a failed migration leaves its guest running
// where it was. progress gets the plan, then a line per move; the summary comes back.
// Only one rebalance runs at a time, the automatic balancer's included (ErrConflict), and
// none while the cluster adopts its guests after a restore (ErrAdopting).
func (m *Master) Rebalance(ctx context.Context, progress func(api.RebalanceProgress)) (api.RebalanceProgress, error) {
	return m.rebalance(ctx, 0, 0, "rebalance", progress)
}

// rebalance is Rebalance with at most maxMoves moves (0: as many as help), guests that
// moved less than cooldown ago left alone, and what names it in events.
func (m *Master) rebalance(ctx context.Context, maxMoves int, cooldown time.Duration, what string, progress func(api.RebalanceProgress)) (api.RebalanceProgress, error) {
	if err := m.mustPlace(); err != nil {
		return api.RebalanceProgress{}, err
	}
	if !m.rebalancing.CompareAndSwap(false, true) {
		return api.RebalanceProgress{}, fmt.Errorf("a rebalance is running now (see vmctl events): %w; run it again when that one is done", ErrConflict)
	}
	defer m.rebalancing.Store(false)
	m.mu.Lock()
	nodes, guests, _ := m.st.Snapshot()
	plan := m.planRebalance(nodes, guests, maxMoves, cooldown)
	m.holdMu.Lock()
	m.plans++
	id := m.plans
	m.holdMu.Unlock()
	for _, mv := range plan.Moves {
		m.setHold(mv.Guest, hold{from: mv.From, to: mv.To, plan: id})
	}
	m.mu.Unlock()
	defer func() {
		// A rebalance cut short (its request ended, the master lost its role) holds nothing.
		m.mu.Lock()
		for _, mv := range plan.Moves {
			m.dropHold(mv.Guest, id)
		}
		m.mu.Unlock()
		m.wake()
	}()
	progress(api.RebalanceProgress{Plan: &plan})
	m.Record("rebalance", "", "", fmt.Sprintf("%s started: %d move%s, spread %s (%s) to %s%s", what, len(plan.Moves), plural(len(plan.Moves)),
		pct(plan.Before.Spread), orNone(plan.Before.Hot), pct(plan.After.Spread), stayingNote(plan.Staying)))
	start := time.Now()
	sum := api.RebalanceProgress{MoveOutcome: api.MoveOutcome{Done: true}}
	for _, mv := range plan.Moves {
		p := api.RebalanceProgress{Guest: mv.Guest, From: mv.From, To: mv.To}
		err := m.rebalanceMove(ctx, mv, &p)
		m.mu.Lock()
		m.dropHold(mv.Guest, id)
		m.mu.Unlock()
		if err == nil {
			p.Status = "moved"
			sum.Moved++
			m.Record("rebalance", mv.From, mv.Guest, fmt.Sprintf("%s: moved to %s in %.1f s, downtime %.0f ms", what, mv.To, p.TotalSeconds, p.DowntimeSeconds*1000))
		} else {
			p.Status, p.Error = "failed", err.Error()
			sum.Failed++
			if !errors.Is(err, ErrMasterChanged) { // that move goes on: it may yet end on mv.To
				m.Record("rebalance", mv.From, mv.Guest, fmt.Sprintf("%s: not moved to %s, stays where it runs: %s", what, mv.To, p.Error))
			}
		}
		progress(p)
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, ErrMasterChanged) {
			// The moves left are the new master's to plan, with the cluster as it is then.
			sum.Error = "this node stopped being the master: the rebalance ends here; see `vmctl vm ls`, and rebalance again once a master acts"
			break
		}
	}
	nodes, guests, _ = m.st.Snapshot()
	after := imbalanceOf(m.schedulerView(nodes, guests).Imbalance())
	sum.After = &after
	sum.TotalSeconds = time.Since(start).Seconds()
	m.Record("rebalance", "", "", fmt.Sprintf("%s done in %.1f s: %d moved, %d failed; spread now %s", what, sum.TotalSeconds, sum.Moved, sum.Failed, pct(after.Spread)))
	if sum.Moved > 0 {
		dctx, cancel := context.WithTimeout(ctx, DurableTimeout)
		err := m.WaitDurable(dctx)
		cancel()
		if err != nil {
			sum.Unacknowledged = true
			if sum.Error == "" {
				sum.Error = err.Error() + "; the moves are made, but may or may not survive: look (vmctl vm ls) before you rebalance again"
			}
		}
	}
	return sum, nil
}

// rebalanceMove makes one planned move, if its guest is still where the plan found it,
// running and not moving, and its destination can still take it.
func (m *Master) rebalanceMove(ctx context.Context, mv api.RebalanceMove, p *api.RebalanceProgress) error {
	g, ok := m.st.Guest(mv.Guest)
	switch {
	case !ok:
		return fmt.Errorf("guest %q was deleted meanwhile", mv.Guest)
	case g.Node != mv.From || g.MigrateTo != "" || g.Desired != store.DesiredRunning:
		return fmt.Errorf("guest %q moved, stopped or began moving meanwhile: rebalance again to plan with the cluster as it is", mv.Guest)
	}
	res, err := m.Migrate(ctx, mv.Guest, mv.To)
	p.TotalSeconds, p.DowntimeSeconds = res.TotalSeconds, res.DowntimeSeconds
	return err
}

// BalanceLoop is the automatic balancer: while this master acts and nothing else moves,
// it looks every policy.Interval, and when the spread of load is above the threshold,
// moves one guest at a time (a Rebalance plan of one move, guests that moved within the
// cooldown left alone), back to back, until the spread is at most the target or no move
// narrows it. It records every decision as an event. Off (returns at once) unless the
// policy is on.
func (m *Master) BalanceLoop(ctx context.Context) {
	b := m.opts.Balance
	if !b.On() {
		return
	}
	var active, stuck bool
	wait := time.NewTimer(b.Interval)
	defer wait.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wait.C:
		}
		again := m.balanceRound(ctx, &active, &stuck)
		next := b.Interval
		if again {
			next = 0
		}
		wait.Reset(next)
	}
}

// balanceRound is one look of the balancer; it says whether to look again at once (it
// moved a guest and the spread may still be above the target).
func (m *Master) balanceRound(ctx context.Context, active, stuck *bool) bool {
	b := m.opts.Balance
	// After a restore nothing moves until the nodes have reported (adopt.go); the
	// balancer then starts afresh.
	if !m.acting() || m.adopting() != nil {
		*active, *stuck = false, false
		return false
	}
	if m.rebalancing.Load() || m.moving() {
		return false
	}
	nodes, guests, _ := m.st.Snapshot()
	s, _ := m.rebalanceView(nodes, guests, b.Cooldown)
	im := imbalanceOf(s.Imbalance())
	switch {
	case !*active && im.Spread > b.Threshold:
		*active = true
		m.Record("rebalance", im.Hot, "", fmt.Sprintf("automatic rebalance: spread %s (%s most used, %s least) is above balance_threshold %s: moving guests one at a time until it is at most %s",
			pct(im.Spread), im.Hot, im.Cold, pct(b.Threshold), pct(b.Target)))
	case *active && im.Spread <= b.Target:
		*active, *stuck = false, false
		m.Record("rebalance", "", "", fmt.Sprintf("automatic rebalance: balanced, spread %s is at most balance_target %s", pct(im.Spread), pct(b.Target)))
		return false
	}
	if !*active {
		return false
	}
	sum, err := m.rebalance(ctx, 1, b.Cooldown, "automatic rebalance", func(p api.RebalanceProgress) {
		if p.Plan != nil && len(p.Plan.Moves) == 0 && !*stuck {
			*stuck = true
			m.Record("rebalance", im.Hot, "", fmt.Sprintf("automatic rebalance: no move narrows the spread %s now%s; it looks again every %v",
				pct(im.Spread), stayingNote(p.Plan.Staying), b.Interval))
		}
	})
	if err != nil {
		m.log.Info("automatic rebalance: not now", "err", err)
		return false
	}
	if sum.Moved > 0 {
		*stuck = false
		return true
	}
	return false
}

// moving says whether any guest is migrating or has a move planned: the balancer then
// waits, so it never adds a move to others under way.
func (m *Master) moving() bool {
	if len(m.heldMoves()) > 0 {
		return true
	}
	_, guests, _ := m.st.Snapshot()
	for _, g := range guests {
		if g.MigrateTo != "" && !g.Lost {
			return true
		}
	}
	return false
}

func pct(f float64) string { return fmt.Sprintf("%.0f%%", f*100) }

// stayingNote lists why guests stay, for an event: "; 2 staying (1 not running, 1 twin)".
func stayingNote(staying map[string]int) string {
	if len(staying) == 0 {
		return ""
	}
	total := 0
	var parts []string
	for why, n := range staying {
		total += n
		parts = append(parts, fmt.Sprintf("%d %s", n, why))
	}
	sort.Strings(parts)
	return fmt.Sprintf("; %d staying (%s)", total, strings.Join(parts, ", "))
}

// rebalancePlan answers GET /v1/cluster/rebalance: the plan, nothing changed. It takes
// no parameters.
func (h *handler) rebalancePlan(w http.ResponseWriter, r *http.Request) {
	if r.URL.RawQuery != "" {
		fail(w, &api.FieldError{Field: "query", Msg: fmt.Sprintf("GET /v1/cluster/rebalance takes no parameters, not %q", r.URL.RawQuery)})
		return
	}
	writeJSON(w, http.StatusOK, h.m.RebalancePlan())
}

// rebalance streams a rebalance's progress as newline-delimited JSON: the plan, a line
// per move, the summary. A refusal before the first line (a bad body, a master that
// does not act, another rebalance running) is an error status with nothing changed.
func (h *handler) rebalance(w http.ResponseWriter, r *http.Request) {
	if r.URL.RawQuery != "" {
		fail(w, &api.FieldError{Field: "query", Msg: fmt.Sprintf("POST /v1/cluster/rebalance takes no parameters, not %q", r.URL.RawQuery)})
		return
	}
	if err := decodeNone(r); err != nil {
		fail(w, err)
		return
	}
	enc := json.NewEncoder(w)
	started := false
	line := func(p api.RebalanceProgress) {
		if !started {
			started = true
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
		}
		enc.Encode(p)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
	sum, err := h.m.Rebalance(r.Context(), line)
	if err != nil && !started {
		fail(w, err)
		return
	}
	if err != nil {
		sum = api.RebalanceProgress{MoveOutcome: api.MoveOutcome{Done: true, Status: "failed", Error: err.Error()}}
	}
	line(sum)
}
