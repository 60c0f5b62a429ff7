package hypervisor

// Twins on real QEMU processes, both halves on this machine, every link on loopback
// and the guests' NICs on a bridge of the test's own with no address and no uplink.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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

	"github.com/dvmproject/dvm/internal/lab"
	"github.com/vishvananda/netlink"
)

// twinLab is what a twin test runs on: the lab guest image, a bridge, a disk.
type twinLab struct {
	t      testing.TB
	img    lab.Image
	bridge string
	dir    string
}

func newTwinLab(t testing.TB, bridge string) *twinLab {
	t.Helper()
	requireQEMU(t)
	img := requireLabImage(t)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}
	_ = netlink.LinkDel(br) // a leftover of a killed run
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("create bridge %s: %v", bridge, err)
	}
	t.Cleanup(func() { netlink.LinkDel(br) })
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	// Short: the run directories hold unix sockets.
	dir, err := os.MkdirTemp("", "dvmtw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, half := range []string{"p", "s", "s2"} {
				b, _ := os.ReadFile(filepath.Join(dir, half, twinQEMULog))
				t.Logf("QEMU log of %s:\n%s", half, b)
				b, _ = os.ReadFile(filepath.Join(dir, half+".console"))
				t.Logf("console of %s:\n%s", half, lastBytes(b, 1500))
			}
		}
		os.RemoveAll(dir)
	})
	return &twinLab{t: t, img: img, bridge: bridge, dir: dir}
}

// requireLabImage is the lab guest image, built first if need be; none skips the test
// (fails it under CI=true).
func requireLabImage(t testing.TB) lab.Image {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := lab.EnsureImage(ctx, lab.DefaultImageCache, io.Discard)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("lab guest image: %v", err)
		}
		t.Skipf("lab guest image: %v", err)
	}
	return img
}

// freePort is a loopback port nothing listens on now.
func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (l *twinLab) links() TwinLinks {
	return TwinLinks{Mirror: freePort(l.t), Compare: freePort(l.t), Migrate: freePort(l.t), NBD: freePort(l.t)}
}

// disk makes a raw disk of 16 MiB; copy names a disk to copy instead.
func (l *twinLab) disk(name, copyOf string) *Disk {
	p := filepath.Join(l.dir, name)
	var cmd *exec.Cmd
	if copyOf != "" {
		cmd = exec.Command("cp", "--sparse=always", copyOf, p)
	} else {
		cmd = exec.Command("qemu-img", "create", "-q", "-f", "raw", p, "16M")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("disk %s: %v: %s", name, err, out)
	}
	return &Disk{Path: p, Format: "raw"}
}

// noCheckpoints is a checkpoint interval longer than any test: see TestTwinCheckpoints
// for why the pairing and takeover tests must not reach a checkpoint.
const noCheckpoints = time.Hour

func (l *twinLab) spec(role TwinRole, half string, disk *Disk, links TwinLinks) TwinSpec {
	return TwinSpec{
		Guest: GuestSpec{
			Name: "tw", OS: "linux", CPUs: 1, MemoryBytes: 128 << 20,
			Disk:       disk,
			Boot:       &DirectBoot{Kernel: l.img.Kernel, Initrd: l.img.Initrd, Cmdline: l.img.Cmdline},
			NICs:       []NIC{{Bridge: l.bridge, MAC: "52:54:00:77:00:01"}},
			ConsoleLog: filepath.Join(l.dir, half+".console"),
		},
		Role:               role,
		Accel:              AccelTCG, // LAB-FACTS: KVM guests die on these machines
		RunDir:             filepath.Join(l.dir, half),
		Links:              links,
		CheckpointInterval: noCheckpoints,
		MigrationBandwidth: 1 << 30,
	}
}

func (l *twinLab) start(spec TwinSpec) *Twin {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := StartPrimary
	if spec.Role == TwinSecondary {
		start = StartSecondary
	}
	tw, err := start(ctx, spec)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() {
		if err := tw.Stop(5 * time.Second); err != nil {
			l.t.Error(err)
		}
	})
	return tw
}

// console is what the guest printed on a half's serial console.
type console struct {
	ticks []int // every "tick N", in order
	ups   int   // "dvm-lab-guest: up" lines: boots
}

var tickRE = regexp.MustCompile(`dvm-lab-guest: tick (\d+)`)

func readConsole(path string) console {
	b, _ := os.ReadFile(path)
	var c console
	for _, line := range bytes.Split(b, []byte("\n")) {
		if m := tickRE.FindSubmatch(line); m != nil {
			n, _ := strconv.Atoi(string(m[1]))
			c.ticks = append(c.ticks, n)
		}
		if bytes.Contains(line, []byte("dvm-lab-guest: up")) {
			c.ups++
		}
	}
	return c
}

func (c console) last() int {
	if len(c.ticks) == 0 {
		return 0
	}
	return c.ticks[len(c.ticks)-1]
}

// waitConsole polls a console log until ok holds, failing after limit.
func waitConsole(t testing.TB, path string, limit time.Duration, what string, ok func(console) bool) console {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		c := readConsole(path)
		if ok(c) {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen in %s on %s (ticks %v, boots %d)", what, limit, path, c.ticks, c.ups)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func status(t testing.TB, tw *Twin) TwinStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := tw.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// inCOLO checks both halves report protection and that the secondary's replica prints
// the same ticks as the primary. fresh says the pair started before the guest booted,
// so the replica's console shows that boot too.
func inCOLO(t testing.TB, p, s *Twin, fresh bool) {
	t.Helper()
	ps, ss := status(t, p), status(t, s)
	if ps.State != TwinProtected || ps.COLOMode != "primary" || ps.Migration != "colo" || ss.State != TwinProtected || ss.COLOMode != "secondary" {
		t.Fatalf("after Pair: primary %+v, secondary %+v: want both protected in COLO", ps, ss)
	}
	pc := readConsole(p.spec.Guest.ConsoleLog)
	sc := waitConsole(t, s.spec.Guest.ConsoleLog, 15*time.Second, "two ticks of the replica", func(c console) bool { return len(c.ticks) >= 2 && c.last() > pc.last() })
	pc = waitConsole(t, p.spec.Guest.ConsoleLog, 15*time.Second, "the primary at the replica's tick", func(c console) bool { return c.last() >= sc.last() })
	for _, n := range sc.ticks {
		if n > pc.ticks[0] && !containsInt(pc.ticks, n) {
			t.Errorf("the replica printed tick %d, the primary did not: primary %v, replica %v", n, pc.ticks, sc.ticks)
		}
	}
	if !fresh && sc.ups != 0 {
		t.Errorf("the replica booted (%d boots on its console): it must start from the primary's state", sc.ups)
	}
	t.Logf("in COLO: primary ticks %v…%d, replica ticks %v", pc.ticks[:1], pc.last(), sc.ticks)
}

func containsInt(s []int, n int) bool {
	for _, v := range s {
		if v == n {
			return true
		}
	}
	return false
}

// ticksGoOn checks that after a takeover the console goes on counting from where the
// guest was, without a boot.
func ticksGoOn(t testing.TB, path string, before console, from int) console {
	t.Helper()
	after := waitConsole(t, path, 10*time.Second, "three more ticks", func(c console) bool { return len(c.ticks) >= len(before.ticks)+3 })
	next := after.ticks[len(before.ticks):]
	for i := 1; i < len(next); i++ {
		if next[i] != next[i-1]+1 {
			t.Errorf("ticks after the takeover %v: want them one by one", next)
		}
	}
	// The survivor resumes from the last checkpoint at worst: a checkpoint interval
	// (one second, one tick) behind what the lost half printed, never from the start.
	if next[0] < from-1 {
		t.Errorf("first tick after the takeover %d, last before it %d: the guest went back", next[0], from)
	}
	if after.ups != before.ups {
		t.Errorf("the guest booted again: %d boots before the takeover, %d after", before.ups, after.ups)
	}
	return after
}

// TestTwinPrimaryLost: a running guest gets a secondary (disk mirrored while it runs),
// the primary is killed (-9), the secondary takes over and the guest counts on.
func TestTwinPrimaryLost(t *testing.T) {
	l := newTwinLab(t, "dvmtwt1")
	links := l.links()
	pdisk := l.disk("primary.raw", "")
	p := l.start(l.spec(TwinPrimary, "p", pdisk, links))
	waitConsole(t, p.spec.Guest.ConsoleLog, 30*time.Second, "primary tick 2", func(c console) bool { return c.last() >= 2 })

	s := l.start(l.spec(TwinSecondary, "s", l.disk("secondary.raw", ""), links))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := Pair(ctx, p, s); err != nil {
		t.Fatal(err)
	}
	t.Logf("Pair with a running primary (disk mirror, first copy of 128 MiB): %s", time.Since(t0).Round(time.Millisecond))
	inCOLO(t, p, s, false)

	before := readConsole(s.spec.Guest.ConsoleLog)
	lastPrimary := readConsole(p.spec.Guest.ConsoleLog).last()
	kill := time.Now()
	if err := syscall.Kill(p.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.Exited()
	lastPrimary = max(lastPrimary, readConsole(p.spec.Guest.ConsoleLog).last())
	before = readConsole(s.spec.Guest.ConsoleLog)
	if err := s.Failover(ctx); err != nil {
		t.Fatal(err)
	}
	failover := time.Since(kill)
	newTick := waitConsole(t, s.spec.Guest.ConsoleLog, 10*time.Second, "a tick after the takeover", func(c console) bool { return len(c.ticks) > len(before.ticks) })
	takeover := time.Since(kill)
	t.Logf("takeover: kill -9 of the primary to Failover done %s, to the first new tick on the secondary's console %s (tick %d; the primary's last was %d)",
		failover.Round(time.Millisecond), takeover.Round(time.Millisecond), newTick.ticks[len(before.ticks)], lastPrimary)
	ticksGoOn(t, s.spec.Guest.ConsoleLog, before, lastPrimary)

	st := status(t, s)
	if st.Role != TwinPrimary || st.State != TwinUnprotected || st.RunState != "running" || st.COLOMode != "none" || st.LastCOLOExit != "request" {
		t.Errorf("secondary after Failover: %+v: want an unprotected, running primary whose COLO ended by request", st)
	}
	if err := p.Stop(time.Second); err != nil {
		t.Error(err)
	}

	// The new primary is protected again by a new secondary: its packet links are
	// made anew on its own addresses, its filters go before its rewriter, and its
	// disk (the former replica's, overlays merged) is mirrored to the new copy.
	s2 := l.start(l.spec(TwinSecondary, "s2", l.disk("secondary2.raw", ""), l.links()))
	t0 = time.Now()
	if err := Pair(ctx, s, s2); err != nil {
		t.Fatal(err)
	}
	t.Logf("re-protection of the promoted secondary: %s", time.Since(t0).Round(time.Millisecond))
	inCOLO(t, s, s2, false)
	for _, h := range []*Twin{s, s2} {
		if err := h.Stop(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	checkCleanedUp(t, p, s, s2)
}

// TestTwinSecondaryLost: a fresh pair (the primary paused, the disks copies), the
// secondary killed, the primary runs on alone; then a new secondary protects it again.
func TestTwinSecondaryLost(t *testing.T) {
	l := newTwinLab(t, "dvmtwt2")
	links := l.links()
	pdisk := l.disk("primary.raw", "")
	pspec := l.spec(TwinPrimary, "p", pdisk, links)
	pspec.Paused = true
	p := l.start(pspec)
	s := l.start(l.spec(TwinSecondary, "s", l.disk("secondary.raw", pdisk.Path), links))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := Pair(ctx, p, s); err != nil {
		t.Fatal(err)
	}
	t.Logf("Pair of a fresh primary: %s", time.Since(t0).Round(time.Millisecond))
	waitConsole(t, p.spec.Guest.ConsoleLog, 30*time.Second, "primary tick 2", func(c console) bool { return c.last() >= 2 })
	inCOLO(t, p, s, true)

	before := readConsole(p.spec.Guest.ConsoleLog)
	kill := time.Now()
	if err := syscall.Kill(s.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-s.Exited()
	if err := p.PrimaryAlone(ctx); err != nil {
		t.Fatal(err)
	}
	before = readConsole(p.spec.Guest.ConsoleLog)
	waitConsole(t, p.spec.Guest.ConsoleLog, 10*time.Second, "a tick of the primary alone", func(c console) bool { return len(c.ticks) > len(before.ticks) })
	t.Logf("kill -9 of the secondary to the primary's next tick after PrimaryAlone: %s", time.Since(kill).Round(time.Millisecond))
	ticksGoOn(t, p.spec.Guest.ConsoleLog, before, before.last())
	if st := status(t, p); st.State != TwinUnprotected || st.RunState != "running" || st.COLOMode != "none" {
		t.Errorf("primary alone: %+v: want unprotected and running", st)
	}
	if err := s.Stop(time.Second); err != nil {
		t.Error(err)
	}

	// Protected again by a new secondary, its disk mirrored from the running primary,
	// the packet links moved to new addresses.
	s2 := l.start(l.spec(TwinSecondary, "s2", l.disk("secondary2.raw", ""), l.links()))
	t0 = time.Now()
	if err := Pair(ctx, p, s2); err != nil {
		t.Fatal(err)
	}
	t.Logf("re-protection (Pair of the running primary with a new secondary): %s", time.Since(t0).Round(time.Millisecond))
	inCOLO(t, p, s2, false)
}

// TestTwinCheckpoints runs a fresh pair with a checkpoint every second. Where QEMU's
// checkpoints work (ProbeTwinSupport says so), the guest runs on across them and the
// runner counts and times them. Where they freeze the primary (Debian's QEMU 7.2.22),
// the runner must say so (ErrTwinStuck) rather than go on reporting a protected twin,
// and that is what is checked then, along with the guest being frozen indeed.
func TestTwinCheckpoints(t *testing.T) {
	l := newTwinLab(t, "dvmtwt3")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	_, probeErr := ProbeTwinSupport(ctx, "", AccelTCG)
	if probeErr != nil && !errors.Is(probeErr, ErrTwinUnsupported) {
		t.Fatal(probeErr)
	}
	links := l.links()
	pdisk := l.disk("primary.raw", "")
	pspec := l.spec(TwinPrimary, "p", pdisk, links)
	pspec.Paused, pspec.CheckpointInterval = true, time.Second
	p := l.start(pspec)
	s := l.start(l.spec(TwinSecondary, "s", l.disk("secondary.raw", pdisk.Path), links))
	if err := Pair(ctx, p, s); err != nil {
		t.Fatal(err)
	}
	if probeErr == nil {
		waitConsole(t, p.spec.Guest.ConsoleLog, 30*time.Second, "primary tick 3", func(c console) bool { return c.last() >= 3 })
		st := status(t, p)
		if st.State != TwinProtected || st.Checkpoints < 2 || st.LastCheckpoint <= 0 {
			t.Fatalf("primary after 3 s at one checkpoint a second: %+v", st)
		}
		t.Logf("checkpoints: %d, the last took %s", st.Checkpoints, st.LastCheckpoint)
		return
	}
	var stuck error
	for deadline := time.Now().Add(30 * time.Second); stuck == nil; {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU fails the checkpoint probe (%v), yet the runner never reported the primary stuck", probeErr)
		}
		qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := p.Status(qctx)
		qcancel()
		switch {
		case errors.Is(err, ErrTwinStuck):
			stuck = err
			t.Logf("stuck after %d checkpoints, the last took %s", st.Checkpoints, st.LastCheckpoint)
			if st.Checkpoints < 1 || st.LastCheckpoint <= 0 {
				t.Errorf("stuck after checkpoint %d of %s: want the checkpoint that froze it counted and timed", st.Checkpoints, st.LastCheckpoint)
			}
		case err == nil && st.State != TwinProtected:
			t.Fatalf("primary %+v: want protected until it is found stuck", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	frozen := readConsole(p.spec.Guest.ConsoleLog)
	time.Sleep(2 * time.Second)
	if c := readConsole(p.spec.Guest.ConsoleLog); len(c.ticks) != len(frozen.ticks) || c.ups != frozen.ups {
		t.Errorf("the runner reported %v, but the guest printed on (ticks %v, then %v)", stuck, frozen.ticks, c.ticks)
	}
	t.Logf("as the probe said (%v), the runner reported: %v", probeErr, stuck)
}

// TestTwinAttach: a half whose agent went away (its QMP connection closed, QEMU left
// running) is taken over by a new runner from the same spec.
func TestTwinAttach(t *testing.T) {
	l := newTwinLab(t, "dvmtwt4")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := l.spec(TwinPrimary, "p", l.disk("primary.raw", ""), l.links())
	if _, err := AttachTwin(ctx, spec); !errors.Is(err, ErrNotFound) {
		t.Errorf("attach with nothing running: %v", err)
	}
	old := l.start(spec)
	waitConsole(t, spec.Guest.ConsoleLog, 30*time.Second, "tick 1", func(c console) bool { return c.last() >= 1 })
	if _, err := StartPrimary(ctx, spec); err == nil || !strings.Contains(err.Error(), "already runs") {
		t.Errorf("second start from the same run directory: %v", err)
	}
	old.mon.Disconnect() // the old agent is gone
	tw, err := AttachTwin(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if tw.PID() != old.PID() {
		t.Errorf("attached pid %d, started %d", tw.PID(), old.PID())
	}
	st := status(t, tw)
	if st.Role != TwinPrimary || st.State != TwinUnprotected || st.RunState != "running" {
		t.Errorf("attached primary: %+v", st)
	}
	before := readConsole(spec.Guest.ConsoleLog)
	waitConsole(t, spec.Guest.ConsoleLog, 10*time.Second, "a tick after the attach", func(c console) bool { return len(c.ticks) > len(before.ticks) })
	if err := tw.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tw.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("attached half: Exited not closed after Stop")
	}
	<-old.Exited()
	checkCleanedUp(t, tw)
}

// checkCleanedUp: stopped halves leave no socket, pidfile, overlay or tap.
func checkCleanedUp(t testing.TB, halves ...*Twin) {
	t.Helper()
	for _, h := range halves {
		for _, f := range twinRunFiles {
			_, err := os.Stat(h.spec.path(f))
			kept := h.promoted && (f == twinActive || f == twinHidden)
			if err == nil && !kept {
				t.Errorf("%s left %s behind", h.spec.Role, f)
			}
			if err != nil && kept {
				t.Errorf("promoted %s removed %s, which may hold its last writes", h.spec.Role, f)
			}
		}
		if _, err := netlink.LinkByName(TwinTapName(h.spec)); err == nil {
			t.Errorf("%s left tap %s behind", h.spec.Role, TwinTapName(h.spec))
		}
	}
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// BenchmarkTwinTakeover measures a takeover: a fresh pair in COLO, kill -9 of the
// primary, Failover on the secondary. Metrics: failover-ms (kill to Failover done) and
// kill-to-tick-ms (kill to the first new tick on the secondary's console; the guest
// ticks once a second, so this has a second's granularity), each the median of b.N.
//
//	go test ./hypervisor -run '^$' -bench TwinTakeover -benchtime 5x
func BenchmarkTwinTakeover(b *testing.B) {
	l := newTwinLab(b, "dvmtwb1")
	var failovers, ticks []float64
	for i := 0; i < b.N; i++ {
		links := l.links()
		pdisk := l.disk(fmt.Sprintf("p%d.raw", i), "")
		pspec := l.spec(TwinPrimary, fmt.Sprintf("p%d", i), pdisk, links)
		pspec.Paused = true
		p := l.start(pspec)
		s := l.start(l.spec(TwinSecondary, fmt.Sprintf("s%d", i), l.disk(fmt.Sprintf("s%d.raw", i), pdisk.Path), links))
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := Pair(ctx, p, s); err != nil {
			b.Fatal(err)
		}
		waitConsole(b, s.spec.Guest.ConsoleLog, 30*time.Second, "replica tick 2", func(c console) bool { return c.last() >= 2 })
		before := readConsole(s.spec.Guest.ConsoleLog)
		kill := time.Now()
		if err := syscall.Kill(p.PID(), syscall.SIGKILL); err != nil {
			b.Fatal(err)
		}
		<-p.Exited()
		if err := s.Failover(ctx); err != nil {
			b.Fatal(err)
		}
		failovers = append(failovers, float64(time.Since(kill).Microseconds())/1000)
		waitConsole(b, s.spec.Guest.ConsoleLog, 10*time.Second, "a tick after the takeover", func(c console) bool { return len(c.ticks) > len(before.ticks) })
		ticks = append(ticks, float64(time.Since(kill).Microseconds())/1000)
		cancel()
		p.Stop(time.Second)
		s.Stop(5 * time.Second)
	}
	b.ReportMetric(median(failovers), "failover-ms")
	b.ReportMetric(median(ticks), "kill-to-tick-ms")
	b.Logf("failover ms %v; kill to tick ms %v", failovers, ticks)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
