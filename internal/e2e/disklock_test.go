package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// The lab's QEMU takes no image lock of its own (internal/lab, node.sh): what keeps a
// second QEMU off a running guest's disk there is libvirt's lock manager alone,
// virtlockd with its lockspace on the shared storage, as on hosts whose shared storage
// QEMU's locks do not span. The helpers below read that lockspace and check that
// refusals come from it.

// leaseName is the name virtlockd gives a disk's lease in a file lockspace: the SHA-256
// of the disk's path as the domain names it (of the path, not of the file: two paths to
// one file are two leases).
func leaseName(disk string) string {
	sum := sha256.Sum256([]byte(disk))
	return hex.EncodeToString(sum[:])
}

// leaseFile is disk's lease in the lab's lockspace.
func (c *cluster) leaseFile(disk string) string {
	return filepath.Join(c.lab.Dir(), "shared", "locks", leaseName(disk))
}

// leaseHolder names the node whose virtlockd holds the lease file (a POSIX write lock on
// it, as /proc/locks shows), "" when nothing holds it. A lock held by any other process
// fails the test: only a virtlockd may hold a lease.
func (c *cluster) leaseHolder(t *testing.T, file string) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(file, &st); err != nil {
		return "" // virtlockd deletes a lease file it made once the lease is released
	}
	// /proc/locks names a file MAJOR:MINOR:INODE, the device numbers in hex.
	dev := uint64(st.Dev)
	major, minor := (dev>>8)&0xfff|(dev>>32)&^uint64(0xfff), dev&0xff|(dev>>12)&^uint64(0xff)
	id := fmt.Sprintf("%02x:%02x:%d", major, minor, st.Ino)
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// "1: POSIX  ADVISORY  WRITE 27420 fe:00:9978739 0 0"; waiters carry "->".
		if len(f) < 6 || f[1] == "->" || f[5] != id {
			continue
		}
		pid, _ := strconv.Atoi(f[4])
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		for _, n := range c.lab.Nodes() {
			pids, _ := c.lab.NodeProcesses(n.Name)
			for _, p := range pids {
				if p == pid && strings.TrimSpace(string(comm)) == "virtlockd" {
					return n.Name
				}
			}
		}
		t.Fatalf("lease %s is locked (%s) by PID %d (%s), which is no node's virtlockd", file, strings.TrimSpace(line), pid, strings.TrimSpace(string(comm)))
	}
	return ""
}

func (c *cluster) wantLeaseHolder(t *testing.T, file, node string) {
	t.Helper()
	if got := c.leaseHolder(t, file); got != node {
		t.Fatalf("lease %s held by %q, want the virtlockd of %q", filepath.Base(file), got, node)
	}
}

// connect opens node's libvirtd; the caller closes it.
func (c *cluster) connect(t *testing.T, node string) *libvirt.Connect {
	t.Helper()
	n, err := c.lab.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := libvirt.NewConnect(n.LibvirtURI)
	if err != nil {
		t.Fatalf("connect to %s at %s: %v", node, n.LibvirtURI, err)
	}
	return conn
}

// domain returns guest's domain definition as node's libvirtd has it.
func (c *cluster) domain(t *testing.T, node, guest string, flags libvirt.DomainXMLFlags) *libvirtxml.Domain {
	t.Helper()
	conn := c.connect(t, node)
	defer conn.Close()
	d, err := conn.LookupDomainByName(guest)
	if err != nil {
		t.Fatalf("%s on %s: %v", guest, node, err)
	}
	defer d.Free()
	x, err := d.GetXMLDesc(flags)
	if err != nil {
		t.Fatal(err)
	}
	var def libvirtxml.Domain
	if err := def.Unmarshal(x); err != nil {
		t.Fatal(err)
	}
	return &def
}

// diskOf is the path of guest's one disk on node.
func (c *cluster) diskOf(t *testing.T, node, guest string) string {
	t.Helper()
	def := c.domain(t, node, guest, 0)
	if def.Devices == nil || len(def.Devices.Disks) != 1 || def.Devices.Disks[0].Source == nil || def.Devices.Disks[0].Source.File == nil {
		t.Fatalf("%s on %s: want one file disk, domain has %+v", guest, node, def.Devices)
	}
	return def.Devices.Disks[0].Source.File.File
}

// wantNoImageLock checks that the QEMU running guest on node opened disk with QEMU's
// own image locking off, so that a refusal of a second writer cannot come from it.
func (c *cluster) wantNoImageLock(t *testing.T, node, guest, disk string) {
	t.Helper()
	pids, err := c.lab.NodeProcesses(node)
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(b), "\x00")
		if !strings.Contains(string(b), "guest="+guest+",") || !strings.Contains(args[0], "qemu-system") {
			continue
		}
		for _, a := range args {
			if strings.Contains(a, `"filename":"`+disk+`"`) {
				if !strings.Contains(a, `"locking":"off"`) {
					t.Fatalf("QEMU of %s on %s locks its image itself (%s): a refusal could be QEMU's, not the lock manager's", guest, node, a)
				}
				return
			}
		}
		t.Fatalf("QEMU of %s on %s (PID %d) does not open %s: %q", guest, node, pid, disk, args)
	}
	t.Fatalf("no QEMU of %s runs on %s", guest, node)
}

// startCopy defines on node to a copy of guest as node from defines it — the same disk,
// another name, no UUID and no dvm metadata, so no agent takes it for a guest of its
// own — and starts it. It returns libvirt's answer to the start. A copy that did not
// start is undefined at once; one that did runs until stopCopy or the test's end.
func (c *cluster) startCopy(t *testing.T, from, to, guest, name string) error {
	t.Helper()
	def := c.domain(t, from, guest, libvirt.DOMAIN_XML_INACTIVE)
	def.Name, def.UUID, def.Metadata = name, "", nil
	x, err := def.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	conn := c.connect(t, to)
	defer conn.Close()
	d, err := conn.DomainDefineXML(x)
	if err != nil {
		t.Fatalf("define %s on %s: %v", name, to, err)
	}
	defer d.Free()
	if err := d.Create(); err != nil {
		d.Undefine()
		return err
	}
	t.Cleanup(func() { c.stopCopy(t, to, name) })
	return nil
}

// stopCopy destroys and undefines a copy made by startCopy, if it is still there.
func (c *cluster) stopCopy(t *testing.T, node, name string) {
	n, err := c.lab.Node(node)
	if err != nil {
		return
	}
	conn, err := libvirt.NewConnect(n.LibvirtURI)
	if err != nil {
		return
	}
	defer conn.Close()
	d, err := conn.LookupDomainByName(name)
	if err != nil {
		return
	}
	defer d.Free()
	d.Destroy()
	if err := d.Undefine(); err != nil {
		t.Errorf("undefine %s on %s: %v", name, node, err)
	}
}

// wantLockRefusal checks that a start on disk was refused by virtlockd, naming the
// disk's lease, and not by anything else.
func wantLockRefusal(t *testing.T, err error, disk string) {
	t.Helper()
	if err == nil {
		t.Fatalf("a second QEMU started on %s while a running guest holds it: the lock manager did not refuse", disk)
	}
	msg := err.Error()
	want := fmt.Sprintf("Lockspace resource '%s' is locked", leaseName(disk))
	if !strings.Contains(msg, "resource busy") || !strings.Contains(msg, want) {
		t.Fatalf("second start on %s refused, but not by the lock manager (want %q): %v", disk, want, msg)
	}
	t.Logf("second start on %s refused by virtlockd: %v", disk, msg)
}

// TestDiskLeaseBlocksSecondCopy: libvirt's lock manager is the second guard. While a
// guest runs on one node, virtlockd there holds its disk's lease in the lockspace on the
// shared storage, and a QEMU on the same disk is refused on another node by that lease —
// not by QEMU's image lock, which the lab turns off. The lease follows the disk: once the
// guest stops, the other node may take it, and then the guest's own start is refused.
func TestDiskLeaseBlocksSecondCopy(t *testing.T) {
	c := upCluster(t, 2)
	c.run("vm", "create", "locked1", "--os", "linux", "--image", "lab", "--cpus", "1", "--memory", "96MiB", "--disk", "64MiB", "--failover", "restart")
	src := c.guest("locked1").Node
	var dst string
	for _, n := range c.lab.Nodes() {
		if n.Name != src {
			dst = n.Name
		}
	}
	disk := c.diskOf(t, src, "locked1")
	if want := filepath.Join(c.lab.Dir(), "shared", "disks") + "/"; !strings.HasPrefix(disk, want) {
		t.Fatalf("disk of locked1 is %s, not on the shared storage %s", disk, want)
	}
	lease := c.leaseFile(disk)
	c.wantLeaseHolder(t, lease, src)
	c.wantNoImageLock(t, src, "locked1", disk)

	wantLockRefusal(t, c.startCopy(t, src, dst, "locked1", "copy1"), disk)
	if st, ok := c.domainState(dst, "copy1"); ok {
		t.Fatalf("refused copy left behind on %s in state %v", dst, st)
	}
	c.wantLeaseHolder(t, lease, src)

	// Control: with the guest stopped its lease is free, and the same copy starts on the
	// other node, whose virtlockd then holds the lease.
	c.run("vm", "stop", "locked1")
	waitFor(t, "lease of locked1 released", 30*time.Second, func() bool { return c.leaseHolder(t, lease) == "" })
	if err := c.startCopy(t, src, dst, "locked1", "copy1"); err != nil {
		t.Fatalf("copy on %s refused once locked1 stopped: %v", dst, err)
	}
	c.wantLeaseHolder(t, lease, dst)
	c.wantNoImageLock(t, dst, "copy1", disk)

	// dvm's own start of the guest is refused the same way, and says so; once the copy
	// is gone the agent's next try starts it.
	c.run("vm", "start", "locked1", "--no-wait")
	want := fmt.Sprintf("Lockspace resource '%s' is locked", leaseName(disk))
	waitFor(t, "locked1's start refused by the lock manager", 60*time.Second, func() bool {
		return strings.Contains(c.guest("locked1").Error, want)
	})
	if st, ok := c.domainState(src, "locked1"); ok && st == libvirt.DOMAIN_RUNNING {
		t.Fatalf("locked1 runs on %s while the copy on %s holds its disk", src, dst)
	}
	t.Logf("vmctl vm show locked1: error %q", c.guest("locked1").Error)
	c.stopCopy(t, dst, "copy1")
	waitFor(t, "locked1 running again on "+src, 60*time.Second, func() bool {
		st, ok := c.domainState(src, "locked1")
		return ok && st == libvirt.DOMAIN_RUNNING
	})
	c.wantLeaseHolder(t, lease, src)
}
