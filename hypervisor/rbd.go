package hypervisor

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"
)

// RBD is a Ceph RBD pool that holds guest disks as RBD images, which QEMU opens with
// its own librbd (Debian's qemu-block-extra): no kernel module and no mount on the
// node. Every node that names the pool reaches the same images, so a guest on it can
// restart on any of them.
type RBD struct {
	Monitors []string // host:port of the Ceph monitors (messenger v1, port 6789 by default)
	Pool     string   // the Ceph pool
	Client   string   // the cephx user, without "client."
	Keyring  string   // the user's keyring file on the node
	// Secret is the usage name of the libvirt secret (type ceph) holding the user's
	// key on the node: EnsureRBDSecret defines it from the keyring.
	Secret string
}

// RBDDisk is a guest disk on an RBD image: what its domain's network disk names.
type RBDDisk struct {
	Monitors []string
	Image    string // POOL/IMAGE
	Client   string
	Secret   string // libvirt secret usage name
}

func (r *RBDDisk) source() *libvirtxml.DomainDiskSourceNetwork {
	src := &libvirtxml.DomainDiskSourceNetwork{
		Protocol: "rbd", Name: r.Image,
		Auth: &libvirtxml.DomainDiskAuth{Username: r.Client, Secret: &libvirtxml.DomainDiskSecret{Type: "ceph", Usage: r.Secret}},
	}
	for _, m := range r.Monitors {
		host, port, _ := net.SplitHostPort(m)
		src.Hosts = append(src.Hosts, libvirtxml.DomainDiskSourceHost{Name: host, Port: port})
	}
	return src
}

func (r *RBDDisk) check() error {
	for _, v := range append([]string{r.Image, r.Client, r.Secret}, r.Monitors...) {
		if err := checkText("rbd disk", v); err != nil {
			return err
		}
	}
	if len(r.Monitors) == 0 {
		return fmt.Errorf("rbd disk %q names no monitor", r.Image)
	}
	for _, m := range r.Monitors {
		if _, _, err := net.SplitHostPort(m); err != nil {
			return fmt.Errorf("rbd monitor %q is not host:port", m)
		}
	}
	pool, img, ok := strings.Cut(r.Image, "/")
	if !ok || pool == "" || img == "" || strings.ContainsAny(r.Image, "@: ") {
		return fmt.Errorf("rbd image %q is not POOL/IMAGE", r.Image)
	}
	if r.Client == "" || r.Secret == "" {
		return fmt.Errorf("rbd disk %q names no cephx user or secret", r.Image)
	}
	return nil
}

// RBDImage names disk i of a guest in an RBD pool: GUEST.diskI. A guest name has no
// dots, so no guest's image can be another guest's.
func RBDImage(guest string, i int) string { return fmt.Sprintf("%s.disk%d", guest, i) }

// Disk is disk i of guest on the pool, as a domain names it.
func (r RBD) Disk(guest string, i int) Disk {
	return Disk{Format: "raw", RBD: &RBDDisk{Monitors: r.Monitors, Image: r.Pool + "/" + RBDImage(guest, i), Client: r.Client, Secret: r.Secret}}
}

// rbdTimeout bounds every rbd command: a pool whose monitors cannot be reached must
// not hold a node's reconcile loop. A clone from a large image may take longer: see
// EnsureImage.
const rbdTimeout = 30 * time.Second

// rbd runs the rbd command as the pool's user, with no ceph.conf needed on the node.
func (r RBD) rbd(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--id", r.Client, "--keyring", r.Keyring, "-m", strings.Join(r.Monitors, ","),
		"--conf", "/dev/null"}, args...)
	return run(ctx, "rbd", full...)
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		if errors.Is(err, exec.ErrNotFound) {
			return "", fmt.Errorf("%s not found: install ceph-common and qemu-block-extra on the node", name)
		}
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args[len(args)-min(len(args), 3):], " "), err, msg)
	}
	return out.String(), nil
}

// images lists the pool's images.
func (r RBD) images(ctx context.Context) ([]string, error) {
	out, err := r.rbd(ctx, "ls", r.Pool)
	if err != nil {
		return nil, fmt.Errorf("rbd pool %s: %w", r.Pool, err)
	}
	return strings.Fields(out), nil
}

// EnsureImage makes disk i of guest (RBDImage) when it does not exist yet: empty, or a
// copy of base (qemu-img convert into the pool, then grown to sizeBytes when that is
// larger). An existing image is never made again: it holds the guest's data (a guest
// restarted on another node finds it there). A copy is made under a temporary name and
// renamed when complete, so a copy cut short is never taken for the guest's disk.
func (r RBD) EnsureImage(guest string, i int, sizeBytes int64, base *Base) error {
	ctx, cancel := context.WithTimeout(context.Background(), rbdTimeout)
	defer cancel()
	name := RBDImage(guest, i)
	have, err := r.images(ctx)
	if err != nil {
		return err
	}
	for _, h := range have {
		if h == name {
			return nil
		}
	}
	if base == nil {
		if _, err := r.rbd(ctx, "create", "--size", strconv.FormatInt((sizeBytes+(1<<20)-1)>>20, 10), r.Pool+"/"+name); err != nil {
			return fmt.Errorf("create disk %s of guest %q in rbd pool %s: %w", name, guest, r.Pool, err)
		}
		return nil
	}
	if base.Format != "qcow2" && base.Format != "raw" {
		return fmt.Errorf("disk of guest %q: base image %s has format %q: a disk is made only on a qcow2 or raw image", guest, base.Path, base.Format)
	}
	tmp := name + ".part"
	for _, h := range have {
		if h == tmp {
			if _, err := r.rbd(ctx, "rm", "--no-progress", r.Pool+"/"+tmp); err != nil {
				return fmt.Errorf("remove an unfinished copy %s: %w", tmp, err)
			}
		}
	}
	// The copy takes as long as the image is large; it has no timeout of its own.
	if _, err := run(context.Background(), "qemu-img", "convert", "-f", base.Format, "-O", "raw", base.Path, r.uri(tmp)); err != nil {
		return fmt.Errorf("copy image %s into rbd pool %s for guest %q: %w", base.Path, r.Pool, guest, err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), rbdTimeout)
	defer cancel2()
	if out, err := r.rbd(ctx2, "info", "--format", "json", r.Pool+"/"+tmp); err == nil {
		var size int64
		if _, serr := fmt.Sscanf(jsonField(out, "size"), "%d", &size); serr == nil && size < sizeBytes {
			if _, err := r.rbd(ctx2, "resize", "--no-progress", "--size", strconv.FormatInt((sizeBytes+(1<<20)-1)>>20, 10), r.Pool+"/"+tmp); err != nil {
				return fmt.Errorf("grow disk %s of guest %q: %w", tmp, guest, err)
			}
		}
	}
	if _, err := r.rbd(ctx2, "rename", r.Pool+"/"+tmp, r.Pool+"/"+name); err != nil {
		return fmt.Errorf("rename %s to %s in rbd pool %s: %w", tmp, name, r.Pool, err)
	}
	return nil
}

// jsonField reads a number field of rbd's one-line JSON without a full decode.
func jsonField(s, key string) string {
	i := strings.Index(s, `"`+key+`":`)
	if i < 0 {
		return ""
	}
	rest := s[i+len(key)+3:]
	if j := strings.IndexAny(rest, ",}"); j >= 0 {
		rest = rest[:j]
	}
	return strings.TrimSpace(rest)
}

// uri is QEMU's rbd: filename of an image of the pool, with the user and monitors.
func (r RBD) uri(image string) string {
	mons := make([]string, len(r.Monitors))
	for i, m := range r.Monitors {
		// QEMU's rbd filename separates options with ':', so a port's is escaped;
		// several monitors are separated by ';'.
		mons[i] = strings.ReplaceAll(m, ":", `\:`)
	}
	return fmt.Sprintf("rbd:%s/%s:id=%s:keyring=%s:mon_host=%s", r.Pool, image, r.Client, r.Keyring, strings.Join(mons, `\;`))
}

// DeleteImages removes every disk image of a guest (RBDImage, and an unfinished
// copy); missing ones are not an error.
func (r RBD) DeleteImages(guest string) error {
	ctx, cancel := context.WithTimeout(context.Background(), rbdTimeout)
	defer cancel()
	have, err := r.images(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range have {
		if !isRBDImageOf(guest, strings.TrimSuffix(h, ".part")) {
			continue
		}
		if _, err := r.rbd(ctx, "rm", "--no-progress", r.Pool+"/"+h); err != nil {
			errs = append(errs, fmt.Errorf("delete disk %s of guest %q from rbd pool %s: %w", h, guest, r.Pool, err))
		}
	}
	return errors.Join(errs...)
}

func isRBDImageOf(guest, image string) bool {
	num, ok := strings.CutPrefix(image, guest+".disk")
	i, err := strconv.Atoi(num)
	return ok && err == nil && i >= 0 && strconv.Itoa(i) == num
}

// ReadKeyring reads the key of a keyring file (the `key = …` line of its section),
// as the bytes a libvirt ceph secret holds.
func ReadKeyring(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && strings.TrimSpace(k) == "key" {
			key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
			if err != nil || len(key) == 0 {
				return nil, fmt.Errorf("keyring %s: its key is not base64", path)
			}
			return key, nil
		}
	}
	return nil, fmt.Errorf("keyring %s has no `key = …` line", path)
}

// EnsureRBDSecret defines (or updates) the libvirt secret of type ceph named usage
// holding key, so that QEMU's librbd authenticates as the pool's user. Its UUID
// follows from usage, the same on every node.
func (n *Node) EnsureRBDSecret(usage string, key []byte) error {
	sum := sha256.Sum256([]byte("dvm-secret:" + usage))
	sum[6] = sum[6]&0x0f | 0x40
	sum[8] = sum[8]&0x3f | 0x80
	uuid := fmt.Sprintf("%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
	def := libvirtxml.Secret{Ephemeral: "no", Private: "yes", UUID: uuid,
		Description: "dvm storage pool " + usage, Usage: &libvirtxml.SecretUsage{Type: "ceph", Name: usage}}
	x, err := def.Marshal()
	if err != nil {
		return err
	}
	sec, err := n.conn.SecretDefineXML(x, 0)
	if err != nil {
		return n.fail("secret", fmt.Errorf("define ceph secret %s: %w", usage, err))
	}
	defer sec.Free()
	if err := sec.SetValue(key, 0); err != nil {
		return n.fail("secret", fmt.Errorf("set ceph secret %s: %w", usage, err))
	}
	return nil
}
