package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
	"golang.org/x/sys/unix"
)

// TestRealQEMUConsole attaches `vmctl vm console` (built without cgo, as shipped) to a
// real guest on this host's libvirtd through the API, in a terminal (a pty): vmctl
// puts it in raw mode and says where it is attached, the guest's shell answers a
// command typed there, the console log keeps being written meanwhile, ^] detaches
// with exit 0 and the terminal as it was, and the events name the token that
// attached. A second attach takes the console over and the first session is told so.
// Refused, with nothing opened: no token (401), a read-only token (403), an unknown
// guest (404), a stopped guest (409, naming its state).
func TestRealQEMUConsole(t *testing.T) {
	rn := startRealNode(t, "dvmtest-console")
	c, name, cfg := rn.client, rn.guest, rn.cfg
	ctx := context.Background()
	vmctl := filepath.Join(rn.dir, "vmctl")
	build := exec.Command("go", "build", "-o", vmctl, "github.com/dvmproject/dvm/cmd/vmctl")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/vmctl: %v\n%s", err, out)
	}
	secret := func(tok, scope string) string {
		var made api.TokenCreated
		if err := c.Do(ctx, "POST", "/v1/tokens", api.CreateToken{Name: tok, Scope: scope}, &made); err != nil {
			t.Fatal(err)
		}
		return made.Secret
	}
	ops, viewer := secret("ops", api.ScopeOperator), secret("viewer", api.ScopeRead)
	env := func(token string) []string {
		return append(os.Environ(), "DVM_ADDR="+rn.node.Addr, "DVM_CA="+rn.node.CAFile, "DVM_TOKEN="+token)
	}

	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: name, OS: "linux", Image: "lab", CPUs: 1, MemoryBytes: 128 << 20, Failover: api.FailoverRestart}, nil); err != nil {
		t.Fatal(err)
	}
	waitLong(t, name+" running", 2*time.Minute, func() bool { return guest(t, c, name).State == api.GuestRunning })
	logPath := filepath.Join(cfg.DataDir, "console", name+".log")
	waitLong(t, "the guest's init on its console", 2*time.Minute, func() bool { return fileHas(logPath, "dvm-lab-guest: acpi ready") })

	// Refusals first, while the guest runs: each is an answer, and no session opens.
	anon, err := api.NewClient(rn.node.Addr, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := anon.TrustCA(rn.node.CAFile); err != nil {
		t.Fatal(err)
	}
	if _, _, err := anon.Console(ctx, name); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("console without a token: %v, want 401", err)
	}
	runVmctl(t, vmctl, env(""), 1, "no API token", "vm", "console", name)
	runVmctl(t, vmctl, env(viewer), 1, `token "viewer" has scope read`, "vm", "console", name)
	runVmctl(t, vmctl, env(ops), 1, "not found", "vm", "console", "no-such-guest")
	runVmctl(t, vmctl, env(ops), 1, "give exactly one name", "vm", "console")
	for _, e := range events(t, c) {
		if e.Kind == "console" {
			t.Fatalf("a refused console was recorded as attached: %+v", e)
		}
	}

	// The session, in a terminal.
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	before, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(vmctl, "vm", "console", name)
	cmd.Env = env(ops)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()
	screen := &lockedBuffer{}
	go io.Copy(screen, ptmx)
	waitLong(t, "vmctl's hint", 30*time.Second, func() bool {
		return strings.Contains(screen.String(), "connected to "+name+" on host1; ^] detaches")
	})
	raw, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil || raw.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
		t.Fatalf("the terminal is not in raw mode while attached: lflag %#x, %v", raw.Lflag, err)
	}
	// Typed as a person types: the shell echoes the line, and runs it at the CR.
	// The arithmetic is the guest's, so the marker comes back only if it ran.
	marker := fmt.Sprintf("hello-%d-console", 6*7*os.Getpid())
	typed := fmt.Sprintf("echo hello-$((6*7*%d))-console\r", os.Getpid())
	waitLong(t, "the guest's shell answers on the console", time.Minute, func() bool {
		if strings.Contains(screen.String(), marker) {
			return true
		}
		ptmx.Write([]byte(typed))
		time.Sleep(2 * time.Second)
		return strings.Contains(screen.String(), marker)
	})
	waitLong(t, "the console log written while the console is open", 10*time.Second, func() bool { return fileHas(logPath, marker) })

	if _, err := ptmx.Write([]byte{api.ConsoleDetach}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("vmctl after ^]: %v, want exit 0; screen:\n%s", err, screen.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("vmctl did not exit on ^]; screen:\n%s", screen.String())
	}
	after, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil || *after != *before {
		t.Fatalf("the terminal is not restored after ^]: %+v, was %+v (%v)", after, before, err)
	}
	waitFor(t, "the attach and the detach recorded with the token", func() bool {
		var attached, detached bool
		for _, e := range events(t, c) {
			if e.Kind == "console" && e.Token == "ops" && e.Guest == name && e.Node == "host1" {
				attached = attached || strings.Contains(e.Detail, "console attached on node host1")
				detached = detached || strings.Contains(e.Detail, "console detached after")
			}
		}
		return attached && detached
	})

	// A second attach takes the console over; the first is told and ends.
	opc, err := api.NewClient(rn.node.Addr, ops)
	if err != nil {
		t.Fatal(err)
	}
	if err := opc.TrustCA(rn.node.CAFile); err != nil {
		t.Fatal(err)
	}
	first, node, err := opc.Console(ctx, name)
	if err != nil || node != "host1" {
		t.Fatalf("first attach: node %q, %v", node, err)
	}
	defer first.Close()
	firstOut := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(first)
		firstOut <- b
	}()
	second, _, err := opc.Console(ctx, name)
	if err != nil {
		t.Fatalf("second attach: %v", err)
	}
	select {
	case b := <-firstOut:
		if !bytes.Contains(b, []byte("another session attached to this console")) {
			t.Fatalf("the session taken over ended without saying why: %q", b)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the first session did not end when the second attached")
	}
	if _, err := second.Write([]byte("echo second-$((2+3))-session\r")); err != nil {
		t.Fatal(err)
	}
	got := &lockedBuffer{}
	go io.Copy(got, second)
	waitLong(t, "the second session works", 30*time.Second, func() bool { return strings.Contains(got.String(), "second-5-session") })
	second.Close()

	// Stopped: 409, naming the state.
	if err := c.Do(ctx, "POST", "/v1/guests/"+name+"/stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitLong(t, name+" stopped", 2*time.Minute, func() bool { return guest(t, c, name).State == api.GuestStopped })
	if _, _, err := opc.Console(ctx, name); statusOf(err) != http.StatusConflict || !strings.Contains(err.Error(), "is stopped") {
		t.Fatalf("console of a stopped guest: %v, want 409 naming the state", err)
	}
	runVmctl(t, vmctl, env(ops), 1, "is stopped, not running", "vm", "console", name)
}

func statusOf(err error) int {
	var se *api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// runVmctl runs vmctl with stdin not a terminal and checks its exit code and that its
// standard error holds want.
func runVmctl(t *testing.T, vmctl string, env []string, code int, want string, args ...string) {
	t.Helper()
	cmd := exec.Command(vmctl, args...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	got := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		got = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if got != code || !strings.Contains(stderr.String(), want) {
		t.Fatalf("vmctl %s: exit %d, stderr %q; want exit %d and %q", strings.Join(args, " "), got, stderr.String(), code, want)
	}
}

func events(t *testing.T, c *api.Client) []api.Event {
	t.Helper()
	var evs []api.Event
	if err := c.Do(context.Background(), "GET", "/v1/events", nil, &evs); err != nil {
		t.Fatal(err)
	}
	return evs
}

// lockedBuffer collects a stream that a test reads while it is written.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestNodeConsoleOpensToTheLeaseHolderOnly: a node's own console endpoint, on its API
// listener, opens only to the master that holds the node's lease, by its node
// certificate: none is a 401, another node's certificate a 403. The master's is let
// through to libvirt, which on the test driver has no consoles (501), and so is an
// attach through the API, relayed to the node that runs the guest. On libvirt's test driver, with a second node
// that is no management node, as a joined host is.
func TestNodeConsoleOpensToTheLeaseHolderOnly(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "cluster")
	if err := cluster.NewCA(creds); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n1", "n2"} {
		if err := cluster.Issue(creds, n, []net.IP{net.ParseIP("127.0.0.1")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	n1, admin := startFirstNode(t, dir, "n1", creds)
	cfg2 := testNode(t, dir, "n2", creds)
	cfg2.Master, cfg2.GossipPeers, cfg2.AgentListen = n1.Addr, []string{n1.members.Addr()}, n1.AgentAddr
	n2, err := StartNode(context.Background(), cfg2, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Stop()
	ctx := context.Background()
	waitFor(t, "both nodes ready", func() bool {
		var ns []api.Node
		return admin.Do(ctx, "GET", "/v1/nodes", nil, &ns) == nil && len(ns) == 2 && ns[0].State == api.NodeReady && ns[1].State == api.NodeReady
	})
	if err := admin.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "web", CPUs: 1, MemoryBytes: 64 << 20, Failover: api.FailoverRestart}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web running", func() bool { return guest(t, admin, "web").State == api.GuestRunning })
	on := guest(t, admin, "web").Node
	addr := map[string]string{"n1": n1.Addr, "n2": n2.Addr}[on]
	load := func(node string) *cluster.Credentials {
		c, err := cluster.Load(creds, node)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	n1c, n2c := load("n1"), load("n2")
	url := addr + api.NodeConsolePath("web")
	_, _, err = api.DialConsole(ctx, url, nil, n2c.PeerAPITLS(on))
	if statusOf(err) != http.StatusUnauthorized || !strings.Contains(err.Error(), "master's node certificate alone") {
		t.Errorf("no certificate: %v, want 401", err)
	}
	_, _, err = api.DialConsole(ctx, url, nil, n2c.PeerAPIClientTLS(on))
	if statusOf(err) != http.StatusForbidden || !strings.Contains(err.Error(), "node n2 is not the master holding node "+on+"'s lease") {
		t.Errorf("n2's certificate: %v, want 403", err)
	}
	waitFor(t, "n1 holds "+on+"'s lease", func() bool {
		_, _, err = api.DialConsole(ctx, url, nil, n1c.PeerAPIClientTLS(on))
		return statusOf(err) != http.StatusForbidden
	})
	if statusOf(err) != http.StatusNotImplemented || !strings.Contains(err.Error(), "no serial consoles") {
		t.Errorf("the master's certificate: %v, want the test driver's 501", err)
	}
	if _, _, err := api.DialConsole(ctx, addr+api.NodeConsolePath("nope"), nil, n1c.PeerAPIClientTLS(on)); statusOf(err) != http.StatusNotFound {
		t.Errorf("a guest the node does not run: %v, want 404", err)
	}
	_, _, err = admin.Console(ctx, "web")
	if statusOf(err) != http.StatusNotImplemented || !strings.Contains(err.Error(), "node "+on+`: guest "web": this node's hypervisor has no serial consoles`) {
		t.Errorf("through the API: %v, want node %s's 501", err, on)
	}
}
