// Package fenceguard stops a node's HA guests when its dvmd stops vouching for them.
//
// dvmd fences its node's restart and twin guests when the node's lease lapses. But a
// dvmd that crashed, hung or was stopped fences nothing, while the master, seeing no
// lease, restarts those guests elsewhere: the guest would run twice. The guard is a
// separate process that outlives dvmd. While dvmd holds its lease it writes, a few
// times a second, until when its lease lets the node serve; once that time plus the
// window has passed, the guard pauses the HA guests itself (paused.go; destroys them
// without a paused guests' record). The master declares a
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
	// PausedFile is the paused guests' record shared with dvmd; "" destroys instead.
	PausedFile string
	Log        *slog.Logger
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
		if n, err := FenceOnce(node, o.PausedFile, o.Log); err != nil {
			o.Log.Error("fence guard", "err", err)
		} else if n > 0 {
			o.Log.Warn("fence guard: dvmd holds no lease; stopped HA guests", "guests", n)
		}
	}
}

// FenceOnce stops the running restart and twin guests of a node and returns how
// many it stopped: each is paused and recorded in pausedFile, or destroyed when it
// cannot be (or pausedFile is ""). A paused HA guest the record does not hold (an
// incoming migration's, one paused by hand) is destroyed: it may run again by itself.
func FenceOnce(node *hypervisor.Node, pausedFile string, log *slog.Logger) (int, error) {
	list, err := node.List()
	if err != nil {
		return 0, err
	}
	paused := Paused{Guests: map[string]PausedGuest{}}
	if pausedFile != "" {
		if paused, err = ReadPaused(pausedFile); err != nil {
			log.Error("fence guard", "err", err)
		}
	}
	n := 0
	var errs []error
	for _, g := range list {
		if g.Failover != "restart" && g.Failover != "twin" {
			continue
		}
		_, ours := paused.Guests[g.Name]
		switch {
		case g.State == hypervisor.StateRunning && pausedFile != "":
			err := UpdatePaused(pausedFile, func(p *Paused) {
				p.Guests[g.Name] = PausedGuest{UUID: g.UUID, Losses: p.Losses, Counted: p.Counted, At: time.Now().UTC()}
			})
			if err == nil {
				err = node.Suspend(g.Name)
			}
			if err == nil {
				log.Warn("fence guard: guest paused", "guest", g.Name)
				n++
				continue
			}
			log.Error("fence guard: pause failed, destroying the guest", "guest", g.Name, "err", err)
			fallthrough
		case g.State == hypervisor.StateRunning || g.State == hypervisor.StatePaused && !ours:
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
