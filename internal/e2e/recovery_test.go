package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/lab"
	"libvirt.org/go/libvirt"
)

// samplePeriod is how often the sampler starts asking every node: well under the
// 100 ms the check promises, so a slow answer still leaves the promise kept.
const samplePeriod = 50 * time.Millisecond

// sampler asks every live node's libvirtd, over and over, which domains run there, and
// records any guest seen running on two nodes in the same sample: the worst bug an HA
// control plane can have. It also keeps, for the log, every change of where a guest
// runs, and how long it went between two samples.
type sampler struct {
	lab     *lab.Lab
	guests  map[string]bool
	mu      sync.Mutex
	samples int
	maxGap  time.Duration
	gapAt   time.Time // when the longest gap ended
	late    int       // gaps over 100 ms: a libvirtd destroying a domain answers late
	partial int       // samples that lack a live node: it was being connected to, or did not answer
	dups    []string
	moves   []string
	stop    chan struct{}
	done    chan struct{}
}

func (c *cluster) startSampler(guests ...string) *sampler {
	// A handle of its own on the lab: the test's, while it cuts or heals, is held for
	// as long as nftables takes, and the samples must not wait for that.
	l, err := lab.Load(c.lab.Dir())
	if err != nil {
		c.t.Fatal(err)
	}
	s := &sampler{lab: l, guests: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	for _, g := range guests {
		s.guests[g] = true
	}
	go s.run()
	return s
}

// answerWait bounds how long a sample waits for a node: a node killed or cut while a
// call to it is on the way may never answer, and must not stop the sampling of the
// others. A libvirtd busy destroying a domain answers in about 200 ms.
const answerWait = time.Second

// nodeAnswer is what one node's libvirtd said: to a dial, a connection (nil when it
// failed); to a sample's question (sample > 0), the domains running there, or a nil
// conn when the call failed.
type nodeAnswer struct {
	node    string
	sample  int
	conn    *libvirt.Connect
	running []string
}

// ask lists the domains running on a node; a failed call closes conn and answers nil.
func ask(node string, sample int, conn *libvirt.Connect) nodeAnswer {
	doms, err := conn.ListAllDomains(libvirt.CONNECT_LIST_DOMAINS_RUNNING)
	if err != nil {
		conn.Close()
		return nodeAnswer{node: node, sample: sample}
	}
	a := nodeAnswer{node: node, sample: sample, conn: conn}
	for i := range doms {
		if name, err := doms[i].GetName(); err == nil {
			a.running = append(a.running, name)
		}
		doms[i].Free()
	}
	return a
}

func (s *sampler) run() {
	defer close(s.done)
	conns := map[string]*libvirt.Connect{}
	busy := map[string]bool{} // a dial or a question on the way to the node
	answers := make(chan nodeAnswer, 16)
	// take files an answer; it says whether the answer belongs to sample.
	take := func(a nodeAnswer, sample int) bool {
		busy[a.node] = false
		if a.conn == nil {
			delete(conns, a.node)
		} else {
			conns[a.node] = a.conn
		}
		return a.sample == sample && a.conn != nil
	}
	defer func() {
		// A connection with a call on the way is closed when the call comes back.
		inflight := 0
		for node, c := range conns {
			if !busy[node] {
				c.Close()
			}
		}
		for _, b := range busy {
			if b {
				inflight++
			}
		}
		go func() {
			for ; inflight > 0; inflight-- {
				if a := <-answers; a.conn != nil {
					a.conn.Close()
				}
			}
		}()
	}()
	dial := func(n lab.Node) {
		conn, _ := libvirt.NewConnect(n.LibvirtURI)
		answers <- nodeAnswer{node: n.Name, conn: conn}
	}
	// The first sample starts once every live node is connected (or 5 s have passed).
	dialing := 0
	for _, n := range s.lab.Nodes() {
		if n.PID != 0 {
			busy[n.Name] = true
			dialing++
			go dial(n)
		}
	}
	for deadline := time.After(5 * time.Second); dialing > 0; dialing-- {
		select {
		case a := <-answers:
			take(a, 0)
		case <-deadline:
			dialing = 0
		}
	}
	tick := time.NewTicker(samplePeriod)
	defer tick.Stop()
	last := map[string]string{}
	var prev time.Time
	for sample := 1; ; sample++ {
		select {
		case <-s.stop:
			return
		default:
		}
		// Answers that came after their sample ended, and dials, change only the
		// connections.
		for drained := false; !drained; {
			select {
			case a := <-answers:
				take(a, 0)
			default:
				drained = true
			}
		}
		// Every node at once: a sample takes as long as the slowest node, not their sum.
		// Connections are made outside the samples, so a node that cannot be reached
		// delays none; until it answers it is missing from the samples, and counted.
		now := time.Now()
		asked, missing := 0, false
		for _, n := range s.lab.Nodes() {
			switch {
			case n.PID == 0: // killed: its QEMUs died with it
			case busy[n.Name]:
				missing = true
			case conns[n.Name] == nil:
				busy[n.Name], missing = true, true
				go dial(n)
			default:
				busy[n.Name] = true
				asked++
				go func(node string, conn *libvirt.Connect) { answers <- ask(node, sample, conn) }(n.Name, conns[n.Name])
			}
		}
		where := map[string][]string{}
		deadline := time.After(answerWait)
		for asked > 0 {
			var a nodeAnswer
			select {
			case a = <-answers:
			case <-deadline:
				missing, asked = true, 0
				continue
			}
			if a.sample == sample {
				asked--
			}
			if !take(a, sample) {
				if a.sample == sample {
					missing = true
				}
				continue
			}
			for _, name := range a.running {
				if s.guests[name] {
					where[name] = append(where[name], a.node)
				}
			}
		}
		if missing {
			s.mu.Lock()
			s.partial++
			s.mu.Unlock()
		}
		s.mu.Lock()
		s.samples++
		if gap := now.Sub(prev); !prev.IsZero() {
			if gap > s.maxGap {
				s.maxGap, s.gapAt = gap, now
			}
			if gap > 100*time.Millisecond {
				s.late++
			}
		}
		prev = now
		for g := range s.guests {
			nodes := where[g]
			sort.Strings(nodes)
			if len(nodes) > 1 {
				s.dups = append(s.dups, fmt.Sprintf("%s on %v at %s", g, nodes, now.Format("15:04:05.000")))
			}
			if on := strings.Join(nodes, ","); on != last[g] {
				s.moves = append(s.moves, fmt.Sprintf("%s %s running on [%s]", now.Format("15:04:05.000"), g, on))
				last[g] = on
			}
		}
		s.mu.Unlock()
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
	}
}

// finish stops sampling and fails the test if a guest ever ran twice.
func (s *sampler) finish(t *testing.T) {
	t.Helper()
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Logf("where the guests ran, as every node's libvirtd said:\n  %s", strings.Join(s.moves, "\n  "))
	if len(s.dups) > 0 {
		t.Fatalf("a guest ran on two nodes at once (%d of %d samples): %v", len(s.dups), s.samples, s.dups)
	}
	if s.samples < 10 {
		t.Fatalf("only %d samples of the nodes' libvirtds: the check proves nothing", s.samples)
	}
	t.Logf("no guest on two nodes in %d samples of every node's libvirtd (one every %s; longest gap %s, ending %s; %d gaps over 100 ms; %d samples lacked a node)",
		s.samples, samplePeriod, s.maxGap.Round(time.Millisecond), s.gapAt.Format("15:04:05.000"), s.late, s.partial)
}

// gatherOn creates restart guests that all land on node: the other nodes are drained
// (they hold nothing yet) while the guests are created, then undrained.
func (c *cluster) gatherOn(t *testing.T, node string, names ...string) {
	t.Helper()
	c.gatherOnWith(t, node, nil, names...)
}

// gatherOnWith is gatherOn with more `vm create` flags (a disk, say) for every guest.
func (c *cluster) gatherOnWith(t *testing.T, node string, flags []string, names ...string) {
	t.Helper()
	var others []string
	for _, n := range c.lab.Nodes() {
		if n.Name != node {
			others = append(others, n.Name)
			c.run("node", "drain", n.Name)
		}
	}
	for _, g := range names {
		c.run(append([]string{"vm", "create", g, "--os", "linux", "--image", "lab", "--cpus", "1", "--memory", "96MiB", "--failover", "restart"}, flags...)...)
		if got := c.guest(g); got.Node != node {
			t.Fatalf("%s on %s, not %s", g, got.Node, node)
		}
	}
	for _, n := range others {
		c.run("node", "undrain", n)
	}
}

// waitNodeBack waits until node is back in a whole management group and takes guests
// again: where a run that lost the node leaves the cluster for the next run.
func (c *cluster) waitNodeBack(t *testing.T, node string) {
	t.Helper()
	c.waitStatus(t, node+" back", 90*time.Second, nil, func(s api.ClusterStatus) bool {
		r := roleOf(s, node)
		return fullGroup(s) && r != "lost" && r != "on-hold" && r != ""
	})
	waitFor(t, node+" ready to take guests", 60*time.Second, func() bool {
		var nodes []api.Node
		if json.Unmarshal([]byte(c.run("-o", "json", "node", "ls")), &nodes) != nil {
			return false
		}
		for _, n := range nodes {
			if n.Name == node {
				return n.State == api.NodeReady && n.Schedulable
			}
		}
		return false
	})
}

func (c *cluster) allRunningElsewhere(names []string, not string) bool {
	for _, g := range names {
		got := c.guest(g)
		if got.Node == not || got.State != api.GuestRunning {
			return false
		}
		if st, ok := c.domainState(got.Node, g); !ok || st != libvirt.DOMAIN_RUNNING {
			return false
		}
	}
	return true
}

// victim is a node that is neither the master nor... any node but the master.
func (c *cluster) victim(t *testing.T) string {
	st := c.waitStatus(t, "a master and two backups", 90*time.Second, nil, fullGroup)
	c.settled(t, st)
	for _, n := range c.lab.Nodes() {
		if n.Name != st.Master {
			return n.Name
		}
	}
	t.Fatal("no node but the master")
	return ""
}

// TestKillNodeRestartsItsGuests: a node with three restart guests loses power; all three
// run again on other nodes, and no sample ever sees one running twice. With
// DVM_RECOVERY_RUNS=N it does this N times (the node restarted, empty, in between) and
// prints the median: the recovery figure.
func TestKillNodeRestartsItsGuests(t *testing.T) {
	runs := runsFromEnv(t, "DVM_RECOVERY_RUNS")
	c := upCluster(t, 3)
	node := c.victim(t)
	var times []float64
	for run := 0; run < runs; run++ {
		guests := []string{fmt.Sprintf("web%da", run), fmt.Sprintf("web%db", run), fmt.Sprintf("web%dc", run)}
		c.gatherOn(t, node, guests...)
		s := c.startSampler(guests...)
		c.run("lab", "kill", node, "--dir", c.lab.Dir())
		killed := time.Now()
		waitFor(t, "all three running on other nodes", 90*time.Second, func() bool { return c.allRunningElsewhere(guests, node) })
		d := time.Since(killed).Seconds()
		times = append(times, d)
		t.Logf("run %d: node kill to all guests running again: %.2f s", run+1, d)
		s.finish(t)
		if run+1 < runs {
			// The node first: in a 3-node lab a write with a voter lost is applied
			// but not acknowledged (2 of the 3 copies; see store.ErrNotDurable).
			c.run("lab", "restart", node, "--dir", c.lab.Dir())
			c.waitNodeBack(t, node)
			for _, g := range guests {
				c.run("vm", "delete", g) // the next run gathers fresh guests
			}
		}
	}
	sort.Float64s(times)
	t.Logf("FIGURE node kill to all guests running again: median %.2f s over %d runs (min %.2f, max %.2f)",
		times[len(times)/2], len(times), times[0], times[len(times)-1])
	out := c.run("events")
	for _, want := range []string{"node-lost", "recovered"} {
		if !strings.Contains(out, want) {
			t.Errorf("events lack %q:\n%s", want, out)
		}
	}
	// Each loss is counted in the replicated state (what lets a node that paused
	// its guests tell a stale copy), though the lost node is silent when it is.
	for _, n := range c.lab.Nodes() {
		if b, _ := os.ReadFile(filepath.Join(n.Dir, "dvmd.log")); bytes.Contains(b, []byte("loss not counted")) {
			t.Errorf("%s's dvmd did not count a loss:\n%s", n.Name, grepLines(b, "loss not counted"))
		}
	}
}

// grepLines returns the lines of b that hold s.
func grepLines(b []byte, s string) string {
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestCutNodeFencesItself: a node cut off from every peer fences itself (its guests
// stop) before the master restarts them elsewhere; after the cut heals its old copies
// are removed and never start again.
func TestCutNodeFencesItself(t *testing.T) {
	c := upCluster(t, 3)
	node := c.victim(t)
	guests := []string{"db1", "db2"}
	c.gatherOn(t, node, guests...)
	s := c.startSampler(guests...)
	// Cut from every peer, not from this host: the sampler keeps watching the cut node.
	var peers []string
	for _, n := range c.lab.Nodes() {
		if n.Name != node {
			peers = append(peers, n.Name)
		}
	}
	c.run("lab", "cut", node, "--from", strings.Join(peers, ","), "--dir", c.lab.Dir())
	waitFor(t, "guests running on the other nodes", 90*time.Second, func() bool { return c.allRunningElsewhere(guests, node) })
	for _, g := range guests {
		if st, ok := c.domainState(node, g); ok && st == libvirt.DOMAIN_RUNNING {
			t.Fatalf("%s still runs on the cut node %s", g, node)
		}
	}
	c.run("lab", "heal", node, "--dir", c.lab.Dir())
	// Back in the cluster, the node removes its old copies and starts none of them.
	waitFor(t, "old copies removed from "+node, 60*time.Second, func() bool {
		for _, g := range guests {
			if _, ok := c.domainState(node, g); ok {
				return false
			}
		}
		return true
	})
	time.Sleep(5 * time.Second)
	for _, g := range guests {
		if _, ok := c.domainState(node, g); ok {
			t.Fatalf("%s is back on %s after the heal", g, node)
		}
	}
	s.finish(t)
}

// TestDrainMovesEveryGuestLive: `vmctl node drain` live-migrates every guest of a node
// away. The same work done with plain `virsh migrate` in the same run, on unmanaged
// domains of the same size, is the yardstick for the drain's own cost.
func TestDrainMovesEveryGuestLive(t *testing.T) {
	c := upCluster(t, 3)
	node := c.victim(t)
	guests := []string{"app1", "app2"}
	c.gatherOn(t, node, guests...)
	for _, g := range guests {
		c.waitTicking(t, node, g)
	}
	start := time.Now()
	out := c.run("node", "drain", node)
	drain := time.Since(start)
	t.Logf("%s", strings.TrimSpace(out))
	for _, g := range guests {
		got := c.guest(g)
		if got.Node == node || got.State != api.GuestRunning || got.LastMigration == nil || !got.LastMigration.OK {
			t.Fatalf("%s after drain: %+v", g, got)
		}
	}
	// Yardstick: the same number of unmanaged domains of the same size, migrated by virsh.
	src, dst := c.lab.Nodes()[0], c.lab.Nodes()[1]
	for _, n := range c.lab.Nodes() {
		if n.Name != node {
			src = n
			break
		}
	}
	for _, n := range c.lab.Nodes() {
		if n.Name != node && n.Name != src.Name {
			dst = n
		}
	}
	var plain time.Duration
	for i := range guests {
		name := fmt.Sprintf("plain%d", i)
		c.definePlain(t, src.LibvirtURI, name)
		c.waitTicking(t, src.Name, name)
		cmd := exec.Command("virsh", "-c", src.LibvirtURI, "migrate", "--live", "--persistent", "--undefinesource", name, dst.LibvirtURI, "--migrateuri", "tcp://"+strings.TrimPrefix(strings.TrimSuffix(dst.LibvirtURI, "/system"), "qemu+tcp://"))
		t0 := time.Now()
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("virsh migrate %s: %v\n%s", name, err, b)
		}
		plain += time.Since(t0)
	}
	t.Logf("FIGURE drain of %d guests %.2f s; plain virsh migrate of %d same-size domains %.2f s; ratio %.2f",
		len(guests), drain.Seconds(), len(guests), plain.Seconds(), drain.Seconds()/plain.Seconds())
}

// waitTicking waits until guest's console shows its init running, so a migration moves
// a booted guest, as in production.
func (c *cluster) waitTicking(t *testing.T, node, guest string) {
	t.Helper()
	n, err := c.lab.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{n.Dir + "/data/console/" + guest + ".log", n.Dir + "/log/" + guest + ".log"}
	waitFor(t, guest+" booted", 60*time.Second, func() bool {
		for _, p := range paths {
			if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), "dvm-lab-guest: tick") {
				return true
			}
		}
		return false
	})
}

// definePlain defines and starts a domain outside dvm: the lab guest, 96 MiB.
func (c *cluster) definePlain(t *testing.T, uri, name string) {
	t.Helper()
	img := c.lab.ImageDir()
	n := ""
	for _, nd := range c.lab.Nodes() {
		if nd.LibvirtURI == uri {
			n = nd.Dir
		}
	}
	xml := `<domain type='qemu'><name>` + name + `</name><memory unit='MiB'>96</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>` + img + `/kernel</kernel><initrd>` + img + `/initrd</initrd><cmdline>console=ttyS0</cmdline></os>
<devices><serial type='pty'><log file='` + n + `/log/` + name + `.log' append='on'/><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console></devices></domain>`
	f, err := os.CreateTemp("", "plain-*.xml")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	f.WriteString(xml)
	f.Close()
	for _, args := range [][]string{{"define", f.Name()}, {"start", name}} {
		if b, err := exec.Command("virsh", append([]string{"-c", uri}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("virsh %v: %v\n%s", args, err, b)
		}
	}
}

// TestDvmdCrashNoDuplicate: the node agent itself dies (kill -9), the host and its
// guests do not. The node's lease lapses, so the master restarts its HA guests elsewhere;
// the fence guard, which outlives dvmd, must have stopped them first.
func TestDvmdCrashNoDuplicate(t *testing.T) {
	c := upCluster(t, 3)
	node := c.victim(t)
	guests := []string{"svc1", "svc2"}
	c.gatherOn(t, node, guests...)
	pids, err := c.lab.NodeProcesses(node)
	if err != nil {
		t.Fatal(err)
	}
	s := c.startSampler(guests...)
	killed := 0
	for _, pid := range pids {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmd), "agent\x00--config") {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed++
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d dvmd agents on %s, want 1", killed, node)
	}
	// Whether they were restarted elsewhere or came back where they were, every guest
	// runs again, and none ever ran twice.
	waitFor(t, "all guests running again", 90*time.Second, func() bool { return c.allRunning(guests) })
	time.Sleep(3 * time.Second)
	s.finish(t)
}
