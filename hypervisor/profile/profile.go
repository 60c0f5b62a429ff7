// Package profile holds the guest OS profiles: what each OS runs well on. It is pure
// data, apart from libvirt, so that the API's validation and vmctl (built without cgo)
// name the same profiles as the domain builder in hypervisor.
package profile

import (
	"fmt"
	"sort"
	"strings"
)

// Profile is what a guest OS runs well on: the machine type, the buses of its disks and
// NICs, and the quirks of its drivers. The domain builder reads only profiles, so adding
// an OS is adding a profile, not a branch in the builder.
type Profile struct {
	Name    string
	Machine string // QEMU machine type: "pc" (i440fx) for the BSDs, "q35" for Linux
	DiskBus string // "virtio" gives virtio-blk: /dev/vbdN on DragonFly, vtbdN on FreeBSD, ld on NetBSD, sd on OpenBSD
	// DiskTargetPrefix names the disk target dev ("vd" for virtio-blk).
	DiskTargetPrefix string
	// CDROMBus is the bus of the guest's cdroms (install media, a cloud-init seed):
	// "ide" on the pc machine, whose firmware and every BSD installer boot from an ATAPI
	// drive; "scsi" (on a virtio-scsi controller) for Linux on q35, which has no IDE:
	// Debian's cloud kernel, that of its genericcloud images and of dvm's lab guest, has
	// virtio-scsi but no AHCI driver, so it never sees a SATA cdrom, nor the seed on it.
	// SeaBIOS boots from a virtio-scsi cdrom. CDROMTargetPrefix names their target dev.
	CDROMBus, CDROMTargetPrefix string
	NICModel                    string // "virtio": vtnet(4) on DragonFly and FreeBSD, vioif(4) on NetBSD, vio(4) on OpenBSD
	// NICNoTSO switches TCP segmentation offload off on the host and guest side of the
	// NIC: DragonFly's vtnet is known to mishandle TSO, so its default is off.
	NICNoTSO bool
	// ConsoleSpeed is the serial console speed the guest's loader and kernel expect.
	// libvirt has no baud setting for a pty, so this goes into the kernel cmdline of
	// direct-boot guests and into the guest metadata, where tools and docs can read it.
	ConsoleSpeed int
	RNG          bool // a virtio RNG device, for OSes with a driver for it
	Balloon      bool // a virtio balloon, for OSes whose driver is reliable
	ACPI         bool
	// CloudInit says the OS's images run cloud-init, which reads a NoCloud seed (vm
	// create --cloud-init); NoCloudInit says, for an OS whose images do not, what
	// configures such a guest instead.
	CloudInit   bool
	NoCloudInit string
}

// All are the OS profiles dvm knows. DragonFly BSD is the default.
var All = map[string]Profile{
	"dragonfly": {Name: "dragonfly", Machine: "pc", DiskBus: "virtio", DiskTargetPrefix: "vd", CDROMBus: "ide", CDROMTargetPrefix: "hd", NICModel: "virtio", NICNoTSO: true, ConsoleSpeed: 115200, ACPI: true,
		NoCloudInit: "DragonFly BSD has no cloud-init: the guest configures itself from its image (its rc.conf: hostname, addresses, sshd and authorized_keys, prepared in the image you import), or on its serial console (vmctl vm console); leave out --cloud-init, --ssh-key and --user-data"},
	"freebsd": {Name: "freebsd", Machine: "pc", DiskBus: "virtio", DiskTargetPrefix: "vd", CDROMBus: "ide", CDROMTargetPrefix: "hd", NICModel: "virtio", ConsoleSpeed: 115200, RNG: true, Balloon: true, ACPI: true, CloudInit: true},
	"netbsd": {Name: "netbsd", Machine: "pc", DiskBus: "virtio", DiskTargetPrefix: "vd", CDROMBus: "ide", CDROMTargetPrefix: "hd", NICModel: "virtio", ConsoleSpeed: 115200, RNG: true, ACPI: true,
		NoCloudInit: "dvm's NetBSD profile makes no cloud-init seed: configure the guest in its image, or on its serial console (vmctl vm console); leave out --cloud-init"},
	"openbsd": {Name: "openbsd", Machine: "pc", DiskBus: "virtio", DiskTargetPrefix: "vd", CDROMBus: "ide", CDROMTargetPrefix: "hd", NICModel: "virtio", ConsoleSpeed: 115200, RNG: true, ACPI: true,
		NoCloudInit: "dvm's OpenBSD profile makes no cloud-init seed: configure the guest in its image, or on its serial console (vmctl vm console); leave out --cloud-init"},
	"linux": {Name: "linux", Machine: "q35", DiskBus: "virtio", DiskTargetPrefix: "vd", CDROMBus: "scsi", CDROMTargetPrefix: "sd", NICModel: "virtio", ConsoleSpeed: 115200, RNG: true, Balloon: true, ACPI: true, CloudInit: true},
}

// Default is the profile of a guest that names none.
const Default = "dragonfly"

// Names lists the known profiles, sorted, for error messages and help texts.
func Names() []string {
	names := make([]string, 0, len(All))
	for n := range All {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Lookup returns the profile of an OS name; "" is the default profile.
func Lookup(os string) (Profile, error) {
	if os == "" {
		os = Default
	}
	p, ok := All[os]
	if !ok {
		return Profile{}, fmt.Errorf("unknown os %q: use one of %s", os, strings.Join(Names(), ", "))
	}
	return p, nil
}
