// Package fenceguard stops a node's HA guests when its dvmd stops vouching for them.
//
// dvmd fences its node's restart and twin guests when the node's lease lapses. But a
// dvmd that crashed, hung or was stopped fences nothing, while the master, seeing no
// lease, restarts those guests elsewhere: the guest would run twice. The guard is a
// separate process that outlives dvmd. While dvmd holds its lease it writes, a few
// times a second, until when its lease lets the node serve; once that time plus the
// window has passed, the guard destroys the HA guests itself. The master declares a
// node lost no sooner than lease_margin after that time, and the window is shorter
// than the margin by the guard's polling and a destroy, so the guests are down
// before they are restarted elsewhere; a dvmd that only stalls keeps its guests
// until its lease would have run out.
package fenceguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
)

// Vouch records that dvmd's lease lets the node serve its HA guests until until.
func Vouch(path string, until time.Time) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(until.UnixNano(), 10)), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// vouchedUntil reads the lease file; a missing or unreadable file vouches for
// nothing.
func vouchedUntil(path string) time.Time {
	b, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Options configure a guard.
type Options struct {
	URI       string        // the node's libvirt
	LeaseFile string        // where dvmd writes its heartbeat
	Window    time.Duration // how long after the time vouched for the HA guests are stopped
	Log       *slog.Logger
}

// Run guards until ctx ends.
func Run(ctx context.Context, o Options) error {
	if o.Window <= 0 || o.LeaseFile == "" || o.URI == "" {
		return errors.New("fence guard: libvirt URI, lease file and window are required")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	var node *hypervisor.Node
	defer func() {
		if node != nil {
			node.Close()
		}
	}()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if time.Now().Before(vouchedUntil(o.LeaseFile).Add(o.Window)) {
			continue
		}
		if node == nil || !node.Alive() {
			var err error
			if node, err = hypervisor.Open(hypervisor.Options{URI: o.URI, Accelerator: "auto"}); err != nil {
				node = nil
				continue // libvirtd down: no QEMU runs under it either, or it comes back
			}
		}
		if n, err := FenceOnce(node, o.Log); err != nil {
			o.Log.Error("fence guard", "err", err)
		} else if n > 0 {
			o.Log.Warn("fence guard: dvmd holds no lease; stopped HA guests", "guests", n)
		}
	}
}

// FenceOnce destroys the running restart and twin guests of a node and returns how
// many it stopped.
func FenceOnce(node *hypervisor.Node, log *slog.Logger) (int, error) {
	list, err := node.List()
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, g := range list {
		if (g.Failover == "restart" || g.Failover == "twin") && (g.State == hypervisor.StateRunning || g.State == hypervisor.StatePaused) {
			if err := node.Destroy(g.Name); err != nil {
				errs = append(errs, fmt.Errorf("guest %s: %w", g.Name, err))
				continue
			}
			log.Warn("fence guard: guest stopped", "guest", g.Name)
			n++
		}
	}
	return n, errors.Join(errs...)
}
