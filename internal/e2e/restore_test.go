package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"libvirt.org/go/libvirt"
)

// qemusOf lists, for each guest, the QEMU processes that run it and on which node,
// as /proc says (not libvirtd).
func (c *cluster) qemusOf(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, n := range c.lab.Nodes() {
		qs, err := c.lab.NodeQEMUs(n.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			out[q.Guest] = append(out[q.Guest], n.Name+"/"+strconv.Itoa(q.PID))
		}
	}
	return out
}

// TestSnapshotRestoreAfterManagementLoss: a 3-node lab, every node a management
// node, with guests of every policy. A snapshot is saved; then the whole management
// group is lost: dvmd stops on all three nodes and their replicated state is thrown
// away, while the hosts and their libvirtds run on. A new group is started on n1 with
// an empty state and the snapshot restored onto it; n2 and n3 join it afresh. Every
// guest is listed and runs on exactly one node, and no sample of the nodes'
// libvirtds ever saw one on two, and none was restarted: every guest runs in the
// QEMU process it ran in before. The guests of policy none ran throughout; the
// restart and twin guests were paused by their nodes' fence guards when no lease was
// left, and resumed once the restored state placed them where they were.
func TestSnapshotRestoreAfterManagementLoss(t *testing.T) {
	c := upCluster(t, 3)
	c.settled(t, c.waitStatus(t, "a master and two backups", 90*time.Second, nil, fullGroup))
	policies := map[string]string{"keep1": "none", "keep2": "none", "ha": "restart", "tw": "twin"}
	var guests []string
	for g, p := range policies {
		c.run("vm", "create", g, "--os", "linux", "--image", "lab", "--cpus", "1", "--memory", "96MiB", "--failover", p)
		guests = append(guests, g)
	}
	for _, g := range guests {
		waitFor(t, g+" running", 120*time.Second, func() bool { return c.guest(g).State == api.GuestRunning })
	}
	snap := filepath.Join(t.TempDir(), "cluster.snap")
	c.run("cluster", "snapshot", "save", snap)
	before := c.qemusOf(t)
	t.Logf("before the loss: %v", before)
	s := c.startSampler(guests...)

	// Every management node is lost: dvmd stops everywhere, and what it kept of the
	// replicated state and the roles goes with it.
	for _, n := range c.lab.Nodes() {
		if err := c.lab.StopAgent(n.Name); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.lab.Nodes() {
		for _, f := range []string{"raft", "roles.json"} {
			if err := os.RemoveAll(filepath.Join(n.Dir, "data", f)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Long enough for every lease to lapse and the fence guards to act: the HA guests
	// are paused, those of policy none run.
	time.Sleep(5 * time.Second)
	for _, g := range guests {
		node, _, _ := strings.Cut(before[g][0], "/")
		want := libvirt.DOMAIN_PAUSED
		if policies[g] == "none" {
			want = libvirt.DOMAIN_RUNNING
		}
		if st, ok := c.domainState(node, g); !ok || st != want {
			t.Errorf("%s (policy %s) on %s with no master: libvirt state %d, want %d", g, policies[g], node, st, want)
		}
	}

	// A new group on n1 (bootstrap = true in its config), empty; the snapshot restored.
	ctx := context.Background()
	if err := c.lab.StartAgent(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new master answers", 90*time.Second, func() bool {
		st, err := c.status("n1")
		return err == nil && st.Acting
	})
	c.run("cluster", "snapshot", "restore", snap)
	for _, n := range []string{"n2", "n3"} {
		if err := c.lab.StartAgent(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	c.waitStatus(t, "the adoption done", 3*time.Minute, nil, func(st api.ClusterStatus) bool {
		return st.Adoption != nil && !st.Adoption.Adopting
	})
	for _, g := range guests {
		waitFor(t, g+" running after the restore", 3*time.Minute, func() bool { return c.guest(g).State == api.GuestRunning })
	}
	time.Sleep(3 * time.Second)
	s.finish(t)

	after := c.qemusOf(t)
	t.Logf("after the restore: %v", after)
	for _, g := range guests {
		if len(after[g]) != 1 {
			t.Errorf("guest %s runs as %v", g, after[g])
		}
		if len(before[g]) != 1 || len(after[g]) != 1 || before[g][0] != after[g][0] {
			t.Errorf("guest %s (policy %s) ran as %v before the loss and as %v after the restore: restarted", g, policies[g], before[g], after[g])
		}
	}
	var listed []api.Guest
	if err := json.Unmarshal([]byte(c.run("-o", "json", "vm", "ls")), &listed); err != nil || len(listed) != len(guests) {
		t.Fatalf("vm ls after the restore: %d guests, %v", len(listed), err)
	}
	c.waitStatus(t, "a master and two backups again", 3*time.Minute, nil, fullGroup)
}
