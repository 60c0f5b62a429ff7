package hypervisor

// Issue 14's synchronous mirror on this host's libvirtd (qemu:///system, TCG) and
// qemu-storage-daemon, both ends on loopback: the lab guest writes its disk through
// its serial console while its QEMU mirrors the disk to a standby export.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/lab"
)

// requireQEMU skips (fails under CI=true) unless QEMU, its tools and root are here.
func requireQEMU(t testing.TB) {
	t.Helper()
	why := ""
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		why = "no qemu-system-x86_64 (apt-get install qemu-system-x86 qemu-utils)"
	} else if _, err := exec.LookPath("qemu-img"); err != nil {
		why = "no qemu-img (apt-get install qemu-utils)"
	} else if os.Geteuid() != 0 {
		why = "not root: the mirror tests run guests on qemu:///system"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
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

// requireMirrorHost skips (fails under CI=true) unless this host can run the mirror
// tests: root, QEMU's tools, and a libvirtd at qemu:///system.
func requireMirrorHost(t *testing.T) *Node {
	t.Helper()
	requireQEMU(t)
	why := ""
	if _, err := exec.LookPath(QSD); err != nil {
		why = "no " + QSD + " (apt-get install qemu-system-x86)"
	}
	var n *Node
	if why == "" {
		var err error
		if n, err = Open(Options{URI: "qemu:///system", Accelerator: "tcg"}); err != nil {
			why = fmt.Sprintf("no libvirtd at qemu:///system: %v", err)
		}
	}
	if why != "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// testCreds writes a throwaway cluster CA and one ECDSA node certificate for
// 127.0.0.1 (server and client use, as internal/cluster makes them) into dir; other
// is a certificate and key of another CA, for a client the export must refuse.
func testCreds(t *testing.T, dir string) (creds, other MirrorCreds) {
	t.Helper()
	makeCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key, der
	}
	write := func(name string, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	node := func(prefix string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, caDER []byte) MirrorCreds {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node-a", Organization: []string{"dvm"}},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return MirrorCreds{
			CACert: write(prefix+"ca.crt", "CERTIFICATE", caDER),
			Cert:   write(prefix+"node-a.crt", "CERTIFICATE", der),
			Key:    write(prefix+"node-a.key", "EC PRIVATE KEY", kder),
		}
	}
	ca, caKey, caDER := makeCA("dvm cluster CA")
	oca, ocaKey, ocaDER := makeCA("another CA")
	return node("", ca, caKey, caDER), node("other-", oca, ocaKey, ocaDER)
}

// mirrorGuest is the lab guest on qemu:///system with a raw disk, and its console.
type mirrorGuest struct {
	t    *testing.T
	n    *Node
	name string
	disk string

	mu  sync.Mutex
	out bytes.Buffer // everything the console printed
	con *Console
}

// primaryDisk makes a raw disk of diskBytes in dir: zeroes, or random data in full
// when fill.
func primaryDisk(t *testing.T, dir string, diskBytes int64, fill bool) *Disk {
	t.Helper()
	p := filepath.Join(dir, "primary.raw")
	mk := exec.Command("qemu-img", "create", "-q", "-f", "raw", p, fmt.Sprint(diskBytes))
	if fill {
		// Random data from the first sector on: the guest leaves a disk that holds
		// other data than its boot count alone.
		mk = exec.Command("dd", "if=/dev/urandom", "of="+p, "bs=1M", fmt.Sprint("count=", diskBytes>>20), "status=none")
	}
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("primary disk: %v: %s", err, out)
	}
	return &Disk{Path: p, Format: "raw"}
}

// startMirrorGuest boots the lab guest dvmtest-mirror-PID(-suffix) from disk and
// waits until it sees the disk.
func startMirrorGuest(t *testing.T, n *Node, suffix string, disk *Disk) *mirrorGuest {
	t.Helper()
	img := requireLabImage(t)
	g := &mirrorGuest{t: t, n: n, name: fmt.Sprintf("dvmtest-mirror-%d%s", os.Getpid(), suffix), disk: disk.Path}
	_ = n.Undefine(g.name) // a leftover of a killed run
	spec := GuestSpec{
		Name: g.name, OS: "linux", CPUs: 1, MemoryBytes: 128 << 20,
		Disk: disk,
		Boot: &DirectBoot{Kernel: img.Kernel, Initrd: img.Initrd, Cmdline: img.Cmdline},
	}
	if err := n.Define(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Undefine(g.name); err != nil {
			t.Errorf("undefine %s: %v", g.name, err)
		}
	})
	if err := n.Start(g.name); err != nil {
		t.Fatal(err)
	}
	con, err := n.OpenConsole(g.name)
	if err != nil {
		t.Fatal(err)
	}
	g.con = con
	t.Cleanup(func() { con.Close() }) // before the undefine: cleanups run last first
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := con.Read(buf)
			g.mu.Lock()
			g.out.Write(buf[:k])
			g.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	g.waitFor("dvm-lab-guest: disk /dev/vda", 60*time.Second)
	t.Cleanup(func() {
		if t.Failed() {
			g.mu.Lock()
			t.Logf("console of %s:\n%s", g.name, lastBytes(g.out.Bytes(), 3000))
			g.mu.Unlock()
		}
	})
	return g
}

// waitFor waits until the console printed re and returns its first submatch (or the
// match) after what was seen before.
func (g *mirrorGuest) waitFor(pattern string, limit time.Duration) string {
	g.t.Helper()
	re := regexp.MustCompile(pattern)
	deadline := time.Now().Add(limit)
	for {
		g.mu.Lock()
		m := re.FindStringSubmatch(g.out.String())
		g.mu.Unlock()
		if m != nil {
			return m[len(m)-1]
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("the console of %s did not print %q in %s", g.name, pattern, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var runSeq int

// run types a shell command on the console and waits up to limit for it to end,
// returning the last line it printed. The end marker is computed by the shell, so
// the echo of the typed line does not count.
func (g *mirrorGuest) run(cmd string, limit time.Duration) string {
	g.t.Helper()
	runSeq++
	mark := fmt.Sprintf("END%d", runSeq)
	if _, err := fmt.Fprintf(g.con, "%s; echo \"%s-rc$((0+$?))\"\n", cmd, mark); err != nil {
		g.t.Fatal(err)
	}
	rc := g.waitFor(`(?m)`+mark+`-rc(\d+)`, limit)
	g.mu.Lock()
	out := g.out.String()
	g.mu.Unlock()
	i := strings.Index(out, mark+"-rc"+rc)
	lines := strings.Split(strings.TrimRight(out[:i], "\r\n"), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if rc != "0" {
		g.t.Fatalf("%q on %s: exit %s: %s", cmd, g.name, rc, last)
	}
	return last
}

// tickRE is the lab guest's heartbeat line (guest/lab.d/tick.sh).
var tickRE = regexp.MustCompile(`dvm-lab-guest: tick (\d+)`)

// tickCount is how many heartbeats the guest printed so far.
func (g *mirrorGuest) tickCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(tickRE.FindAllIndex(g.out.Bytes(), -1))
}

// write has the guest write 32 MiB of zeroes at MiB seek with dd oflag=direct (the
// guest's /dev/urandom is slower than its disk under TCG) and says how long it took,
// seen from here (a console round trip included), and at what rate.
func (g *mirrorGuest) write(seek int) string {
	g.t.Helper()
	start := time.Now()
	g.run(fmt.Sprintf("dd if=/dev/zero of=/dev/vda bs=1M count=32 seek=%d oflag=direct 2>/dev/null", seek), 2*time.Minute)
	took := time.Since(start)
	return fmt.Sprintf("%s, %.1f MiB/s", took.Round(time.Millisecond), 32/took.Seconds())
}

func (g *mirrorGuest) waitReady(limit time.Duration) time.Duration {
	g.t.Helper()
	start := time.Now()
	for {
		st, err := g.n.MirrorStatus(g.name)
		if err != nil {
			g.t.Fatal(err)
		}
		if st.Err != "" {
			g.t.Fatalf("mirror failed: %s", st.Err)
		}
		if st.Ready {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			g.t.Fatalf("mirror not ready in %s: %+v", limit, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mirrorTo starts the guest's mirror to s and returns how long it took to be in step.
func (g *mirrorGuest) mirrorTo(s *Standby, creds MirrorCreds, credsDir string, limit time.Duration) time.Duration {
	g.t.Helper()
	if err := g.n.StartMirror(g.name, MirrorTarget{Addr: s.Addr(), Export: g.name, Creds: creds, CredsDir: credsDir}); err != nil {
		g.t.Fatal(err)
	}
	return g.waitReady(limit)
}

// endMirror stops the guest's mirror and its standby, then checks that the standby's
// copy equals the guest's disk (the guest must write nothing meanwhile).
func (g *mirrorGuest) endMirror(s *Standby) {
	g.t.Helper()
	if err := g.n.StopMirror(g.name); err != nil {
		g.t.Fatal(err)
	}
	if st, err := g.n.MirrorStatus(g.name); err != nil || st != (MirrorStatus{}) {
		g.t.Fatalf("after StopMirror: %+v, %v", st, err)
	}
	if err := s.Stop(); err != nil {
		g.t.Fatal(err)
	}
	// -U: the running guest holds its disk's lock.
	if out, err := exec.Command("qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", g.disk, s.Disk()).CombinedOutput(); err != nil {
		g.t.Fatalf("the standby's copy differs from the primary's disk: %v: %s", err, out)
	}
}

func startTestStandby(t *testing.T, dir, guest string, size uint64, creds MirrorCreds) *Standby {
	t.Helper()
	s, err := StartStandby(StandbySpec{Guest: guest, Disk: filepath.Join(dir, "standby.qcow2"), SizeBytes: size,
		Listen: "127.0.0.1:0", Creds: creds, RunDir: filepath.Join(dir, "run")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(s.Pid(), syscall.SIGCONT)
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// mirrorDir is a test directory the guest's QEMU (another user) may enter.
func mirrorDir(t *testing.T) string {
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestRealQEMUMirror: a guest's writes reach the standby's copy; the export wants the
// cluster's TLS; a standby that stops answering (SIGSTOP: no RST, as for a host gone)
// does not hang StopMirror nor the guest, nor StartMirror when it stopped before; a
// mirror whose standby ended fails, and a new mirror replaces it.
func TestRealQEMUMirror(t *testing.T) {
	n := requireMirrorHost(t)
	dir := mirrorDir(t)
	creds, other := testCreds(t, dir)
	const size = 64 << 20
	g := startMirrorGuest(t, n, "", primaryDisk(t, dir, size, false))
	credsDir := filepath.Join(dir, "client-tls")

	// 1. In step, then a copy equal to the primary's disk.
	sdir := filepath.Join(dir, "s1")
	s := startTestStandby(t, sdir, g.name, size, creds)
	if again, ok := FindStandby(filepath.Join(sdir, "run"), g.name); !ok || again.Addr() != s.Addr() || again.Pid() != s.Pid() {
		t.Fatalf("FindStandby: %v %+v, want %+v", ok, again, s)
	}
	t.Logf("in step after %s", g.mirrorTo(s, creds, credsDir, 60*time.Second).Round(time.Millisecond))
	if err := n.StartMirror(g.name, MirrorTarget{Addr: s.Addr(), Export: g.name, Creds: creds, CredsDir: credsDir}); err != nil {
		t.Fatalf("StartMirror again, on a healthy mirror: %v", err)
	}
	mirrored := g.write(16)
	g.run("dd if=/dev/urandom of=/dev/vda bs=4k count=100 seek=7000 oflag=direct 2>/dev/null", 60*time.Second)
	t.Logf("guest write with dd oflag=direct, 32 MiB, mirrored: %s", mirrored)
	if st, err := n.MirrorStatus(g.name); err != nil || !st.Ready || !st.Active {
		t.Fatalf("after the writes: %+v, %v", st, err)
	}
	// TLS is on: a plain NBD client, and one with another CA's certificate, are refused.
	if out, err := exec.Command("qemu-img", "info", "nbd://"+s.Addr()+"/"+g.name).CombinedOutput(); err == nil {
		t.Fatalf("qemu-img info over plain NBD was served:\n%s", out)
	} else {
		t.Logf("plain NBD refused: %s", strings.TrimSpace(string(out)))
	}
	// With the cluster's certificate, the same client is served.
	gooddir := filepath.Join(dir, "good-tls")
	if err := WriteQEMUCreds(gooddir, creds, TLSClient, -1, -1); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(s.Addr())
	info := func(credsDir string) ([]byte, error) {
		return exec.Command("qemu-img", "info", "--object", "tls-creds-x509,id=t0,endpoint=client,dir="+credsDir,
			"--image-opts", "driver=nbd,host="+host+",port="+port+",export="+g.name+",tls-creds=t0").CombinedOutput()
	}
	if out, err := info(gooddir); err != nil || !strings.Contains(string(out), "virtual size: 64 MiB") {
		t.Fatalf("qemu-img info with the cluster's certificate: %v:\n%s", err, out)
	}
	odir := filepath.Join(dir, "other-tls")
	// Both CAs, so the client trusts the export and finds its own certificate valid
	// (QEMU checks it); a certificate of the other CA, which the export must refuse.
	bundle := filepath.Join(dir, "both-cas.pem")
	var cas []byte
	for _, p := range []string{creds.CACert, other.CACert} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		cas = append(cas, b...)
	}
	if err := os.WriteFile(bundle, cas, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteQEMUCreds(odir, MirrorCreds{CACert: bundle, Cert: other.Cert, Key: other.Key}, TLSClient, -1, -1); err != nil {
		t.Fatal(err)
	}
	if out, err := info(odir); err == nil {
		t.Fatalf("qemu-img info with another CA's certificate was served:\n%s", out)
	} else {
		t.Logf("another CA's client refused: %s", strings.TrimSpace(string(out)))
	}
	g.endMirror(s)
	if s.Running() {
		t.Fatal("the standby runs after Stop")
	}
	if _, ok := FindStandby(filepath.Join(sdir, "run"), g.name); ok {
		t.Fatal("FindStandby found a stopped standby")
	}
	t.Log("the standby's copy equals the primary's disk")
	// Promotion: the copy boots, and holds what the primary's guest wrote at its boot.
	promoted := startMirrorGuest(t, n, "-promoted", &Disk{Path: s.Disk(), Format: "qcow2"})
	promoted.waitFor("disk: boots before this one: 1", 30*time.Second)
	if err := n.Destroy(promoted.name); err != nil {
		t.Fatal(err)
	}
	t.Log("the guest booted from the standby's copy found the primary's boot count")
	t.Logf("guest write with dd oflag=direct, 32 MiB, not mirrored: %s", g.write(16))

	// 2. The standby stops answering while the guest writes; StopMirror called by the
	// process that started the mirror, then by one that did not (an agent restarted:
	// the target's address comes from QEMU).
	for i, restarted := range []bool{false, true} {
		s2 := startTestStandby(t, filepath.Join(dir, fmt.Sprintf("s2-%d", i)), g.name, size, creds)
		g.mirrorTo(s2, creds, credsDir, 60*time.Second)
		if err := n.StartMirror(g.name, MirrorTarget{Addr: "127.0.0.1:1", Export: g.name, Creds: creds, CredsDir: credsDir}); err == nil {
			t.Fatal("StartMirror to another target succeeded while a mirror runs")
		}
		if _, err := fmt.Fprintf(g.con, "(i=0; while [ $i -lt 100000 ]; do dd if=/dev/urandom of=/dev/vda bs=64k count=1 seek=$((i %% 200)) oflag=direct 2>/dev/null; i=$((i+1)); done) & echo $! >/tmp/writer\n"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if err := syscall.Kill(s2.Pid(), syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second) // the guest's writes now wait for the standby
		stopper := n
		if restarted {
			var err error
			if stopper, err = Open(Options{URI: "qemu:///system", Accelerator: "tcg"}); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		if err := stopper.StopMirror(g.name); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		if restarted {
			stopper.Close()
		}
		t.Logf("StopMirror with the standby stopped (by another process: %v) took %s", restarted, took.Round(time.Millisecond))
		if took > 10*time.Second {
			t.Errorf("StopMirror took %s with a dead standby", took)
		}
		if st, err := n.State(g.name); err != nil || st != StateRunning {
			t.Fatalf("the guest after StopMirror: %v, %v", st, err)
		}
		g.run("kill $(cat /tmp/writer); dd if=/dev/urandom of=/dev/vda bs=1M count=4 seek=40 oflag=direct 2>/dev/null", 30*time.Second)
	}
	t.Log("the guest writes on, unprotected")

	// 2a. A standby of another size: refused before any copy.
	small := startTestStandby(t, filepath.Join(dir, "small"), g.name, size/2, creds)
	if err := n.StartMirror(g.name, MirrorTarget{Addr: small.Addr(), Export: g.name, Creds: creds, CredsDir: credsDir}); err == nil {
		t.Fatal("StartMirror to a smaller export succeeded")
	} else {
		t.Logf("StartMirror to a smaller export: %v", err)
	}
	if st, err := n.MirrorStatus(g.name); err != nil || st != (MirrorStatus{}) {
		t.Fatalf("after a refused StartMirror: %+v, %v", st, err)
	}

	// 2b. A standby that stopped before the mirror starts: its kernel accepts the
	// connection, nothing answers. StartMirror fails in bounded time (probeNBD), the
	// guest runs on.
	s2 := startTestStandby(t, filepath.Join(dir, "s2-stopped"), g.name, size, creds)
	if err := syscall.Kill(s2.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// The guest's console ticks once a second: the longest pause between ticks seen
	// meanwhile says how long the guest stalled (QEMU's main loop waits in the open).
	ticks := make(chan time.Duration, 1)
	stop := make(chan struct{})
	go func() {
		last, lastAt, gap := g.tickCount(), time.Now(), time.Duration(0)
		for {
			select {
			case <-stop:
				ticks <- max(gap, time.Since(lastAt))
				return
			case <-time.After(20 * time.Millisecond):
			}
			if c := g.tickCount(); c != last {
				gap, last, lastAt = max(gap, time.Since(lastAt)), c, time.Now()
			}
		}
	}()
	start := time.Now()
	err := n.StartMirror(g.name, MirrorTarget{Addr: s2.Addr(), Export: g.name, Creds: creds, CredsDir: credsDir})
	took := time.Since(start)
	g.waitFor(fmt.Sprintf("tick %d\\b", g.tickCount()+1), 10*time.Second)
	close(stop)
	t.Logf("StartMirror to a stopped standby: %v, after %s; the longest pause of the guest's console ticks meanwhile: %s",
		err, took.Round(time.Millisecond), (<-ticks).Round(time.Millisecond))
	if err == nil {
		t.Fatal("StartMirror to a stopped standby succeeded")
	}
	if took > mirrorConnectTimeout+5*time.Second {
		t.Errorf("StartMirror to a stopped standby took %s", took)
	}
	// Stop kills a stopped daemon as well.
	if err := s2.Stop(); err != nil || s2.Running() {
		t.Fatalf("Stop of a stopped standby: %v, running %v", err, s2.Running())
	}
	g.run("dd if=/dev/urandom of=/dev/vda bs=1M count=1 seek=40 oflag=direct 2>/dev/null", 30*time.Second)
	if st, err := n.MirrorStatus(g.name); err != nil || st != (MirrorStatus{}) {
		t.Fatalf("after a failed StartMirror: %+v, %v", st, err)
	}

	// 3. A standby that ends (its host's kernel resets the connection): the mirror
	// fails, the guest writes on, and the failed job is replaced by a new mirror.
	s3 := startTestStandby(t, filepath.Join(dir, "s3"), g.name, size, creds)
	g.mirrorTo(s3, creds, credsDir, 60*time.Second)
	if err := s3.Stop(); err != nil {
		t.Fatal(err)
	}
	g.run("dd if=/dev/urandom of=/dev/vda bs=64k count=4 seek=100 oflag=direct 2>/dev/null", 30*time.Second)
	// The job notices its failed write when it next wakes.
	var st MirrorStatus
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if st, err = n.MirrorStatus(g.name); err != nil {
			t.Fatal(err)
		}
		if st.Err != "" || time.Now().After(end) {
			break
		}
	}
	if st.Active || st.Ready || st.Err == "" {
		t.Fatalf("the mirror to an ended standby: %+v", st)
	}
	t.Logf("the mirror to an ended standby: %+v", st)
	if err := n.StartMirror(g.name, MirrorTarget{Addr: s3.Addr(), Export: g.name, Creds: creds, CredsDir: credsDir}); err == nil {
		t.Fatal("StartMirror to an ended standby succeeded")
	} else {
		t.Logf("StartMirror to an ended standby: %v", err)
	}
	s4 := startTestStandby(t, filepath.Join(dir, "s4"), g.name, size, creds)
	g.mirrorTo(s4, creds, credsDir, 60*time.Second)
	g.run("dd if=/dev/urandom of=/dev/vda bs=1M count=2 seek=50 oflag=direct 2>/dev/null", 30*time.Second)
	g.endMirror(s4)
}

// TestRealQEMUMirrorSync1GiB measures the first full copy of a 1 GiB disk, every
// block of it data, on loopback (a log line, not an assertion).
func TestRealQEMUMirrorSync1GiB(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: copies 1 GiB")
	}
	n := requireMirrorHost(t)
	dir := mirrorDir(t)
	creds, _ := testCreds(t, dir)
	const size = 1 << 30
	g := startMirrorGuest(t, n, "", primaryDisk(t, dir, size, true))
	s := startTestStandby(t, filepath.Join(dir, "s"), g.name, size, creds)
	took := g.mirrorTo(s, creds, filepath.Join(dir, "client-tls"), 10*time.Minute)
	t.Logf("1 GiB of data in step after %s (%.0f MiB/s)", took.Round(time.Millisecond), 1024/took.Seconds())
	g.endMirror(s)
}

// lastBytes is the end of b, at most n bytes: a console's last lines for a log.
func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
