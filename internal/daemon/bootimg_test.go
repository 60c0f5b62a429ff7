package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/lab"
	"github.com/dvmproject/dvm/internal/lab/imagebuild"
	"github.com/dvmproject/dvm/internal/lab/labtest"
	"github.com/dvmproject/dvm/internal/units"
)

// TestRealQEMUBootImage is issue 13's images and ISO installs, through the real
// vmctl and dvmd on this host's libvirtd under TCG:
//
//   - a bootable disk made here from Debian's packages (internal/lab/imagebuild: the lab
//     kernel, a busybox system and extlinux on an MBR-partitioned ext4 disk, as qcow2)
//     is imported with its SHA-256; three guests made from it (--image, --cloud-init)
//     boot from their disks, and each, seen on `vmctl vm console` in a terminal as a
//     person sees it, names itself after its guest (the local-hostname of the
//     cloud-init seed dvm attaches: the system's init reads it from the cidata cdrom);
//   - an install ISO made here (xorriso, isolinux) boots in a guest with an empty disk
//     (--iso), whose installer writes the system onto that disk; after vmctl vm eject
//     and Enter typed on the console, the guest reboots from its disk, and again after
//     vm stop and vm start;
//   - bad input through vmctl: a wrong checksum, a file vmctl cannot read, a delete of
//     an image in use: each a clear error and exit 1, with the images as they were.
func TestRealQEMUBootImage(t *testing.T) {
	if miss := imagebuild.Missing(); len(miss) > 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("building boot images needs: %s (scripts/test installs them)", strings.Join(miss, ", "))
		}
		t.Skipf("building boot images needs: %s", strings.Join(miss, ", "))
	}
	labtest.Require(t)
	start := time.Now()
	rn := startRealNode(t, "dvmtest-bootimg")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	kit, err := imagebuild.NewKit(ctx, lab.DefaultImageCache, filepath.Join(rn.dir, "build"))
	if err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(rn.dir, "build", "disk.raw")
	if err := kit.Disk(ctx, raw, "bootimg"); err != nil {
		t.Fatal(err)
	}
	disk, iso := filepath.Join(rn.dir, "bootimg.qcow2"), filepath.Join(rn.dir, "install.iso")
	if err := imagebuild.QCOW2(ctx, raw, disk); err != nil {
		t.Fatal(err)
	}
	if err := kit.InstallISO(ctx, iso, raw); err != nil {
		t.Fatal(err)
	}
	t.Logf("disk image and install ISO built in %s", time.Since(start).Round(time.Millisecond))

	v := newVmctl(t, rn)
	sum := fileSHA256(t, disk)
	out := v.ok("image", "import", "bootimg", disk, "--sha256", sum)
	if !strings.Contains(out, "State:     ready") || !strings.Contains(out, "SHA-256:   "+sum) || !strings.Contains(out, "Format:    qcow2") {
		t.Fatalf("image import:\n%s", out)
	}

	// Bad input before any guest: nothing changes.
	v.unchanged(func() {
		wrong := strings.Repeat("0", 64)
		st, err := os.Stat(disk)
		if err != nil {
			t.Fatal(err)
		}
		v.fails("--sha256: the "+units.FormatBytes(st.Size())+" received have SHA-256 "+sum+", not "+wrong, "image", "import", "other", disk, "--sha256", wrong)
		unreadable := filepath.Join(rn.dir, "secret.qcow2")
		if err := os.WriteFile(unreadable, []byte("QFI\xfb"), 0o600); err != nil {
			t.Fatal(err)
		}
		v.failsAs(65534, "FILE: open "+unreadable+": permission denied", "image", "import", "other", unreadable)
	})

	// Three guests from the image, each its own host.
	names := []string{rn.guest + "-a", rn.guest + "-b", rn.guest + "-c"}
	v.cleanupGuests(names...)
	for _, name := range names {
		v.ok("vm", "create", name, "--os", "linux", "--image", "bootimg", "--disk", "64MiB", "--memory", "128MiB", "--cloud-init", "--no-wait")
	}
	for _, name := range names {
		waitLong(t, name+" running", 2*time.Minute, func() bool { return guest(t, rn.client, name).State == api.GuestRunning })
	}
	booted := time.Now()
	for _, name := range names {
		con := v.console(name)
		con.prompt(name)
		con.run("echo host=$(hostname); df /", "host="+name)
		con.wait("\n/dev/vda1 ") // df's line of the root filesystem
		con.detach()
		if log := v.consoleLog(name); !strings.Contains(log, "dvm-bootimg: hostname "+name+" from local-hostname of the cloud-init seed") {
			t.Fatalf("%s's console does not say where its name came from:\n%s", name, log)
		}
	}
	t.Logf("three guests from the image booted to their hostnames, seen on their consoles, in %s", time.Since(booted).Round(time.Millisecond))

	// In use: the image stays.
	v.unchanged(func() {
		v.fails(`image "bootimg" is used by 3 guests (`+strings.Join(names, ", ")+")", "image", "delete", "bootimg")
	})
	for _, name := range names {
		v.ok("vm", "delete", name)
	}
	v.ok("image", "delete", "bootimg")
	if out := v.ok("image", "ls"); strings.Contains(out, "bootimg") {
		t.Fatalf("image ls after the delete:\n%s", out)
	}

	// Install from the ISO onto an empty disk.
	installed := time.Now()
	v.ok("image", "import", "installer", iso, "--sha256", fileSHA256(t, iso))
	name := rn.guest
	v.ok("vm", "create", name, "--os", "linux", "--iso", "installer", "--disk", "64MiB", "--memory", "128MiB", "--cloud-init")
	con := v.console(name)
	waitLong(t, "the installer done", 2*time.Minute, func() bool {
		return strings.Contains(v.consoleLog(name), "dvm-install: installed on /dev/vda")
	})
	if log := v.consoleLog(name); strings.Contains(log, "dvm-bootimg: booted") || !strings.Contains(log, "dvm-install: installing from /dev/sr0") {
		t.Fatalf("the guest did not boot the installer from its cdrom:\n%s", log)
	}
	v.ok("vm", "eject", name)
	waitLong(t, "the ISO out of the running guest", time.Minute, func() bool {
		x, err := rn.node.HV.DomainXML(name)
		return err == nil && !strings.Contains(x, filepath.Join(rn.cfg.ImagesDir, "installer"))
	})
	con.typeLine("")
	con.wait("dvm-install: rebooting")
	con.prompt(name)
	con.run("echo host=$(hostname); df /", "host="+name)
	con.wait("\n/dev/vda1 ") // df's line of the root filesystem
	con.detach()
	t.Logf("installed from the ISO and rebooted from the disk in %s", time.Since(installed).Round(time.Millisecond))

	// Longer than the node's shutdown timeout (60 s), after which it forces the guest
	// off: a guest that ignored the power button is told apart below.
	v.ok("vm", "stop", name, "--timeout", "2m")
	if log := v.consoleLog(name); !strings.Contains(log, "dvm-bootimg: power button: powering off") {
		t.Fatalf("the installed system did not power off on ACPI:\n%s", log)
	}
	v.ok("vm", "start", name)
	con = v.console(name)
	con.prompt(name)
	con.detach()
	if log := v.consoleLog(name); strings.Count(log, "dvm-bootimg: booted from /dev/vda1") != 2 || strings.Count(log, "dvm-install: installer started") != 1 {
		t.Fatalf("want one install and two boots from the disk on the console:\n%s", log)
	}
	// Ejected, the ISO is free to delete.
	v.ok("image", "delete", "installer")
	v.ok("vm", "delete", name)
	t.Logf("whole test %s", time.Since(start).Round(time.Millisecond))
}

// vmctlRun is vmctl (built without cgo, as shipped) with an operator token for a
// real node, run as a person runs it.
type vmctlRun struct {
	t   *testing.T
	rn  *realNode
	bin string
	env []string
}

func newVmctl(t *testing.T, rn *realNode) *vmctlRun {
	t.Helper()
	bin := filepath.Join(rn.dir, "vmctl")
	build := exec.Command("go", "build", "-o", bin, "github.com/dvmproject/dvm/cmd/vmctl")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/vmctl: %v\n%s", err, out)
	}
	var made api.TokenCreated
	if err := rn.client.Do(context.Background(), "POST", "/v1/tokens", api.CreateToken{Name: "ops", Scope: api.ScopeOperator}, &made); err != nil {
		t.Fatal(err)
	}
	// The CA where any user may read it: one test runs vmctl as another user.
	ca := filepath.Join(rn.dir, "ca.pem")
	b, err := os.ReadFile(rn.node.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca, b, 0o644); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "DVM_ADDR="+rn.node.Addr, "DVM_CA="+ca, "DVM_TOKEN="+made.Secret)
	return &vmctlRun{t: t, rn: rn, bin: bin, env: env}
}

// exec runs vmctl with args, as user uid when it is not 0, and returns its output,
// error output and exit code.
func (v *vmctlRun) exec(uid int, args ...string) (string, string, int) {
	v.t.Helper()
	cmd := exec.Command(v.bin, args...)
	cmd.Env = v.env
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return out.String(), errOut.String(), ee.ExitCode()
	case err != nil:
		v.t.Fatalf("vmctl %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), 0
}

// ok runs vmctl and fails the test unless it exits 0; it returns the output.
func (v *vmctlRun) ok(args ...string) string {
	v.t.Helper()
	out, errOut, code := v.exec(0, args...)
	if code != 0 {
		v.t.Fatalf("vmctl %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// fails runs vmctl and fails the test unless it exits 1 with want in its error output.
func (v *vmctlRun) fails(want string, args ...string) { v.t.Helper(); v.failsAs(0, want, args...) }

func (v *vmctlRun) failsAs(uid int, want string, args ...string) {
	v.t.Helper()
	out, errOut, code := v.exec(uid, args...)
	if code != 1 || !strings.Contains(errOut, want) {
		v.t.Fatalf("vmctl %s: exit %d, stderr %q, stdout %q; want exit 1 and %q", strings.Join(args, " "), code, errOut, out, want)
	}
	v.t.Logf("vmctl %s: exit 1: %s", strings.Join(args, " "), strings.TrimSpace(errOut))
}

// unchanged runs f and fails the test if the images (vmctl image ls, and the files
// in images_dir) are not what they were before it.
func (v *vmctlRun) unchanged(f func()) {
	v.t.Helper()
	list := func() string {
		out := v.ok("-o", "json", "image", "ls")
		var files []string
		filepath.WalkDir(v.rn.cfg.ImagesDir, func(p string, d os.DirEntry, err error) error {
			if err == nil {
				st, _ := d.Info()
				files = append(files, fmt.Sprintf("%s %d", p, st.Size()))
			}
			return nil
		})
		return out + strings.Join(files, "\n")
	}
	before := list()
	f()
	if after := list(); after != before {
		v.t.Fatalf("the images changed:\n%s\nwere:\n%s", after, before)
	}
}

// cleanupGuests deletes guests a failed test leaves behind, while the node still
// runs (cleanups run last first), and undefines what is left of them.
func (v *vmctlRun) cleanupGuests(names ...string) {
	v.t.Cleanup(func() {
		ctx := context.Background()
		for _, name := range names {
			if v.t.Failed() {
				v.t.Logf("%s's console:\n%s", name, tail(filepath.Join(v.rn.cfg.DataDir, "console", name+".log")))
			}
			v.rn.client.Do(ctx, "DELETE", "/v1/guests/"+name, nil, nil)
		}
		deadline := time.Now().Add(time.Minute)
		for _, name := range names {
			for time.Now().Before(deadline) {
				if _, err := v.rn.node.HV.State(name); errors.Is(err, hypervisor.ErrNotFound) {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			v.rn.node.HV.Undefine(name)
		}
	})
}

func (v *vmctlRun) consoleLog(name string) string {
	b, _ := os.ReadFile(filepath.Join(v.rn.cfg.DataDir, "console", name+".log"))
	return string(b)
}

// consoleSession is `vmctl vm console NAME` in a terminal (a pty), typed at as a
// person types.
type consoleSession struct {
	v      *vmctlRun
	name   string
	ptmx   *os.File
	screen *lockedBuffer
	exited chan error
}

func (v *vmctlRun) console(name string) *consoleSession {
	v.t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		v.t.Fatal(err)
	}
	cmd := exec.Command(v.bin, "vm", "console", name)
	cmd.Env = v.env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		v.t.Fatal(err)
	}
	tty.Close()
	s := &consoleSession{v: v, name: name, ptmx: ptmx, screen: &lockedBuffer{}, exited: make(chan error, 1)}
	go func() { s.exited <- cmd.Wait() }()
	go io.Copy(s.screen, ptmx)
	v.t.Cleanup(func() {
		cmd.Process.Kill()
		ptmx.Close()
	})
	s.wait("connected to " + name + " on host1; ^] detaches")
	return s
}

func (s *consoleSession) typeLine(line string) {
	if _, err := s.ptmx.Write([]byte(line + "\r")); err != nil {
		s.v.t.Fatal(err)
	}
}

func (s *consoleSession) wait(want string) {
	s.v.t.Helper()
	waitLong(s.v.t, fmt.Sprintf("%q on %s's console", want, s.name), 2*time.Minute, func() bool {
		return strings.Contains(s.screen.String(), want)
	})
}

// prompt presses Enter until the guest's shell prompt, which names its host, shows.
func (s *consoleSession) prompt(host string) {
	s.v.t.Helper()
	want := host + ":/# "
	waitLong(s.v.t, fmt.Sprintf("the prompt %q on %s's console; screen:\n%s", want, s.name, s.screen.String()), 2*time.Minute, func() bool {
		if strings.Contains(s.screen.String(), want) {
			return true
		}
		s.typeLine("")
		time.Sleep(time.Second)
		return strings.Contains(s.screen.String(), want)
	})
}

// run types a command and waits for want, which the command's output holds and the
// command as typed does not.
func (s *consoleSession) run(command, want string) {
	s.v.t.Helper()
	s.typeLine(command)
	s.wait(want)
}

// detach types ^] and waits for vmctl to exit 0.
func (s *consoleSession) detach() {
	s.v.t.Helper()
	if _, err := s.ptmx.Write([]byte{api.ConsoleDetach}); err != nil {
		s.v.t.Fatal(err)
	}
	select {
	case err := <-s.exited:
		if err != nil {
			s.v.t.Fatalf("vmctl vm console %s after ^]: %v, want exit 0; screen:\n%s", s.name, err, s.screen.String())
		}
	case <-time.After(15 * time.Second):
		s.v.t.Fatalf("vmctl vm console %s did not exit on ^]; screen:\n%s", s.name, s.screen.String())
	}
}

func fileSHA256(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
