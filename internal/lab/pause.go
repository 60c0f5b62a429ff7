package lab

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// pauseTimeout bounds Pause and Resume: a thread in uninterruptible sleep (disk
// I/O) stops or continues only when the call it is in returns.
const pauseTimeout = 10 * time.Second

// Pause stops every process of the node with SIGSTOP: tini, libvirtd, virtlogd,
// virtlockd, every QEMU, dvmd and its fence guard. It is what a long GC stall, a
// frozen VM or a stuck disk does to a host: nothing of the node runs, its sockets stay
// open (peers see connections that do not answer, not refused ones), and its
// guests' QEMUs do not run either. It returns once every process and thread of the
// node's PID namespace is stopped, including processes forked while the signals
// went out. The node stays paused until Resume; Kill, Restart and Down end a paused
// node as any other.
func (l *Lab) Pause(node string) error {
	return l.onRunningNode(node, func(n *nodeState) error {
		if n.Paused {
			return fmt.Errorf("node %s is paused already: continue it with `vmctl lab resume %s`", node, node)
		}
		// Recorded first: a Pause that fails half way leaves a node that Resume must
		// continue.
		n.Paused = true
		if err := l.save(); err != nil {
			return err
		}
		start := time.Now()
		count, err := signalUntil(pidNS(n.PID), syscall.SIGSTOP, stopped)
		if err != nil {
			return fmt.Errorf("pause node %s: %w (continue it with `vmctl lab resume %s`)", node, err, node)
		}
		l.logf("node %s paused: %d processes stopped in %s", node, count, time.Since(start).Round(time.Millisecond))
		return nil
	})
}

// Resume continues every process of a paused node with SIGCONT and returns once
// none of them is stopped any more.
func (l *Lab) Resume(node string) error {
	return l.onRunningNode(node, func(n *nodeState) error {
		if !n.Paused {
			return fmt.Errorf("node %s is not paused (pause it with `vmctl lab pause %s`)", node, node)
		}
		count, err := signalUntil(pidNS(n.PID), syscall.SIGCONT, continued)
		if err != nil {
			return fmt.Errorf("resume node %s: %w", node, err)
		}
		n.Paused = false
		if err := l.save(); err != nil {
			return err
		}
		l.logf("node %s resumed: %d processes continued", node, count)
		return nil
	})
}

// onRunningNode runs fn on a node of an up lab whose PID 1 is alive, with the lab
// locked.
func (l *Lab) onRunningNode(node string, fn func(n *nodeState) error) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()
	n, err := l.find(node)
	if err != nil {
		return err
	}
	if !l.st.Up {
		return fmt.Errorf("lab in %s is down: bring it up with `vmctl lab up --dir %s`", l.dir, l.dir)
	}
	if !alive(n.PID, n.PIDStart) {
		return fmt.Errorf("node %s is not running: bring it back with `vmctl lab restart %s`", node, node)
	}
	return fn(n)
}

// signalUntil sends sig to every process of PID namespace ns that is not yet in the
// state done says, again and again, until one listing of the namespace finds every
// process done and the next listing finds the same processes. A process forked
// after a listing appears in the next one; once every process is stopped none can
// fork, so two equal listings of stopped processes are the whole namespace. It
// returns how many processes the namespace holds.
func signalUntil(ns string, sig syscall.Signal, done func(pid int) bool) (int, error) {
	if ns == "" {
		return 0, fmt.Errorf("the node's PID namespace is gone")
	}
	deadline := time.Now().Add(pauseTimeout)
	var prev []int
	for {
		members := nsMembers(ns)
		slices.Sort(members)
		all := true
		for _, pid := range members {
			if done(pid) {
				continue
			}
			all = false
			// ESRCH: the process ended since the listing; the next listing says.
			_ = syscall.Kill(pid, sig)
		}
		if all && slices.Equal(members, prev) {
			return len(members), nil
		}
		if all {
			prev = members
			continue
		}
		prev = nil
		if time.Now().After(deadline) {
			var left []string
			for _, pid := range members {
				if !done(pid) {
					left = append(left, fmt.Sprintf("%d (%s, state %s)", pid, procName(pid), taskStates(pid)))
				}
			}
			return 0, fmt.Errorf("after %s of %s, processes %s have not followed", pauseTimeout, sig, strings.Join(left, ", "))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stopped says whether every thread of pid is stopped (T), or pid is a zombie or
// gone: a process that runs no code. A SIGSTOP stops a process's threads one by
// one, so the main thread's state alone does not say that QEMU's vCPU threads
// stopped.
func stopped(pid int) bool {
	for _, s := range taskStates(pid) {
		if s != 'T' && s != 't' && s != 'Z' && s != 'X' {
			return false
		}
	}
	return true
}

// continued says whether no thread of pid is stopped (a zombie, or a process gone,
// is not).
func continued(pid int) bool {
	for _, s := range taskStates(pid) {
		if s == 'T' || s == 't' {
			return false
		}
	}
	return true
}

// taskStates lists the state letter (/proc/PID/task/TID/stat field 3) of every
// thread of pid; none when pid is gone.
func taskStates(pid int) []byte {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil
	}
	out := make([]byte, 0, len(ents))
	for _, e := range ents {
		if s := procState(fmt.Sprintf("/proc/%d/task/%s/stat", pid, e.Name())); s != 0 {
			out = append(out, s)
		}
	}
	return out
}

// procState reads the state letter (R, S, D, T, Z …) from a /proc stat file
// (/proc/PID/stat or /proc/PID/task/TID/stat); 0 when it cannot be read.
func procState(statFile string) byte {
	b, err := os.ReadFile(statFile)
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces and parentheses: count from the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return 0
	}
	return s[i+2]
}

// QEMU is a guest's QEMU process in a node's PID namespace.
type QEMU struct {
	Guest string // the libvirt domain's name (QEMU's -name guest=NAME)
	PID   int    // in the root namespace
	// Stopped: every thread of it is stopped by a signal (the node is paused), or it
	// is a zombie: it runs no guest code now.
	Stopped bool
}

// NodeQEMUs lists the QEMU processes of the node, read from /proc: what runs
// there whatever its libvirtd says, and when its libvirtd cannot answer (a paused
// node's libvirtd is stopped too). None when the node is killed.
func (l *Lab) NodeQEMUs(node string) ([]QEMU, error) {
	pids, err := l.NodeProcesses(node)
	if err != nil {
		return nil, err
	}
	var out []QEMU
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.Contains(args[0], "qemu-system") {
			continue
		}
		for _, a := range args {
			if name, ok := strings.CutPrefix(a, "guest="); ok {
				name, _, _ = strings.Cut(name, ",")
				out = append(out, QEMU{Guest: name, PID: pid, Stopped: stopped(pid)})
				break
			}
		}
	}
	return out, nil
}

func procName(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSpace(string(b))
}
