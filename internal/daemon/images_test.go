package daemon

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
)

// TestImagesOnDevCluster: through the dev cluster's TLS API, a qcow2 made by the real
// qemu-img is imported into the shared images directory; a guest made from it runs
// with its first disk from the image and an empty second one; the image is not
// deleted while the guest exists, and is once it is gone, files and all.
func TestImagesOnDevCluster(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("no qemu-img (Debian: apt-get install qemu-utils)")
	}
	dir := t.TempDir()
	src := filepath.Join(t.TempDir(), "deb.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", src, "2G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	d, c := startDev(t, dir, 2)
	ctx := context.Background()
	im := importFile(t, c, "deb", "qcow2", src)
	if im.State != api.ImageReady || im.VirtualBytes != 2<<30 {
		t.Fatalf("imported %+v", im)
	}
	if _, err := os.Stat(filepath.Join(dir, "images", "deb", "disk.qcow2")); err != nil {
		t.Fatalf("image file: %v", err)
	}
	var g api.Guest
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "web", OS: "linux", CPUs: 1, MemoryBytes: 256 << 20,
		Image: "deb", DiskBytes: 4 << 30, ExtraDiskBytes: []int64{8 << 30}}, &g); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web running", func() bool { return guest(t, c, "web").State == api.GuestRunning })
	x, err := nodeNamed(d, g.Node).DomainXML("web")
	if err != nil {
		t.Fatal(err)
	}
	// The disks' order and files are internal/agent's TestGuestDisksFromAnImage.
	for _, want := range []string{"web.qcow2'/>", "web.disk1.qcow2'/>", "dev='vdb'"} {
		if !strings.Contains(x, want) {
			t.Fatalf("web's domain lacks %s:\n%s", want, x)
		}
	}
	err = c.Do(ctx, "DELETE", "/v1/images/deb", nil, nil)
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != 409 || !strings.Contains(se.Msg, "(web)") {
		t.Fatalf("delete of an image in use: %v", err)
	}
	if err := c.Do(ctx, "DELETE", "/v1/guests/web", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web gone", func() bool {
		err := c.Do(ctx, "GET", "/v1/guests/web", nil, nil)
		return errors.As(err, &se) && se.Code == 404
	})
	if _, err := nodeNamed(d, g.Node).State("web"); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("web's domain after the delete: %v", err)
	}
	if err := c.Do(ctx, "DELETE", "/v1/images/deb", nil, nil); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "images")); len(entries) != 0 {
		t.Fatalf("images directory after the delete: %v", entries)
	}
}

// importFile imports file as image name of format over the API.
func importFile(t *testing.T, c *api.Client, name, format, file string) api.Image {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	var im api.Image
	if err := c.Upload(context.Background(), "PUT", "/v1/images/"+name+"?format="+format, f, st.Size(), &im); err != nil {
		t.Fatal(err)
	}
	return im
}

// isoFile writes DIR/install.iso, the least an import takes for ISO 9660: a volume
// descriptor at 32 KiB.
func isoFile(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "install.iso")
	if err := os.WriteFile(p, append(append(make([]byte, 0x8000), "\x01CD001\x01"...), make([]byte, 32<<10)...), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestISOInstallOnDevCluster: an ISO imported over the dev cluster's API installs a
// guest: its domain boots the ISO, in a read-only cdrom from the shared images
// directory, before its empty disk, and it has a VNC display on loopback. vmctl vm
// eject takes the media out of the guest on its node, which keeps running; and when
// that node dies, the guest is started again on another node with no media (the
// eject is in the replicated state), booting from its disk.
func TestISOInstallOnDevCluster(t *testing.T) {
	dir := t.TempDir()
	d, c := startDev(t, dir, 2)
	ctx := context.Background()
	importFile(t, c, "dfly", "iso", isoFile(t, t.TempDir()))
	var g api.Guest
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "inst", CPUs: 1, MemoryBytes: 256 << 20, ISO: "dfly", VNC: true}, &g); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "inst running", func() bool { return guest(t, c, "inst").State == api.GuestRunning })
	media := filepath.Join(dir, "images", "dfly", "disk.iso")
	x, err := nodeNamed(d, g.Node).DomainXML("inst")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<boot dev='cdrom'/>\n    <boot dev='hd'/>", "device='cdrom'", "<source file='" + media + "'", "<readonly/>", "inst.qcow2'/>",
		"<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>"} {
		if !strings.Contains(x, want) {
			t.Fatalf("inst's domain lacks %s:\n%s", want, x)
		}
	}
	if err := c.Do(ctx, "POST", "/v1/guests/inst/eject", nil, &g); err != nil {
		t.Fatal(err)
	}
	// The test driver changes no running domain's devices (hypervisor's TestEjectISO):
	// the node ejects the media from the definition and says so in the metadata.
	waitFor(t, "the media out of inst on its node", func() bool {
		list, err := nodeNamed(d, g.Node).List()
		return err == nil && len(list) == 1 && list[0].Name == "inst" && list[0].ISO == ""
	})
	if st := guest(t, c, "inst"); st.State != api.GuestRunning || st.ISO != "" {
		t.Fatalf("inst after the eject: %+v", st)
	}
	if err := c.Do(ctx, "DELETE", "/v1/images/dfly", nil, nil); err != nil {
		t.Fatalf("delete the ejected ISO: %v", err)
	}

	victim := g.Node
	if _, err := KillDevNode(dir, victim); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "inst running on the other node", func() bool {
		got := guest(t, c, "inst")
		return got.State == api.GuestRunning && got.Node != victim && got.Node != ""
	})
	x, err = nodeNamed(d, guest(t, c, "inst").Node).DomainXML("inst")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(x, "cdrom") || !strings.Contains(x, "<boot dev='hd'/>") || !strings.Contains(x, "inst.qcow2'/>") {
		t.Fatalf("inst restarted elsewhere after its eject:\n%s", x)
	}
}

// TestCloudInitOnDevCluster: a linux guest created with a cloud-init seed on a network
// runs with the seed in its second cdrom, a cidata image on the shared disks
// directory holding its hostname, key and address; a DragonFly guest is refused with
// what it does instead, nothing created; the guest's delete removes the seed.
func TestCloudInitOnDevCluster(t *testing.T) {
	d, c := startDev(t, t.TempDir(), 2)
	ctx := context.Background()
	if err := c.Do(ctx, "POST", "/v1/networks", api.CreateNetwork{Name: "blue", VNI: 7, CIDR: "10.7.0.0/24"}, nil); err != nil {
		t.Fatal(err)
	}
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDvm you@host"
	err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "bsd", CPUs: 1, MemoryBytes: 256 << 20, CloudInit: &api.CloudInit{}}, nil)
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != 400 || se.Field != "cloud_init" || !strings.Contains(se.Msg, "DragonFly BSD has no cloud-init") {
		t.Fatalf("a DragonFly guest with a seed: %v", err)
	}
	var g api.Guest
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "web", OS: "linux", CPUs: 1, MemoryBytes: 256 << 20, Networks: []string{"blue"},
		CloudInit: &api.CloudInit{SSHKeys: []string{key}}}, &g); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web running", func() bool { return guest(t, c, "web").State == api.GuestRunning })
	x, err := nodeNamed(d, g.Node).DomainXML("web")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(x, "<source file='")
	seed, _, _ := strings.Cut(rest, "'")
	for ok && !strings.HasSuffix(seed, "web.cidata.iso") {
		_, rest, ok = strings.Cut(rest, "<source file='")
		seed, _, _ = strings.Cut(rest, "'")
	}
	if !ok || !strings.Contains(x, "dev='sdb' bus='scsi'") {
		t.Fatalf("web's domain has no seed drive:\n%s", x)
	}
	b, err := os.ReadFile(seed)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CD001", "cidata", `local-hostname: "web"`, key, `- "` + guest(t, c, "web").NICs[0].IP + `"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the seed lacks %s", want)
		}
	}
	if err := c.Do(ctx, "DELETE", "/v1/guests/web", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web's seed removed", func() bool {
		_, err := os.Stat(seed)
		return os.IsNotExist(err)
	})
}
