// Package imagebuild makes bootable guest images from Debian's packages, for tests
// that import images and install guests as an operator would: a partitioned boot disk
// (MBR, one ext4 partition, extlinux) holding the lab guest's kernel (Debian's cloud
// kernel), an initramfs of busybox and the kernel's modules, and a busybox system
// whose init names the host after dvm's cloud-init seed; and an install ISO (xorriso,
// isolinux) whose installer writes that system onto a guest's empty disk.
//
// It needs root (a loop device and a mount, for extlinux) and the tools Missing
// names.
package imagebuild

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dvmproject/dvm/internal/lab"
)

//go:embed guest
var guestFiles embed.FS

// Files of Debian's syslinux packages that the images are booted by.
const (
	MBR        = "/usr/lib/syslinux/mbr/mbr.bin"              // syslinux-common: the disk's boot code
	ISOLinux   = "/usr/lib/ISOLINUX/isolinux.bin"             // isolinux: the ISO's El Torito boot image
	LDLinuxC32 = "/usr/lib/syslinux/modules/bios/ldlinux.c32" // syslinux-common: isolinux's second stage
)

// tools are the programs a build runs, with the Debian package of each.
var tools = [][2]string{
	{"sfdisk", "fdisk"}, {"mke2fs", "e2fsprogs"}, {"extlinux", "extlinux"}, {"unshare", "util-linux"},
	{"mount", "mount"}, {"umount", "mount"}, {"xorriso", "xorriso"}, {"qemu-img", "qemu-utils"},
	{"cpio", "cpio"}, {"dpkg", "dpkg"}, {"busybox", "busybox-static"}, {"apt-get", "apt"},
}

// Missing names what a build needs and this host lacks, each with its Debian
// package ("extlinux (apt-get install extlinux)"); nil when nothing is missing.
func Missing() []string {
	var miss []string
	for _, t := range tools {
		if _, err := exec.LookPath(t[0]); err != nil {
			miss = append(miss, fmt.Sprintf("%s (apt-get install %s)", t[0], t[1]))
		}
	}
	for _, f := range [][2]string{{MBR, "syslinux-common"}, {ISOLinux, "isolinux"}, {LDLinuxC32, "syslinux-common"}} {
		if _, err := os.Stat(f[0]); err != nil {
			miss = append(miss, fmt.Sprintf("%s (apt-get install %s)", f[0], f[1]))
		}
	}
	if os.Geteuid() != 0 {
		miss = append(miss, "root (a loop device and a mount, for extlinux)")
	}
	return miss
}

// modules are the kernel modules the initramfs loads, in this order (the package has
// no modules.dep): virtio for the disk, virtio-scsi and sr for the cdroms (dvm's linux
// guests have theirs on virtio-scsi), isofs to read them, and the ACPI power button.
var modules = []string{
	"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
	"virtio_blk", "scsi_common", "scsi_mod", "virtio_scsi", "cdrom", "sr_mod", "isofs",
	"button", "evdev",
}

// Kit is the lab kernel unpacked, with the initramfs built from it: what disks and
// ISOs are made of.
type Kit struct {
	dir     string
	kernel  string // vmlinuz
	initrd  string // the gzip'ed busybox initramfs with the modules
	busybox string
}

// NewKit unpacks the lab kernel's package (lab.KernelDeb in cacheDir, downloaded
// with apt-get when missing) into workDir and builds the initramfs there.
func NewKit(ctx context.Context, cacheDir, workDir string) (*Kit, error) {
	deb, err := lab.KernelDeb(ctx, cacheDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		return nil, err
	}
	k := &Kit{dir: workDir}
	pkg := filepath.Join(workDir, "pkg")
	if err := run(ctx, "dpkg", "-x", deb, pkg); err != nil {
		return nil, err
	}
	kernels, _ := filepath.Glob(filepath.Join(pkg, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return nil, fmt.Errorf("imagebuild: %s has %d kernels in /boot, want 1", deb, len(kernels))
	}
	k.kernel = kernels[0]
	if k.busybox, err = exec.LookPath("busybox"); err != nil {
		return nil, errors.New("imagebuild: no busybox: apt-get install busybox-static")
	}
	if !lab.IsStatic(k.busybox) {
		return nil, fmt.Errorf("imagebuild: %s is not statically linked: apt-get install busybox-static", k.busybox)
	}

	found := map[string]string{}
	err = filepath.WalkDir(filepath.Join(pkg, "lib", "modules"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			found[strings.TrimSuffix(d.Name(), ".ko")] = p
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("imagebuild: modules of %s: %w", deb, err)
	}
	root := filepath.Join(workDir, "initramfs")
	if err := k.busyboxRoot(root); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(root, "lib", "modules"), 0o755); err != nil {
		return nil, err
	}
	for _, m := range modules {
		src, ok := found[m]
		if !ok {
			return nil, fmt.Errorf("imagebuild: %s has no module %s.ko", deb, m)
		}
		if err := copyFile(src, filepath.Join(root, "lib", "modules", m+".ko"), 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "lib", "modules", "load.order"), []byte(strings.Join(modules, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := writeGuestFile("initrd-init", filepath.Join(root, "init"), 0o755); err != nil {
		return nil, err
	}
	if err := writeGuestFile("install", filepath.Join(root, "install"), 0o755); err != nil {
		return nil, err
	}
	// The kernel opens /dev/console for init before init mounts devtmpfs.
	if err := syscall.Mknod(filepath.Join(root, "dev", "console"), syscall.S_IFCHR|0o600, 5<<8|1); err != nil {
		return nil, fmt.Errorf("imagebuild: mknod /dev/console: %w", err)
	}
	k.initrd = filepath.Join(workDir, "initrd.img")
	if err := lab.PackInitramfs(ctx, root, k.initrd); err != nil {
		return nil, err
	}
	return k, nil
}

// busyboxRoot makes root a busybox system's skeleton: /bin/busybox and a link to it
// for each of its applets, and the usual empty directories.
func (k *Kit) busyboxRoot(root string) error {
	for _, d := range []string{"bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "mnt", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(k.busybox, filepath.Join(root, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	out, err := exec.Command(k.busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("imagebuild: busybox --list: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if a := sc.Text(); a != "" && a != "busybox" {
			if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
				return err
			}
		}
	}
	return nil
}

// DiskSize is the size of the boot disk Disk makes, and so the least disk a guest
// installed from InstallISO needs.
const DiskSize = 32 << 20

// partStart is where the disk's one partition starts: 1 MiB, as fdisk aligns it.
const partStart = 1 << 20

// Disk writes a bootable raw disk of DiskSize bytes to out: an MBR (syslinux's
// mbr.bin) with one bootable Linux partition, ext4 labelled root, holding the busybox
// system (/sbin/init, /etc/hostname hostname), the kernel and initramfs in /boot and
// extlinux installed in /boot/extlinux, booting root=/dev/vda1 with its console on
// the first serial port.
func (k *Kit) Disk(ctx context.Context, out, hostname string) error {
	root := filepath.Join(k.dir, "diskroot")
	os.RemoveAll(root)
	if err := k.busyboxRoot(root); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(root, "boot", "extlinux"), 0o755); err != nil {
		return err
	}
	for _, f := range []struct {
		src, dst string
		mode     os.FileMode
	}{{k.kernel, "boot/vmlinuz", 0o644}, {k.initrd, "boot/initrd.img", 0o644}} {
		if err := copyFile(f.src, filepath.Join(root, f.dst), f.mode); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		name, dst string
		mode      os.FileMode
	}{{"init", "sbin/init", 0o755}, {"profile", "etc/profile", 0o644}, {"extlinux.conf", "boot/extlinux/extlinux.conf", 0o644}} {
		if err := writeGuestFile(f.name, filepath.Join(root, f.dst), f.mode); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte(hostname+"\n"), 0o644); err != nil {
		return err
	}

	tmp := out + ".tmp"
	defer os.Remove(tmp)
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	err = f.Truncate(DiskSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	table := fmt.Sprintf("label: dos\nstart=%d, type=83, bootable\n", partStart/512)
	if err := runIn(ctx, strings.NewReader(table), "sfdisk", "--quiet", tmp); err != nil {
		return err
	}
	// The boot code only: the partition table after byte 440 stays.
	if err := run(ctx, "dd", "if="+MBR, "of="+tmp, "bs=440", "count=1", "conv=notrunc", "status=none"); err != nil {
		return err
	}
	// The file system is written into the partition, by its offset in the file.
	if err := run(ctx, "mke2fs", "-q", "-t", "ext4", "-b", "4096", "-L", "root", "-d", root,
		"-E", fmt.Sprintf("offset=%d", partStart), tmp, fmt.Sprint((DiskSize-partStart)/4096)); err != nil {
		return err
	}
	// extlinux installs into a mounted file system. The mount is in a mount namespace
	// of its own, on a loop device (by offset: partition devices of a loop device need
	// a host kernel with MBR partition support, which some lack) that the kernel
	// detaches at its unmount: whatever happens to this process, neither the mount nor
	// the loop device outlives the namespace.
	mnt := filepath.Join(k.dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	script := `mount -t ext4 -o loop,offset="$1",sizelimit="$2" "$3" "$4" && extlinux --install "$4/boot/extlinux"; s=$?; umount "$4" 2>/dev/null; exit $s`
	if err := run(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
		fmt.Sprint(partStart), fmt.Sprint(DiskSize-partStart), tmp, mnt); err != nil {
		return err
	}
	// extlinux wrote its boot sector for a device that starts at sector 0 (the loop
	// device); on a partition it writes the partition's first sector into the boot
	// sector's hidden-sectors field (offset 0x1c, as in a FAT BPB), which the boot
	// sector adds to every sector it reads: write it as on the partition.
	if err := setHiddenSectors(tmp, partStart); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// setHiddenSectors writes start/512 into the hidden-sectors field of the boot sector
// at byte start of the disk file p.
func setHiddenSectors(p string, start int64) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(start/512))
	_, err = f.WriteAt(b[:], start+0x1c)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// QCOW2 converts the raw disk raw into the qcow2 image out.
func QCOW2(ctx context.Context, raw, out string) error {
	return run(ctx, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, out)
}

// InstallISO writes an install ISO to out (xorriso, booted by isolinux from El
// Torito, its console on the first serial port): the kernel and initramfs, whose
// installer (dvm.install on the command line) writes the raw disk disk, carried on
// the ISO as disk.img with its MD5 in disk.img.md5, onto the guest's /dev/vda.
func (k *Kit) InstallISO(ctx context.Context, out, disk string) error {
	root := filepath.Join(k.dir, "isoroot")
	os.RemoveAll(root)
	for _, d := range []string{"isolinux", "boot"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	for _, f := range [][2]string{{ISOLinux, "isolinux/isolinux.bin"}, {LDLinuxC32, "isolinux/ldlinux.c32"},
		{k.kernel, "boot/vmlinuz"}, {k.initrd, "boot/initrd.img"}, {disk, "disk.img"}} {
		if err := copyFile(f[0], filepath.Join(root, f[1]), 0o644); err != nil {
			return err
		}
	}
	if err := writeGuestFile("isolinux.cfg", filepath.Join(root, "isolinux", "isolinux.cfg"), 0o644); err != nil {
		return err
	}
	// The installer checks what it wrote against this (busybox has md5sum).
	sum, err := fileMD5(disk)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "disk.img.md5"), []byte(sum+"\n"), 0o644); err != nil {
		return err
	}
	os.Remove(out)
	return run(ctx, "xorriso", "-as", "mkisofs", "-quiet", "-o", out, "-V", "DVM_INSTALL", "-J", "-R",
		"-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", root)
}

func writeGuestFile(name, dst string, mode os.FileMode) error {
	b, err := guestFiles.ReadFile("guest/" + name)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

func run(ctx context.Context, name string, args ...string) error {
	return runIn(ctx, nil, name, args...)
}

func runIn(ctx context.Context, stdin io.Reader, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("imagebuild: %s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// waitForFile waits for a partition's device node, which devtmpfs makes once the
// kernel has read the loop device's partition table.
func waitForFile(ctx context.Context, p string) error {
	for i := 0; i < 50; i++ {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("imagebuild: %s did not appear (does this kernel scan loop devices' partitions?)", p)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func fileMD5(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := md5.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
