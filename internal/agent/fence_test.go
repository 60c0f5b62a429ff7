package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
)

// TestStaleAssignmentStartsNothing: a reconcile that took an assignment asked for
// before the node got its lease back must not start an HA guest from it, even once
// the poll has stored a fresh one meanwhile (the race a fault schedule found: the
// fresh read vouched for the stale assignment, and a node back from a cut started a
// guest the cluster had restarted elsewhere).
func TestStaleAssignmentStartsNothing(t *testing.T) {
	unfenced := time.Now()
	a := &Agent{unfencedAt: unfenced}
	a.cfg.Lease = func() (string, uint64, bool) { return "n1", 3, true }
	stale := heldAssignment{Assignment: api.Assignment{Master: "n1", Generation: 1}, asked: unfenced.Add(-10 * time.Second)}
	fresh := heldAssignment{Assignment: api.Assignment{Master: "n1", Generation: 3}, asked: unfenced.Add(time.Millisecond)}
	a.latest = &fresh
	if err := a.mayStartHA(stale); err == nil || !strings.Contains(err.Error(), "since this node got its lease back") {
		t.Errorf("stale assignment: %v; want it refused as read before the lease came back", err)
	}
	if err := a.mayStartHA(fresh); err != nil {
		t.Errorf("fresh assignment from the lease holder: %v", err)
	}
	lost := fresh
	lost.NodeLost = true
	if err := a.mayStartHA(lost); err == nil {
		t.Error("an assignment that holds this node lost started a guest")
	}
	other := fresh
	other.Master = "n4"
	if err := a.mayStartHA(other); err == nil {
		t.Error("an assignment from a master that does not hold the lease started a guest")
	}
	a.fenced = true
	if err := a.mayStartHA(fresh); err == nil {
		t.Error("a fenced node started a guest")
	}
}
