package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/version"
)

// Mirrored twins (see internal/master/mirror.go for the cluster's side). On the
// standby's node the agent serves a copy of the guest's disk: a qemu-storage-daemon
// per guest, NBD over TLS with the cluster's certificates, on the node's own pool
// directory at the path the guest's disk would have there, so that a promotion is an
// ordinary start over that file once the export is stopped. On the guest's node the
// agent mirrors the running guest's disk to the export the assignment names, in
// write-blocking mode: a write completes when both copies hold it.
//
// What an agent reports: the export's address (ObservedGuest.Standby), and the
// mirror's state (ObservedGuest.Protection); the master records the copy in step
// only from the guest's node's word.

// MirrorConfig is what a node needs to hold mirrored twins' standbys and mirror to
// them. A node without it (no cluster credentials: `dvmd dev`) refuses both.
type MirrorConfig struct {
	Creds  hypervisor.MirrorCreds // the cluster's CA, this node's certificate and key
	RunDir string                 // the standbys' processes' files and the mirrors' targets
	Host   string                 // the address standbys listen on: the node's, as peers reach it
}

func (c MirrorConfig) usable() error {
	if c.RunDir == "" || c.Creds.CACert == "" {
		return errors.New("this node has no cluster credentials (credentials_dir in dvmd.conf): it can neither serve a mirrored twin's copy nor mirror to one")
	}
	return nil
}

// copyPath is where this node keeps g's standby copy: the path of g's first disk in
// its pool (a directory of this node's own), where a promotion finds it.
func (a *Agent) copyPath(g api.AssignedGuest) (string, error) {
	p, err := a.guestPool(g)
	if err != nil {
		return "", err
	}
	if p.Kind != config.PoolDir {
		return "", fmt.Errorf("guest %s is a mirrored twin on storage pool %s of kind %s: only a pool of kind dir holds a copy", g.Name, p.Name, p.Kind)
	}
	return filepath.Join(p.Path, hypervisor.DiskVolume(g.Name, 0)), nil
}

// diskSize is the size of g's first disk, as attachDisks makes it.
func diskSize(g api.AssignedGuest) uint64 {
	if g.DiskBytes == 0 {
		return uint64(api.DefaultDisk)
	}
	return uint64(g.DiskBytes)
}

// serveStandby makes sure this node serves g's standby copy. A running export
// (after a dvmd restart too) is kept with the copy it filled; a new one starts on a
// fresh copy, which the guest's node then fills from the start.
func (a *Agent) serveStandby(g api.AssignedGuest) {
	if err := a.cfg.Mirror.usable(); err != nil {
		a.setErr(g.Name, err)
		return
	}
	if s, ok := hypervisor.FindStandby(a.cfg.Mirror.RunDir, g.Name); ok && s.Running() {
		a.setStandby(g.Name, s.Addr())
		a.setErr(g.Name, nil)
		return
	}
	a.startSlow(g.Name, func() {
		path, err := a.copyPath(g)
		if err == nil {
			// Whatever a file there holds is an earlier copy (or an old disk of the
			// guest's from before it moved away): the mirror fills the copy anew.
			if err = os.Remove(path); errors.Is(err, os.ErrNotExist) {
				err = nil
			}
		}
		if err != nil {
			a.setErr(g.Name, err)
			return
		}
		s, err := hypervisor.StartStandby(hypervisor.StandbySpec{
			Guest: g.Name, Disk: path, SizeBytes: diskSize(g),
			Listen: net.JoinHostPort(a.cfg.Mirror.Host, "0"), Creds: a.cfg.Mirror.Creds, RunDir: a.cfg.Mirror.RunDir,
		})
		if err != nil {
			a.setErr(g.Name, fmt.Errorf("serve the standby copy: %w", err))
			return
		}
		a.cfg.Log.Info("standby copy served", "guest", g.Name, "address", s.Addr(), "copy", path)
		a.setStandby(g.Name, s.Addr())
		a.setErr(g.Name, nil)
	})
}

// stopStandby stops serving g's copy, if this node does; afterwards nothing writes
// to the copy. It returns the copy's path when there was one.
func (a *Agent) stopStandby(name string) (bool, error) {
	s, ok := hypervisor.FindStandby(a.cfg.Mirror.RunDir, name)
	if !ok {
		a.setStandby(name, "")
		return false, nil
	}
	if err := s.Stop(); err != nil {
		return true, fmt.Errorf("stop serving the standby copy: %w", err)
	}
	a.setStandby(name, "")
	return true, nil
}

func (a *Agent) setStandby(name, addr string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if addr == "" {
		delete(a.standbys, name)
		return
	}
	a.standbys[name] = addr
}

// promote ends g's standby on this node before g is defined and started here from
// its copy: the export must be gone first, so that nothing else writes the file the
// guest boots from.
func (a *Agent) promote(g api.AssignedGuest) error {
	if a.cfg.Mirror.RunDir == "" {
		return nil
	}
	was, err := a.stopStandby(g.Name)
	if err == nil && was {
		a.cfg.Log.Info("standby promoted: its copy is the guest's disk now", "guest", g.Name)
	}
	return err
}

// dropStandby ends a standby this node no longer holds (the guest moved, got
// another standby, or was deleted) and removes its copy.
func (a *Agent) dropStandby(g api.AssignedGuest) error {
	was, err := a.stopStandby(g.Name)
	if err != nil || !was {
		return err
	}
	path, err := a.copyPath(g)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	a.cfg.Log.Info("standby copy removed: the node holds the guest's standby no longer", "guest", g.Name)
	return nil
}

// mirrorTargetFile records which export a guest's mirror job copies to, so that an
// agent restarted under a running job knows it (the job itself does not say).
func (a *Agent) mirrorTargetFile(name string) string {
	return filepath.Join(a.cfg.Mirror.RunDir, "mirror-"+name+".target")
}

// mirrorCheck reads g's mirror (g runs here): its protection now, and what the
// mirror needs: mirrorStart (none runs to the export the assignment names, or it
// failed), mirrorStop (it runs, and no standby serves a copy now), or "".
func (a *Agent) mirrorCheck(g api.AssignedGuest) (p *api.Protection, active bool, need string) {
	if err := a.cfg.Mirror.usable(); err != nil {
		return &api.Protection{State: api.ProtectionUnprotected, Reason: err.Error()}, false, ""
	}
	st, err := a.cfg.Node.MirrorStatus(g.Name)
	if err != nil {
		return &api.Protection{State: api.ProtectionUnprotected, Reason: "mirror state unknown: " + err.Error()}, false, ""
	}
	want := g.Mirror
	if want == nil {
		if st.Active {
			need = mirrorStop
		}
		return &api.Protection{State: api.ProtectionUnprotected, Reason: "no node holds its standby"}, st.Active, need
	}
	raw, _ := os.ReadFile(a.mirrorTargetFile(g.Name))
	cur := strings.TrimSpace(string(raw))
	if want.Address == "" {
		// The standby's address is not known to the master yet (it just took over):
		// a mirror running to that node goes on; one to another node ends.
		if st.Active && st.Err == "" && strings.HasPrefix(cur, want.Node+" ") {
			return runningProtection(want.Node, st), true, ""
		}
		if st.Active {
			need = mirrorStop
		}
		return &api.Protection{State: api.ProtectionUnprotected, Node: want.Node, Reason: "the standby on " + want.Node + " serves no copy yet"}, st.Active, need
	}
	if st.Active && st.Err == "" && cur == mirrorTarget(want) {
		return runningProtection(want.Node, st), true, ""
	}
	reason := "mirror starting to " + want.Node
	if st.Err != "" {
		reason = "mirror failed: " + st.Err
	}
	return &api.Protection{State: api.ProtectionUnprotected, Node: want.Node, Reason: reason}, st.Active, mirrorStart
}

// runningProtection is the protection a running mirror to node gives.
func runningProtection(node string, st hypervisor.MirrorStatus) *api.Protection {
	p := &api.Protection{State: api.ProtectionSyncing, Node: node, Done: st.Done, Total: st.Total}
	if st.Ready {
		p.State = api.ProtectionProtected
	}
	return p
}

const (
	mirrorStart = "start"
	mirrorStop  = "stop"
)

// mirrorTarget names an export as the target file records it.
func mirrorTarget(t *api.MirrorTarget) string { return t.Node + " " + t.Address }

// reconcileMirror makes g's mirror (g runs here) copy to the export its assignment
// names.
func (a *Agent) reconcileMirror(g api.AssignedGuest) {
	p, active, need := a.mirrorCheck(g)
	a.setProtection(g.Name, p)
	switch need {
	case mirrorStop:
		a.startSlow(g.Name, func() { a.stopMirror(g.Name, "no standby serves a copy now") })
	case mirrorStart:
		want := *g.Mirror
		a.startSlow(g.Name, func() {
			if active {
				a.stopMirror(g.Name, "the standby changed or the mirror failed")
			}
			os.Remove(a.mirrorTargetFile(g.Name))
			err := a.cfg.Node.StartMirror(g.Name, hypervisor.MirrorTarget{Addr: want.Address, Export: g.Name, Creds: a.cfg.Mirror.Creds,
				CredsDir: filepath.Join(a.cfg.Mirror.RunDir, "mirror-"+g.Name+".tls")})
			if err != nil {
				a.setProtection(g.Name, &api.Protection{State: api.ProtectionUnprotected, Node: want.Node, Reason: "mirror failed to start: " + err.Error()})
				a.cfg.Log.Warn("mirror to the standby failed to start", "guest", g.Name, "standby", want.Node, "address", want.Address, "err", err)
				return
			}
			if err := os.WriteFile(a.mirrorTargetFile(g.Name), []byte(mirrorTarget(&want)+"\n"), 0o600); err != nil {
				a.cfg.Log.Warn("mirror target not recorded", "guest", g.Name, "err", err)
			}
			a.cfg.Log.Info("mirror to the standby started", "guest", g.Name, "standby", want.Node, "address", want.Address)
		})
	}
}

// refreshProtection reads the mirrors of the latest assignment's running mirrored
// guests, for a report. Called without a.mu.
func (a *Agent) refreshProtection(list []hypervisor.Guest) {
	a.mu.Lock()
	held := a.latest
	a.mu.Unlock()
	if held == nil {
		return
	}
	running := map[string]bool{}
	for _, g := range list {
		running[g.Name] = g.State == hypervisor.StateRunning
	}
	for _, g := range held.Guests {
		if g.Mirrored && !g.Twin && !g.Evict && !g.Incoming && running[g.Name] {
			p, _, _ := a.mirrorCheck(g)
			a.setProtection(g.Name, p)
		}
	}
}

// stopMirror ends g's mirror job (no pivot: the guest keeps its own disk).
func (a *Agent) stopMirror(name, why string) {
	if err := a.cfg.Node.StopMirror(name); err != nil {
		a.cfg.Log.Warn("mirror not stopped", "guest", name, "err", err)
		return
	}
	os.Remove(a.mirrorTargetFile(name))
	a.cfg.Log.Info("mirror stopped", "guest", name, "why", why)
}

func (a *Agent) setProtection(name string, p *api.Protection) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p == nil {
		delete(a.protection, name)
		return
	}
	a.protection[name] = p
}

// mirrorReport adds standbys and mirrors to a report, to a master that reads them.
// Called with a.mu held.
func (a *Agent) mirrorReport(st *api.NodeStatus, list []hypervisor.Guest) {
	if a.latest == nil || !version.AtLeast(a.latest.Version, api.MirrorSince) {
		return
	}
	for i := range st.Guests {
		o := &st.Guests[i]
		o.Standby = a.standbys[o.Name]
		if p := a.protection[o.Name]; p != nil && o.State == string(hypervisor.StateRunning) {
			c := *p
			o.Protection = &c
		}
	}
	for name, addr := range a.standbys {
		if !containsGuest(list, name) && !reported(st.Guests, name) {
			st.Guests = append(st.Guests, api.ObservedGuest{Name: name, State: "standby", Standby: addr})
		}
	}
}

func reported(gs []api.ObservedGuest, name string) bool {
	for _, g := range gs {
		if g.Name == name {
			return true
		}
	}
	return false
}

// A mirror whose standby stops answering holds the guest's writes (write-blocking):
// TCP retries for many minutes before it gives up on a peer that vanished or is cut
// off from this node alone, and a stopped export never answers at all. So the agent
// asks each running mirror's export for its NBD greeting every mirrorProbeEvery, and
// after mirrorDeadAfter without one ends the mirror: the guest writes on, unprotected
// (reported at once), until the export answers again or the cluster places another.
const (
	mirrorProbeEvery = time.Second
	mirrorDeadAfter  = 3 * time.Second
)

// mirrorWatchLoop probes the exports of this node's running mirrors until ctx ends.
func (a *Agent) mirrorWatchLoop(ctx context.Context) {
	if a.cfg.Mirror.usable() != nil {
		return
	}
	t := time.NewTicker(mirrorProbeEvery)
	defer t.Stop()
	silentSince := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		held := a.latest
		a.mu.Unlock()
		if held == nil {
			continue
		}
		// The mirrors that run, to the export each last started on: its standby's
		// node is the assignment's (the address may not be known to a new master yet).
		var probed []api.AssignedGuest
		var addrs []string
		for _, g := range held.Guests {
			raw, _ := os.ReadFile(a.mirrorTargetFile(g.Name))
			node, addr, _ := strings.Cut(strings.TrimSpace(string(raw)), " ")
			if !g.Mirrored || g.Twin || g.Evict || g.Mirror == nil || node != g.Mirror.Node || addr == "" {
				delete(silentSince, g.Name) // no mirror of ours runs to it: nothing waits on it
				continue
			}
			probed, addrs = append(probed, g), append(addrs, addr)
		}
		// Together: a probe of an export that does not answer takes its timeout.
		errs := make([]error, len(probed))
		var wg sync.WaitGroup
		for i := range probed {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = hypervisor.ProbeNBD(addrs[i])
			}()
		}
		wg.Wait()
		for i, g := range probed {
			err := errs[i]
			first, silent := silentSince[g.Name]
			switch {
			case err == nil:
				delete(silentSince, g.Name)
				continue
			case !silent:
				silentSince[g.Name] = time.Now()
				continue
			case time.Since(first) < mirrorDeadAfter:
				continue
			}
			delete(silentSince, g.Name)
			why := fmt.Sprintf("the standby on %s has not answered for %v: %v", g.Mirror.Node, mirrorDeadAfter, err)
			a.setProtection(g.Name, &api.Protection{State: api.ProtectionUnprotected, Node: g.Mirror.Node, Reason: why})
			a.cfg.Log.Warn("mirror ended: its standby does not answer", "guest", g.Name, "standby", g.Mirror.Node, "address", addrs[i], "err", err)
			a.startSlow(g.Name, func() { a.stopMirror(g.Name, why) })
			a.requestReport()
		}
	}
}
