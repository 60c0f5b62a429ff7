package scheduler

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func free(t *testing.T, s *Scheduler, node string) [2]int64 {
	t.Helper()
	c, m, err := s.Free(node)
	if err != nil {
		t.Fatal(err)
	}
	return [2]int64{int64(c), m / gib}
}

// A move in flight holds the guest's room on its destination as well as on its node:
// nothing placed meanwhile takes it, and it is given back when the guest is released.
func TestMoveHoldsRoomOnItsDestination(t *testing.T) {
	nodes := []Node{node("a", 8, 16), node("b", 8, 16)}
	mover := restart("mover", 4, 8)
	s := New(nodes, []Assignment{
		{Guest: mover, Node: "a", MoveTo: "b"},
		{Guest: guest("resident", 2, 4), Node: "b"},
	}, Options{Strategy: Spread})
	if p := s.Problems(); len(p) > 0 {
		t.Fatalf("problems: %v", p)
	}
	if got := free(t, s, "a"); got != [2]int64{4, 8} {
		t.Errorf("free on the source %v, want 4 CPUs 8 GiB", got)
	}
	if got := free(t, s, "b"); got != [2]int64{2, 4} {
		t.Errorf("free on the destination %v, want 2 CPUs 4 GiB (the move holds 4 and 8)", got)
	}
	if a, ok := s.Lookup("mover"); !ok || a.Node != "a" || a.MoveTo != "b" {
		t.Errorf("Lookup = %+v, %v", a, ok)
	}
	// The destination has room only if the move's room were free: the guest goes to a.
	p, err := s.Place(guest("new", 4, 8))
	if err != nil || p.Node != "a" {
		t.Fatalf("Place = %+v, %v; want a", p, err)
	}
	_, err = s.Place(guest("more", 4, 8))
	if u := unplaceable(t, err); u.Reasons[ReasonNotEnoughCPU] != 2 {
		t.Errorf("reasons %v; want both nodes short of CPU", u.Reasons)
	}
	// The mover itself is judged without its own room held: b could take it.
	before := freeAll(s)
	e := s.Explain(mover)
	if e.Verdicts[1].Reason != "" {
		t.Errorf("Explain(mover) on b: %q; its own held room must not count against it", e.Verdicts[1].Reason)
	}
	if after := freeAll(s); !reflect.DeepEqual(before, after) {
		t.Errorf("Explain changed the books: %v -> %v", before, after)
	}
	if a, _ := s.Lookup("mover"); a.MoveTo != "b" {
		t.Errorf("Explain lost the move: %+v", a)
	}
	// Resizing the destination keeps the held room counted.
	if err := s.UpdateNode(node("b", 12, 16)); err != nil {
		t.Fatal(err)
	}
	if got := free(t, s, "b"); got != [2]int64{6, 4} {
		t.Errorf("free on b after resize %v, want 6 CPUs 4 GiB", got)
	}
	s.Release("mover")
	if got, want := free(t, s, "b"), [2]int64{10, 12}; got != want {
		t.Errorf("free on b after release %v, want %v", got, want)
	}
	if got, want := free(t, s, "a"), [2]int64{4, 8}; got != want {
		t.Errorf("free on a after release %v, want %v", got, want)
	}
}

func TestMoveInputChecked(t *testing.T) {
	nodes := []Node{node("a", 8, 16), node("b", 8, 16)}
	s := New(nodes, []Assignment{
		{Guest: guest("nowhere", 1, 1), Node: "a", MoveTo: "zz"},
		{Guest: guest("itself", 1, 1), Node: "b", MoveTo: "b"},
	}, Options{})
	if p := s.Problems(); len(p) != 2 || !strings.Contains(p[0], `"zz"`) || !strings.Contains(p[1], `"b"`) {
		t.Errorf("problems %q; want the unknown and the own node named", p)
	}
	// Both guests still count where they are; the moves are not counted.
	if got := free(t, s, "a"); got != [2]int64{7, 15} {
		t.Errorf("free on a %v", got)
	}
	if got := free(t, s, "b"); got != [2]int64{7, 15} {
		t.Errorf("free on b %v", got)
	}
	before := freeAll(s)
	if err := s.Assign(Assignment{Guest: guest("g", 1, 1), Node: "a", MoveTo: "zz"}); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("Assign to unknown destination: %v", err)
	}
	if err := s.Assign(Assignment{Guest: guest("g", 1, 1), Node: "a", MoveTo: "a"}); !errors.Is(err, ErrInvalidGuest) {
		t.Errorf("Assign moving to its own node: %v", err)
	}
	if after := freeAll(s); !reflect.DeepEqual(before, after) {
		t.Errorf("refused Assign changed the books: %v -> %v", before, after)
	}
	if err := s.Assign(Assignment{Guest: guest("g", 1, 1), Node: "a", MoveTo: "b"}); err != nil {
		t.Fatal(err)
	}
	if got := free(t, s, "b"); got != [2]int64{6, 14} {
		t.Errorf("free on b after Assign with a move %v", got)
	}
}

// Plans and moves in flight: a drain keeps a guest's own move and counts the room other
// moves hold; after a loss the move from the lost node cannot finish and its room is
// spent on the recovery; rebalance leaves moving guests alone.
func TestPlansWithMovesInFlight(t *testing.T) {
	nodes := []Node{node("a", 16, 32), node("b", 8, 16), node("c", 8, 16)}
	setup := func() *Scheduler {
		return New(nodes, []Assignment{
			{Guest: restart("leaving", 4, 8), Node: "a", MoveTo: "b"},
			{Guest: restart("staying", 4, 8), Node: "a"},
			{Guest: restart("incoming", 4, 8), Node: "c", MoveTo: "a"},
		}, Options{Strategy: Spread})
	}
	s := setup()
	before := freeAll(s)
	plan := s.Evacuate("a")
	want := []Move{
		{Guest: "leaving", Action: ActionMigrate, From: "a", To: "b"},
		// b has 4 CPUs and 8 GiB left for it (the move holds the rest); c has 4 and 8 too,
		// since the move from c to a still holds its room on c.
		{Guest: "staying", Action: ActionMigrate, From: "a", To: "b"},
	}
	if got := sortMoves(plan.Moves); !reflect.DeepEqual(got, want) || len(plan.Unplaced) != 0 {
		t.Errorf("drain plan %+v unplaced %v; want %+v", got, plan.Unplaced, want)
	}
	if after := freeAll(s); !reflect.DeepEqual(before, after) {
		t.Errorf("Evacuate changed the books: %v -> %v", before, after)
	}

	// Fill b's free room: the drain must send "staying" to c, not count b's held room as free.
	s = setup()
	assign(t, s, guest("filler", 4, 8), "b", "")
	plan = s.Evacuate("a")
	want[1].To = "c"
	if got := sortMoves(plan.Moves); !reflect.DeepEqual(got, want) {
		t.Errorf("drain plan with b full %+v; want %+v", got, want)
	}

	// Lost: the move out of a never ends, so its room on b is free for the restarts.
	s = setup()
	assign(t, s, guest("filler", 4, 8), "c", "")
	plan = s.EvacuateLost("a")
	for _, mv := range plan.Moves {
		if mv.To != "b" {
			t.Errorf("recovery move %+v: only b has room once the dead move's room is freed", mv)
		}
	}
	if len(plan.Moves) != 2 || len(plan.Unplaced) != 0 {
		t.Errorf("recovery plan %+v unplaced %v; want both restarted on b", plan.Moves, plan.Unplaced)
	}
	if got := free(t, s, "b"); got != [2]int64{4, 8} {
		t.Errorf("EvacuateLost changed b's books: %v", got)
	}

	// Rebalance: a is the hot node and moving its guest would even out load, but it is
	// already moving.
	nodes = []Node{node("a", 8, 16), node("b", 16, 32), node("c", 16, 32)}
	s = New(nodes, []Assignment{{Guest: restart("leaving", 6, 12), Node: "a", MoveTo: "b"}}, Options{})
	if plan := s.Rebalance(5); len(plan.Moves) != 0 {
		t.Errorf("rebalance moved %+v", plan.Moves)
	}
	s = New(nodes, []Assignment{{Guest: restart("leaving", 6, 12), Node: "a"}}, Options{})
	if plan := s.Rebalance(5); len(plan.Moves) != 1 {
		t.Errorf("rebalance of the same guest not moving: %+v; want it moved", plan.Moves)
	}
}

// The room a move holds is free share its destination no longer has: HA admission sees
// the smaller key there, and does not refuse on the larger one it had before.
func TestMoveCountsInHAHeadroom(t *testing.T) {
	s := New([]Node{node("a", 8, 16), node("b", 8, 32), node("c", 8, 16)}, nil, Options{HAReserveNodes: 1})
	s.Headroom() // cached sums exact: b's key, 32 GiB, is the reserve
	if err := s.Assign(Assignment{Guest: restart("mover", 1, 8), Node: "a", MoveTo: "b"}); err != nil {
		t.Fatal(err)
	}
	// Free 8+24+16 = 48 GiB; keys (restart demand + free) a 16, b 24, c 16, so the
	// reserve is b's 24 now. A restart guest of 20 GiB on
	// b leaves 28 free against a reserve of 24: admitted (against b's old 32 it would not be).
	p, err := s.Place(restart("r", 1, 20))
	if err != nil || p.Node != "b" {
		t.Fatalf("Place = %+v, %v; want b", p, err)
	}
	reserveCPU, _, reserveMem, freeMem := s.Headroom()
	if reserveMem != 24*gib || freeMem != 28*gib || reserveCPU != 8 {
		t.Errorf("headroom: reserve %d CPUs %d GiB, free %d GiB; want 8, 24, 28", reserveCPU, reserveMem/gib, freeMem/gib)
	}
}
