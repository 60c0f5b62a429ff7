// Package labtest brings a lab up for an integration test and down after it.
//
// The lab needs root and the packages lab.CheckPackages names. Without them a test
// is skipped on a developer's machine, but fails when CI=true: CI runs as root with
// the packages, so a missing part there is a broken CI, not a reason to skip.
// Only one lab runs on a machine at a time; labtest holds a lock for the life of
// the lab, so test binaries of several packages take turns.
package labtest

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/lab"
)

// lockPath serialises labs across test binaries. It lives in the image cache, the
// one place outside DIR the lab writes to.
var lockPath = filepath.Join(lab.DefaultImageCache, "labtest.lock")

// Up builds ./cmd/dvmd, ./cmd/vmctl and ./cmd/vmctl-lab of this module into a
// temporary directory and brings up a lab of n nodes running that dvmd, in a
// temporary DIR. The lab is
// brought down when the test ends.
func Up(t testing.TB, n int) *lab.Lab {
	t.Helper()
	Require(t)
	dvmd, _ := Build(t)
	return Start(t, lab.Options{Nodes: n, DvmdPath: dvmd})
}

// Start brings up the lab opts describe (Dir defaults to a temporary directory)
// and brings it down when the test ends. With opts.NoAgent it builds nothing.
// DVM_LAB_SET (KEY=VALUE pairs separated by spaces) gives Settings a test left
// empty: how the benches run a lab with other timing. DVM_LAB_DIR, when set, is the
// lab's directory instead of a temporary one, left with the nodes' logs after the
// test (it must not hold a lab that is up). DVM_LAB_POWER_FENCE=1 sets
// opts.PowerFence for a lab with agents.
func Start(t testing.TB, opts lab.Options) *lab.Lab {
	t.Helper()
	Require(t)
	if opts.Dir == "" {
		opts.Dir = os.Getenv("DVM_LAB_DIR")
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if env := strings.Fields(os.Getenv("DVM_LAB_SET")); opts.Settings == nil && len(env) > 0 {
		s, err := lab.ParseSettings(env)
		if err != nil {
			t.Fatalf("DVM_LAB_SET: %v", err)
		}
		opts.Settings = s
		t.Logf("lab nodes' dvmd.conf adds %v (DVM_LAB_SET)", s)
	}
	if os.Getenv("DVM_LAB_POWER_FENCE") == "1" && !opts.NoAgent {
		opts.PowerFence = true
		t.Logf("lab with its power switch: every node's power_fence_agent (DVM_LAB_POWER_FENCE)")
	}
	if opts.ParseConfig == nil {
		opts.ParseConfig = func(r io.Reader) error { _, err := config.Parse(r); return err }
	}
	if opts.Log == nil {
		opts.Log = logWriter{t}
	}
	Lock(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	downLeftover(ctx, t)
	l, err := lab.Up(ctx, opts)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := l.Down(ctx); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

// Require fails the test (CI=true) or skips it (otherwise) unless this machine can
// run a lab: root and the packages.
func Require(t testing.TB) {
	t.Helper()
	var why error
	if os.Geteuid() != 0 {
		why = lab.ErrNotRoot
	} else if err := lab.CheckPackages(); err != nil {
		why = err
	}
	if why == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the lab cannot run on this CI machine: %v", why)
	}
	t.Skipf("no lab on this machine (set CI=true to make this a failure): %v", why)
}

// Build compiles this module's ./cmd/dvmd, ./cmd/vmctl and ./cmd/vmctl-lab into one
// temporary directory and returns the paths of dvmd and vmctl: `vmctl lab` runs the
// vmctl-lab next to it, and the lab runs the dvmd next to vmctl-lab.
func Build(t testing.TB) (dvmd, vmctl string) {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatalf("labtest: %v", err)
	}
	bin := t.TempDir()
	cmd := exec.Command("go", "build", "-o", bin+string(filepath.Separator), "./cmd/dvmd", "./cmd/vmctl", "./cmd/vmctl-lab")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("labtest: go build ./cmd/dvmd ./cmd/vmctl ./cmd/vmctl-lab: %v\n%s", err, out)
	}
	return filepath.Join(bin, "dvmd"), filepath.Join(bin, "vmctl")
}

// moduleRoot is the directory of this module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the dvm module (go env GOMOD is empty)")
	}
	return filepath.Dir(mod), nil
}

// Lock takes the machine's lab lock until the test ends (after the lab is down:
// cleanups run last-registered first). Start takes it; a test calling lab.Up
// itself takes it first.
func Lock(t testing.TB) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(lockPath), 0o755); err != nil {
		t.Fatalf("labtest: %v", err)
	}
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("labtest: %v", err)
	}
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		t.Logf("labtest: another test's lab holds %s; waiting for it", lockPath)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("labtest: lock %s: %v", lockPath, err)
	}
	t.Cleanup(func() { f.Close() })
}

// downLeftover brings down a lab that a test binary left up when it was killed
// (timeout, ^C) before its cleanup: with the lock held no live test owns a lab, and
// one in a test's temporary directory is no operator's. Any other lab is left
// alone, and lab.Up then says whose it is.
func downLeftover(ctx context.Context, t testing.TB) {
	t.Helper()
	dir, ok := lab.BridgeOwner()
	if !ok || !strings.HasPrefix(dir, filepath.Join(os.TempDir(), "Test")) {
		return
	}
	old, err := lab.Load(dir)
	if err != nil {
		return
	}
	t.Logf("labtest: bringing down the lab a killed test left in %s", dir)
	if err := old.Down(ctx); err != nil {
		t.Logf("labtest: %v", err)
	}
}

// logWriter sends the lab's step lines to the test log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
