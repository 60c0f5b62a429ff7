package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/lab"
	"github.com/dvmproject/dvm/internal/lab/labtest"
	"libvirt.org/go/libvirt"
)

// cluster is a lab with the vmctl built for it.
type cluster struct {
	t     *testing.T
	lab   *lab.Lab
	vmctl string
	env   []string
}

// upCluster brings up an n-node lab running this tree's dvmd.
func upCluster(t *testing.T, n int) *cluster {
	t.Helper()
	labtest.Require(t)
	dvmd, vmctl := labtest.Build(t)
	return newCluster(t, labtest.Start(t, lab.Options{Nodes: n, DvmdPath: dvmd}), vmctl)
}

// newCluster is the cluster of lab l, driven with the vmctl at path vmctl.
func newCluster(t *testing.T, l *lab.Lab, vmctl string) *cluster {
	t.Helper()
	env, err := os.ReadFile(l.EnvFile())
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, lab: l, vmctl: vmctl, env: os.Environ()}
	// Cleanups run last-registered first: this one runs before the lab goes down. It
	// keeps the nodes' logs of a failed test, and of every test with DVM_E2E_KEEP_LOGS=1.
	t.Cleanup(func() {
		if !t.Failed() && os.Getenv("DVM_E2E_KEEP_LOGS") != "1" {
			return
		}
		keep := filepath.Join(os.TempDir(), "dvm-e2e-logs", t.Name())
		os.MkdirAll(keep, 0o755)
		for _, n := range l.Nodes() {
			for _, f := range []string{"dvmd.log", "node.log", "data/fence-guard.log"} {
				if b, err := os.ReadFile(filepath.Join(n.Dir, f)); err == nil {
					os.WriteFile(filepath.Join(keep, n.Name+"-"+filepath.Base(f)), b, 0o644)
				}
			}
		}
		t.Logf("node logs kept in %s", keep)
	})
	for _, line := range strings.Split(strings.TrimSpace(string(env)), "\n") {
		c.env = append(c.env, line)
	}
	return c
}

// run runs vmctl and returns its stdout, failing the test on a non-zero exit.
func (c *cluster) run(args ...string) string {
	c.t.Helper()
	out, code := c.try(args...)
	if code != 0 {
		c.t.Fatalf("vmctl %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// try runs vmctl and returns its combined output and exit code.
func (c *cluster) try(args ...string) (string, int) {
	c.t.Helper()
	cmd := exec.Command(c.vmctl, args...)
	cmd.Env = c.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		c.t.Fatalf("vmctl %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), 0
}

func (c *cluster) guest(name string) api.Guest {
	c.t.Helper()
	var g api.Guest
	if err := json.Unmarshal([]byte(c.run("-o", "json", "vm", "show", name)), &g); err != nil {
		c.t.Fatal(err)
	}
	return g
}

// allRunning says whether the API has every one of names running.
func (c *cluster) allRunning(names []string) bool {
	for _, g := range names {
		if c.guest(g).State != api.GuestRunning {
			return false
		}
	}
	return true
}

// domainState asks a node's own libvirtd, as virsh would, for a domain's state; ok is
// false when the node has no such domain.
func (c *cluster) domainState(node, name string) (st libvirt.DomainState, ok bool) {
	c.t.Helper()
	c.withDomain(node, name, func(d *libvirt.Domain) {
		var err error
		st, _, err = d.GetState()
		ok = err == nil
	})
	return st, ok
}

// withDomain calls f with domain name as node's own libvirtd has it; f is not called
// when the node has no such domain.
func (c *cluster) withDomain(node, name string, f func(*libvirt.Domain)) {
	c.t.Helper()
	conn := c.connect(c.t, node)
	defer conn.Close()
	d, err := conn.LookupDomainByName(name)
	if err != nil {
		return
	}
	defer d.Free()
	f(d)
}

// waitFor polls cond; the limit only ends a broken run, it asserts no speed.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %s waiting for %s", limit, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
