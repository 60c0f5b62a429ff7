package hypervisor

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// DiskPool is the name of the libvirt storage pool that holds guest disks. On a real
// cluster its directory is shared storage (NFS, CephFS) mounted at the same path on every
// node, which is what lets a guest restart on another node.
const DiskPool = "dvm-disks"

// DirPool is the name of the libvirt storage pool of dvm's storage pool name, of
// kind dir or shared (a directory of the node's own, or one every node mounts).
func DirPool(name string) string { return "dvm-pool-" + name }

// EnsureDiskPool defines, builds and starts the disk pool at dir, or refreshes it when it
// exists, so volumes made by other nodes on the shared directory become visible.
func (n *Node) EnsureDiskPool(dir string) error { return n.EnsureDirPool(DiskPool, dir) }

// EnsureDirPool is EnsureDiskPool for the libvirt storage pool named pool.
func (n *Node) EnsureDirPool(poolName, dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("disk pool directory %q must be an absolute path", dir)
	}
	pool, err := n.conn.LookupStoragePoolByName(poolName)
	if err == nil {
		// A pool left from an earlier configuration may point elsewhere: follow the
		// configuration. Volumes are files in the directory; nothing is deleted.
		if x, xerr := pool.GetXMLDesc(0); xerr == nil {
			var def libvirtxml.StoragePool
			if def.Unmarshal(x) == nil && def.Target != nil && filepath.Clean(def.Target.Path) != filepath.Clean(dir) {
				_ = pool.Destroy()
				if uerr := pool.Undefine(); uerr != nil {
					pool.Free()
					return n.fail("pool", fmt.Errorf("move disk pool from %s to %s: %w", def.Target.Path, dir, uerr))
				}
				pool.Free()
				err = libvirt.Error{Code: libvirt.ERR_NO_STORAGE_POOL}
			}
		}
	}
	if err != nil {
		var lv libvirt.Error
		if !errors.As(err, &lv) || lv.Code != libvirt.ERR_NO_STORAGE_POOL {
			return n.fail("pool", fmt.Errorf("look up disk pool: %w", err))
		}
		def := libvirtxml.StoragePool{Type: "dir", Name: poolName, Target: &libvirtxml.StoragePoolTarget{Path: dir}}
		x, err := def.Marshal()
		if err != nil {
			return err
		}
		if pool, err = n.conn.StoragePoolDefineXML(x, 0); err != nil {
			return n.fail("pool", fmt.Errorf("define disk pool at %s: %w", dir, err))
		}
		_ = pool.SetAutostart(true)
	}
	defer pool.Free()
	// Build makes the directory when it is missing (a fresh node, or shared storage not
	// yet used); on an existing directory it changes nothing.
	if err := pool.Build(libvirt.STORAGE_POOL_BUILD_NO_OVERWRITE); err != nil {
		var lv libvirt.Error
		if !errors.As(err, &lv) || lv.Code != libvirt.ERR_OPERATION_INVALID {
			n.onErr("pool")
		}
	}
	if active, _ := pool.IsActive(); !active {
		if err := pool.Create(0); err != nil {
			return n.fail("pool", fmt.Errorf("start disk pool at %s: %w", dir, err))
		}
	}
	if err := pool.Refresh(0); err != nil {
		return n.fail("pool", fmt.Errorf("refresh disk pool: %w", err))
	}
	return nil
}

// Base is the image a guest's first disk is made from: the disk is a qcow2 overlay
// whose backing file is Path, read as Format. The format is always named, never
// probed: QEMU probing a raw image could take a guest's own bytes for a qcow2 header
// naming any file on the host as its backing file.
type Base struct {
	Path   string
	Format string // qcow2 or raw
}

// DiskVolume names disk i of a guest in the disk pool: GUEST.qcow2 for the first
// (the name disks always had), GUEST.diskI.qcow2 for the extra ones. A guest name has
// no dots, so no guest's volume can be another guest's.
func DiskVolume(guest string, i int) string {
	if i == 0 {
		return guest + ".qcow2"
	}
	return fmt.Sprintf("%s.disk%d.qcow2", guest, i)
}

// EnsureDisk returns the path of disk i of a guest (DiskVolume), creating it when it
// does not exist yet: qcow2, sparse, of the given size, as an overlay on base when
// base is set (the image's content, the guest's writes in the overlay; the size may
// exceed the image's, which the guest then sees as a larger disk). An existing disk is
// never recreated: it holds the guest's data (a guest restarted on another node finds
// its disks on the shared directory).
func (n *Node) EnsureDisk(guest string, i int, sizeBytes int64, base *Base) (string, error) {
	return n.EnsureDiskIn(DiskPool, guest, i, sizeBytes, base)
}

// EnsureDiskIn is EnsureDisk in the libvirt storage pool named poolName.
func (n *Node) EnsureDiskIn(poolName, guest string, i int, sizeBytes int64, base *Base) (string, error) {
	pool, err := n.conn.LookupStoragePoolByName(poolName)
	if err != nil {
		return "", n.fail("pool", fmt.Errorf("disk pool %s: %w (is disks_dir set?)", poolName, err))
	}
	defer pool.Free()
	name := DiskVolume(guest, i)
	if vol, err := pool.LookupStorageVolByName(name); err == nil {
		defer vol.Free()
		return vol.GetPath()
	}
	// Another node may have made it on the shared directory since our last look.
	_ = pool.Refresh(0)
	if vol, err := pool.LookupStorageVolByName(name); err == nil {
		defer vol.Free()
		return vol.GetPath()
	}
	def := libvirtxml.StorageVolume{
		Name:       name,
		Capacity:   &libvirtxml.StorageVolumeSize{Value: uint64(sizeBytes), Unit: "bytes"},
		Allocation: &libvirtxml.StorageVolumeSize{Value: 0, Unit: "bytes"},
		Target:     &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}},
	}
	if base != nil {
		if base.Format != "qcow2" && base.Format != "raw" {
			return "", fmt.Errorf("disk of guest %q: base image %s has format %q: a disk is made only on a qcow2 or raw image", guest, base.Path, base.Format)
		}
		def.BackingStore = &libvirtxml.StorageVolumeBackingStore{Path: base.Path, Format: &libvirtxml.StorageVolumeTargetFormat{Type: base.Format}}
	}
	x, err := def.Marshal()
	if err != nil {
		return "", err
	}
	vol, err := pool.StorageVolCreateXML(x, 0)
	if err != nil {
		return "", n.fail("volume", fmt.Errorf("create disk %s of guest %q: %w", name, guest, err))
	}
	defer vol.Free()
	return vol.GetPath()
}

// DeleteDisks removes every disk volume of a guest (DiskVolume); missing disks are
// not an error.
func (n *Node) DeleteDisks(guest string) error { return n.DeleteDisksIn(DiskPool, guest) }

// DeleteDisksIn is DeleteDisks in the libvirt storage pool named poolName.
func (n *Node) DeleteDisksIn(poolName, guest string) error {
	pool, err := n.conn.LookupStoragePoolByName(poolName)
	if err != nil {
		return nil
	}
	defer pool.Free()
	_ = pool.Refresh(0)
	vols, err := pool.ListAllStorageVolumes(0)
	if err != nil {
		return n.fail("volume", fmt.Errorf("list disks of guest %q: %w", guest, err))
	}
	var errs []error
	for i := range vols {
		vol := &vols[i]
		name, err := vol.GetName()
		if err == nil && isDiskOf(guest, name) {
			if err := vol.Delete(0); err != nil {
				errs = append(errs, n.fail("volume", fmt.Errorf("delete disk %s of guest %q: %w", name, guest, err)))
			}
		}
		vol.Free()
	}
	return errors.Join(errs...)
}

// isDiskOf says whether a volume name is one DiskVolume gives guest.
func isDiskOf(guest, vol string) bool {
	if vol == DiskVolume(guest, 0) {
		return true
	}
	rest, ok := strings.CutPrefix(vol, guest+".disk")
	if !ok {
		return false
	}
	num, ok := strings.CutSuffix(rest, ".qcow2")
	i, err := strconv.Atoi(num)
	return ok && err == nil && i > 0 && strconv.Itoa(i) == num
}
