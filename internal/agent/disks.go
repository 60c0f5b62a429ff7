package agent

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/atomicfile"
	"github.com/dvmproject/dvm/internal/cloudinit"
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
		if g.Pool != "" {
			d, err := a.ensurePoolDisk(g, i, size, b)
			if err != nil {
				return err
			}
			if i == 0 {
				spec.Disk = &d
			} else {
				spec.ExtraDisks = append(spec.ExtraDisks, d)
			}
			continue
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

// seedFile is where a guest's cloud-init seed is: beside its disks, on the shared
// storage, so that the node a guest is live-migrated to finds it where QEMU has it open.
func (a *Agent) seedFile(guest string) string {
	return filepath.Join(a.cfg.DisksDir, guest+".cidata.iso")
}

// attachSeed makes a guest's cloud-init seed, when it has one, and puts it in its
// spec. The seed is made anew at each define (the same files make the same bytes), so a
// node never needs one made by another.
func (a *Agent) attachSeed(spec *hypervisor.GuestSpec, g api.AssignedGuest) error {
	ci := g.CloudInit
	if ci == nil {
		return nil
	}
	if a.cfg.DisksDir == "" {
		return fmt.Errorf("guest %q has a cloud-init seed, which is kept in disks_dir, and node %s has none: set disks_dir", g.Name, a.cfg.Name)
	}
	seed := cloudinit.Seed{InstanceID: g.UUID, Hostname: g.Name, SSHKeys: ci.SSHKeys, UserData: ci.UserData}
	if seed.InstanceID == "" {
		seed.InstanceID = g.Name
	}
	for _, nic := range g.NICs {
		seed.NICs = append(seed.NICs, cloudinit.NIC{MAC: nic.MAC, Address: nic.IP})
	}
	var buf bytes.Buffer
	if err := seed.WriteISO(&buf); err != nil {
		return fmt.Errorf("guest %q: cloud-init seed: %w", g.Name, err)
	}
	path := a.seedFile(g.Name)
	// The disk pool makes disks_dir on a real hypervisor; libvirt's test driver keeps
	// its volumes in memory.
	if err := os.MkdirAll(a.cfg.DisksDir, 0o755); err != nil {
		return fmt.Errorf("guest %q: cloud-init seed: %w", g.Name, err)
	}
	// 0600, as libvirt makes disks: the user data may hold secrets.
	if err := atomicfile.Write(path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("guest %q: cloud-init seed: %w (is disks_dir %s writable?)", g.Name, err, a.cfg.DisksDir)
	}
	spec.Seed = path
	return nil
}

// deleteDisks removes a deleted guest's disks, unless it was deleted keeping them,
// and its cloud-init seed, which a guest made again gets made again.
func (a *Agent) deleteDisks(g api.AssignedGuest) error {
	if g.CloudInit != nil && a.cfg.DisksDir != "" {
		if err := os.Remove(a.seedFile(g.Name)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("guest %q: remove its cloud-init seed: %w", g.Name, err)
		}
	}
	if g.KeepDisks {
		a.cfg.Log.Info("guest deleted, its disks kept", "guest", g.Name)
		return nil
	}
	if g.Pool != "" {
		return a.deletePoolDisks(g)
	}
	return a.cfg.Node.DeleteDisks(g.Name)
}
