package lab

import (
	"debug/elf"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
)

// requirement is a program the lab runs and the Debian package that has it.
type requirement struct {
	program string
	pkg     string
}

// requirements are every program the lab and its nodes run.
var requirements = []requirement{
	{"unshare", "util-linux"},
	{"tini", "tini"},
	{"libvirtd", "libvirt-daemon-system"},
	{"virtlogd", "libvirt-daemon-system"},
	{"virsh", "libvirt-clients"},
	{"qemu-system-x86_64", "qemu-system-x86"},
	{"nft", "nftables"},
	{"ip", "iproute2"},
	{"busybox", "busybox-static"},
	{"cpio", "cpio"},
	{"apt-get", "apt"},
	{"dpkg", "dpkg"},
}

// qemuDriver is libvirt's QEMU driver, from libvirt-daemon-driver-qemu.
const qemuDriver = "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so"

// ErrNotRoot is returned by Preflight when the caller is not root.
var ErrNotRoot = errors.New("the lab needs root (it makes namespaces, a bridge and nftables rules): run it as root (sudo)")

// MissingError lists the Debian packages the lab needs and the machine lacks.
type MissingError struct {
	Packages []string // as apt-get install names them
	Details  []string // one line a missing part
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("the lab needs packages that are missing (%s): apt-get install -y --no-install-recommends %s",
		strings.Join(e.Details, "; "), strings.Join(e.Packages, " "))
}

// Preflight checks that this machine can run a lab: root, the packages, and no
// other lab's bridge or nftables table. It changes nothing.
func Preflight() error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	if err := CheckPackages(); err != nil {
		return err
	}
	if link, err := netlink.LinkByName(Bridge); err == nil {
		owner := strings.TrimPrefix(link.Attrs().Alias, bridgeAliasPrefix)
		if owner != "" && owner != link.Attrs().Alias {
			return fmt.Errorf("bridge %s exists: the lab in %s is up; bring it down with `vmctl lab down --dir %s`", Bridge, owner, owner)
		}
		return fmt.Errorf("bridge %s exists and no lab owns it: delete it with `ip link del %s`", Bridge, Bridge)
	}
	if nftHasTable() {
		return fmt.Errorf("nftables table bridge %s exists without a lab: delete it with `nft delete table bridge %s`", nftTable, nftTable)
	}
	_, lab, _ := net.ParseCIDR(BridgeAddr + "/24")
	if routes, err := netlink.RouteList(nil, netlink.FAMILY_V4); err == nil {
		for _, r := range routes {
			if r.Dst != nil && r.Dst.Contains(lab.IP) && r.Dst.String() != "0.0.0.0/0" {
				return fmt.Errorf("the lab's range %s is already routed here (%s): the lab cannot use it", lab, r.Dst)
			}
		}
	}
	return nil
}

// CheckPackages says which of the lab's packages are missing, as a *MissingError.
func CheckPackages() error {
	miss := &MissingError{}
	miss.lookFor(requirements)
	if p, err := exec.LookPath("busybox"); err == nil && !IsStatic(p) {
		miss.add("busybox-static", fmt.Sprintf("%s is not statically linked (package busybox-static)", p))
	}
	if _, err := os.Stat(qemuDriver); err != nil {
		miss.add("libvirt-daemon-driver-qemu", "no libvirt QEMU driver (package libvirt-daemon-driver-qemu)")
	}
	return miss.orNil()
}

// add records a missing part and its package.
func (e *MissingError) add(pkg, detail string) {
	if !contains(e.Packages, pkg) {
		e.Packages = append(e.Packages, pkg)
	}
	e.Details = append(e.Details, detail)
}

// lookFor records each program of reqs that is not on PATH.
func (e *MissingError) lookFor(reqs []requirement) {
	for _, r := range reqs {
		if _, err := exec.LookPath(r.program); err != nil {
			e.add(r.pkg, fmt.Sprintf("no %s (package %s)", r.program, r.pkg))
		}
	}
}

// orNil is e when something is missing, else nil.
func (e *MissingError) orNil() error {
	if len(e.Packages) > 0 {
		return e
	}
	return nil
}

// IsStatic says whether the ELF file at path needs no program interpreter: the
// guest's initramfs has no C library.
func IsStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
