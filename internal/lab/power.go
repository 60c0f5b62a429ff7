package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The lab's power switch stands in for the BMCs (IPMI, Redfish) a rack's power
// fence agents talk to. A node's namespaces cannot reach another node's processes,
// so the switch is a process of the host's (`vmctl lab power`, started by Up with
// Options.PowerFence and stopped by Down) that serves a unix socket in the lab
// directory, which every node sees. The nodes' dvmd run PowerFenceAgentFile, which
// speaks fence-agents' protocol on its standard input and asks the switch over the
// socket: "off NODE" kills the node as Kill does; "reboot NODE" kills it and starts
// it again as Restart does, answering once it is off; "status NODE" says on or off.
const (
	powerSocketFile = "power.sock"
	powerPIDFile    = "power.pid"
	// PowerFenceAgentFile is the power fence agent the lab names in every node's
	// dvmd.conf (power_fence_agent) with Options.PowerFence.
	PowerFenceAgentFile = "power-fence-agent"
)

// PowerFenced says whether the lab runs its power switch (Options.PowerFence).
func (l *Lab) PowerFenced() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.PowerFence
}

// PowerSocket is the path of the lab's power switch socket.
func (l *Lab) PowerSocket() string { return filepath.Join(l.dir, powerSocketFile) }

// powerAgentScript is the agent the nodes run: the lab's own binary, as the
// fence-agents' client of the switch.
func powerAgentScript(labBin, dir string) string {
	return fmt.Sprintf("#!/bin/sh\n# The lab's power fence agent, written by vmctl lab up --power-fence.\nexec %s power-fence-agent --socket %s\n",
		shellQuote(labBin), shellQuote(filepath.Join(dir, powerSocketFile)))
}

// startPowerSwitch starts `labBin --dir DIR power` in a session of its own,
// outliving the command that brought the lab up, and waits for its socket. labBin
// is vmctl-lab, whose commands are vmctl lab's.
func startPowerSwitch(dir, labBin string) error {
	stopPowerSwitch(dir) // a switch left by a lab that was not brought down
	logf, err := os.OpenFile(filepath.Join(dir, "power.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(labBin, "--dir", dir, "power")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the lab's power switch: %w", err)
	}
	pid := cmd.Process.Pid
	go cmd.Wait() // reaped if it ends while this process lives
	if err := writeFileAtomic(filepath.Join(dir, powerPIDFile), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		cmd.Process.Kill()
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", filepath.Join(dir, powerSocketFile)); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Kill()
	return fmt.Errorf("the lab's power switch did not listen on %s within 10s: see %s", filepath.Join(dir, powerSocketFile), filepath.Join(dir, "power.log"))
}

// stopPowerSwitch ends the switch recorded in DIR/power.pid, if any.
func stopPowerSwitch(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, powerPIDFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err == nil && pid > 1 && isPowerSwitch(pid) {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	os.Remove(filepath.Join(dir, powerSocketFile))
	return os.Remove(filepath.Join(dir, powerPIDFile))
}

// isPowerSwitch checks that pid still runs the switch (a PID may be reused).
func isPowerSwitch(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.HasSuffix(string(b), "\x00power\x00")
}

// ServePower is the power switch: it serves the lab's power socket until ctx ends.
func (l *Lab) ServePower(ctx context.Context) error {
	path := l.PowerSocket()
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	defer ln.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go l.servePowerConn(ctx, c)
	}
}

func (l *Lab) servePowerConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	line, err := bufio.NewReader(io.LimitReader(c, 256)).ReadString('\n')
	if err != nil {
		fmt.Fprintf(c, "error: no request: %v\n", err)
		return
	}
	action, node, _ := strings.Cut(strings.TrimSpace(line), " ")
	if _, err := l.Node(node); err != nil {
		fmt.Fprintf(c, "error: %v\n", err)
		return
	}
	switch action {
	case "status":
		if l.running(node) {
			fmt.Fprintln(c, "ok on")
		} else {
			fmt.Fprintln(c, "ok off")
		}
	case "off", "reboot":
		if l.running(node) {
			if err := l.Kill(node); err != nil && l.running(node) {
				fmt.Fprintf(c, "error: %v\n", err)
				return
			}
		}
		l.logf("power switch: %s off", node)
		fmt.Fprintln(c, "ok off")
		if action == "reboot" {
			if err := l.Restart(ctx, node); err != nil {
				l.logf("power switch: reboot %s: %v", node, err)
			} else {
				l.logf("power switch: %s on again", node)
			}
		}
	default:
		fmt.Fprintf(c, "error: action %q: the switch knows off, reboot and status\n", action)
	}
}

// running says whether node's PID 1 runs now (paused counts: it holds its guests).
func (l *Lab) running(node string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reload()
	n, err := l.find(node)
	return err == nil && l.st.Up && alive(n.PID, n.PIDStart)
}

// PowerFenceAgent is the lab's power fence agent: it reads fence-agents' options
// (name=value lines: action, plug or port or nodename) from in, asks the switch at
// socket, and returns nil once the action is done. Actions: off, reboot, on
// (nothing to do: a reboot starts the node again), status and monitor.
func PowerFenceAgent(in io.Reader, socket string) (string, error) {
	opts := map[string]string{}
	sc := bufio.NewScanner(io.LimitReader(in, 64<<10))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if ok && !strings.HasPrefix(k, "#") {
			opts[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	action := opts["action"]
	if action == "" {
		action = "reboot"
	}
	node := opts["plug"]
	for _, k := range []string{"port", "nodename"} {
		if node == "" {
			node = opts[k]
		}
	}
	if action == "monitor" {
		c, err := net.DialTimeout("unix", socket, 5*time.Second)
		if err != nil {
			return "", fmt.Errorf("the lab's power switch at %s: %w", socket, err)
		}
		c.Close()
		return "", nil
	}
	if node == "" {
		return "", errors.New("no plug: give plug=NODE (or port= or nodename=)")
	}
	switch action {
	case "off", "reboot", "status":
	default:
		return "", fmt.Errorf("action %q: the lab's switch knows off, reboot, status and monitor", action)
	}
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return "", fmt.Errorf("the lab's power switch at %s: %w", socket, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	fmt.Fprintf(c, "%s %s\n", action, node)
	answer, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("the lab's power switch did not answer: %w", err)
	}
	answer = strings.TrimSpace(answer)
	if rest, ok := strings.CutPrefix(answer, "ok"); ok {
		return strings.TrimSpace(rest), nil
	}
	return "", errors.New(strings.TrimPrefix(answer, "error: "))
}
