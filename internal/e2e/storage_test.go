package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/lab"
	"github.com/dvmproject/dvm/internal/lab/labtest"
)

// TestStoragePools runs a 3-node lab with the lab's one-node Ceph (vmctl lab up
// --ceph) and the storage pools every node of such a lab names: local (kind dir),
// shared (kind shared) and ceph (kind rbd). A restart guest on the ceph pool counts
// its boots on its disk (the lab guest's disk.sh); its node is killed, and it runs
// again on another node with the count it wrote there. Ceph that cannot start fails
// the test (the lab cannot come up); it is never skipped in CI.
func TestStoragePools(t *testing.T) {
	labtest.Require(t)
	if err := lab.CheckCephPackages(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the lab's Ceph cannot run on this CI machine: %v", err)
		}
		t.Skipf("no Ceph on this machine (set CI=true to make this a failure): %v", err)
	}
	dvmd, vmctl := labtest.Build(t)
	start := time.Now()
	l := labtest.Start(t, lab.Options{Nodes: 3, DvmdPath: dvmd, Ceph: true})
	t.Logf("lab with Ceph up in %.1fs", time.Since(start).Seconds())
	c := newCluster(t, l, vmctl)
	waitPools(t, func() string { return c.run("-o", "json", "node", "ls") }, 3, map[string]string{"ceph": "rbd", "shared": "shared", "local": "dir"})

	t.Run("bad input", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--pool", "nope"}, `no node has storage pool "nope": the nodes have ceph, local, shared`},
			{[]string{"--pool", "local"}, `storage pool "local" is a directory of each node's own (kind dir): a restart guest on it could not come back`},
			{[]string{"--pool", "local", "--failover", "restart"}, "give --failover none, or a pool of kind shared or rbd"},
			{[]string{"--pool", "Bad_Name"}, "pool"},
		} {
			args := append([]string{"vm", "create", "bad1", "--os", "linux", "--image", "lab", "--memory", "128MiB", "--disk", "64MiB"}, tc.args...)
			out, code := c.try(args...)
			if code != 1 || !strings.Contains(out, tc.want) {
				t.Errorf("vmctl %s: exit %d, want 1 and %q in:\n%s", strings.Join(args, " "), code, tc.want, out)
			}
		}
		if out, code := c.try("vm", "show", "bad1"); code == 0 {
			t.Fatalf("a refused create left guest bad1:\n%s", out)
		}
		if imgs := cephImages(t, l); len(imgs) != 0 {
			t.Fatalf("refused creates left RBD images: %v", imgs)
		}
	})

	t.Run("dir and shared", func(t *testing.T) {
		c.run("vm", "create", "loc1", "--os", "linux", "--image", "lab", "--memory", "128MiB", "--disk", "64MiB", "--pool", "local", "--failover", "none")
		c.run("vm", "create", "sh1", "--os", "linux", "--image", "lab", "--memory", "128MiB", "--disk", "64MiB", "--pool", "shared")
		waitFor(t, "loc1 and sh1 running", 2*time.Minute, func() bool { return c.allRunning([]string{"loc1", "sh1"}) })
		loc := c.guest("loc1")
		if loc.Pool != "local" {
			t.Fatalf("loc1 shows storage pool %q, want local", loc.Pool)
		}
		// Each disk is in its pool's directory (the lab's local pool is
		// DIR/nodes/NODE/pool-local), and not in disks_dir.
		for _, want := range []string{
			filepath.Join(l.Dir(), "nodes", loc.Node, "pool-local", "loc1.qcow2"),
			filepath.Join(l.Dir(), "shared", "pool-shared", "sh1.qcow2"),
		} {
			if _, err := os.Stat(want); err != nil {
				t.Fatalf("disk not in its pool: %v", err)
			}
		}
		if disks, _ := filepath.Glob(filepath.Join(l.Dir(), "shared", "disks", "*.qcow2")); len(disks) != 0 {
			t.Fatalf("disks_dir holds %v: pool guests' disks belong in their pools", disks)
		}
		// A guest on a directory of its node's own cannot move.
		other := "n1"
		if loc.Node == "n1" {
			other = "n2"
		}
		if out, code := c.try("vm", "migrate", "loc1", "--to", other); code == 0 || !strings.Contains(out, "kind dir") {
			t.Fatalf("vm migrate of a guest on a dir pool: exit %d, want a refusal naming kind dir:\n%s", code, out)
		}
		c.run("vm", "delete", "loc1")
		c.run("vm", "delete", "sh1")
		waitFor(t, "the deleted guests' disks gone from their pools", time.Minute, func() bool {
			_, e1 := os.Stat(filepath.Join(l.Dir(), "nodes", loc.Node, "pool-local", "loc1.qcow2"))
			_, e2 := os.Stat(filepath.Join(l.Dir(), "shared", "pool-shared", "sh1.qcow2"))
			return os.IsNotExist(e1) && os.IsNotExist(e2)
		})
	})

	t.Run("rbd from an image", func(t *testing.T) {
		// A qcow2 image placed by hand in images_dir, its first bytes a marker: the
		// guest's disk on Ceph is a copy of it (qemu-img convert), grown to --disk.
		dir := filepath.Join(l.Dir(), "shared", "images", "tiny")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		raw := filepath.Join(t.TempDir(), "tiny.raw")
		if err := os.WriteFile(raw, append([]byte("dvm-image-marker\n"), make([]byte, 4<<20)...), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, filepath.Join(dir, "disk.qcow2")).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert: %v %s", err, out)
		}
		c.run("vm", "create", "img1", "--os", "linux", "--image", "tiny", "--memory", "128MiB", "--disk", "64MiB",
			"--pool", "ceph", "--failover", "none")
		waitFor(t, "img1 running", 2*time.Minute, func() bool { return c.guest("img1").State == api.GuestRunning })
		if got := cephSector(t, l, "img1.disk0"); got != "dvm-image-marker" {
			t.Fatalf("img1.disk0 begins %q, want the image's marker", got)
		}
		var info struct {
			Size int64 `json:"size"`
		}
		if err := json.Unmarshal(rbdAdmin(t, l, "info", "--format", "json", lab.CephPool+"/img1.disk0"), &info); err != nil || info.Size != 64<<20 {
			t.Fatalf("img1.disk0 is %d bytes (%v), want 64 MiB", info.Size, err)
		}
		if imgs := cephImages(t, l); strings.Join(imgs, " ") != "img1.disk0" {
			t.Fatalf("the Ceph pool holds %v, want img1.disk0 alone (no unfinished copy)", imgs)
		}
		c.run("vm", "delete", "img1")
		waitFor(t, "img1's image gone from the Ceph pool", time.Minute, func() bool { return len(cephImages(t, l)) == 0 })
	})

	t.Run("rbd restart", func(t *testing.T) {
		// The test kills the guest's node, which must not be n1: n1 runs the master,
		// whose loss is another test's business. The guest boots (and writes) where
		// it is killed, so that its QEMU holds the image's exclusive lock then.
		c.run("node", "drain", "n1")
		c.run("vm", "create", "rbd1", "--os", "linux", "--image", "lab", "--memory", "128MiB", "--disk", "64MiB",
			"--pool", "ceph", "--failover", "restart")
		c.run("node", "undrain", "n1")
		waitFor(t, "rbd1 running", 2*time.Minute, func() bool { return c.guest("rbd1").State == api.GuestRunning })
		first := c.guest("rbd1").Node
		if first == "n1" {
			t.Fatalf("rbd1 was placed on n1, which was drained")
		}
		waitConsole(t, consolePath(l, first, "rbd1"), "dvm-lab-guest: disk: boots 1 written", 60*time.Second)
		if got := cephSector(t, l, "rbd1.disk0"); got != "dvm-lab-disk boots 1" {
			t.Fatalf("rbd1.disk0 begins %q after its first boot, want the count 1", got)
		}
		// Its disk is a network disk on the lab's Ceph, through QEMU's librbd.
		def := c.domain(t, first, "rbd1", 0)
		d := def.Devices.Disks[0]
		if d.Source == nil || d.Source.Network == nil || d.Source.Network.Protocol != "rbd" ||
			d.Source.Network.Name != lab.CephPool+"/rbd1.disk0" || d.Source.Network.Auth == nil {
			t.Fatalf("rbd1's first disk on %s is not the rbd image %s/rbd1.disk0 with cephx: %+v", first, lab.CephPool, d.Source)
		}

		c.run("lab", "kill", first, "--dir", l.Dir())
		t.Logf("killed %s, rbd1's node", first)
		var again string
		waitFor(t, "rbd1 running on another node", 2*time.Minute, func() bool {
			g := c.guest("rbd1")
			again = g.Node
			return g.State == api.GuestRunning && g.Node != first && g.Node != ""
		})
		// It found its disk as it left it: one boot counted, then its second written.
		waitConsole(t, consolePath(l, again, "rbd1"), "dvm-lab-guest: disk: boots 2 written", 60*time.Second)
		if b := readFile(consolePath(l, again, "rbd1")); !bytes.Contains(b, []byte("dvm-lab-guest: disk: boots before this one: 1")) {
			t.Fatalf("rbd1 on %s did not find the count its first boot wrote; console:\n%s", again, b)
		}
		if got := cephSector(t, l, "rbd1.disk0"); got != "dvm-lab-disk boots 2" {
			t.Fatalf("rbd1.disk0 begins %q after its restart on %s, want the count 2", got, again)
		}
		// The new QEMU's librbd took the image's exclusive lock from the dead one's
		// client and blocklisted it (rbd_blocklist_on_break_lock): had that QEMU
		// lived on, cut off, the OSDs would refuse its writes from then on.
		dead, err := l.Node(first)
		if err != nil {
			t.Fatal(err)
		}
		if bl := cephAdmin(t, l, "osd", "blocklist", "ls"); !strings.Contains(bl, dead.Addr+":0/") {
			t.Fatalf("the Ceph blocklist does not name %s's client (%s):\n%s", first, dead.Addr, bl)
		}

		// With n2 lost, the write may be acknowledged before enough management
		// nodes hold it (exit 3): the delete is applied either way.
		if out, code := c.try("vm", "delete", "rbd1"); code != 0 && code != 3 {
			t.Fatalf("vmctl vm delete rbd1: exit %d\n%s", code, out)
		}
		// A client that died with its node holds its watch on the image until the
		// OSD's watch timeout (30 s): rbd rm refuses until then, and the node retries.
		waitFor(t, "rbd1's image gone from the Ceph pool", 2*time.Minute, func() bool { return len(cephImages(t, l)) == 0 })
	})
}

// waitConsole waits for line in a guest's console log.
func waitConsole(t *testing.T, path, line string, limit time.Duration) {
	t.Helper()
	waitFor(t, line+" in "+path, limit, func() bool { return bytes.Contains(readFile(path), []byte(line)) })
}

// rbdAdmin runs the rbd command on the lab's Ceph as client.admin, from the host.
func rbdAdmin(t *testing.T, l *lab.Lab, args ...string) []byte {
	t.Helper()
	full := append([]string{"-c", lab.CephConf(l.Dir()), "-n", "client.admin", "--keyring", lab.CephAdminKeyring(l.Dir())}, args...)
	out, err := exec.Command("rbd", full...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("rbd %s: %v %s", strings.Join(args, " "), err, stderr)
	}
	return out
}

// cephAdmin runs the ceph command on the lab's Ceph as client.admin, from the host.
func cephAdmin(t *testing.T, l *lab.Lab, args ...string) string {
	t.Helper()
	full := append([]string{"-c", lab.CephConf(l.Dir()), "-n", "client.admin", "--keyring", lab.CephAdminKeyring(l.Dir())}, args...)
	out, err := exec.Command("ceph", full...).CombinedOutput()
	if err != nil {
		t.Fatalf("ceph %s: %v %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// cephImages lists the images of the lab's Ceph pool.
func cephImages(t *testing.T, l *lab.Lab) []string {
	t.Helper()
	return strings.Fields(string(rbdAdmin(t, l, "ls", lab.CephPool)))
}

// cephSector is the first line of an image's first sector, read from the host.
func cephSector(t *testing.T, l *lab.Lab, image string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), image)
	rbdAdmin(t, l, "export", "--no-progress", lab.CephPool+"/"+image, f)
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 512 {
		b = b[:512]
	}
	line, _, _ := bytes.Cut(bytes.TrimRight(b, "\x00"), []byte("\n"))
	return string(line)
}
