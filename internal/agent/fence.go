package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
)

// HA guests are those the cluster restarts or promotes elsewhere when their node is
// lost: a node whose lease lapsed must stop them first, so that a guest never runs on
// two nodes.
func isHA(policy string) bool {
	return policy == api.FailoverRestart || policy == api.FailoverTwin
}

// Fence is called when this node's lease lapsed, at since. HA guests are stopped
// once the node has stayed fenced for FenceGrace from since: a lease that is
// renewed within the grace (a new master taking over, a short blip) stops nothing.
// The role machine's master waits LeaseDuration+LeaseMargin after the last grant
// before it declares the node lost, and FenceGrace (with the checks' periods and
// the clocks' skew) is shorter than LeaseMargin, so the guests are down before
// then. The grace runs from since, not from now: a node that was stopped past its
// lease (SIGSTOP, a stall) destroys its guests at once when it runs again.
func (a *Agent) Fence(since time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if since.IsZero() || since.After(time.Now()) {
		since = time.Now()
	}
	if !a.fenced {
		a.fenced, a.fencedAt = true, since
	}
}

// Unfence is called when this node holds a lease again.
func (a *Agent) Unfence() {
	a.mu.Lock()
	refetch := a.fenced
	if a.fenced {
		a.fenced, a.unfencedAt = false, time.Now()
	}
	cancel := a.pollCancel
	a.mu.Unlock()
	if refetch && cancel != nil {
		cancel() // read the assignment afresh now, rather than when it next changes
	}
	a.requestResync()
}

// mayStartHA says whether an HA guest of asg may be started: the node holds its
// lease; the assignment was read after it got the lease back (one from before a
// cut names guests the cluster may have restarted elsewhere meanwhile); the
// replicated state does not hold the node lost (then its guests were recovered
// elsewhere in the same write, and it is taken in again only after that write);
// and the assignment comes from the master that holds the lease, as raft's leader
// (a raft leader of an older group, still in reach, serves a stale state; the
// master's own replica is in one group at a time). Nil Lease (dvmd dev) checks
// only the fence.
func (a *Agent) mayStartHA(held heldAssignment) error {
	asg := held.Assignment
	a.mu.Lock()
	fenced, stale := a.fenced, !held.asked.After(a.unfencedAt)
	a.mu.Unlock()
	switch {
	case fenced:
		return errFenced
	case stale:
		return errors.New(api.HoldPrefix + "waiting for an assignment read since this node got its lease back")
	case a.cfg.Lease == nil:
		return nil
	}
	holder, _, live := a.cfg.Lease()
	switch {
	case !live:
		return errFenced
	case asg.NodeLost:
		return errors.New(api.HoldPrefix + "the cluster holds this node lost: its restart and twin guests were recovered elsewhere; it starts them again only once taken in")
	case asg.Master != holder:
		return fmt.Errorf(api.HoldPrefix+"the assignment comes from %s (raft's leader of generation %d), but this node's lease is held by %s: waiting for that master's",
			asg.Master, asg.Generation, holder)
	}
	return nil
}

// Fenced says whether the node may not run HA guests now.
func (a *Agent) Fenced() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fenced
}

// fenceLoop stops HA guests while the node is fenced past the grace, and keeps them
// stopped: a running one is paused (pause.go), one paused by anything but the fence
// is destroyed (an incoming migration's paused guest runs when it ends), and a
// paused copy resumed by hand meanwhile is paused again.
func (a *Agent) fenceLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.FenceCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		due := a.fenced && time.Since(a.fencedAt) >= a.cfg.FenceGrace
		a.mu.Unlock()
		if !due {
			continue
		}
		list, err := a.cfg.Node.List()
		if err != nil {
			continue
		}
		paused := a.readPaused()
		for _, g := range list {
			if !isHA(g.Failover) {
				continue
			}
			_, ours := paused.Guests[g.Name]
			switch {
			case g.State == hypervisor.StateRunning:
				a.pauseForFence(g)
			case g.State == hypervisor.StatePaused && !ours:
				// Destroy, not shutdown: the master may restart the guest elsewhere soon,
				// and a guest that takes its time to power off would then run twice.
				a.destroyPaused(g.Name, "fence: guest stopped, this node holds no lease")
			}
		}
	}
}

type fenceError struct{}

func (fenceError) Error() string { return api.FencedHold }

var errFenced error = fenceError{}
