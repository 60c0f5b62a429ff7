package e2e

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"
)

// TestLabGuestRunsWhereMasterChoseAndMigratesLive is issue 3's proof on real libvirtd
// nodes: a guest created with vmctl runs on the node the master chose (and only there,
// asked of every node's libvirtd), live-migrates to another node and keeps running, and
// killing a node leaves none of its QEMU processes alive.
func TestLabGuestRunsWhereMasterChoseAndMigratesLive(t *testing.T) {
	c := upCluster(t, 3)
	c.run("vm", "create", "lab1", "--os", "linux", "--image", "lab", "--cpus", "1", "--memory", "128MiB")
	g := c.guest("lab1")
	if g.State != "running" || g.Node == "" {
		t.Fatalf("after create: %+v", g)
	}
	for _, n := range c.lab.Nodes() {
		st, ok := c.domainState(n.Name, "lab1")
		if n.Name == g.Node && (!ok || st != libvirt.DOMAIN_RUNNING) {
			t.Fatalf("lab1 is not running on %s, the node the master chose (state %v, defined %v)", n.Name, st, ok)
		}
		if n.Name != g.Node && ok {
			t.Fatalf("lab1 is also defined on %s (state %v)", n.Name, st)
		}
	}

	to := "n1"
	if g.Node == "n1" {
		to = "n2"
	}
	out := c.run("vm", "migrate", "lab1", "--to", to)
	if !strings.Contains(out, "downtime") {
		t.Fatalf("migrate printed no figures: %s", out)
	}
	t.Logf("%s", strings.TrimSpace(out))
	m := c.guest("lab1")
	if m.Node != to || m.State != "running" || m.LastMigration == nil || !m.LastMigration.OK {
		t.Fatalf("after migration: %+v", m)
	}
	if st, ok := c.domainState(to, "lab1"); !ok || st != libvirt.DOMAIN_RUNNING {
		t.Fatalf("lab1 not running on %s after migration: %v %v", to, st, ok)
	}
	if _, ok := c.domainState(g.Node, "lab1"); ok {
		t.Fatalf("lab1 still defined on the source %s after migration", g.Node)
	}
	// Migrating to an unknown node is refused and changes nothing.
	if out, code := c.try("vm", "migrate", "lab1", "--to", "n9"); code == 0 {
		t.Fatalf("migrate to n9 succeeded: %s", out)
	}
	if again := c.guest("lab1"); again.Node != to {
		t.Fatalf("a refused migration moved the guest to %s", again.Node)
	}

	c.run("lab", "kill", to, "--dir", c.lab.Dir())
	waitFor(t, "no process of "+to+" alive", 30*time.Second, func() bool {
		pids, err := c.lab.NodeProcesses(to)
		return err == nil && len(pids) == 0
	})
	if pids := qemuOf("lab1"); len(pids) > 0 {
		t.Fatalf("QEMU of lab1 still alive after lab kill %s: pids %v", to, pids)
	}
}

// qemuOf lists the pids of QEMU processes on this machine that run guest name.
func qemuOf(name string) []int {
	var pids []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + d.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		if len(args) > 0 && strings.Contains(args[0], "qemu-system") && strings.Contains(string(cmd), "guest="+name+",") {
			pids = append(pids, pid)
		}
	}
	return pids
}
