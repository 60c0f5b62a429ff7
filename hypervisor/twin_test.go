package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func twinTestSpec(role TwinRole) TwinSpec {
	return TwinSpec{
		Guest: GuestSpec{
			Name: "web", OS: "linux", CPUs: 1, MemoryBytes: 128 << 20,
			Disk:       &Disk{Path: "/srv/disks/web-" + string(role) + ".qcow2", Format: "qcow2"},
			Boot:       &DirectBoot{Kernel: "/srv/k", Initrd: "/srv/i", Cmdline: "console=ttyS0"},
			NICs:       []NIC{{Bridge: "br0", MAC: "52:54:00:00:00:01"}},
			ConsoleLog: "/var/log/dvm/web.console",
		},
		Role:   role,
		Accel:  AccelTCG,
		RunDir: "/run/dvm/twins/web-" + string(role),
		Links:  TwinLinks{Mirror: "10.0.0.1:9003", Compare: "10.0.0.1:9004", Migrate: "10.0.0.2:9998", NBD: "10.0.0.2:9999"},
	}
}

// argValues returns the values of every occurrence of flag in args.
func argValues(args []string, flag string) []string {
	var v []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			v = append(v, args[i+1])
		}
	}
	return v
}

// Migration (and so COLO) needs the same guest devices on both halves: only the
// backends differ.
func TestTwinCommandSameDevicesOnBothHalves(t *testing.T) {
	p, err := TwinCommand(twinTestSpec(TwinPrimary), 3)
	if err != nil {
		t.Fatal(err)
	}
	s, err := TwinCommand(twinTestSpec(TwinSecondary), 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"-device", "-machine", "-m", "-smp", "-kernel", "-initrd", "-append", "-serial", "-netdev"} {
		if pv, sv := argValues(p, flag), argValues(s, flag); !slices.Equal(pv, sv) {
			t.Errorf("%s differs: primary %q, secondary %q", flag, pv, sv)
		}
	}
	if !slices.Contains(argValues(p, "-device"), "virtio-blk-pci,id=disk0,drive=colo-disk0") {
		t.Errorf("primary devices %q: no virtio disk on colo-disk0", argValues(p, "-device"))
	}
}

func TestTwinCommandHalves(t *testing.T) {
	p, _ := TwinCommand(twinTestSpec(TwinPrimary), 3)
	s, _ := TwinCommand(twinTestSpec(TwinSecondary), 3)
	pj, sj := strings.Join(p, " "), strings.Join(s, " ")
	for _, want := range []string{
		"driver=quorum,read-pattern=fifo,vote-threshold=1,children.0.file.filename=/srv/disks/web-primary.qcow2",
		"socket,id=mirror0,host=10.0.0.1,port=9003,server=on,wait=off",
		"socket,id=compare1,host=10.0.0.1,port=9004,server=on,wait=off",
		"socket,id=compare0-0,path=/run/dvm/twins/web-primary/compare0.sock",
		"-chardev file,id=console0,path=/var/log/dvm/web.console,append=on",
		"tap,id=hn0,fd=3,vhost=off",
	} {
		if !strings.Contains(pj, want) {
			t.Errorf("primary command line lacks %q:\n%s", want, pj)
		}
	}
	for _, want := range []string{
		"if=none,id=parent0,driver=qcow2,file.filename=/srv/disks/web-secondary.qcow2",
		"driver=replication,mode=secondary,top-id=colo-disk0,file.driver=qcow2,file.file.filename=/run/dvm/twins/web-secondary/secondary-active.qcow2",
		"file.backing.backing=parent0",
		"children.0=childs0",
		"socket,id=red0,host=10.0.0.1,port=9003,reconnect=1",
		"filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0",
		"filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1",
		"filter-rewriter,id=rew0,netdev=hn0,queue=all",
		"-incoming tcp:10.0.0.2:9998",
	} {
		if !strings.Contains(sj, want) {
			t.Errorf("secondary command line lacks %q:\n%s", want, sj)
		}
	}
	if strings.Contains(pj, "-incoming") || strings.Contains(sj, "mirror0") {
		t.Errorf("halves mixed up:\nprimary %s\nsecondary %s", pj, sj)
	}
	// A comma in a path is doubled for QEMU's option parser.
	c := twinTestSpec(TwinPrimary)
	c.Guest.ConsoleLog = "/var/log/a,b"
	args, _ := TwinCommand(c, 3)
	if !slices.Contains(argValues(args, "-chardev"), "file,id=console0,path=/var/log/a,,b,append=on") {
		t.Errorf("comma not escaped: %q", argValues(args, "-chardev"))
	}
}

func TestTwinSpecRefusals(t *testing.T) {
	cases := []struct {
		name        string
		edit        func(*TwinSpec)
		unsupported bool
		want        string
	}{
		{"two NICs", func(s *TwinSpec) { s.Guest.NICs = append(s.Guest.NICs, NIC{Bridge: "br1"}) }, true, "has 2 NICs"},
		{"vmdk disk", func(s *TwinSpec) { s.Guest.Disk.Format = "vmdk" }, true, `disk format "vmdk"`},
		{"no role", func(s *TwinSpec) { s.Role = "" }, false, "role"},
		{"test driver", func(s *TwinSpec) { s.Accel = AccelTest }, false, "accelerator"},
		{"relative run dir", func(s *TwinSpec) { s.RunDir = "run" }, false, "absolute path"},
		{"long run dir", func(s *TwinSpec) { s.RunDir = "/" + strings.Repeat("d", 100) }, false, "too long"},
		{"bad migrate link", func(s *TwinSpec) { s.Links.Migrate = "10.0.0.2" }, false, "migrate link"},
		{"bad port", func(s *TwinSpec) { s.Links.NBD = "10.0.0.2:nbd" }, false, "nbd link"},
		{"no compare link", func(s *TwinSpec) { s.Links.Compare = "" }, false, "compare link"},
		{"no cpus", func(s *TwinSpec) { s.Guest.CPUs = 0 }, false, "cpus"},
		{"unknown os", func(s *TwinSpec) { s.Guest.OS = "plan9" }, false, "unknown os"},
	}
	for _, c := range cases {
		s := twinTestSpec(TwinPrimary)
		s.Guest.Disk = &Disk{Path: "/d", Format: "qcow2"}
		c.edit(&s)
		err := s.Validate()
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || errors.Is(err, ErrTwinUnsupported) != c.unsupported {
			t.Errorf("%s: error %q: want it to say %q (unsupported %v)", c.name, err, c.want, c.unsupported)
		}
		if _, err := TwinCommand(s, 3); err == nil {
			t.Errorf("%s: TwinCommand accepted what Validate refused", c.name)
		}
	}
	// A guest with neither NIC nor disk needs only the migration link.
	s := twinTestSpec(TwinSecondary)
	s.Guest.Disk, s.Guest.NICs, s.Links = nil, nil, TwinLinks{Migrate: "127.0.0.1:1"}
	if err := s.Validate(); err != nil {
		t.Errorf("diskless guest without NIC: %v", err)
	}
}

// The checks on the pair and the roles come before any QMP command, so halves that
// were never started show them.
func TestTwinOperationRefusals(t *testing.T) {
	p := &Twin{spec: twinTestSpec(TwinPrimary), role: TwinPrimary, state: TwinUnprotected}
	s := &Twin{spec: twinTestSpec(TwinSecondary), role: TwinSecondary, state: TwinUnprotected}
	s.spec.Guest.Disk.Path = p.spec.Guest.Disk.Path
	if err := Pair(context.Background(), p, s); !errors.Is(err, ErrTwinUnsupported) || !strings.Contains(err.Error(), "own copy of the disk") {
		t.Errorf("pair on one disk: %v", err)
	}
	other := &Twin{spec: twinTestSpec(TwinSecondary), role: TwinSecondary, state: TwinUnprotected}
	other.spec.Guest.Name = "db"
	if err := Pair(context.Background(), p, other); !errors.Is(err, ErrTwinState) {
		t.Errorf("pair of two guests: %v", err)
	}
	if err := p.Failover(context.Background()); !errors.Is(err, ErrTwinState) {
		t.Errorf("failover on a primary: %v", err)
	}
	if err := s.PrimaryAlone(context.Background()); !errors.Is(err, ErrTwinState) {
		t.Errorf("primary alone on a secondary: %v", err)
	}
	if err := s.Protect(context.Background(), s.spec.Links); !errors.Is(err, ErrTwinState) {
		t.Errorf("protect on a secondary: %v", err)
	}
	if err := p.PrepareSecondary(context.Background()); !errors.Is(err, ErrTwinState) {
		t.Errorf("prepare on a primary: %v", err)
	}
	if _, err := StartSecondary(context.Background(), p.spec); err == nil || !strings.Contains(err.Error(), `role "primary"`) {
		t.Errorf("start secondary from a primary's spec: %v", err)
	}
}

func TestTwinTapName(t *testing.T) {
	p, s := twinTestSpec(TwinPrimary), twinTestSpec(TwinSecondary)
	s2 := s
	s2.RunDir += "2"
	other := p
	other.Guest.Name = "db"
	names := map[string]bool{}
	for _, spec := range []TwinSpec{p, s, s2, other} {
		n := TwinTapName(spec)
		if len(n) > 15 || names[n] {
			t.Errorf("tap name %q: want one per half, at most 15 bytes", n)
		}
		names[n] = true
	}
}

// requireQEMU fails in CI and skips elsewhere when this machine cannot run QEMU tests.
func requireQEMU(t testing.TB) {
	t.Helper()
	why := ""
	if _, err := exec.LookPath(DefaultQEMU); err != nil {
		why = "no " + DefaultQEMU + " (apt-get install qemu-system-x86 qemu-utils)"
	} else if _, err := exec.LookPath("qemu-img"); err != nil {
		why = "no qemu-img (apt-get install qemu-utils)"
	} else if os.Geteuid() != 0 {
		why = "not root: twin tests create taps and a bridge"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
}

func TestProbeTwinSupport(t *testing.T) {
	requireQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sup, err := ProbeTwinSupport(ctx, "", AccelTCG)
	if missing := sup.Missing(); len(missing) > 0 {
		t.Fatalf("this machine's QEMU %s lacks %v (Debian's qemu-system-x86 has every part)", sup.Version, missing)
	}
	switch {
	case err == nil && sup.Checkpoints:
		t.Logf("QEMU %s has all a twin needs and its COLO checkpoints work", sup.Version)
	case errors.Is(err, ErrTwinUnsupported) && strings.Contains(err.Error(), "frozen") && !sup.Checkpoints:
		t.Logf("QEMU %s has every part, but: %v", sup.Version, err)
	default:
		t.Fatalf("probe of this machine's QEMU: %+v, %v: want a working pair or a refusal that says why", sup, err)
	}

	// The same QEMU's answers with parts taken out: the refusal names each of them.
	_, _, types, schema, err := queryQEMUFeatures(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	types = slices.DeleteFunc(types, func(s string) bool { return s == "colo-compare" })
	for i, e := range schema {
		if e.MetaType == "enum" && slices.Contains(e.Values, "quorum") {
			schema[i].Values = slices.DeleteFunc(slices.Clone(e.Values), func(s string) bool { return s == "replication" })
			schema[i].Members = nil
		}
		if e.MetaType == "command" && e.Name == "x-colo-lost-heartbeat" {
			schema[i].Name = "renamed"
		}
	}
	err = CheckTwinSupport(types, schema).Err("qemu-test")
	if !errors.Is(err, ErrTwinUnsupported) {
		t.Fatalf("QEMU without COLO parts: %v", err)
	}
	for _, want := range []string{"object colo-compare", "block driver replication", "QMP command x-colo-lost-heartbeat"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not name %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "quorum") || strings.Contains(err.Error(), "filter-mirror") {
		t.Errorf("refusal %q names parts that are there", err)
	}

	if _, err := ProbeTwinSupport(ctx, "/bin/true", AccelTCG); err == nil || !strings.Contains(err.Error(), "not a QEMU") {
		t.Errorf("probe of /bin/true: %v", err)
	}
	if _, err := ProbeTwinSupport(ctx, "/nonexistent/qemu", AccelTCG); err == nil || !strings.Contains(err.Error(), "install") {
		t.Errorf("probe of a missing binary: %v", err)
	}
}

// readTrace turns QEMU's COLO trace lines into checkpoint counts and durations, and
// notes a primary that did not run again after a checkpoint.
func TestTwinReadTrace(t *testing.T) {
	feed := func(lines []string) *Twin {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		tw := &Twin{}
		done := make(chan struct{})
		go func() { tw.readTrace(r); close(done) }()
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
		w.Close()
		<-done
		return tw
	}
	one := []string{
		"100@1795601054.651555:colo_receive_message Receive 'checkpoint-ready' message",
		"100@1795601054.654847:colo_vm_state_change Change 'stop' => 'run'",
		"100@1795601055.654320:colo_send_message Send 'checkpoint-request' message",
		"100@1795601055.654330:colo_receive_message Receive 'checkpoint-reply' message",
		"100@1795601055.654397:colo_vm_state_change Change 'run' => 'stop'",
		"something else QEMU logs",
		"100@1795601055.738869:colo_receive_message Receive 'vmstate-loaded' message",
		"100@1795601055.740000:colo_vm_state_change Change 'stop' => 'run'",
	}
	tw := feed(one)
	if tw.checkpoints != 1 || tw.lastCheckpoint != 84549*time.Microsecond || tw.awaitResume {
		t.Errorf("one checkpoint: count %d, took %s, awaiting resume %v: want 1, 84.549ms, false", tw.checkpoints, tw.lastCheckpoint, tw.awaitResume)
	}
	// Lines without timestamps (QEMU without -msg timestamp=on) are timed on arrival.
	tw = feed(append(one, "colo_send_message Send 'checkpoint-request' message", "colo_receive_message Receive 'vmstate-loaded' message"))
	if tw.checkpoints != 2 || !tw.awaitResume || tw.lastCheckpoint < 0 {
		t.Fatalf("two checkpoints: count %d, took %s, awaiting resume %v: want 2, ≥0, true", tw.checkpoints, tw.lastCheckpoint, tw.awaitResume)
	}
	// A secondary's checkpoint ends with its replica already running again.
	tw = feed([]string{
		"200@1795601055.654102:colo_receive_message Receive 'checkpoint-request' message",
		"200@1795601055.654274:colo_vm_state_change Change 'run' => 'stop'",
		"200@1795601055.706321:colo_vm_state_change Change 'stop' => 'run'",
		"200@1795601055.706361:colo_send_message Send 'vmstate-loaded' message",
	})
	if tw.checkpoints != 1 || tw.lastCheckpoint != 52259*time.Microsecond || tw.awaitResume {
		t.Errorf("secondary checkpoint: count %d, took %s, awaiting resume %v: want 1, 52.259ms, false", tw.checkpoints, tw.lastCheckpoint, tw.awaitResume)
	}
	tw.awaitResume = true
	tw.checkpointAt = time.Now().Add(-2 * twinResumeLimit)
	if _, stuck := tw.stuckSince(); !stuck {
		t.Error("a primary not resumed long after its checkpoint is not reported stuck")
	}
	tw.awaitResume = false
	if _, stuck := tw.stuckSince(); stuck {
		t.Error("a resumed primary is reported stuck")
	}
}
