package lab

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// guestFiles are the guest's /init, /lib/lab.sh and services (/etc/lab.d/*.sh).
//
//go:embed guest
var guestFiles embed.FS

// KernelMeta is the Debian package whose dependency names the guest kernel.
const KernelMeta = "linux-image-cloud-amd64"

// GuestCmdline is the lab image's kernel command line.
const GuestCmdline = "console=ttyS0"

// guestModules are the kernel modules the guest loads, in this order: the cloud
// kernel has virtio as modules and its package has no modules.dep.
var guestModules = []string{
	"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
	"virtio_blk", "failover", "net_failover", "virtio_net",
	// The ACPI power button and the event device acpid reads it from: a guest that
	// powers off on ACPI shutdown lets `vmctl vm stop` stop it cleanly.
	"button", "evdev",
}

// Image is the lab guest image in its cache.
type Image struct {
	Kernel  string // path of the kernel (vmlinuz)
	Initrd  string // path of the gzip'ed busybox initramfs
	Cmdline string // kernel command line: console=ttyS0
	// Version names what the image was built from: the kernel package and a hash
	// of the initramfs's sources.
	Version string
}

// CopyTo copies the image into dir as the files kernel, initrd and cmdline.
func (img Image) CopyTo(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("copy guest image: %w", err)
	}
	for _, f := range []struct{ src, dst string }{{img.Kernel, "kernel"}, {img.Initrd, "initrd"}} {
		if err := copyFile(f.src, filepath.Join(dir, f.dst), 0o644); err != nil {
			return fmt.Errorf("copy guest image: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cmdline"), []byte(img.Cmdline), 0o644); err != nil {
		return fmt.Errorf("copy guest image: %w", err)
	}
	return nil
}

// EnsureImage returns the lab guest image cached in cacheDir, building it first if
// it is missing or its sources changed (a newer kernel package, another init). The
// build downloads the versioned kernel package that KernelMeta depends on with
// apt-get, unpacks it with dpkg -x, and packs busybox-static, the guest files and
// the virtio modules into an initramfs with cpio. Builds are serialised by a lock
// in cacheDir.
func EnsureImage(ctx context.Context, cacheDir string, log io.Writer) (Image, error) {
	logf := func(format string, args ...any) {
		if log != nil {
			fmt.Fprintf(log, format+"\n", args...)
		}
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return Image{}, fmt.Errorf("guest image cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return Image{}, fmt.Errorf("guest image cache: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return Image{}, fmt.Errorf("guest image cache: lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck

	img := Image{Kernel: filepath.Join(cacheDir, "kernel"), Initrd: filepath.Join(cacheDir, "initrd"), Cmdline: GuestCmdline}
	stamp := filepath.Join(cacheDir, "version")
	cached, _ := os.ReadFile(stamp)
	haveCache := len(cached) > 0 && exists(img.Kernel) && exists(img.Initrd)

	pkg, err := kernelPackage(ctx)
	if err != nil {
		if haveCache {
			// apt's lists may be gone (an image built earlier is still good).
			img.Version = strings.TrimSpace(string(cached))
			logf("guest image: %v; using the cached %s", err, img.Version)
			return img, nil
		}
		return Image{}, err
	}
	sum, err := sourcesHash()
	if err != nil {
		return Image{}, err
	}
	img.Version = pkg + "+" + sum
	if haveCache && strings.TrimSpace(string(cached)) == img.Version {
		return img, nil
	}

	logf("guest image: building %s in %s", img.Version, cacheDir)
	deb, err := downloadKernel(ctx, filepath.Join(cacheDir, "debs"), pkg)
	if err != nil {
		return Image{}, err
	}
	tmp, err := os.MkdirTemp(cacheDir, "build-")
	if err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := buildImage(ctx, deb, tmp); err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	for _, f := range []string{"kernel", "initrd"} {
		if err := os.Rename(filepath.Join(tmp, f), filepath.Join(cacheDir, f)); err != nil {
			return Image{}, fmt.Errorf("guest image: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(cacheDir, "cmdline"), []byte(GuestCmdline), 0o644); err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	// The version is written last: a build cut short is built again.
	if err := os.WriteFile(stamp, []byte(img.Version+"\n"), 0o644); err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	logf("guest image: built %s", img.Version)
	return img, nil
}

// KernelDeb returns the Debian package of the lab guest's kernel (the versioned
// package KernelMeta depends on) in cacheDir/debs, downloading it first when it is not
// there: what EnsureImage builds the lab image from, for others that build images
// from the same kernel and its modules. It takes the cache's lock, as EnsureImage does.
// Without apt's lists, a package downloaded before is used.
func KernelDeb(ctx context.Context, cacheDir string) (string, error) {
	debs := filepath.Join(cacheDir, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("guest kernel: lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck
	pkg, err := kernelPackage(ctx)
	if err != nil {
		if m, _ := filepath.Glob(filepath.Join(debs, "linux-image-*.deb")); len(m) == 1 {
			return m[0], nil
		}
		return "", err
	}
	return downloadKernel(ctx, debs, pkg)
}

// kernelPackage is the versioned kernel package KernelMeta depends on
// (linux-image-6.1.0-NN-cloud-amd64).
func kernelPackage(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", KernelMeta).Output()
	if err != nil {
		return "", fmt.Errorf("guest image: apt-cache depends %s: %v (run `apt-get update`)", KernelMeta, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("guest image: %s depends on no linux-image package (run `apt-get update`)", KernelMeta)
}

// sourcesHash hashes what the initramfs is made of, so that a change rebuilds it.
func sourcesHash() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(guestFiles, "guest", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := guestFiles.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %d\n", p, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "modules %s\n", strings.Join(guestModules, " "))
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("guest image: no busybox: apt-get install busybox-static")
	}
	f, err := os.Open(bb)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// downloadKernel returns the .deb of pkg in debs, downloading it if it is not there
// and removing the packages of other kernels.
func downloadKernel(ctx context.Context, debs, pkg string) (string, error) {
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", err
	}
	if m, _ := filepath.Glob(filepath.Join(debs, pkg+"_*.deb")); len(m) > 0 {
		return m[0], nil
	}
	old, _ := filepath.Glob(filepath.Join(debs, "*.deb"))
	cmd := exec.CommandContext(ctx, "apt-get", "download", pkg)
	cmd.Dir = debs
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("guest image: apt-get download %s: %v: %s (run `apt-get update`)", pkg, err, lastLine(out))
	}
	m, _ := filepath.Glob(filepath.Join(debs, pkg+"_*.deb"))
	if len(m) == 0 {
		return "", fmt.Errorf("guest image: apt-get download %s left no .deb in %s", pkg, debs)
	}
	for _, o := range old {
		os.Remove(o)
	}
	return m[0], nil
}

// buildImage unpacks deb into dir and writes dir/kernel and dir/initrd.
func buildImage(ctx context.Context, deb, dir string) error {
	pkg := filepath.Join(dir, "pkg")
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", deb, pkg).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg -x %s: %v: %s", deb, err, lastLine(out))
	}
	kernels, _ := filepath.Glob(filepath.Join(pkg, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return fmt.Errorf("%s has %d kernels in /boot, want 1", deb, len(kernels))
	}
	if err := copyFile(kernels[0], filepath.Join(dir, "kernel"), 0o644); err != nil {
		return err
	}

	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "run", "root", "etc/lab.d", "lib/modules"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("no busybox: apt-get install busybox-static")
	}
	if !IsStatic(bb) {
		return fmt.Errorf("%s is not statically linked: apt-get install busybox-static", bb)
	}
	if err := copyFile(bb, filepath.Join(root, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	// The guest files: guest/init is /init, guest/lib → /lib, guest/lab.d → /etc/lab.d.
	err = fs.WalkDir(guestFiles, "guest", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel := strings.TrimPrefix(p, "guest/")
		if strings.HasPrefix(rel, "lab.d/") {
			rel = "etc/" + rel
		}
		b, err := guestFiles.ReadFile(p)
		if err != nil {
			return err
		}
		dst := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o755)
	})
	if err != nil {
		return err
	}

	found := map[string]string{}
	err = filepath.WalkDir(filepath.Join(pkg, "lib", "modules"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		found[strings.TrimSuffix(d.Name(), ".ko")] = p
		return nil
	})
	if err != nil {
		return fmt.Errorf("kernel modules of %s: %w", deb, err)
	}
	for _, m := range guestModules {
		src, ok := found[m]
		if !ok {
			return fmt.Errorf("%s has no module %s.ko", deb, m)
		}
		if err := copyFile(src, filepath.Join(root, "lib", "modules", m+".ko"), 0o644); err != nil {
			return err
		}
	}
	order := strings.Join(guestModules, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(root, "lib", "modules", "load.order"), []byte(order), 0o644); err != nil {
		return err
	}
	// The kernel opens /dev/console for init before init can mount devtmpfs.
	for _, n := range []struct {
		name         string
		major, minor int
	}{{"console", 5, 1}, {"null", 1, 3}} {
		if err := syscall.Mknod(filepath.Join(root, "dev", n.name), syscall.S_IFCHR|0o600, n.major<<8|n.minor); err != nil {
			return fmt.Errorf("mknod /dev/%s: %w", n.name, err)
		}
	}
	return PackInitramfs(ctx, root, filepath.Join(dir, "initrd"))
}

// PackInitramfs writes root as a gzip'ed cpio (newc) archive owned by root, in a
// stable file order: an initramfs for the lab kernel.
func PackInitramfs(ctx context.Context, root, dst string) error {
	var names []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		names = append(names, rel)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	zw, _ := gzip.NewWriterLevel(out, gzip.BestCompression)
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0")
	cmd.Dir = root
	cmd.Stdin = strings.NewReader(strings.Join(names, "\n") + "\n")
	cmd.Stdout = zw
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cpio: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return out.Close()
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst+".tmp", os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(dst+".tmp", dst)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
