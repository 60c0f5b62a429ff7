package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
)

// Image files in the images directory (images_dir, shared storage on a real
// cluster): IMAGES_DIR/NAME/disk.FORMAT for an image imported through the API (vmctl
// image import), or IMAGES_DIR/NAME/{kernel,initrd,cmdline} for a kernel placed there
// by hand (the lab guest). The file's name says its format, so the assignment need not.

// useImage reads what a guest's image gives it: a kernel to boot (set in spec), or a
// base its first disk is made on (returned). An image that is not there, or that is
// install media, is an error that says which files were looked for.
func (a *Agent) useImage(g api.AssignedGuest, spec *hypervisor.GuestSpec) (*hypervisor.Base, error) {
	if g.Image == "" {
		return nil, nil
	}
	dir := filepath.Join(a.cfg.ImagesDir, g.Image)
	kernel := filepath.Join(dir, "kernel")
	if fileExists(kernel) {
		spec.Boot = &hypervisor.DirectBoot{Kernel: kernel}
		if initrd := filepath.Join(dir, "initrd"); fileExists(initrd) {
			spec.Boot.Initrd = initrd
		}
		if b, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
			spec.Boot.Cmdline = strings.TrimSpace(string(b))
		}
		return nil, nil
	}
	for _, format := range []string{api.ImageQCOW2, api.ImageRaw} {
		if p := filepath.Join(dir, "disk."+format); fileExists(p) {
			return &hypervisor.Base{Path: p, Format: format}, nil
		}
	}
	if iso := filepath.Join(dir, "disk."+api.ImageISO); fileExists(iso) {
		return nil, fmt.Errorf("image %q is install media (%s): a guest's disk is made from a qcow2 or raw image", g.Image, iso)
	}
	return nil, fmt.Errorf("image %q not found on node %s: expected %s, or disk.qcow2 or disk.raw, in %s (is images_dir the shared images directory?)",
		g.Image, a.cfg.Name, kernel, dir)
}

// attachDisks makes a guest's disks, or finds them made (on another node, before the
// guest was restarted here), and puts them in its spec: the first on base when the
// guest's image is a disk image (of the guest's size, or the default), the extra ones
// empty.
func (a *Agent) attachDisks(spec *hypervisor.GuestSpec, g api.AssignedGuest, base *hypervisor.Base) error {
	if g.DiskBytes == 0 && base == nil {
		return nil
	}
	size := g.DiskBytes
	if size == 0 {
		size = api.DefaultDisk
	}
	for i, size := range append([]int64{size}, g.ExtraDiskBytes...) {
		b := base
		if i > 0 {
			b = nil
		}
		path, err := a.cfg.Node.EnsureDisk(g.Name, i, size, b)
		if err != nil {
			return err
		}
		if i == 0 {
			spec.Disk = &hypervisor.Disk{Path: path, Format: "qcow2"}
		} else {
			spec.ExtraDisks = append(spec.ExtraDisks, hypervisor.Disk{Path: path, Format: "qcow2"})
		}
	}
	return nil
}

// attachISO puts a guest's install media in its spec: the image's file in the images
// directory, which every node sees at the same path, so a guest moved or restarted
// elsewhere before its media was ejected finds it there too.
func (a *Agent) attachISO(spec *hypervisor.GuestSpec, g api.AssignedGuest) error {
	if g.ISO == "" {
		return nil
	}
	p := filepath.Join(a.cfg.ImagesDir, g.ISO, "disk."+api.ImageISO)
	if !fileExists(p) {
		return fmt.Errorf("install media %q not found on node %s: expected %s (is images_dir the shared images directory?)", g.ISO, a.cfg.Name, p)
	}
	spec.ISO = p
	return nil
}

// deleteDisks removes a deleted guest's disks, unless it was deleted keeping them.
func (a *Agent) deleteDisks(g api.AssignedGuest) error {
	if g.KeepDisks {
		a.cfg.Log.Info("guest deleted, its disks kept", "guest", g.Name)
		return nil
	}
	return a.cfg.Node.DeleteDisks(g.Name)
}
