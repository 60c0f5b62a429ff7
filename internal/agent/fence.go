package agent

import (
	"context"
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

// Fence is called when this node's lease lapsed. HA guests are stopped once the node
// has stayed fenced for FenceGrace: a lease that is renewed within the grace (a new
// master taking over, a short blip) stops nothing. The role machine's master waits
// LeaseDuration+LeaseMargin after the last grant before it declares the node lost,
// and FenceGrace is shorter than LeaseMargin, so the guests are down before then.
func (a *Agent) Fence() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.fenced {
		a.fenced, a.fencedAt = true, time.Now()
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

// mayStartHA says whether an HA guest of the current assignment may be started: the
// node holds its lease, and the assignment was read after it got the lease back. A node
// back from a cut must not start what an assignment from before the cut names: the
// cluster has restarted those guests elsewhere meanwhile.
func (a *Agent) mayStartHA() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.fenced && a.latestAt.After(a.unfencedAt)
}

// Fenced says whether the node may not run HA guests now.
func (a *Agent) Fenced() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fenced
}

// fenceLoop stops HA guests while the node is fenced past the grace, and keeps them
// stopped: a guest started by hand meanwhile is stopped too.
func (a *Agent) fenceLoop(ctx context.Context) {
	t := time.NewTicker(50 * time.Millisecond)
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
		for _, g := range list {
			if isHA(g.Failover) && (g.State == hypervisor.StateRunning || g.State == hypervisor.StatePaused) {
				// Destroy, not shutdown: the master may restart the guest elsewhere soon,
				// and a guest that takes its time to power off would then run twice.
				if err := a.cfg.Node.Destroy(g.Name); err != nil {
					a.cfg.Log.Error("fence: stop guest", "guest", g.Name, "err", err)
					continue
				}
				a.cfg.Log.Warn("fence: guest stopped, this node holds no lease", "guest", g.Name)
				a.setErr(g.Name, errFenced)
			}
		}
	}
}

type fenceError struct{}

func (fenceError) Error() string { return "stopped by fencing: the node lost its lease" }

var errFenced error = fenceError{}
