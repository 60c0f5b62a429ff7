package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/lab"
	"github.com/dvmproject/dvm/internal/lab/faults"
	"github.com/dvmproject/dvm/internal/lab/labtest"
)

// TestMirroredTwin is issue 14's proof on real libvirtd nodes with local disks only:
// the twin's disk is on pool local (kind dir: a directory of each node's own, no
// shared storage), so its standby holds a copy that the guest's node fills and keeps
// in step with QEMU's write-blocking mirror, over NBD with TLS.
//
// The twin counts on its disk and tells a sink guest (on the overlay network, on a
// node never killed) each value only after the fsync that wrote it. Then:
//   - the primary's node is killed: the twin runs on its standby's node, from its
//     copy, and the count it finds there is at least the last one the sink saw (no
//     acknowledged write lost); a new standby is placed on a third node and brought in
//     step with no operator action;
//   - the new standby's node is killed: the twin runs on where it ran (same libvirt
//     domain ID), counts on after a stall, and is protected again on the node left;
//   - dvmd restarts on that standby's node: its export runs on, still in step;
//   - the standby's export hangs (SIGSTOP; nothing is lost): the twin's writes go on
//     within seconds (its node ends the mirror), and it is protected again once the
//     export runs again.
//
// Figures: kill to running on the standby, time to protected (first sync, and each
// re-protection), the write stall while a standby's node dies, and the guest's direct
// write throughput on its disk mirrored against a guest of the same pool unmirrored.
func TestMirroredTwin(t *testing.T) {
	labtest.Require(t)
	dvmd, vmctl := labtest.Build(t)
	// Five nodes: after two are killed, three are left, which the management group
	// needs to acknowledge a write (a copy on three nodes) and so to act at all.
	nodes := []string{"n1", "n2", "n3", "n4", "n5"}
	l := labtest.Start(t, lab.Options{Nodes: len(nodes), DvmdPath: dvmd})
	c := newNetLab(t, l, vmctl)

	waitPools(t, func() string { return c.run("-o", "json", "node", "ls") }, len(nodes), map[string]string{"local": "dir"})
	c.run("net", "create", "blue", "--vni", "43", "--cidr", "192.168.43.0/24")
	// The twin is created first and gets .1; the sink gets .2.
	const sinkAddr, sinkPort = "192.168.43.2", "7000"
	labImage(t, l, "lab-counter", "dvm.counter="+sinkAddr+":"+sinkPort+" dvm.ddbench=4")
	labImage(t, l, "lab-sink", "dvm.sink="+sinkPort)
	labImage(t, l, "lab-dd", "dvm.ddbench=4")

	created := time.Now()
	c.run("vm", "create", "tw", "--os", "linux", "--image", "lab-counter", "--memory", "128MiB", "--disk", "64MiB",
		"--pool", "local", "--failover", "twin", "--net", "blue")
	tw := c.guest("tw")
	primary, standby := tw.Node, tw.TwinNode
	if primary == "" || standby == "" || primary == standby {
		t.Fatalf("twin placed on %q with its standby on %q: want two nodes", primary, standby)
	}
	// The sink and the unmirrored guest go on a node that holds neither half.
	var others []string
	for _, n := range nodes {
		if n != primary && n != standby {
			others = append(others, n)
		}
	}
	sinkNode := others[0]
	c.run("vm", "create", "sink", "--os", "linux", "--image", "lab-sink", "--memory", "96MiB", "--failover", "none",
		"--net", "blue", "--constraint", "rack=r"+strings.TrimPrefix(sinkNode, "n"))
	c.run("vm", "create", "plain", "--os", "linux", "--image", "lab-dd", "--memory", "96MiB", "--disk", "64MiB",
		"--pool", "local", "--failover", "none", "--constraint", "rack=r"+strings.TrimPrefix(primary, "n"))
	t.Logf("twin tw on %s, standby on %s; sink on %s", primary, standby, sinkNode)

	protectedOn(t, c, "tw", standby, 3*time.Minute)
	t.Logf("FIGURE mirrored twin: protected %.1f s after vm create (boot, first sync of a 64 MiB disk)", time.Since(created).Seconds())
	if _, err := os.Stat(filepath.Join(l.Dir(), "nodes", standby, "pool-local", "tw.qcow2")); err != nil {
		t.Errorf("the standby's copy is not on %s's own pool: %v", standby, err)
	}
	sink := consolePath(l, sinkNode, "sink")
	waitNet(t, "the sink to hear the twin's count", 2*time.Minute, func() bool { return lastCount(sink) >= 30 })

	// Throughput: the twin (mirrored) against plain (same node, same pool, not
	// mirrored), three runs each from now on, as each guest measures it on its console.
	twCon, plainCon := consolePath(l, primary, "tw"), consolePath(l, primary, "plain")
	m0, p0 := len(ddFigures(twCon)), len(ddFigures(plainCon))
	waitNet(t, "three throughput runs of each guest", 2*time.Minute, func() bool {
		return len(ddFigures(twCon)) >= m0+3 && len(ddFigures(plainCon)) >= p0+3
	})
	m, p := ddFigures(twCon)[m0:], ddFigures(plainCon)[p0:]
	t.Logf("FIGURE mirrored twin: direct writes of 16 MiB in 64 KiB blocks in the guest (TCG): mirrored median %.1f MiB/s %.1f, unmirrored %.1f MiB/s %.1f",
		medianOf(m), m, medianOf(p), p)

	// The primary's node dies.
	killed := time.Now()
	if err := l.Kill(primary); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // lines in flight reach the sink's console
	seen := lastCount(sink)
	var onStandby time.Duration
	waitNet(t, "the twin running on its standby's node", 2*time.Minute, func() bool {
		g := c.guest("tw")
		if g.Node == standby && g.State == api.GuestRunning && onStandby == 0 {
			onStandby = time.Since(killed)
		}
		return onStandby > 0
	})
	t.Logf("FIGURE mirrored twin: primary's node killed, running on the standby %.2f s later", onStandby.Seconds())
	found := foundCount(t, consolePath(l, standby, "tw"), time.Minute)
	t.Logf("the sink saw count %d before the kill; the twin found %d on its copy", seen, found)
	if found < seen {
		t.Fatalf("acknowledged writes lost: the sink saw count %d, the promoted twin's disk holds %d", seen, found)
	}
	tw = c.guest("tw")
	third := tw.TwinNode
	if third == "" || third == primary || third == standby {
		t.Fatalf("after the promotion the standby is on %q: want a third node", third)
	}
	protectedOn(t, c, "tw", third, 3*time.Minute)
	t.Logf("FIGURE mirrored twin: protected again on %s %.1f s after the kill", third, time.Since(killed).Seconds())
	waitNet(t, "the sink to hear the promoted twin count on", time.Minute, func() bool { return lastCount(sink) > found })

	// The standby's node dies (the sink's too, maybe): the twin runs on where it is,
	// as its console says.
	id := domainID(t, l, standby, "tw")
	twCon = consolePath(l, standby, "tw")
	before := lastAt(twCon)
	killed = time.Now()
	if err := l.Kill(third); err != nil {
		t.Fatal(err)
	}
	var stall time.Duration
	waitNet(t, "the twin to count on after its standby's node died", 2*time.Minute, func() bool {
		if lastAt(twCon) > before+1 {
			stall = time.Since(killed)
		}
		return stall > 0
	})
	t.Logf("FIGURE mirrored twin: standby's node killed; writes went on %.2f s later", stall.Seconds())
	if now := domainID(t, l, standby, "tw"); now != id {
		t.Fatalf("the twin's domain on %s was %d and is %d now: it was restarted", standby, id, now)
	}
	var fourth string
	waitNet(t, "a standby on a live node", time.Minute, func() bool {
		fourth = c.guest("tw").TwinNode
		return fourth != "" && fourth != primary && fourth != standby && fourth != third
	})
	protectedOn(t, c, "tw", fourth, 3*time.Minute)
	t.Logf("FIGURE mirrored twin: protected again on %s %.1f s after its standby's node was killed", fourth, time.Since(killed).Seconds())

	// dvmd restarts on the standby's node (an upgrade's step): the export it started
	// runs on, and the copy stays in step throughout.
	pidFile := filepath.Join(l.Dir(), "nodes", fourth, "data", "mirrors", "qsd-tw.pid")
	pid := readFile(pidFile)
	if len(pid) == 0 {
		t.Fatalf("no standby export's pid file %s", pidFile)
	}
	if err := l.StopAgent(fourth); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(context.Background(), fourth); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if g := c.guest("tw"); g.Protection == nil || g.Protection.State != api.ProtectionProtected || g.TwinNode != fourth {
			t.Fatalf("after dvmd restarted on the standby's node %s: standby %s, protection %+v", fourth, g.TwinNode, g.Protection)
		}
	}
	if now := readFile(pidFile); !bytes.Equal(now, pid) {
		t.Fatalf("the standby export was restarted with dvmd: pid %s, now %s", pid, now)
	}

	// The standby's export hangs (its process stopped; its node and every link are
	// fine, so nothing is declared lost): the twin's writes must not wait on it for
	// good. Its node ends the mirror; once the export runs again, the copy is filled
	// again and the twin protected.
	qsd := standbyProcess(t, l, fourth, "tw")
	before = lastAt(twCon)
	stopped := time.Now()
	if err := syscall.Kill(qsd, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stall = 0
	waitNet(t, "the twin to count on with its standby's export stopped", 2*time.Minute, func() bool {
		if lastAt(twCon) > before+1 {
			stall = time.Since(stopped)
		}
		return stall > 0
	})
	t.Logf("FIGURE mirrored twin: standby's export stopped (SIGSTOP); writes went on %.2f s later", stall.Seconds())
	if g := c.guest("tw"); g.Protection == nil || g.Protection.State == api.ProtectionProtected {
		t.Errorf("with its standby's export stopped the twin shows %+v, want not protected", g.Protection)
	}
	if err := syscall.Kill(qsd, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	protectedOn(t, c, "tw", fourth, 3*time.Minute)
	t.Logf("FIGURE mirrored twin: protected again %.1f s after the export ran again", time.Since(resumed).Seconds())
}

// standbyProcess is the root namespace PID of the qemu-storage-daemon that serves
// guest's standby copy on node.
func standbyProcess(t *testing.T, l *lab.Lab, node, guest string) int {
	t.Helper()
	pids, err := l.NodeProcesses(node)
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmd, []byte("qemu-storage-daemon")) && bytes.Contains(cmd, []byte("qsd-"+guest+".pid")) {
			return pid
		}
	}
	t.Fatalf("no qemu-storage-daemon for %s among %s's processes", guest, node)
	return 0
}

// waitPools waits until nodeLs (vmctl -o json node ls) lists n nodes, each with the
// pools of want (name: kind).
func waitPools(t *testing.T, nodeLs func() string, n int, want map[string]string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("every node to report its storage pools %v", want), time.Minute, func() bool {
		var listed []api.Node
		if err := json.Unmarshal([]byte(nodeLs()), &listed); err != nil {
			t.Fatal(err)
		}
		for _, node := range listed {
			for name, kind := range want {
				if node.Pools[name] != kind {
					return false
				}
			}
		}
		return len(listed) == n
	})
}

// labImage places image name beside the lab image: the lab image with extra on its
// kernel command line (the lab guest's services read their settings there).
func labImage(t *testing.T, l *lab.Lab, name, extra string) {
	t.Helper()
	dir := filepath.Join(filepath.Dir(l.ImageDir()), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"kernel", "initrd"} {
		if err := os.Link(filepath.Join(l.ImageDir(), f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	cmdline, err := os.ReadFile(filepath.Join(l.ImageDir(), "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cmdline"), []byte(strings.TrimSpace(string(cmdline))+" "+extra), 0o644); err != nil {
		t.Fatal(err)
	}
}

// protectedOn waits until guest is protected by a standby on node, as vmctl vm show
// says, and fails the test with the last protection seen otherwise.
func protectedOn(t *testing.T, c *netLab, guest, node string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last *api.Protection
	for time.Now().Before(deadline) {
		g := c.guest(guest)
		last = g.Protection
		if g.TwinNode == node && last != nil && last.State == api.ProtectionProtected && last.Node == node {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s not protected on %s within %s: last %+v", guest, node, limit, last)
}

var (
	sinkLine  = regexp.MustCompile(`sink: counter (\d+)`)
	foundLine = regexp.MustCompile(`counter: found (\d+)`)
	atLine    = regexp.MustCompile(`counter: at (\d+)`)
	ddLine    = regexp.MustCompile(`ddbench: (\d+) bytes in (\d+) cs`)
)

// lastCount is the highest count a sink's console shows.
func lastCount(console string) int {
	best := 0
	for _, m := range sinkLine.FindAllSubmatch(readFile(console), -1) {
		if n, _ := strconv.Atoi(string(m[1])); n > best {
			best = n
		}
	}
	return best
}

// lastAt is the highest count a counter guest's console says it wrote.
func lastAt(console string) int {
	best := 0
	for _, m := range atLine.FindAllSubmatch(readFile(console), -1) {
		if n, _ := strconv.Atoi(string(m[1])); n > best {
			best = n
		}
	}
	return best
}

// foundCount waits for the count a booted counter guest found on its disk.
func foundCount(t *testing.T, console string, limit time.Duration) int {
	t.Helper()
	var m [][]byte
	waitNet(t, "the promoted twin to say what its disk holds", limit, func() bool {
		m = foundLine.FindSubmatch(readFile(console))
		return m != nil
	})
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// ddFigures are a console's ddbench runs, in MiB/s.
func ddFigures(console string) []float64 {
	var out []float64
	for _, m := range ddLine.FindAllSubmatch(readFile(console), -1) {
		b, _ := strconv.ParseFloat(string(m[1]), 64)
		cs, _ := strconv.ParseFloat(string(m[2]), 64)
		if cs > 0 {
			out = append(out, b/(1<<20)/(cs/100))
		}
	}
	return out
}

func medianOf(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// domainID is the libvirt domain ID of guest on node, by virsh in the node.
func domainID(t *testing.T, l *lab.Lab, node, guest string) int {
	t.Helper()
	n, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("virsh", "-c", n.LibvirtURI, "domid", guest).CombinedOutput()
	if err != nil {
		t.Fatalf("virsh domid %s on %s: %v: %s", guest, node, err, out)
	}
	id, err := strconv.Atoi(string(bytes.TrimSpace(out)))
	if err != nil {
		t.Fatalf("virsh domid %s on %s: %q", guest, node, out)
	}
	return id
}

// TestMirroredTwinKills is issue 14's figures (scripts/bench-twin): a mirrored twin
// whose disk holds 1 GiB of data (made from an imported image of random bytes: the
// guest boots nothing, its QEMU runs and its disk is mirrored all the same) in a
// 4-node lab with local disks only; DVM_TWIN_KILLS times (1 when unset): wait until
// it is protected (the time to fill the standby's copy, from when it ran on its node),
// kill its node, time it to running on its standby's node, bring the killed node back.
func TestMirroredTwinKills(t *testing.T) {
	runs := runsFromEnv(t, "DVM_TWIN_KILLS")
	labtest.Require(t)
	// The image first, before the lab: a gigabyte written while the lab's nodes run
	// can stall them past a short lease.
	dir := t.TempDir()
	raw, img := filepath.Join(dir, "fill.raw"), filepath.Join(dir, "fill.qcow2")
	for _, args := range [][]string{
		{"dd", "if=/dev/urandom", "of=" + raw, "bs=1M", "count=1024", "status=none"},
		{"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	os.Remove(raw)
	c := upCluster(t, 4)
	waitPools(t, func() string { return c.run("-o", "json", "node", "ls") }, 4, map[string]string{"local": "dir"})
	c.run("image", "import", "fill", img)
	// Writing the gigabyte can stall the master's node past its lease (its raft log
	// shares the disk); the guest then starts once the lease is back, which vm create
	// does not wait for.
	if out, code := c.try("vm", "create", "tk", "--os", "linux", "--image", "fill", "--memory", "64MiB", "--pool", "local", "--failover", "twin"); code != 0 {
		t.Logf("vm create tk: exit %d: %s", code, strings.TrimSpace(out))
		waitFor(t, "tk running", 2*time.Minute, func() bool { return c.guest("tk").State == api.GuestRunning })
	}

	var kills, syncs []float64
	since := time.Now()
	for run := 0; run < runs; run++ {
		var g api.Guest
		waitFor(t, "tk protected", 5*time.Minute, func() bool {
			g = c.guest("tk")
			return g.Protection != nil && g.Protection.State == api.ProtectionProtected && g.Protection.Node == g.TwinNode
		})
		sync := time.Since(since).Seconds()
		syncs = append(syncs, sync)
		primary, standby := g.Node, g.TwinNode
		c.run("lab", "kill", primary, "--dir", c.lab.Dir())
		killed := time.Now()
		waitFor(t, "tk running on its standby's node", 2*time.Minute, func() bool {
			g = c.guest("tk")
			return g.Node == standby && g.State == api.GuestRunning
		})
		d := time.Since(killed).Seconds()
		since = time.Now()
		kills = append(kills, d)
		t.Logf("run %d: protected on %s %.1f s after it ran on %s; %s killed, running on %s %.2f s later",
			run+1, standby, sync, primary, primary, standby, d)
		c.run("lab", "restart", primary, "--dir", c.lab.Dir())
		waitFor(t, primary+" back", 2*time.Minute, func() bool {
			var listed []api.Node
			if err := json.Unmarshal([]byte(c.run("-o", "json", "node", "ls")), &listed); err != nil {
				t.Fatal(err)
			}
			for _, n := range listed {
				if n.Name == primary {
					return n.State == "ready"
				}
			}
			return false
		})
	}
	slices.Sort(kills)
	slices.Sort(syncs)
	t.Logf("FIGURE mirrored twin, 1 GiB of data, local disks only: node kill to running on the standby: median %.2f s, p90 %.2f s over %d kills (min %.2f, max %.2f)",
		kills[len(kills)/2], kills[len(kills)*9/10], len(kills), kills[0], kills[len(kills)-1])
	t.Logf("FIGURE mirrored twin, 1 GiB of data: protected again (a new standby's copy filled) median %.1f s (min %.1f, max %.1f) after the guest ran on its node; the first includes its creation",
		syncs[len(syncs)/2], syncs[0], syncs[len(syncs)-1])
}

// TestPausedPrimaryMirroredTwin: the node of a mirrored twin stops whole (SIGSTOP of
// every process, its fence guard's too) past its lease, so the master promotes the
// standby, whose copy was in step. The two copies are two disks, which no disk lease
// keeps apart: the guest's own lock in the shared lockspace must refuse the standby's
// start while the paused QEMU can still run on, and the guest must never run on two
// nodes, neither during the pause nor when the node continues.
func TestPausedPrimaryMirroredTwin(t *testing.T) {
	c := upCluster(t, 3)
	waitPools(t, func() string { return c.run("-o", "json", "node", "ls") }, 3, map[string]string{"local": "dir"})
	c.run("vm", "create", "ptw", "--os", "linux", "--image", "lab", "--memory", "96MiB", "--disk", "64MiB", "--pool", "local", "--failover", "twin")
	var g api.Guest
	waitFor(t, "ptw protected", 2*time.Minute, func() bool {
		g = c.guest("ptw")
		return g.Protection != nil && g.Protection.State == api.ProtectionProtected && g.Protection.Node == g.TwinNode
	})
	node, standby := g.Node, g.TwinNode
	var others []string
	for _, n := range c.lab.Nodes() {
		if n.Name != node {
			others = append(others, n.AgentURL)
		}
	}
	show := func() api.Guest {
		var got api.Guest
		out, code := c.try("--addr", strings.Join(others, ","), "-o", "json", "vm", "show", "ptw")
		if code != 0 || json.Unmarshal([]byte(out), &got) != nil {
			return api.Guest{}
		}
		return got
	}
	s := faults.StartSampler(c.lab, 100*time.Millisecond)
	c.run("lab", "pause", node, "--dir", c.lab.Dir())
	paused := time.Now()
	waitFor(t, "ptw promoted on "+standby, time.Minute, func() bool { return show().Node == standby })
	t.Logf("ptw promoted on %s %.2f s after %s was paused", standby, time.Since(paused).Seconds(), node)
	// The refusal is read in the standby node's log: while the paused node was the
	// master, the nodes' reports can wait on it (it accepts connections and never
	// answers), and the API shows the guest's state unknown meanwhile.
	logPath := filepath.Join(c.lab.Dir(), "nodes", standby, "dvmd.log")
	waitFor(t, "ptw's start on "+standby+" refused by the lock manager", 30*time.Second, func() bool {
		if got := show(); got.State == api.GuestRunning {
			t.Fatalf("ptw runs on %s while %s is paused with its QEMU", got.Node, node)
		}
		for _, line := range strings.Split(string(readFile(logPath)), "\n") {
			if strings.Contains(line, "guest=ptw") && strings.Contains(line, "is locked") {
				return true
			}
		}
		return false
	})
	c.run("lab", "resume", node, "--dir", c.lab.Dir())
	resumed := time.Now()
	waitFor(t, "ptw running on "+standby+" after the resume", 90*time.Second, func() bool { return c.allRunningElsewhere([]string{"ptw"}, node) })
	t.Logf("ptw running away from %s %.2f s after the resume", node, time.Since(resumed).Seconds())
	time.Sleep(3 * time.Second)
	checkNeverTwice(t, s)
}
