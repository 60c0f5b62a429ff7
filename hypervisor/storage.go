package hypervisor

import (
	"errors"
	"fmt"
	"path/filepath"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// DiskPool is the name of the libvirt storage pool that holds guest disks. On a real
// cluster its directory is shared storage (NFS, CephFS) mounted at the same path on every
// node, which is what lets a guest restart on another node.
const DiskPool = "dvm-disks"

// EnsureDiskPool defines, builds and starts the disk pool at dir, or refreshes it when it
// exists, so volumes made by other nodes on the shared directory become visible.
func (n *Node) EnsureDiskPool(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("disk pool directory %q must be an absolute path", dir)
	}
	pool, err := n.conn.LookupStoragePoolByName(DiskPool)
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
		def := libvirtxml.StoragePool{Type: "dir", Name: DiskPool, Target: &libvirtxml.StoragePoolTarget{Path: dir}}
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

// EnsureDisk returns the path of a guest's disk volume, creating it (qcow2, sparse, of
// the given size, on top of backing when that is set) when it does not exist yet. An
// existing disk is never recreated: it holds the guest's data.
func (n *Node) EnsureDisk(guest string, sizeBytes int64, backing string) (string, error) {
	pool, err := n.conn.LookupStoragePoolByName(DiskPool)
	if err != nil {
		return "", n.fail("pool", fmt.Errorf("disk pool %s: %w (is disks_dir set?)", DiskPool, err))
	}
	defer pool.Free()
	name := guest + ".qcow2"
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
	if backing != "" {
		def.BackingStore = &libvirtxml.StorageVolumeBackingStore{Path: backing, Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}}
	}
	x, err := def.Marshal()
	if err != nil {
		return "", err
	}
	vol, err := pool.StorageVolCreateXML(x, 0)
	if err != nil {
		return "", n.fail("volume", fmt.Errorf("create disk of guest %q: %w", guest, err))
	}
	defer vol.Free()
	return vol.GetPath()
}

// DeleteDisk removes a guest's disk volume; a missing disk is not an error.
func (n *Node) DeleteDisk(guest string) error {
	pool, err := n.conn.LookupStoragePoolByName(DiskPool)
	if err != nil {
		return nil
	}
	defer pool.Free()
	_ = pool.Refresh(0)
	vol, err := pool.LookupStorageVolByName(guest + ".qcow2")
	if err != nil {
		return nil
	}
	defer vol.Free()
	if err := vol.Delete(0); err != nil {
		return n.fail("volume", fmt.Errorf("delete disk of guest %q: %w", guest, err))
	}
	return nil
}
