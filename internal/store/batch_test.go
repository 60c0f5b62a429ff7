package store

import (
	"context"
	"fmt"
	"testing"
)

// An entry of several commands is applied whole: a reader sees all of its guests or
// none, never some. A master's batch of creates relies on it.
func TestEntryAppliesWhole(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	seen := make(chan []int)
	go func() {
		var counts []int
		for idx := s.Index(); ctx.Err() == nil; idx = s.Wait(ctx, idx) {
			_, guests, _ := s.Snapshot()
			counts = append(counts, len(guests))
		}
		seen <- counts
	}()
	const per = 5
	for e := 0; e < 20; e++ {
		var cmds []Command
		for i := 0; i < per; i++ {
			cmds = append(cmds, Command{Op: OpPutGuest, Guest: &GuestRecord{Name: fmt.Sprintf("g%d-%d", e, i)}})
		}
		cmds = append(cmds, Command{Op: OpEvent, Event: &EventRecord{Kind: "write", Detail: fmt.Sprint(e)}})
		if _, err := s.Apply(cmds...); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	for _, n := range <-seen {
		if n%per != 0 {
			t.Fatalf("a reader saw %d guests: part of an entry", n)
		}
	}
}

// PlacementWrites counts the entries that change nodes or guests, and no other;
// entries submitted in turn are applied in that order.
func TestPlacementWritesAndSubmitOrder(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	start := s.PlacementWrites()
	if _, err := s.Apply(Command{Op: OpEvent, Event: &EventRecord{Kind: "write"}}); err != nil {
		t.Fatal(err)
	}
	if n := s.PlacementWrites(); n != start {
		t.Fatalf("an event changed PlacementWrites %d -> %d", start, n)
	}
	var waits []func() (uint64, error)
	for i := 0; i < 3; i++ {
		wait, err := s.Submit(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: fmt.Sprintf("g%d", i)}},
			Command{Op: OpEvent, Event: &EventRecord{Kind: "write"}})
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, wait)
	}
	var last uint64
	for i, wait := range waits {
		idx, err := wait()
		if err != nil {
			t.Fatal(err)
		}
		if idx <= last {
			t.Fatalf("entry %d applied at %d, after %d", i, idx, last)
		}
		last = idx
	}
	if n := s.PlacementWrites(); n != start+3 {
		t.Fatalf("PlacementWrites %d after 3 entries of guests, want %d", n, start+3)
	}
}
