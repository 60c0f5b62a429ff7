package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// StopAgent stops the node's dvmd and keeps it stopped, as `systemctl stop dvmd` on a
// host: the node, its libvirtd and its guests run on, and so does the fence guard
// dvmd started (a process of its own). dvmd is asked to stop (SIGTERM, as systemd
// does: a master hands its role over first) and killed (SIGKILL) if it has not
// stopped within agentStopTimeout; StartAgent lets the node's script start it again.
// agentStopTimeout is how long a dvmd asked to stop gets before it is killed.
const agentStopTimeout = 15 * time.Second

func (l *Lab) StopAgent(node string) error {
	return l.onRunningNode(node, func(n *nodeState) error {
		hold := filepath.Join(l.nodeDir(n.Name), "dvmd.hold")
		if err := os.WriteFile(hold, nil, 0o644); err != nil {
			return err
		}
		ns := pidNS(n.PID)
		start := time.Now()
		asked := map[int]bool{}
		deadline := start.Add(agentStopTimeout + 30*time.Second)
		for {
			agents := agentsIn(ns)
			if len(agents) == 0 {
				l.logf("node %s: dvmd stopped in %v (held by %s)", n.Name, time.Since(start).Round(time.Millisecond), hold)
				return nil
			}
			for _, pid := range agents {
				sig := syscall.SIGKILL
				switch {
				case time.Since(start) > agentStopTimeout:
				case asked[pid]:
					continue // asked once: a second SIGTERM could land after dvmd stops catching it
				default:
					sig, asked[pid] = syscall.SIGTERM, true
				}
				if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
					return fmt.Errorf("node %s: kill dvmd (PID %d): %w", n.Name, pid, err)
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("node %s: dvmd %v still alive after SIGTERM and SIGKILL", n.Name, agents)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// StartAgent lets the node's dvmd start again after StopAgent, and waits until it
// listens.
func (l *Lab) StartAgent(ctx context.Context, node string) error {
	var ns nodeState
	err := l.onRunningNode(node, func(n *nodeState) error {
		ns = *n
		err := os.Remove(filepath.Join(l.nodeDir(n.Name), "dvmd.hold"))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := l.waitAgent(wctx, ns); err != nil {
		return err
	}
	l.logf("node %s: dvmd started", node)
	return nil
}

// agentsIn lists the dvmd agent processes of PID namespace ns (not its fence guard).
func agentsIn(ns string) []int {
	if ns == "" {
		return nil
	}
	var out []int
	for _, pid := range nsMembers(ns) {
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(string(cmd), "\x00agent\x00--config") {
			out = append(out, pid)
		}
	}
	return out
}
