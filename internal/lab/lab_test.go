package lab_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/dvmproject/dvm/internal/lab"
	"github.com/dvmproject/dvm/internal/lab/labtest"
)

// TestLab brings a real 3-node lab up (libvirt only: the agent has tests of its
// own), boots a guest on n2, cuts and heals the network, kills and restarts n2,
// and checks that Down leaves nothing behind.
func TestLab(t *testing.T) {
	labtest.Require(t)
	before := takeSnapshot(t, "")
	l := labtest.Start(t, lab.Options{Nodes: 3, NoAgent: true})
	ctx := context.Background()
	labNS := map[string]bool{}
	noteNS := func() {
		for _, n := range l.Nodes() {
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", n.PID)); err == nil {
				labNS[ns] = true
			}
		}
	}
	noteNS()

	t.Run("libvirt", func(t *testing.T) {
		for _, n := range l.Nodes() {
			conn := connect(t, n.LibvirtURI)
			host, err := conn.GetHostname()
			if err != nil {
				t.Fatalf("%s: hostname: %v", n.Name, err)
			}
			if host != n.Name {
				t.Errorf("libvirtd at %s runs on host %q, want %q", n.LibvirtURI, host, n.Name)
			}
			if _, err := conn.GetCapabilities(); err != nil {
				t.Errorf("%s: capabilities: %v", n.Name, err)
			}
		}
		env, err := os.ReadFile(l.EnvFile())
		if err != nil {
			t.Fatal(err)
		}
		want := "DVM_LAB_NODES=n1=qemu+tcp://10.77.0.11/system,n2=qemu+tcp://10.77.0.12/system,n3=qemu+tcp://10.77.0.13/system\n"
		// DVM_ADDR lists every management-capable node's API, n1's first.
		addr := "DVM_ADDR=https://10.77.0.11:7460,https://10.77.0.12:7460,https://10.77.0.13:7460\n"
		ca := "DVM_CA=" + l.CAFile() + "\n" // the nodes' API speaks TLS with the lab's CA
		dir := "DVM_LAB_DIR=" + l.Dir() + "\n"
		if !strings.Contains(string(env), want) || !strings.Contains(string(env), addr) || !strings.Contains(string(env), ca) || !strings.Contains(string(env), dir) {
			t.Errorf("env file:\n%s\nwant it to hold %s, %s, %s and %s", env, addr, ca, want, dir)
		}
	})

	n2, _ := l.Node("n2")
	console := filepath.Join(n2.Dir, "guest.console.log")
	t.Run("guest", func(t *testing.T) {
		conn := connect(t, n2.LibvirtURI)
		dom := defineGuest(t, conn, l, "labguest", console)
		if err := dom.Create(); err != nil {
			// LAB-FACTS: the first start after libvirtd started once failed with
			// "libvirtd quit during handshake"; the same start worked a moment later.
			t.Logf("first start of the guest failed, trying once more: %v", err)
			time.Sleep(time.Second)
			if err := dom.Create(); err != nil {
				t.Fatalf("start guest on n2: %v", err)
			}
		}
		waitConsole(t, console, "dvm-lab-guest: up", "dvm-lab-guest: eth0 10.0.2.15/24",
			"dvm-lab-guest: gateway 10.0.2.2", "dvm-lab-guest: disk /dev/vda", "dvm-lab-guest: tick 2")
	})

	t.Run("pause", func(t *testing.T) {
		// A process that forks all the time: Pause must stop the children it forks
		// while the signals go out too.
		// It runs in the background of a shell that ends at once: its parent is then
		// n2's tini, not nsenter, which would stop itself when its child stops.
		forker := exec.Command("nsenter", "-t", strconv.Itoa(n2.PID), "-p", "--", "sh", "-c",
			"(: dvm-lab-forker; while :; do sleep 0.01; done) >/dev/null 2>&1 &")
		if out, err := forker.CombinedOutput(); err != nil {
			t.Fatalf("start a forking process in n2: %v\n%s", err, out)
		}
		defer killMarked(l, "n2", "dvm-lab-forker")
		time.Sleep(300 * time.Millisecond)
		before := lastTick(console)
		// Through another Lab of the same DIR, as `vmctl lab pause n2` would.
		other, err := lab.Load(l.Dir())
		if err != nil {
			t.Fatal(err)
		}
		if err := other.Pause("n2"); err != nil {
			t.Fatal(err)
		}
		first := allStopped(t, l, "n2")
		time.Sleep(500 * time.Millisecond)
		if again := allStopped(t, l, "n2"); !slices.Equal(first, again) {
			t.Errorf("n2's processes changed while it was paused: %v, then %v", first, again)
		}
		qemus, err := l.NodeQEMUs("n2")
		if err != nil || len(qemus) != 1 || qemus[0].Guest != "labguest" || !qemus[0].Stopped {
			t.Errorf("QEMUs of the paused n2: %+v, %v; want labguest's, stopped", qemus, err)
		}
		if tick := lastTick(console); tick > before+1 {
			t.Errorf("the guest of the paused n2 ticked on: tick %d before the pause, %d after", before, tick)
		}
		st, err := l.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st[1].State != lab.StatePaused || st[1].Libvirt || !st[1].Paused || st[0].State != lab.StateRunning {
			t.Errorf("status with n2 paused: %+v", st)
		}
		if err := l.Pause("n2"); err == nil {
			t.Error("pausing a paused node succeeded; want an error saying to resume it")
		}
		if err := l.Resume("n2"); err != nil {
			t.Fatal(err)
		}
		pids, _ := l.NodeProcesses("n2")
		for _, p := range pids {
			if procState(p) == "T" {
				t.Errorf("process %d (%s) of n2 still stopped after resume", p, procComm(p))
			}
		}
		waitConsole(t, console, fmt.Sprintf("dvm-lab-guest: tick %d", lastTick(console)+2))
		if err := l.Resume("n2"); err == nil {
			t.Error("resuming a node that is not paused succeeded; want an error")
		}
		if st, _ := l.Status(ctx); st[1].State != lab.StateRunning || !st[1].Libvirt {
			t.Errorf("status of n2 after resume: %+v", st[1])
		}
	})

	t.Run("cut", func(t *testing.T) {
		libvirtOf := func(node string) string {
			n, _ := l.Node(node)
			return net.JoinHostPort(n.Addr, strconv.Itoa(lab.LibvirtPort))
		}
		reach := func(from, to string, want bool) {
			t.Helper()
			// A dropped SYN gets no answer at all; on one bridge an answer takes
			// well under a millisecond, so a second tells them apart.
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			c, err := l.DialFrom(dctx, from, libvirtOf(to))
			if err == nil {
				c.Close()
			}
			if got := err == nil; got != want {
				t.Errorf("%s reaches %s's libvirt: %v (%v), want %v; cuts %+v", from, to, got, err, want, l.Cuts())
			}
		}
		reachFromHost := func(to string, want bool) {
			t.Helper()
			c, err := net.DialTimeout("tcp", libvirtOf(to), time.Second)
			if err == nil {
				c.Close()
			}
			if got := err == nil; got != want {
				t.Errorf("the root namespace reaches %s's libvirt: %v (%v), want %v", to, got, err, want)
			}
		}
		reach("n1", "n3", true)
		if err := l.Cut("n3", []string{"n1"}); err != nil {
			t.Fatal(err)
		}
		reach("n1", "n3", false)
		reach("n3", "n1", false)
		reach("n2", "n3", true)
		reach("n1", "n2", true)
		reachFromHost("n3", true)
		if err := l.Heal("n3"); err != nil {
			t.Fatal(err)
		}
		reach("n1", "n3", true)
		reach("n3", "n1", true)

		if err := l.Cut("n3", nil); err != nil {
			t.Fatal(err)
		}
		reach("n2", "n3", false)
		reach("n3", "n1", false)
		reachFromHost("n3", false)
		reach("n1", "n2", true)
		st, err := l.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st[2].Cut != "all" || st[0].Cut != "n3" || !st[2].Libvirt {
			t.Errorf("status with n3 cut from all: %+v", st)
		}
		if err := l.Heal(""); err != nil {
			t.Fatal(err)
		}
		reach("n2", "n3", true)
		reachFromHost("n3", true)
	})

	t.Run("kill", func(t *testing.T) {
		procs, err := l.NodeProcesses("n2")
		if err != nil {
			t.Fatal(err)
		}
		qemus := map[int]string{}
		for _, p := range procs {
			if comm := procComm(p); strings.HasPrefix(comm, "qemu-system") {
				qemus[p] = procStat(p)
			}
		}
		if len(qemus) == 0 {
			t.Fatalf("n2 runs no qemu before the kill (processes %v): the guest test failed?", procs)
		}
		// A paused node dies like any other: SIGKILL ends stopped processes too.
		if err := l.Pause("n2"); err != nil {
			t.Fatal(err)
		}
		// Killed through another Lab of the same DIR, as `vmctl lab kill n2` would:
		// l sees it too.
		other, err := lab.Load(l.Dir())
		if err != nil {
			t.Fatal(err)
		}
		if err := other.Kill("n2"); err != nil {
			t.Fatal(err)
		}
		for pid, stat := range qemus {
			if s := procStat(pid); s != "" && s == stat {
				t.Errorf("qemu PID %d of n2 is alive after lab kill n2", pid)
			}
		}
		if left, _ := l.NodeProcesses("n2"); len(left) != 0 {
			t.Errorf("processes of n2 alive after kill: %v", left)
		}
		st, err := l.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st[1].State != lab.StateKilled || st[0].State != lab.StateRunning || !st[0].Libvirt {
			t.Errorf("status after kill n2: %+v", st)
		}
		if err := l.Kill("n2"); err == nil {
			t.Error("killing a killed node succeeded; want an error saying to restart it")
		}
		if err := l.Pause("n2"); err == nil {
			t.Error("pausing a killed node succeeded; want an error saying to restart it")
		}
	})

	t.Run("restart", func(t *testing.T) {
		if err := l.Restart(ctx, "n2"); err != nil {
			b, _ := os.ReadFile(filepath.Join(n2.Dir, "node.log"))
			t.Fatalf("%v\nn2's node.log:\n%s", err, b)
		}
		noteNS()
		// The root namespace (connect) and n1 reach the restarted n2 at once: its
		// eth0 kept its MAC, so no neighbour cache points elsewhere.
		c, err := l.DialFrom(ctx, "n1", net.JoinHostPort(n2.Addr, strconv.Itoa(lab.LibvirtPort)))
		if err != nil {
			t.Errorf("n1 cannot reach the restarted n2: %v", err)
		} else {
			c.Close()
		}
		conn := connect(t, n2.LibvirtURI)
		doms, err := conn.ListAllDomains(0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range doms {
			name, _ := d.GetName()
			t.Errorf("n2 came back with guest %q; a restarted node has none", name)
			d.Free()
		}
		// Shared storage stays: the image is still there for the node.
		if _, err := os.Stat(filepath.Join(l.ImageDir(), "kernel")); err != nil {
			t.Errorf("shared image after restart: %v", err)
		}
	})

	t.Run("down", func(t *testing.T) {
		// Down ends a paused node as any other.
		if err := l.Pause("n3"); err != nil {
			t.Fatal(err)
		}
		if err := l.Down(ctx); err != nil {
			t.Fatal(err)
		}
		after := takeSnapshot(t, l.Dir())
		if len(labNS) < 3 {
			t.Errorf("lab PID namespaces seen: %v, want one a node at least", labNS)
		}
		before.compare(t, after, l.Dir(), labNS)
		if _, err := os.Stat(filepath.Join(n2.Dir, "node.log")); err != nil {
			t.Errorf("logs in DIR after down: %v", err)
		}
	})
}

// TestUpRefusesSecondLab checks that a second lab is refused with nothing changed.
func TestUpRefusesSecondLab(t *testing.T) {
	l := labtest.Start(t, lab.Options{Nodes: 1, NoAgent: true})
	other := t.TempDir()
	_, err := lab.Up(context.Background(), lab.Options{Nodes: 1, NoAgent: true, Dir: other})
	if err == nil || !strings.Contains(err.Error(), l.Dir()) {
		t.Fatalf("second lab up: %v, want an error naming the lab in %s", err, l.Dir())
	}
	if ents, _ := os.ReadDir(other); len(ents) != 0 {
		t.Errorf("refused lab up wrote into %s: %v", other, ents)
	}
	if _, err := lab.Up(context.Background(), lab.Options{Nodes: 1, NoAgent: true, Dir: l.Dir()}); err == nil || !strings.Contains(err.Error(), "already up") {
		t.Errorf("lab up over a lab that is up: %v, want an error saying it is already up", err)
	}
	if !l.IsUp() {
		t.Error("the first lab is no longer up")
	}
	st, err := l.Status(context.Background())
	if err != nil || st[0].State != lab.StateRunning || !st[0].Libvirt {
		t.Errorf("first lab after refused ups: %+v, %v", st, err)
	}
}

func connect(t *testing.T, uri string) *libvirt.Connect {
	t.Helper()
	conn, err := libvirt.NewConnect(uri)
	if err != nil {
		t.Fatalf("connect %s: %v", uri, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// defineGuest defines a 128 MiB, 1 vCPU TCG guest booting the lab image, with its
// serial console logged to console, a virtio NIC (QEMU's user network) configured
// from the kernel command line, and a raw virtio disk on shared storage.
func defineGuest(t *testing.T, conn *libvirt.Connect, l *lab.Lab, name, console string) *libvirt.Domain {
	t.Helper()
	cmdline, err := os.ReadFile(filepath.Join(l.ImageDir(), "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	d := &libvirtxml.Domain{
		Type:       "qemu",
		Name:       name,
		Memory:     &libvirtxml.DomainMemory{Value: 128, Unit: "MiB"},
		VCPU:       &libvirtxml.DomainVCPU{Value: 1},
		OnPoweroff: "destroy",
		OnCrash:    "destroy",
		OnReboot:   "restart",
		OS: &libvirtxml.DomainOS{
			Type:    &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"},
			Kernel:  filepath.Join(l.ImageDir(), "kernel"),
			Initrd:  filepath.Join(l.ImageDir(), "initrd"),
			Cmdline: string(cmdline),
		},
		Devices: &libvirtxml.DomainDeviceList{
			Emulator: "/usr/bin/qemu-system-x86_64",
			Serials: []libvirtxml.DomainSerial{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainSerialTarget{Port: new(uint)},
				Log:    &libvirtxml.DomainChardevLog{File: console, Append: "off"},
			}},
		},
	}
	disk := filepath.Join(l.Dir(), "shared", "disks", name+".raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	d.OS.Cmdline += " dvm.ip=10.0.2.15/24 dvm.gw=10.0.2.2 dvm.hostname=" + name
	d.Devices.Interfaces = []libvirtxml.DomainInterface{{
		Source: &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}},
		Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"},
	}}
	d.Devices.Disks = []libvirtxml.DomainDisk{{
		Device: "disk",
		Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
		Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: disk}},
		Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
	}}
	x, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := conn.DomainDefineXML(x)
	if err != nil {
		t.Fatalf("define guest: %v\n%s", err, x)
	}
	t.Cleanup(func() { dom.Free() })
	return dom
}

// waitConsole waits until the console log holds every line of want, failing the
// test after a minute (TCG boots the lab guest in about 2 s).
func waitConsole(t *testing.T, path string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		b, _ := os.ReadFile(path)
		missing := slices.DeleteFunc(slices.Clone(want), func(w string) bool { return strings.Contains(string(b), w) })
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest console %s lacks %q after a minute; it holds:\n%s", path, missing, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lastTick is the number of the last "tick N" line on a lab guest's console.
func lastTick(console string) int {
	b, _ := os.ReadFile(console)
	last := 0
	for _, line := range strings.Split(string(b), "\n") {
		if _, after, ok := strings.Cut(line, "dvm-lab-guest: tick "); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(after)); err == nil {
				last = n
			}
		}
	}
	return last
}

// allStopped fails the test unless every thread of every process of node is stopped
// (or a zombie), and returns the node's processes.
func allStopped(t *testing.T, l *lab.Lab, node string) []int {
	t.Helper()
	pids, err := l.NodeProcesses(node)
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) < 5 {
		t.Fatalf("%s has %d processes (%v); want tini, libvirtd, virtlogd, virtlockd, qemu and more", node, len(pids), pids)
	}
	for _, p := range pids {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		for _, task := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", p, task.Name()))
			st := string(b)
			if i := strings.LastIndexByte(st, ')'); i >= 0 && i+2 < len(st) {
				if c := st[i+2]; c != 'T' && c != 'Z' {
					t.Errorf("thread %s of process %d (%s) of the paused %s is in state %c", task.Name(), p, procComm(p), node, c)
				}
			}
		}
	}
	slices.Sort(pids)
	return pids
}

// procState is the state letter of pid's main thread ("" when it is gone).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// killMarked kills node's processes whose command line holds mark.
func killMarked(l *lab.Lab, node, mark string) {
	pids, _ := l.NodeProcesses(node)
	for _, p := range pids {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); strings.Contains(string(b), mark) {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
}

func procComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// procStat identifies a process (PID reuse gives another start time).
func procStat(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return procComm(pid) + " " + f[19]
}

// snapshot is what of the machine a lab could leave behind. Other engineers' tests
// may run beside this one (a libvirtd of their own, namespaces, links), so what is
// compared is what the lab could have made: processes in a node's PID namespace or
// naming DIR, links called dvmlab*, mounts on the paths a node mounts privately or
// under DIR, the nftables table dvmlab, and files of the host's libvirt paths that
// name DIR or the test guest.
type snapshot struct {
	procs  map[string]string // "pid comm start" → "pidns cmdline"
	links  []string
	mounts []string
	tables []string
	files  []string
}

// labMounts are the paths a node mounts privately; a mount on one of them in the
// root namespace would be a leak.
var labMounts = []string{"/run", "/dev/shm", "/etc/hosts", "/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt", "/proc"}

func takeSnapshot(t *testing.T, dir string) snapshot {
	t.Helper()
	var s snapshot
	s.procs = map[string]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
		if st := procStat(pid); st != "" {
			s.procs[strconv.Itoa(pid)+" "+st] = ns + " " + strings.ReplaceAll(string(cmd), "\x00", " ")
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifs {
		s.links = append(s.links, i.Name)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(mi)), "\n") {
		s.mounts = append(s.mounts, strings.Fields(line)[4]) // mount point
	}
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		t.Fatalf("nft list tables: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		s.tables = append(s.tables, strings.TrimSpace(line))
	}
	if dir != "" {
		for _, root := range []string{"/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt", "/run/libvirt", "/dev/shm", "/etc/hosts"} {
			filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
				if err != nil || !fi.Mode().IsRegular() {
					return nil
				}
				if strings.Contains(p, "labguest") {
					s.files = append(s.files, p)
				} else if fi.Size() < 1<<20 {
					if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), dir) {
						s.files = append(s.files, p)
					}
				}
				return nil
			})
		}
	}
	return s
}

// compare fails t for what the lab left in after that s had not. labNS are the PID
// namespaces the lab's nodes had.
func (s snapshot) compare(t *testing.T, after snapshot, dir string, labNS map[string]bool) {
	t.Helper()
	for k, v := range after.procs {
		if _, ok := s.procs[k]; ok {
			continue
		}
		ns, cmd, _ := strings.Cut(v, " ")
		if labNS[ns] || strings.Contains(cmd, dir) {
			t.Errorf("process left after down: %s %s", k, cmd)
		}
	}
	for _, l := range after.links {
		if strings.HasPrefix(l, "dvmlab") {
			t.Errorf("link left after down: %s", l)
		}
	}
	count := func(ms []string) map[string]int {
		c := map[string]int{}
		for _, m := range ms {
			if slices.Contains(labMounts, m) || strings.HasPrefix(m, dir+"/") {
				c[m]++
			}
		}
		return c
	}
	if b, a := count(s.mounts), count(after.mounts); !reflect.DeepEqual(b, a) {
		t.Errorf("mounts on the lab's paths changed: before %v, after %v", b, a)
	}
	for _, tbl := range after.tables {
		if strings.Contains(tbl, "dvmlab") {
			t.Errorf("nftables table left after down: %s", tbl)
		}
	}
	for _, f := range after.files {
		t.Errorf("file outside DIR written by the lab: %s", f)
	}
}

// TestLabAgent brings a lab up with this module's dvmd as agent: the master on n1
// lists every node, and a restarted node's agent comes back.
func TestLabAgent(t *testing.T) {
	l := labtest.Up(t, 3)
	ctx := context.Background()
	fi, err := os.Stat(l.TokenFile())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file: %v, mode %v; want mode 0600", err, fi.Mode().Perm())
	}
	token, err := l.Token()
	if err != nil || len(token) != 64 {
		t.Errorf("token %q, %v: want 32 bytes in hex", token, err)
	}
	env, err := os.ReadFile(l.EnvFile())
	if err != nil || !strings.Contains(string(env), "DVM_TOKEN="+token+"\n") {
		t.Errorf("env file lacks the token: %q, %v", env, err)
	}
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.State != lab.StateRunning || !s.Libvirt || !s.Agent {
			t.Errorf("node %s: %+v; want running with libvirtd and agent answering", s.Name, s)
		}
	}
	if err := l.Restart(ctx, "n3"); err != nil {
		t.Fatal(err)
	}
	st, err = l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st[2].Agent {
		t.Errorf("n3 after restart: %+v; want its agent answering", st[2])
	}
}

// BenchmarkUp measures `lab up` of 3 nodes (libvirt only, image cached) and down.
func BenchmarkUp(b *testing.B) {
	labtest.Require(b)
	labtest.Lock(b)
	var up time.Duration
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		start := time.Now()
		l, err := lab.Up(context.Background(), lab.Options{Nodes: 3, NoAgent: true, Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		up += time.Since(start)
		if err := l.Down(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(up.Seconds()/float64(b.N), "s/up")
}

// TestUpFailsCleanly starts nodes with an agent that exits at once: Up must fail,
// point at the agent logs, and leave no node, bridge or nftables table behind.
func TestUpFailsCleanly(t *testing.T) {
	labtest.Require(t)
	labtest.Lock(t)
	dvmd := filepath.Join(t.TempDir(), "dvmd")
	if err := os.WriteFile(dvmd, []byte("#!/bin/sh\necho broken agent >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, err := lab.Up(context.Background(), lab.Options{Nodes: 2, Dir: dir, DvmdPath: dvmd, Timeout: 20 * time.Second})
	if err == nil {
		t.Fatal("lab up with an agent that exits at once succeeded")
	}
	t.Logf("lab up failed as it should: %v", err)
	if !strings.Contains(err.Error(), "dvmd.log") {
		t.Errorf("lab up error does not point at the agent logs: %v", err)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "nodes", "n1", "dvmd.log"))
	if !strings.Contains(string(log), "broken agent") {
		t.Errorf("n1's dvmd.log lacks the agent's output: %q", log)
	}
	l, err := lab.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if l.IsUp() {
		t.Error("a lab that failed to come up is recorded as up")
	}
	for _, n := range l.Nodes() {
		if procs, _ := l.NodeProcesses(n.Name); len(procs) != 0 || n.PID != 0 {
			t.Errorf("node %s left running: PID %d, processes %v", n.Name, n.PID, procs)
		}
	}
	if _, err := net.InterfaceByName(lab.Bridge); err == nil {
		t.Errorf("bridge %s left after a failed lab up", lab.Bridge)
	}
	if out, _ := exec.Command("nft", "list", "tables").Output(); strings.Contains(string(out), "dvmlab") {
		t.Errorf("nftables table left after a failed lab up: %s", out)
	}
}
