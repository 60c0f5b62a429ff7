package hypervisor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Twin is one running half of a twin: a QEMU process this node started, its QMP
// monitor, and what dvm knows of its replication. The runner restarts nothing by
// itself: when the process ends, Exited is closed and the cluster decides. Methods are
// safe for concurrent use; QMP commands to one half run one at a time.
type Twin struct {
	spec TwinSpec
	pid  int
	done chan struct{} // closed when the process has ended and been reaped
	// exitErr is the process's end as exec reports it; read only after done.
	exitErr error
	mon     *qmp.SocketMonitor
	api     *raw.Monitor

	mu       sync.Mutex
	role     TwinRole  // a secondary becomes primary by Failover
	state    TwinState // what Status reports besides QEMU's own view
	promoted bool      // a former secondary: its rewriter filter stays first on the NIC
	// The primary's packet-compare chardevs: the TCP ones on these addresses (zero:
	// none), and whether the local unix ones exist.
	packetLinks  TwinLinks
	localCompare bool

	// From COLO's trace events (readTrace).
	checkpoints    int64
	lastCheckpoint time.Duration
	checkpointAt   time.Time // when the last checkpoint ended
	requestAt      time.Time // when the checkpoint under way was requested
	awaitResume    bool      // a checkpoint ended and the guest has not run since
}

// TwinState is a twin's protection as an operator sees it.
type TwinState string

const (
	TwinProtected   TwinState = "protected"   // COLO runs: a failover loses nothing
	TwinSyncing     TwinState = "syncing"     // the secondary is being brought level
	TwinUnprotected TwinState = "unprotected" // one half alone: its loss loses the guest
)

// How long the runner waits for QEMU's monitor after starting it, and for each QMP
// command when the caller's context has no deadline.
const (
	twinStartTimeout = 20 * time.Second
	twinQMPTimeout   = 30 * time.Second
	// A checkpoint's end is followed by the guest's restart within milliseconds; a
	// primary that has not restarted after this long is wedged.
	twinResumeLimit = 2 * time.Second
)

// StartPrimary starts the primary half of a twin: the guest runs (or waits, with
// spec.Paused) with its disk as a one-child quorum, ready for Pair to add the
// replication child, the packet filters and the secondary.
func StartPrimary(ctx context.Context, spec TwinSpec) (*Twin, error) {
	if spec.Role != TwinPrimary {
		return nil, fmt.Errorf("start primary of twin %q: spec has role %q", spec.Guest.Name, spec.Role)
	}
	return startTwin(ctx, spec)
}

// StartSecondary starts the secondary half of a twin: QEMU waits for the primary's
// migration stream on spec.Links.Migrate, its disk layered as COLO wants it (the copy
// of the disk under a hidden and an active overlay made here, in RunDir).
func StartSecondary(ctx context.Context, spec TwinSpec) (*Twin, error) {
	if spec.Role != TwinSecondary {
		return nil, fmt.Errorf("start secondary of twin %q: spec has role %q", spec.Guest.Name, spec.Role)
	}
	return startTwin(ctx, spec)
}

func startTwin(ctx context.Context, spec TwinSpec) (*Twin, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	return launchTwin(ctx, spec)
}

// launchTwin starts the QEMU process of a validated spec (or of the probe's own).
func launchTwin(ctx context.Context, spec TwinSpec) (*Twin, error) {
	name := spec.Guest.Name
	fail := func(err error) error { return fmt.Errorf("start %s of twin %q: %w", spec.Role, name, err) }
	bin, err := exec.LookPath(spec.qemu())
	if err != nil {
		return nil, fail(fmt.Errorf("%w: install qemu-system-x86 or set the QEMU binary", err))
	}
	if err := os.MkdirAll(spec.RunDir, 0o700); err != nil {
		return nil, fail(err)
	}
	if pid, ok := runningPid(spec); ok {
		return nil, fail(fmt.Errorf("a QEMU (pid %d) already runs from %s: stop it first", pid, spec.RunDir))
	}
	// What a process that was killed left behind.
	for _, f := range twinRunFiles {
		if err := removeIfExists(spec.path(f)); err != nil {
			return nil, fail(err)
		}
	}
	if spec.Role == TwinSecondary && spec.Guest.Disk != nil {
		if err := makeOverlays(ctx, spec); err != nil {
			return nil, fail(err)
		}
	}
	var tap *os.File
	if len(spec.Guest.NICs) == 1 {
		if tap, err = openTap(spec); err != nil {
			cleanupTwinFiles(spec)
			return nil, fail(err)
		}
		defer tap.Close() // QEMU holds its own copy; the tap goes when QEMU ends
	}
	trace, err := openTraceFIFO(spec.path(twinTraceFIFO))
	if err != nil {
		cleanupTwinFiles(spec)
		return nil, fail(err)
	}
	args, err := twinCommand(spec, 3)
	if err != nil {
		trace.Close()
		cleanupTwinFiles(spec)
		return nil, err
	}
	logf, err := os.OpenFile(spec.path(twinQEMULog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		trace.Close()
		cleanupTwinFiles(spec)
		return nil, fail(err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "%s dvm: starting %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if tap != nil {
		cmd.ExtraFiles = []*os.File{tap} // fd 3
	}
	// Its own session and process group: a signal to the agent's terminal or group
	// does not reach the guest, and Stop can signal QEMU and any helper it forks.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		trace.Close()
		cleanupTwinFiles(spec)
		return nil, fail(err)
	}
	t := &Twin{spec: spec, pid: cmd.Process.Pid, done: make(chan struct{}), role: spec.Role, state: TwinUnprotected}
	if spec.Role == TwinPrimary && len(spec.Guest.NICs) == 1 {
		t.packetLinks, t.localCompare = TwinLinks{Mirror: spec.Links.Mirror, Compare: spec.Links.Compare}, true
	}
	traced := make(chan struct{})
	go func() {
		t.readTrace(trace)
		close(traced)
	}()
	go func() {
		err := cmd.Wait()
		trace.Close() // ends readTrace: the runner holds the pipe's write end too
		<-traced
		if f, ferr := os.OpenFile(spec.path(twinQEMULog), os.O_WRONLY|os.O_APPEND, 0); ferr == nil {
			fmt.Fprintf(f, "%s dvm: QEMU ended: %v\n", time.Now().UTC().Format(time.RFC3339Nano), exitText(err))
			f.Close()
		}
		t.exitErr = err
		close(t.done)
	}()
	if err := t.connect(ctx); err != nil {
		t.kill()
		cleanupTwinFiles(spec)
		return nil, fail(err)
	}
	return t, nil
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// AttachTwin takes over the supervision of a twin half that a previous run of the
// agent started from the same spec (its pidfile and QMP socket in spec.RunDir), as
// libvirtd reconnects to its guests when it restarts: the guest never notices. The
// role comes from QEMU (a secondary that took over reports as primary). Checkpoint
// counts start again from zero, and ExitError cannot tell how the process ended (it
// is not this process's child).
func AttachTwin(ctx context.Context, spec TwinSpec) (*Twin, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	fail := func(err error) error { return fmt.Errorf("attach %s of twin %q: %w", spec.Role, spec.Guest.Name, err) }
	pid, ok := runningPid(spec)
	if !ok {
		return nil, fail(fmt.Errorf("%w: no QEMU runs from %s", ErrNotFound, spec.RunDir))
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fail(fmt.Errorf("pidfd of %d: %w", pid, err))
	}
	trace, err := os.OpenFile(spec.path(twinTraceFIFO), os.O_RDWR, 0)
	if err != nil {
		unix.Close(pidfd)
		return nil, fail(fmt.Errorf("trace pipe: %w", err))
	}
	t := &Twin{spec: spec, pid: pid, done: make(chan struct{}), role: spec.Role, state: TwinUnprotected}
	traced := make(chan struct{})
	go func() {
		t.readTrace(trace)
		close(traced)
	}()
	go func() {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		unix.Close(pidfd)
		trace.Close()
		<-traced
		t.exitErr = errors.New("QEMU ended (how is unknown: the process was attached, not started, by this agent)")
		close(t.done)
	}()
	if err := t.connect(ctx); err != nil {
		trace.Close()
		return nil, fail(err)
	}
	if err := t.learnState(ctx); err != nil {
		t.mon.Disconnect()
		return nil, fail(err)
	}
	return t, nil
}

// learnState reads an attached half's role, protection and packet-compare chardevs
// from QEMU.
func (t *Twin) learnState(ctx context.Context) error {
	cs, err := t.queryColo(ctx)
	if err != nil {
		return err
	}
	st, err := t.runState(ctx)
	if err != nil {
		return err
	}
	var devs []struct {
		Label string `json:"label"`
	}
	if err := t.qmpRun(ctx, "query-chardev", nil, &devs); err != nil {
		return err
	}
	labels := map[string]bool{}
	for _, d := range devs {
		labels[d.Label] = true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case cs.Mode == "primary" || cs.Mode == "secondary":
		t.role, t.state = TwinRole(cs.Mode), TwinProtected
	case t.spec.Role == TwinSecondary && st != "inmigrate":
		// COLO ended on a secondary that runs: it took over.
		t.role, t.promoted = TwinPrimary, true
	}
	if labels["mirror0"] {
		// Addresses unknown: the next Protect makes these chardevs anew.
		t.packetLinks = TwinLinks{Mirror: "attached", Compare: "attached"}
	}
	t.localCompare = labels["compare0"]
	return nil
}

// connect waits for QEMU's QMP socket and completes the QMP handshake.
func (t *Twin) connect(ctx context.Context) error {
	deadline := time.Now().Add(twinStartTimeout)
	sock := t.spec.path(twinQMPSocket)
	for {
		select {
		case <-t.done:
			return fmt.Errorf("QEMU ended at start (%v): %s", t.exitErr, t.logTail())
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no QMP monitor at %s after %s: %s", sock, twinStartTimeout, t.logTail())
		}
		mon, err := qmp.NewSocketMonitor("unix", sock, time.Second)
		if err == nil {
			// QEMU greets one client at a time; a second one waits for the banner with
			// no end, so the wait is bounded here.
			connected := make(chan error, 1)
			go func() { connected <- mon.Connect() }()
			select {
			case err = <-connected:
			case <-time.After(5 * time.Second):
				mon.Disconnect()
				<-connected
				return fmt.Errorf("QMP monitor %s greets no client: another client holds it", sock)
			}
			if err == nil {
				t.mon, t.api = mon, raw.NewMonitor(mon)
				return nil
			}
			mon.Disconnect()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logTail is the end of the QEMU log, where QEMU says why it refused to start.
func (t *Twin) logTail() string {
	b, _ := os.ReadFile(t.spec.path(twinQEMULog))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var keep []string
	for i := len(lines) - 1; i >= 0 && len(keep) < 3; i-- {
		if !strings.Contains(lines[i], "dvm: starting") {
			keep = append([]string{lines[i]}, keep...)
		}
	}
	if len(keep) == 0 {
		return "(QEMU logged nothing)"
	}
	return strings.Join(keep, " | ")
}

// Name is the guest's name; Role the part this half plays now.
func (t *Twin) Name() string { return t.spec.Guest.Name }

func (t *Twin) Role() TwinRole {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.role
}

// Spec is the spec the half was started from.
func (t *Twin) Spec() TwinSpec { return t.spec }

// PID is the QEMU process's id.
func (t *Twin) PID() int { return t.pid }

// Exited is closed when the QEMU process has ended, whatever ended it.
func (t *Twin) Exited() <-chan struct{} { return t.done }

// ExitError is how the process ended (nil for a clean exit); valid once Exited is closed.
func (t *Twin) ExitError() error {
	<-t.done
	return t.exitErr
}

// Stop ends the QEMU process as libvirt's destroy does, more gently first: QMP quit,
// then SIGTERM to its process group after half of grace, SIGKILL after the other half.
// It then removes the sockets, pidfile and overlays the half made; the QEMU log and the
// console log stay. Stop on a half whose process already ended only cleans up.
func (t *Twin) Stop(grace time.Duration) error {
	if grace <= 0 {
		grace = 10 * time.Second
	}
	select {
	case <-t.done:
	default:
		ctx, cancel := context.WithTimeout(context.Background(), grace/2)
		_ = t.do(ctx, "quit", t.api.Quit)
		cancel()
		if !t.waitExit(grace / 2) {
			_ = syscall.Kill(-t.PID(), syscall.SIGTERM)
			if !t.waitExit(grace / 2) {
				t.kill()
			}
		}
	}
	if t.mon != nil {
		t.mon.Disconnect()
	}
	t.mu.Lock()
	promoted := t.promoted
	t.mu.Unlock()
	var keep []string
	if promoted {
		// After a takeover QEMU commits the overlays into the disk copy with an
		// internal job that QMP does not show; until a check of the chain says it is
		// done, the overlays may hold the guest's last writes. StartSecondary from this
		// RunDir replaces them.
		keep = []string{twinActive, twinHidden}
	}
	if err := cleanupTwinFiles(t.spec, keep...); err != nil {
		return fmt.Errorf("stop %s of twin %q: clean up: %w", t.spec.Role, t.Name(), err)
	}
	return nil
}

func (t *Twin) waitExit(d time.Duration) bool {
	select {
	case <-t.done:
		return true
	case <-time.After(d):
		return false
	}
}

// kill ends the process group at once and waits until the process is reaped.
func (t *Twin) kill() {
	_ = syscall.Kill(-t.PID(), syscall.SIGKILL)
	<-t.done
}

// twinRunFiles are what a half makes in its RunDir besides the QEMU log.
var twinRunFiles = []string{twinQMPSocket, twinPidfile, twinCompareIn, twinCompareOut, twinActive, twinHidden, twinTraceFIFO}

// cleanupTwinFiles removes what a half made in its RunDir, except logs.
func cleanupTwinFiles(spec TwinSpec, keep ...string) error {
	var errs []error
	for _, f := range twinRunFiles {
		if !slices.Contains(keep, f) {
			errs = append(errs, removeIfExists(spec.path(f)))
		}
	}
	return errors.Join(errs...)
}

// runningPid reports a live QEMU whose pidfile is in the spec's RunDir and whose
// command line names the same QMP socket (a recycled pid is not mistaken for it).
func runningPid(spec TwinSpec) (int, bool) {
	b, err := os.ReadFile(spec.path(twinPidfile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return 0, false
	}
	return pid, bytes.Contains(cmdline, []byte(spec.path(twinQMPSocket)))
}

// makeOverlays creates the secondary's active and hidden qcow2 overlays with the
// virtual size of its copy of the disk, as COLO requires.
func makeOverlays(ctx context.Context, spec TwinSpec) error {
	d := spec.Guest.Disk
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", "-f", diskFormat(d), d.Path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("read the size of disk %s: qemu-img: %v: %s", d.Path, err, strings.TrimSpace(string(out)))
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.VirtualSize <= 0 {
		return fmt.Errorf("read the size of disk %s: qemu-img info gave no virtual-size", d.Path)
	}
	for _, f := range []string{twinActive, twinHidden} {
		out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", spec.path(f), strconv.FormatInt(info.VirtualSize, 10)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("create overlay %s: qemu-img: %v: %s", spec.path(f), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// TwinTapName is the tap device of a twin half's NIC: one per half (guest, role and
// run directory), so that halves of one guest can share a node (as in tests), and
// within the 15 bytes Linux allows.
func TwinTapName(spec TwinSpec) string {
	h := fnv.New32a()
	h.Write([]byte(spec.Guest.Name + "\x00" + spec.RunDir))
	return fmt.Sprintf("dvt%c%08x", spec.Role[0], h.Sum32())
}

// openTap creates the NIC's tap on the NIC's bridge and returns its file, which QEMU
// inherits. The tap is not persistent: it disappears when the last holder of the file
// (QEMU) ends, so a crash leaves no device behind. No vnet header: COLO's filters and
// compare would need to be told of one on both halves.
func openTap(spec TwinSpec) (*os.File, error) {
	nic := spec.Guest.NICs[0]
	br, err := netlink.LinkByName(nic.Bridge)
	if err != nil {
		return nil, fmt.Errorf("NIC bridge %q: %w: create the bridge first", nic.Bridge, err)
	}
	name := TwinTapName(spec)
	if old, err := netlink.LinkByName(name); err == nil {
		// A persistent leftover of another tool: ours vanish with their QEMU.
		return nil, fmt.Errorf("a device %s (%s) already exists: remove it", name, old.Type())
	}
	tap := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: name},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE,
		Queues:     1,
		NonPersist: true,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	closeAll := func() {
		for _, f := range tap.Fds {
			f.Close()
		}
	}
	if err := netlink.LinkSetMaster(tap, br); err != nil {
		closeAll()
		return nil, fmt.Errorf("put tap %s on bridge %s: %w", name, nic.Bridge, err)
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		closeAll()
		return nil, fmt.Errorf("set tap %s up: %w", name, err)
	}
	for _, f := range tap.Fds[1:] {
		f.Close()
	}
	return tap.Fds[0], nil
}

// do runs one QMP exchange, bounded by ctx (or twinQMPTimeout when ctx has no
// deadline) and by the process's end: go-qemu's Run has no timeout of its own.
func (t *Twin) do(ctx context.Context, op string, f func() error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, twinQMPTimeout)
		defer cancel()
	}
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	var err error
	select {
	case err = <-ch:
	case <-ctx.Done():
		err = fmt.Errorf("no answer: %w", ctx.Err())
	case <-t.done:
		err = fmt.Errorf("QEMU ended (%v)", t.exitErr)
	}
	if err != nil {
		return fmt.Errorf("%s of twin %q: %s: %w", t.spec.Role, t.Name(), op, err)
	}
	return nil
}

// qmpRun runs a command that go-qemu's generated API lacks (or types too old for
// QEMU 7.2), decoding its return value into out when out is not nil.
func (t *Twin) qmpRun(ctx context.Context, execute string, args any, out any) error {
	cmd, err := json.Marshal(qmp.Command{Execute: execute, Args: args})
	if err != nil {
		return err
	}
	return t.do(ctx, execute, func() error {
		b, err := t.mon.Run(cmd)
		if err != nil {
			return err
		}
		if out == nil {
			return nil
		}
		var r struct {
			Return json.RawMessage `json:"return"`
		}
		if err := json.Unmarshal(b, &r); err != nil {
			return err
		}
		return json.Unmarshal(r.Return, out)
	})
}

// hmp runs a human monitor command (drive_add and drive_del have no QMP form in 7.2)
// and turns its printed complaint into an error.
func (t *Twin) hmp(ctx context.Context, line string) error {
	var out string
	if err := t.qmpRun(ctx, "human-monitor-command", map[string]string{"command-line": line}, &out); err != nil {
		return err
	}
	if out = strings.TrimSpace(out); out != "" && !strings.HasPrefix(out, "OK") {
		return fmt.Errorf("%s of twin %q: %s: %s", t.spec.Role, t.Name(), line, out)
	}
	return nil
}

// hostPort formats an address for QEMU's host= / port= options.
func hostPort(addr string) (string, string) {
	h, p, _ := net.SplitHostPort(addr)
	return h, p
}

// openTraceFIFO makes the pipe QEMU writes its trace events into (-D) and opens it
// for reading and writing: QEMU's open then never blocks, and the runner never sees an
// end of file while QEMU restarts its log.
func openTraceFIFO(path string) (*os.File, error) {
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		return nil, fmt.Errorf("trace pipe %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("trace pipe %s: %w", path, err)
	}
	return f, nil
}

// traceRE matches the lines of QEMU's log trace backend that the runner reads:
// "PID@SEC.USEC:colo_receive_message Receive 'vmstate-loaded' message" and
// "PID@SEC.USEC:colo_vm_state_change Change 'stop' => 'run'".
var traceRE = regexp.MustCompile(`^(?:\d+@(\d+)\.(\d{6}):)?colo_(send_message|receive_message|vm_state_change) \w+ '([a-z-]+)'(?: => '([a-z]+)')?`)

// readTrace counts the checkpoints of either half and times each, from the request to
// "vmstate-loaded", and notes whether a primary's guest ran again after it,
// until the pipe is closed. It must keep reading: a full pipe would stall QEMU.
func (t *Twin) readTrace(f *os.File) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := traceRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		at := time.Now()
		if m[1] != "" {
			sec, _ := strconv.ParseInt(m[1], 10, 64)
			usec, _ := strconv.ParseInt(m[2], 10, 64)
			at = time.Unix(sec, usec*1000)
		}
		t.mu.Lock()
		// The primary sends the request and receives "loaded"; the secondary receives
		// the request, restarts its replica and then sends "loaded".
		switch {
		case m[4] == "checkpoint-request" && m[3] != "vm_state_change":
			t.requestAt = at
		case m[4] == "vmstate-loaded" && m[3] != "vm_state_change" && !t.requestAt.IsZero():
			t.checkpoints++
			t.lastCheckpoint = at.Sub(t.requestAt)
			t.checkpointAt = at
			t.requestAt = time.Time{}
			t.awaitResume = m[3] == "receive_message"
		case m[3] == "vm_state_change" && m[4] == "stop" && m[5] == "run":
			t.awaitResume = false
		}
		t.mu.Unlock()
	}
}

// stuckSince reports a primary whose guest has not run again since a checkpoint ended
// longer than twinResumeLimit ago: QEMU's COLO thread is wedged (Debian's QEMU 7.2.22
// does this within its first few checkpoints; see ProbeTwinSupport).
func (t *Twin) stuckSince() (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.checkpointAt, t.awaitResume && time.Since(t.checkpointAt) > twinResumeLimit
}
