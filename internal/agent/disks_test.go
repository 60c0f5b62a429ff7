package agent

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"libvirt.org/go/libvirtxml"
)

// TestGuestDisksFromAnImage: a guest of a disk image gets its first disk as an overlay
// on the image file (the format its name says) and its extra disks empty, in that
// order on its bus; install media or a missing image fail the define with the files
// looked for.
func TestGuestDisksFromAnImage(t *testing.T) {
	dir := t.TempDir()
	node := testNode(t, dir)
	if err := node.EnsureDiskPool(filepath.Join(dir, "disks")); err != nil {
		t.Fatal(err)
	}
	images := imagesDir(t, dir, map[string]string{"debian": "disk.raw", "bsd": "disk.qcow2", "media": "disk.iso"})
	a := &Agent{cfg: Config{Name: "n1", Node: node, ImagesDir: images, Log: slog.New(slog.DiscardHandler)}}
	guest := func(name, image string, disk int64, extra ...int64) api.AssignedGuest {
		return api.AssignedGuest{Name: name, UUID: "5c338286-c360-4b65-a1c1-a97ca933a4a" + name[len(name)-1:], Image: image, CPUs: 1, MemoryBytes: 64 << 20,
			Failover: api.FailoverNone, DiskBytes: disk, ExtraDiskBytes: extra}
	}
	if err := a.define(guest("web1", "debian", 30<<30, 50<<30)); err != nil {
		t.Fatal(err)
	}
	var disks []string
	for _, disk := range diskFiles(t, node, "web1") {
		disks = append(disks, disk.Target.Dev+"="+filepath.Base(disk.Source.File.File))
	}
	if strings.Join(disks, " ") != "vda=web1.qcow2 vdb=web1.disk1.qcow2" {
		t.Fatalf("disks %v", disks)
	}
	if err := a.define(guest("web2", "bsd", 20<<30)); err != nil {
		t.Fatal(err)
	}
	for image, want := range map[string]string{"media": "is install media", "gone": "disk.qcow2 or disk.raw"} {
		if err := a.define(guest("bad3", image, 20<<30)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("define on image %s: %v, want %q", image, err, want)
		}
	}

	// What the volumes are made of, and which DeleteDisks removes, is
	// hypervisor's TestDisksFromAnImage; here, that the assignment's flag is obeyed.
	kept := guest("web1", "debian", 30<<30, 50<<30)
	kept.KeepDisks = true
	if err := a.deleteDisks(kept); err != nil {
		t.Fatal(err)
	}
	if err := a.deleteDisks(guest("web1", "debian", 30<<30, 50<<30)); err != nil {
		t.Fatal(err)
	}
}

// diskFiles are the disks of guest's domain as node defined it.
func diskFiles(t *testing.T, node *hypervisor.Node, guest string) []libvirtxml.DomainDisk {
	t.Helper()
	x, err := node.DomainXML(guest)
	if err != nil {
		t.Fatal(err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(x); err != nil {
		t.Fatal(err)
	}
	return d.Devices.Disks
}
