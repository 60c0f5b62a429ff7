package scheduler

import (
	"reflect"
	"sort"
	"strings"
	"testing"
)

// freeAll records every node's free share, to show a plan changed nothing.
func freeAll(s *Scheduler) map[string][2]int64 {
	out := map[string][2]int64{}
	for i := range s.nodes {
		c, m, _ := s.Free(s.nodes[i].name)
		out[s.nodes[i].name] = [2]int64{int64(c), m}
	}
	return out
}

func assign(t *testing.T, s *Scheduler, g Guest, node, twinNode string) {
	t.Helper()
	if err := s.Assign(Assignment{Guest: g, Node: node, TwinNode: twinNode}); err != nil {
		t.Fatal(err)
	}
}

func sortMoves(m []Move) []Move {
	sort.Slice(m, func(i, j int) bool { return m[i].Guest < m[j].Guest })
	return m
}

func TestEvacuate(t *testing.T) {
	// a is evacuated. b and c are in other racks; d shares a's rack and has most room.
	nodes := []Node{
		node("a", 32, 128, "rack=r1"),
		node("b", 16, 64, "rack=r2"),
		node("c", 16, 48, "rack=r3"),
		node("d", 16, 100, "rack=r1"),
	}
	setup := func() *Scheduler {
		s := New(nodes, nil, Options{Strategy: Spread, FailureDomains: []string{"rack"}})
		assign(t, s, guest("plain", 2, 4), "a", "")
		assign(t, s, restart("rs", 2, 8), "a", "")
		assign(t, s, twin("tw-primary-here", 2, 4), "a", "b")
		assign(t, s, twin("tw-twin-here", 2, 4), "c", "a")
		return s
	}
	cases := []struct {
		name     string
		lost     bool
		moves    []Move
		lostList []string
	}{
		{
			name: "drain",
			moves: []Move{
				{Guest: "plain", Action: ActionMigrate, From: "a", To: "d"},
				{Guest: "rs", Action: ActionMigrate, From: "a", To: "d"},
				// The new primary b's twin goes to another rack than b: d has the most
				// free memory, but after two guests c has the larger share of CPUs left.
				{Guest: "tw-primary-here", Action: ActionPromote, From: "a", To: "b", NewTwin: "c"},
				{Guest: "tw-twin-here", Action: ActionNewTwin, From: "a", NewTwin: "b"},
			},
		},
		{
			name: "lost",
			lost: true,
			moves: []Move{
				{Guest: "rs", Action: ActionRestart, From: "a", To: "d"},
				{Guest: "tw-primary-here", Action: ActionPromote, From: "a", To: "b", NewTwin: "d"},
				{Guest: "tw-twin-here", Action: ActionNewTwin, From: "a", NewTwin: "b"},
			},
			lostList: []string{"plain"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := setup()
			before := freeAll(s)
			var plan Plan
			if tc.lost {
				plan = s.EvacuateLost("a")
			} else {
				plan = s.Evacuate("a")
			}
			if !reflect.DeepEqual(sortMoves(plan.Moves), tc.moves) {
				t.Fatalf("moves\n%+v\nwant\n%+v", plan.Moves, tc.moves)
			}
			if !reflect.DeepEqual(plan.Lost, tc.lostList) || len(plan.Unplaced) != 0 {
				t.Fatalf("lost %v unplaced %v", plan.Lost, plan.Unplaced)
			}
			if after := freeAll(s); !reflect.DeepEqual(before, after) {
				t.Fatalf("planning changed the snapshot:\n%v\n%v", before, after)
			}
		})
	}

	t.Run("twins keep their separation", func(t *testing.T) {
		// Only d (a's rack... and b's) has room: the new twin may not go there.
		s := New([]Node{
			node("a", 32, 128, "rack=r1"),
			node("b", 16, 64, "rack=r2"),
			node("d", 16, 100, "rack=r2"),
		}, nil, Options{Strategy: Spread, FailureDomains: []string{"rack"}})
		assign(t, s, twin("tw", 2, 4), "a", "b")
		plan := s.Evacuate("a")
		want := []Move{{Guest: "tw", Action: ActionPromote, From: "a", To: "b"}}
		if !reflect.DeepEqual(plan.Moves, want) || len(plan.Unplaced) != 1 || !plan.Unplaced[0].Twin ||
			plan.Unplaced[0].Reasons[ReasonTwinSameFailureDomain] != 1 || !strings.Contains(strings.Join(plan.Warnings, ";"), `"tw" runs without a twin`) {
			t.Fatalf("plan %+v unplaced %+v", plan, plan.Unplaced)
		}
	})

	t.Run("unplaceable guests are listed with reasons", func(t *testing.T) {
		s := New([]Node{node("a", 32, 128), node("b", 4, 8), node("c", 4, 8)}, nil, Options{})
		assign(t, s, guest("big", 8, 16), "a", "")
		assign(t, s, guest("small", 1, 1), "a", "")
		plan := s.Evacuate("a")
		if len(plan.Moves) != 1 || plan.Moves[0].Guest != "small" || len(plan.Unplaced) != 1 ||
			plan.Unplaced[0].Guest != "big" || plan.Unplaced[0].Reasons[ReasonNotEnoughCPU] != 2 || plan.Unplaced[0].Reasons[ReasonUnschedulable] != 1 {
			t.Fatalf("plan %+v, unplaced %+v", plan, plan.Unplaced)
		}
	})

	t.Run("largest first", func(t *testing.T) {
		s := New([]Node{node("a", 32, 128), node("b", 8, 16), node("c", 4, 16)}, nil, Options{Strategy: Pack})
		assign(t, s, guest("s1", 2, 8), "a", "")
		assign(t, s, guest("big", 4, 16), "a", "")
		assign(t, s, guest("s2", 2, 8), "a", "")
		plan := s.Evacuate("a")
		if len(plan.Unplaced) != 0 || len(plan.Moves) != 3 || plan.Moves[0].Guest != "big" {
			t.Fatalf("plan %+v", plan)
		}
	})

	t.Run("drain warns when the HA reserve breaks", func(t *testing.T) {
		s := New([]Node{node("a", 8, 32), node("b", 8, 32), node("c", 8, 32)}, nil, Options{Strategy: Spread, HAReserveNodes: 1})
		for _, g := range []Guest{restart("r1", 4, 4), restart("r2", 4, 4), restart("r3", 2, 2)} {
			if _, err := s.Place(g); err != nil {
				t.Fatal(err)
			}
		}
		plan := s.Evacuate("a")
		if len(plan.Moves) != 1 || !strings.Contains(strings.Join(plan.Warnings, ";"), "after this drain") {
			t.Fatalf("plan %+v", plan)
		}
		if plan := s.Evacuate("nowhere"); len(plan.Warnings) != 1 || !strings.Contains(plan.Warnings[0], "unknown node") {
			t.Fatalf("unknown node: %+v", plan)
		}
	})
}

func TestRebalance(t *testing.T) {
	cases := []struct {
		name     string
		nodes    []Node
		guests   map[string][]Guest // by node
		maxMoves int
		moves    int
	}{
		{
			name:     "all on one node",
			nodes:    []Node{node("a", 16, 64), node("b", 16, 64)},
			guests:   map[string][]Guest{"a": {guest("g1", 4, 8), guest("g2", 4, 8), guest("g3", 4, 8), guest("g4", 4, 8)}},
			maxMoves: 10, moves: 2,
		},
		{
			name:     "bounded by maxMoves",
			nodes:    []Node{node("a", 16, 64), node("b", 16, 64)},
			guests:   map[string][]Guest{"a": {guest("g1", 4, 8), guest("g2", 4, 8), guest("g3", 4, 8), guest("g4", 4, 8)}},
			maxMoves: 1, moves: 1,
		},
		{
			name:     "already even",
			nodes:    []Node{node("a", 16, 64), node("b", 16, 64)},
			guests:   map[string][]Guest{"a": {guest("g1", 4, 8)}, "b": {guest("g2", 4, 8)}},
			maxMoves: 10, moves: 0,
		},
		{
			name:     "twins stay",
			nodes:    []Node{node("a", 16, 64), node("b", 16, 64), node("c", 16, 64)},
			guests:   map[string][]Guest{"a": {twin("t1", 8, 8), twin("t2", 8, 8)}},
			maxMoves: 10, moves: 0,
		},
		{
			name: "filters apply",
			nodes: []Node{node("a", 16, 64), func() Node {
				n := node("b", 16, 64)
				n.Accelerator = "tcg"
				return n
			}()},
			guests: map[string][]Guest{"a": {func() Guest {
				g := guest("g1", 8, 8)
				g.Accelerator = "kvm"
				return g
			}(), func() Guest {
				g := guest("g2", 8, 8)
				g.Accelerator = "kvm"
				return g
			}()}},
			maxMoves: 10, moves: 0,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(tc.nodes, nil, Options{})
			for n, gs := range tc.guests {
				for _, g := range gs {
					tn := ""
					if g.Failover == FailoverTwin {
						tn = "c"
					}
					assign(t, s, g, n, tn)
				}
			}
			before := freeAll(s)
			plan := s.Rebalance(tc.maxMoves)
			if len(plan.Moves) != tc.moves {
				t.Fatalf("moves %+v, want %d", plan.Moves, tc.moves)
			}
			for _, m := range plan.Moves {
				if m.Action != ActionMigrate || m.From != "a" || m.To != "b" {
					t.Fatalf("move %+v", m)
				}
			}
			if after := freeAll(s); !reflect.DeepEqual(before, after) {
				t.Fatalf("planning changed the snapshot")
			}
		})
	}
}

// A hot node nothing can leave is passed over; the next hottest is evened out.
func TestRebalancePassesOverStuckNodes(t *testing.T) {
	s := New([]Node{node("a", 16, 64), node("t", 16, 64), node("b", 16, 64), node("c", 16, 64)}, nil, Options{})
	assign(t, s, twin("t1", 8, 8), "a", "t")
	assign(t, s, twin("t2", 8, 8), "a", "t")
	for _, g := range []Guest{guest("g1", 4, 8), guest("g2", 4, 8), guest("g3", 4, 8), guest("g4", 4, 8)} {
		assign(t, s, g, "b", "")
	}
	plan := s.Rebalance(10)
	if len(plan.Moves) != 2 {
		t.Fatalf("moves %+v, want 2 from b to c", plan.Moves)
	}
	for _, m := range plan.Moves {
		if m.From != "b" || m.To != "c" {
			t.Fatalf("move %+v, want b to c", m)
		}
	}
}

// Guests that must stay (Assignment.Stay: stopped, not running yet) are load, never
// moves: the plan moves the others, and a node whose every guest must stay is passed over.
func TestRebalanceLeavesGuestsThatStay(t *testing.T) {
	existing := []Assignment{
		{Guest: guest("stay1", 4, 8), Node: "a", Stay: true},
		{Guest: guest("stay2", 4, 8), Node: "a", Stay: true},
		{Guest: guest("go1", 4, 8), Node: "a"},
		{Guest: guest("go2", 4, 8), Node: "a"},
	}
	s := New([]Node{node("a", 16, 64), node("b", 16, 64), node("c", 16, 64)}, existing, Options{})
	plan := s.Rebalance(10)
	var moved []string
	for _, m := range plan.Moves {
		moved = append(moved, m.Guest)
	}
	sort.Strings(moved)
	if !reflect.DeepEqual(moved, []string{"go1", "go2"}) {
		t.Fatalf("moves %+v, want go1 and go2 only", plan.Moves)
	}
	if a, _ := s.Lookup("stay1"); !a.Stay {
		t.Fatalf("Lookup lost Stay: %+v", a)
	}
	// Assign keeps Stay too; with every guest of a staying, nothing moves.
	s = New([]Node{node("a", 16, 64), node("b", 16, 64)}, nil, Options{})
	for _, g := range []Guest{guest("s1", 4, 8), guest("s2", 4, 8), guest("s3", 4, 8)} {
		if err := s.Assign(Assignment{Guest: g, Node: "a", Stay: true}); err != nil {
			t.Fatal(err)
		}
	}
	if plan := s.Rebalance(10); len(plan.Moves) != 0 {
		t.Fatalf("moved guests that must stay: %+v", plan.Moves)
	}
}

// Imbalance measures what Rebalance evens out: a plan's moves, made, narrow the spread.
func TestImbalance(t *testing.T) {
	existing := []Assignment{
		{Guest: guest("g1", 4, 8), Node: "a"}, {Guest: guest("g2", 4, 8), Node: "a"},
		{Guest: guest("g3", 2, 24), Node: "b"}, {Guest: guest("g4", 2, 24), Node: "b"},
	}
	nodes := []Node{node("a", 16, 64), node("b", 16, 64), node("c", 16, 64), node("d", 16, 64)}
	nodes[3].Draining = true // takes no guests: not measured
	s := New(nodes, existing, Options{})
	im := s.Imbalance()
	// a: CPU 8/16 = 0.5, memory 16/64; b: memory 48/64 = 0.75 dominates; c: empty.
	if im.Hot != "b" || im.HotShare != 0.75 || im.Cold != "c" || im.ColdShare != 0 || im.Spread() != 0.75 {
		t.Fatalf("imbalance %+v", im)
	}
	plan := s.Rebalance(10)
	if len(plan.Moves) == 0 || plan.Moves[0].From != "b" || plan.Moves[0].To != "c" {
		t.Fatalf("moves %+v, want b to c first", plan.Moves)
	}
	byName := map[string]Guest{}
	for _, a := range existing {
		byName[a.Guest.Name] = a.Guest
	}
	for _, mv := range plan.Moves {
		s.Release(mv.Guest)
		if err := s.Assign(Assignment{Guest: byName[mv.Guest], Node: mv.To}); err != nil {
			t.Fatal(err)
		}
	}
	if after := s.Imbalance(); after.Spread() >= im.Spread() {
		t.Fatalf("after the plan's moves: %+v, before %+v", after, im)
	}
	if (New(nil, nil, Options{}).Imbalance() != Imbalance{}) {
		t.Fatal("an empty cluster is not even")
	}
}
