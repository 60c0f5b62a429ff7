package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

func TestStoreSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(Command{Op: OpPutNode, Node: &NodeRecord{Name: "n1", CPUs: 8}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(
		Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "web", Node: "n1", Desired: DesiredRunning}},
		Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "db", Desired: DesiredStopped}},
	); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(Command{Op: OpDeleteGuest, Name: "db"}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	nodes, guests, idx := s.Snapshot()
	if idx != 3 || len(nodes) != 1 || nodes[0].CPUs != 8 || len(guests) != 1 || guests[0].Name != "web" || guests[0].Node != "n1" {
		t.Fatalf("after reopen: index %d nodes %+v guests %+v", idx, nodes, guests)
	}
}

func TestWaitReturnsOnChange(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make(chan uint64)
	go func() { got <- s.Wait(context.Background(), 0) }()
	if _, err := s.Apply(Command{Op: OpPutNode, Node: &NodeRecord{Name: "n1"}}); err != nil {
		t.Fatal(err)
	}
	if idx := <-got; idx != 1 {
		t.Fatalf("Wait returned %d, want 1", idx)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if idx := s.Wait(ctx, 1); idx != 1 {
		t.Fatalf("Wait with nothing new returned %d", idx)
	}
}

func TestSecondOpenFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(path); err == nil {
		t.Fatal("a second dvmd could open the same state file")
	}
}
