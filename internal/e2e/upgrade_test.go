package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/lab"
	"github.com/dvmproject/dvm/internal/lab/labtest"
	"github.com/dvmproject/dvm/internal/version"
	"libvirt.org/go/libvirt"
)

// previousRelease is the commit of the release before this tree, N-1 of the rolling
// upgrade test: the last landing on main (stop 21, dvmd 0.4.0-dev: mirrored twins).
// Move it forward when a release is made, so that the test always upgrades from the
// one before.
const previousRelease = "0ffc54bca968bd318b3a59e75ee68d03b67974c6"

// handOverSince is the first dvmd release whose master hands its role over when its
// dvmd stops (failover.HandOver).
const handOverSince = "0.3.0"

// buildRelease builds cmd/dvmd of commit from this repository's history into a
// temporary directory.
func buildRelease(t *testing.T, commit string) string {
	t.Helper()
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("the rolling upgrade test builds dvmd of %s from this repository's history: git rev-parse: %v", commit, err)
	}
	top := strings.TrimSpace(string(root))
	if out, err := exec.Command("git", "-C", top, "cat-file", "-e", commit+"^{commit}").CombinedOutput(); err != nil {
		t.Fatalf("commit %s (the previous release) is not in this clone (%v %s): the rolling upgrade test builds dvmd from it; fetch the history (git fetch --unshallow)", commit, err, out)
	}
	src := t.TempDir()
	archive := exec.Command("git", "-C", top, "archive", "--format=tar", commit)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	untar.Stdin = pipe
	var errs strings.Builder
	archive.Stderr, untar.Stderr = &errs, &errs
	if err := untar.Start(); err != nil {
		t.Fatal(err)
	}
	if err := archive.Run(); err != nil {
		t.Fatalf("git archive %s: %v %s", commit, err, errs.String())
	}
	if err := untar.Wait(); err != nil {
		t.Fatalf("untar %s: %v %s", commit, err, errs.String())
	}
	bin := filepath.Join(t.TempDir(), "dvmd")
	build := exec.Command("go", "build", "-o", bin, "./cmd/dvmd")
	build.Dir = src
	build.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/dvmd of %s: %v\n%s", commit, err, out)
	}
	return bin
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// upgradeCheck is `vmctl node upgrade-check -o json`; ready is its exit 0.
func (c *cluster) upgradeCheck(t *testing.T) (api.UpgradeCheck, bool) {
	t.Helper()
	// The JSON is on stdout; with exit 2 the reasons are said on stderr too.
	cmd := exec.Command(c.vmctl, "-o", "json", "node", "upgrade-check")
	cmd.Env = c.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("vmctl node upgrade-check: %v", err)
	}
	var res api.UpgradeCheck
	if code != 0 && code != 2 || json.Unmarshal(stdout.Bytes(), &res) != nil {
		t.Fatalf("vmctl node upgrade-check: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}
	return res, code == 0
}

// writer creates a stopped guest that no node can take every period until stopped, and keeps when each
// create was acknowledged: the longest time between two acknowledgements is how long
// the cluster took no writes.
type writer struct {
	mu     sync.Mutex
	acked  []ackAt
	tries  int
	stop   chan struct{}
	done   chan struct{}
	period time.Duration
}

func (c *cluster) startWriter(prefix string, period time.Duration) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{}), period: period}
	start := time.Now()
	w.acked = append(w.acked, ackAt{"(start)", start})
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			case <-time.After(w.period):
			}
			name := fmt.Sprintf("%s%d", prefix, i)
			// A label no node has: the guest is recorded and stays pending, taking no
			// node's room from the guests that move during the test.
			_, code := c.try("vm", "create", name, "--os", "linux", "--image", "lab", "--memory", "64MiB", "--stopped", "--no-wait",
				"--constraint", "dvm-test=never-placed")
			w.mu.Lock()
			w.tries++
			if code == 0 || code == 2 {
				w.acked = append(w.acked, ackAt{name, time.Now()})
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// finish stops the writer and returns the acknowledged creates, the longest time with
// none, and when that gap ended.
func (w *writer) finish() (names []string, gap time.Duration, gapEnd time.Time) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	last := w.acked[0].at
	for _, a := range w.acked[1:] {
		names = append(names, a.name)
		if d := a.at.Sub(last); d > gap {
			gap, gapEnd = d, a.at
		}
		last = a.at
	}
	if d := time.Since(last); d > gap {
		gap, gapEnd = d, time.Now()
	}
	return names, gap, gapEnd
}

// TestRollingUpgradeKeepsGuests is issue 16's rolling upgrade: a 3-node lab runs dvmd
// of the previous release (built here from previousRelease), with guests of every
// policy; a writer creates guests throughout. Node by node, backups first and the
// master last, as the operator guide says: `vmctl node upgrade-check` must say ready;
// the node's restart and twin guests move away live (`vmctl vm migrate`), since only
// they depend on the node's lease; the node's dvmd is replaced by this tree's and
// restarted; the node must be back in a whole group. At the end every node runs this
// build; no guest was restarted or stopped: each `none` guest kept its node, its
// libvirt domain ID and its QEMU process, each moved guest counted on through its
// move (its console shows one boot and a tick counter that never started over), and
// no sample of the nodes' libvirtds saw one on two nodes; every acknowledged create is
// listed; and the longest time without an accepted write is printed (FIGURE), bounded
// by writeBound: the master's restart, which re-forms the group, is the long one.
//
// The master's step is as clean only from a release whose master hands its role over
// when its dvmd stops (handOverSince): the master of an older one just stops, its
// leases lapse before the group re-forms, and every node fences its restart and twin
// guests, which the new master starts again, once each. From such a release the test
// allows exactly that: each restart and twin guest booted once more, never twice, and
// never on two nodes at once; guests of policy none untouched all the same.
func TestRollingUpgradeKeepsGuests(t *testing.T) {
	labtest.Require(t)
	old := buildRelease(t, previousRelease)
	current, vmctl := labtest.Build(t)
	// Every node's script starts the dvmd at this path: replacing the file is the
	// package install, and a node runs the new build from its next dvmd start on.
	installed := filepath.Join(t.TempDir(), "dvmd")
	copyFile(t, old, installed, 0o755)
	c := newCluster(t, labtest.Start(t, lab.Options{Nodes: 3, DvmdPath: installed}), vmctl)
	st := c.waitStatus(t, "a master and two backups", 90*time.Second, nil, fullGroup)
	c.settled(t, st)

	res, ready := c.upgradeCheck(t)
	if !ready || res.Oldest != res.Newest || res.Newest == version.Version {
		t.Fatalf("before the upgrade: %+v (ready %v); want every node at the previous release, not %s", res, ready, version.Version)
	}
	from := res.Oldest
	handsOver := version.AtLeast(from, handOverSince)
	t.Logf("previous release %s runs everywhere; upgrading to %s; its master hands its role over when stopped: %v", from, version.Version, handsOver)

	policies := map[string]string{"up-none1": "none", "up-none2": "none", "up-none3": "none", "up-rst1": "restart", "up-rst2": "restart", "up-twin": "twin"}
	var guests []string
	for g, p := range policies {
		c.run("vm", "create", g, "--os", "linux", "--image", "lab", "--cpus", "1", "--memory", "96MiB", "--failover", p)
		guests = append(guests, g)
	}
	slices.Sort(guests)
	type run struct {
		node string
		id   uint
		pid  int
	}
	before := map[string]run{}
	for _, g := range guests {
		waitFor(t, g+" running", 2*time.Minute, func() bool { return c.guest(g).State == api.GuestRunning })
		node := c.guest(g).Node
		c.waitTicking(t, node, g)
		waitFor(t, g+" at its third tick", 30*time.Second, func() bool { return c.console(g).last >= 3 })
		id, _, ok := c.domainRun(node, g)
		pids := qemuOf(g)
		if !ok || len(pids) != 1 {
			t.Fatalf("%s: not running on %s (QEMUs %v)", g, node, pids)
		}
		before[g] = run{node, id, pids[0]}
	}
	t.Logf("guests: %v", before)

	s := c.startSampler(guests...)
	w := c.startWriter("upw", 250*time.Millisecond)
	var order []string
	for _, v := range st.Voters {
		if v != st.Master {
			order = append(order, v)
		}
	}
	order = append(order, st.Master)
	for i, node := range order {
		// As an operator does: ask until the cluster says ready (a group just whole
		// again may say for a moment that its master is not acting yet).
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			res, ready := c.upgradeCheck(t)
			if ready {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("before upgrading %s: not ready for 30 s: %v", node, res.Reasons)
			}
		}
		for _, g := range guests {
			got := c.guest(g)
			if got.Node != node || policies[g] == "none" {
				continue
			}
			// To a node upgraded already where there is one, so that it moves once; not
			// to a twin's standby node (where libvirt has its standby domain defined).
			to := ""
			for _, n := range slices.Concat(order[:i], order[i+1:]) {
				if _, defined := c.domainState(n, g); !defined && to == "" {
					to = n
				}
			}
			t.Logf("%s: %s", g, strings.TrimSpace(c.run("vm", "migrate", g, "--to", to)))
		}
		if i == 0 {
			// The install: a copy then a rename, as a package manager does, so that a
			// dvmd starting meanwhile finds one build or the other, whole.
			copyFile(t, current, installed+".new", 0o755)
			if err := os.Rename(installed+".new", installed); err != nil {
				t.Fatal(err)
			}
		}
		restarted := time.Now()
		if err := c.lab.StopAgent(node); err != nil {
			t.Fatal(err)
		}
		if err := c.lab.StartAgent(context.Background(), node); err != nil {
			t.Fatal(err)
		}
		c.waitNodeBack(t, node)
		// The master learns the version from the node's reports: the first may come
		// just after the node is back.
		reported := ""
		waitFor(t, node+" reporting dvmd "+version.Version, 30*time.Second, func() bool {
			res, _ := c.upgradeCheck(t)
			for _, n := range res.Nodes {
				if n.Name == node {
					reported = n.Version
				}
			}
			return reported == version.Version
		})
		t.Logf("%s upgraded to %s and back in a whole group %.1f s after its dvmd stopped", node, version.Version, time.Since(restarted).Seconds())
	}
	time.Sleep(2 * time.Second) // a last few writes and samples with every node new
	// Guests the old master's step restarted may still be on their way (a fenced
	// node waits for an assignment from the master that holds its lease, which may
	// be the restarted old master taking raft's leadership back).
	waitFor(t, "every guest running after the last step", time.Minute, func() bool { return c.allRunning(guests) })
	acked, gap, gapEnd := w.finish()
	s.finish(t)

	res, ready = c.upgradeCheck(t)
	if !ready || res.Oldest != version.Version || res.Newest != version.Version {
		t.Errorf("after the upgrade: %+v (ready %v); want every node at %s", res, ready, version.Version)
	}
	restarted := 0
	for _, g := range guests {
		got := c.guest(g)
		if got.State != api.GuestRunning {
			t.Errorf("%s after the upgrade: %+v", g, got)
			continue
		}
		pids := qemuOf(g)
		id, _, ok := c.domainRun(got.Node, g)
		if !ok || len(pids) != 1 {
			t.Errorf("%s: not running on %s as the API says (QEMUs %v)", g, got.Node, pids)
			continue
		}
		if policies[g] == "none" {
			if now := (run{got.Node, id, pids[0]}); now != before[g] {
				t.Errorf("%s (policy none) ran as %+v before the upgrade and as %+v after: it was restarted or moved", g, before[g], now)
			}
			continue
		}
		// Every node was upgraded, so every restart and twin guest moved at least once:
		// libvirt must say it runs because it migrated there. A guest started anew
		// (fenced, then restarted) says booted, even on the node it ran on before.
		_, reason, _ := c.domainRun(got.Node, g)
		con := c.console(g)
		if !handsOver && con.boots <= 2 && reason == int(libvirt.DOMAIN_RUNNING_BOOTED) {
			// Its console shows at most the boot of the restart (a restart on the node
			// it ran on writes the same file afresh).
			t.Logf("%s (%s) on %s: restarted, at the step of a master (dvmd %s) that cannot hand its role over (console: %d boots)", g, policies[g], got.Node, from, con.boots)
			restarted++
			continue
		}
		if reason != int(libvirt.DOMAIN_RUNNING_MIGRATED) {
			t.Errorf("%s (%s) on %s: libvirt's running reason is %d, not %d (migrated): it was started anew", g, policies[g], got.Node, reason, libvirt.DOMAIN_RUNNING_MIGRATED)
		}
		if con.boots != 1 || con.resets > 0 {
			t.Errorf("%s (%s) on %s: its console shows %d boots and a tick counter started over %d times: it was restarted", g, policies[g], got.Node, con.boots, con.resets)
		}
	}
	if missing := c.missing(acked, 15*time.Second); len(missing) > 0 {
		t.Errorf("acknowledged creates no longer listed: %v", missing)
	}
	why := "its master hands over: none may be"
	if !handsOver {
		why = "at the step of a master that cannot hand over"
	}
	t.Logf("FIGURE rolling upgrade %s -> %s of 3 nodes with %d guests running: %d restarted (%s); %d creates acknowledged, the longest time with no write accepted %.2f s (ended %s)",
		from, version.Version, len(guests), restarted, why, len(acked), gap.Seconds(), gapEnd.Format("15:04:05.000"))
	if gap > writeBound {
		t.Errorf("no write accepted for %.2f s, over the %s bound", gap.Seconds(), writeBound)
	}
}
