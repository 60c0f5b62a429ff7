package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/fenceguard"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/internal/version"
)

// A node whose lease lapsed pauses its HA guests rather than destroying them, and
// records each in Config.PausedFile (shared with the fence guard; see
// internal/fenceguard's paused.go for why a paused guest is as safe as a destroyed
// one).
//
// A paused copy is resumed only on the word of an assignment from the master that
// holds the lease, read after the lease came back, that still places the guest here
// with the same UUID, and that counts the node's losses with the count the node held
// before its lease lapsed: a loss in between means the guest was recovered elsewhere
// (in the very write that declared the loss) and this copy is stale, however the
// guest was placed since. Otherwise it is destroyed, as a fence always did.

// noteBasis records the loss count of an assignment received while the lease holds:
// the basis the next pause is recorded with. Received while the lease holds, it was
// written before any loss the lapse can lead to.
func (a *Agent) noteBasis(asg api.Assignment) {
	if a.cfg.PausedFile == "" || a.cfg.Lease == nil {
		return
	}
	if _, _, live := a.cfg.Lease(); !live {
		return
	}
	b := lossBasis{losses: asg.Losses, counted: asg.LossesCounted && version.AtLeast(asg.Version, api.LossesSince)}
	a.mu.Lock()
	same := a.basis != nil && *a.basis == b
	a.mu.Unlock()
	if same {
		return
	}
	err := fenceguard.UpdatePaused(a.cfg.PausedFile, func(p *fenceguard.Paused) { p.Losses, p.Counted = b.losses, b.counted })
	if err != nil {
		a.cfg.Log.Error("paused guests' record", "err", err)
		return
	}
	a.mu.Lock()
	a.basis = &b
	a.mu.Unlock()
}

// lossBasis is a node's loss count as an assignment gave it, and whether that
// master counted losses at all.
type lossBasis struct {
	losses  uint64
	counted bool
}

// readPaused reads the paused guests' record; an unreadable one is empty (its guests
// are then unknown pauses: destroyed, never resumed).
func (a *Agent) readPaused() fenceguard.Paused {
	if a.cfg.PausedFile == "" {
		return fenceguard.Paused{Guests: map[string]fenceguard.PausedGuest{}}
	}
	p, err := fenceguard.ReadPaused(a.cfg.PausedFile)
	if err != nil {
		a.cfg.Log.Error("paused guests' record unreadable: guests paused by a fence will be destroyed, not resumed", "err", err)
	}
	return p
}

// pauseForFence pauses a running HA guest of a fenced node, recording it first, so
// that a paused copy is never unknown to the node. A guest that cannot be paused, or
// recorded, is destroyed.
func (a *Agent) pauseForFence(g hypervisor.Guest) {
	err := errors.New("no paused guests' record (paused_file)")
	if a.cfg.PausedFile != "" {
		err = fenceguard.UpdatePaused(a.cfg.PausedFile, func(p *fenceguard.Paused) {
			p.Guests[g.Name] = fenceguard.PausedGuest{UUID: g.UUID, Losses: p.Losses, Counted: p.Counted, At: time.Now().UTC()}
		})
	}
	if err == nil {
		err = a.cfg.Node.Suspend(g.Name)
	}
	if err != nil {
		a.destroyPaused(g.Name, "fence: guest stopped, this node holds no lease (not paused: "+err.Error()+")")
		return
	}
	a.cfg.Log.Warn("fence: guest paused, this node holds no lease", "guest", g.Name)
	a.setErr(g.Name, errFenced)
}

// destroyPaused destroys a guest and forgets it as a paused copy once it is down.
func (a *Agent) destroyPaused(name, why string) {
	if err := a.cfg.Node.Destroy(name); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
		a.cfg.Log.Error("stop guest", "guest", name, "err", err)
		a.setErr(name, err)
		return
	}
	a.forgetPaused(name)
	a.cfg.Log.Warn(why, "guest", name)
	a.setErr(name, errFenced)
}

func (a *Agent) forgetPaused(names ...string) {
	if a.cfg.PausedFile == "" || len(names) == 0 {
		return
	}
	err := fenceguard.UpdatePaused(a.cfg.PausedFile, func(p *fenceguard.Paused) {
		for _, n := range names {
			delete(p.Guests, n)
		}
	})
	if err != nil {
		a.cfg.Log.Error("paused guests' record", "err", err)
	}
}

// settlePaused decides, on an assignment that vouches for HA starts (mayStartHA),
// what becomes of a guest this node paused when its lease lapsed: resumed if the
// assignment still places that very guest here to run and no loss came between,
// else destroyed (the reconcile then starts it afresh if it is wanted here). It
// returns false when the reconcile should handle g as usual: g is no paused copy,
// or the cluster removes it from this node (evicted, deleted, a twin here), which
// the reconcile does whatever the lease says.
func (a *Agent) settlePaused(held heldAssignment, paused fenceguard.Paused, g api.AssignedGuest, state hypervisor.State) bool {
	p, ok := paused.Guests[g.Name]
	if !ok || state != hypervisor.StatePaused || g.Evict || g.Twin || g.Desired == store.DesiredDeleted {
		return false
	}
	if err := a.mayStartHA(held); err != nil {
		a.setErr(g.Name, err) // the lease is not back in a way that vouches for it: stays paused
		return true
	}
	if why := staleBecause(p, held.Assignment, g); why != "" {
		a.destroyPaused(g.Name, "paused copy destroyed, not resumed: "+why)
		a.requestResync()
		return true
	}
	if err := a.cfg.Node.Resume(g.Name); err != nil {
		// libvirt refuses the resume when another copy holds the disk: never forced.
		a.destroyPaused(g.Name, "paused copy destroyed: resume failed: "+err.Error())
		a.requestResync()
		return true
	}
	a.forgetPaused(g.Name)
	asg := held.Assignment
	a.cfg.Log.Info("guest resumed: the lease is back and the cluster still places it here", "guest", g.Name,
		"paused_for", time.Since(p.At).Round(time.Millisecond), "master", asg.Master, "generation", asg.Generation, "index", asg.Index)
	a.setErr(g.Name, nil)
	a.requestResync() // a migration asked meanwhile starts from the running guest
	return true
}

// staleBecause says why the paused copy p of g must not resume on asg's word, or "".
func staleBecause(p fenceguard.PausedGuest, asg api.Assignment, g api.AssignedGuest) string {
	switch {
	case g.Desired != store.DesiredRunning:
		return "it is wanted " + g.Desired
	case !p.Counted || !asg.LossesCounted || !version.AtLeast(asg.Version, api.LossesSince):
		return fmt.Sprintf("master %s (dvmd %s), or the one before the pause, does not count node losses", asg.Master, version.Or(asg.Version))
	case p.Losses != asg.Losses:
		return fmt.Sprintf("the node was declared lost since it paused the guest (losses %d, now %d): it was recovered elsewhere", p.Losses, asg.Losses)
	case p.UUID == "" || p.UUID != g.UUID:
		return fmt.Sprintf("the guest of that name is another one (UUID %q, paused copy %q)", g.UUID, p.UUID)
	}
	return ""
}

// prunePaused forgets paused copies that no longer run on the node (destroyed,
// undefined). One that runs is kept: the fence guard records a guest before it
// pauses it, and a record forgotten in between would leave the guest paused and
// unknown.
func (a *Agent) prunePaused(paused fenceguard.Paused, present map[string]hypervisor.State) {
	var gone []string
	for name := range paused.Guests {
		if st, ok := present[name]; !ok || (st != hypervisor.StatePaused && st != hypervisor.StateRunning) {
			gone = append(gone, name)
		}
	}
	a.forgetPaused(gone...)
}

// settleUnknownPause handles an HA guest paused by a suspend call that the paused
// guests' record does not hold (the fence guard paused it on a lease file a moment
// stale, or someone ran virsh suspend): once an assignment vouches for HA starts and
// places it here to run, it is destroyed, so that the reconcile starts it afresh. It
// is never resumed: nothing says it was not recovered elsewhere meanwhile. It
// returns whether it dealt with g.
func (a *Agent) settleUnknownPause(held heldAssignment, paused fenceguard.Paused, g api.AssignedGuest, byCall bool) bool {
	if _, recorded := paused.Guests[g.Name]; recorded || !byCall || !isHA(g.Failover) || g.Desired != store.DesiredRunning ||
		g.Evict || g.Twin || g.MigrateTo != "" || a.cfg.PausedFile == "" {
		return false
	}
	if err := a.mayStartHA(held); err != nil {
		a.setErr(g.Name, err)
		return true
	}
	a.destroyPaused(g.Name, "guest paused by a call this node has no record of: destroyed, to be started afresh")
	a.requestResync()
	return true
}
