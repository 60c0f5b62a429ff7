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
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	var im api.Image
	if err := c.Upload(ctx, "PUT", "/v1/images/deb?format=qcow2", f, st.Size(), &im); err != nil {
		t.Fatal(err)
	}
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
