package hypervisor

import (
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dvmproject/dvm/hypervisor/profile"
	"libvirt.org/go/libvirtxml"
)

// MetadataNS is the XML namespace of dvm's element in a domain's <metadata>. A domain
// carrying it is managed by dvm; every other domain on the host is left alone.
const MetadataNS = "https://dvmproject.github.io/xmlns/guest/1"

// Accelerator is how a node runs guest code.
type Accelerator string

const (
	AccelKVM  Accelerator = "kvm"  // hardware virtualisation
	AccelTCG  Accelerator = "tcg"  // QEMU's software emulation: hosts without working KVM
	AccelTest Accelerator = "test" // libvirt's in-process test driver
)

// domainType is the libvirt <domain type=…> of an accelerator.
func (a Accelerator) domainType() string {
	switch a {
	case AccelKVM:
		return "kvm"
	case AccelTest:
		return "test"
	}
	return "qemu"
}

// GuestSpec is everything the hypervisor needs to define a guest's domain. The cluster
// decides it; the node only turns it into libvirt XML.
type GuestSpec struct {
	Name        string
	UUID        string // stable for the guest's life, across moves
	OS          string // profile name; "" is profile.Default
	CPUs        int
	MemoryBytes int64
	Disk        *Disk // nil: no disk (a direct-boot guest)
	// ExtraDisks follow the first disk on the same bus (vdb, vdc, … for virtio).
	ExtraDisks []Disk
	Boot       *DirectBoot // nil: boot from the disk
	// ISO is install media (an image file of format iso): a read-only cdrom, booted
	// before the disk, so an installer runs first and, once the media is ejected
	// (EjectISO), the disk it installed boots. "" for none.
	ISO string
	// VNC, when set, gives the guest a graphical console (a VNC display, with a video
	// card), for installers that need one.
	VNC *VNC
	// Seed is a cloud-init NoCloud seed (an ISO image labelled cidata): a second
	// read-only cdrom, never booted. "" for none.
	Seed       string
	NICs       []NIC
	ConsoleLog string // file that receives the serial console's output; "" for none
	// Failover is the guest's policy (none, restart, twin), kept in the domain's
	// metadata so a node cut off from the cluster knows which guests to fence.
	Failover string
	// Lock, when set, is a lock libvirt's lock manager takes for the guest as a whole
	// (a domain <lease>), disk or no disk: while one QEMU of the guest runs, libvirtd on
	// any host that shares the lockspace refuses to start another.
	Lock *GuestLock
}

// VNC is a guest's VNC display: on one address of its node (never all of them: the
// node's management address or loopback), on a port libvirt chooses (5900 and up),
// behind a password. QEMU's VNC authentication reads at most 8 characters of it.
type VNC struct {
	Listen   string // an IP address
	Password string // 1 to MaxVNCPassword printable ASCII characters
}

// MaxVNCPassword is the longest password VNC authentication reads.
const MaxVNCPassword = 8

// GuestLock names a guest's lock in the lock manager's lockspace. With libvirt's
// virtlockd (lock_manager = "lockd"), Lockspace must be the lockspace directory
// exactly as qemu-lockd.conf's file_lockspace_dir spells it (virtlockd knows the
// lockspaces it was told of by that string), and the file Lockspace/Key must exist:
// virtlockd creates disk leases itself but not a domain's.
type GuestLock struct {
	Lockspace string // an absolute, clean path
	Key       string // a file name: no '/'
}

// MaxExtraDisks is how many disks a guest may have past its first: its disks are named
// a to z on their bus.
const MaxExtraDisks = 25

// Disk is a guest disk: a file on the node (usually on shared storage), or, when RBD
// is set, an RBD image QEMU reaches through its own librbd.
type Disk struct {
	Path   string
	Format string // "qcow2" (also when empty) or "raw"; other QEMU formats: see diskFormats
	RBD    *RBDDisk
}

// DirectBoot boots a kernel and initrd given as files, as the lab guest does.
type DirectBoot struct {
	Kernel, Initrd, Cmdline string
}

// NIC is one guest network interface attached to a bridge of the node.
type NIC struct {
	Bridge string
	MAC    string
	MTU    int // 0: libvirt's default; a guest on an overlay needs the bridge's MTU, told to its virtio NIC
}

// GuestMetadata is dvm's element in a domain's <metadata>.
type GuestMetadata struct {
	XMLName      xml.Name `xml:"dvm:guest"`
	NS           string   `xml:"xmlns:dvm,attr"`
	Name         string   `xml:"dvm:name"`
	OS           string   `xml:"dvm:os"`
	ConsoleSpeed int      `xml:"dvm:console-speed"`
	Failover     string   `xml:"dvm:failover,omitempty"`
	// ISO is the install media in the guest's cdrom, until it is ejected: what a node
	// compares with its assignment to know whether to eject it.
	ISO string `xml:"dvm:iso,omitempty"`
	// VNC says the guest has a VNC display, whose port its node reports.
	VNC bool `xml:"dvm:vnc,omitempty"`
}

var errNoName = errors.New("guest has no name")

// BuildDomain turns a guest spec into a libvirt domain definition for a node with the
// given accelerator. It validates what would otherwise surface as an obscure libvirt
// error later: a spec it accepts, libvirt accepts.
func BuildDomain(spec GuestSpec, accel Accelerator) (*libvirtxml.Domain, error) {
	prof, err := spec.check()
	if err != nil {
		return nil, err
	}
	meta, err := metadataXML(GuestMetadata{Name: spec.Name, OS: prof.Name, ConsoleSpeed: prof.ConsoleSpeed, Failover: spec.Failover, ISO: spec.ISO, VNC: spec.VNC != nil})
	if err != nil {
		return nil, err
	}
	d := &libvirtxml.Domain{
		Type:     accel.domainType(),
		Name:     spec.Name,
		UUID:     spec.UUID,
		Metadata: &libvirtxml.DomainMetadata{XML: meta},
		Memory:   &libvirtxml.DomainMemory{Value: uint(spec.MemoryBytes >> 10), Unit: "KiB"},
		VCPU:     &libvirtxml.DomainVCPU{Value: uint(spec.CPUs)},
		OS: &libvirtxml.DomainOS{
			Type: &libvirtxml.DomainOSType{Type: "hvm", Arch: "x86_64", Machine: prof.Machine},
		},
		Clock:      &libvirtxml.DomainClock{Offset: "utc"},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		// A crashed guest stays down where it is: restarting it is the cluster's decision
		// (on this node or another), never libvirt's behind the cluster's back.
		OnCrash: "destroy",
		Devices: &libvirtxml.DomainDeviceList{},
	}
	if accel == AccelTest {
		d.OS.Type.Arch = "" // the test driver knows only its own arch
	}
	if accel == AccelKVM {
		d.CPU = &libvirtxml.DomainCPU{Mode: "host-passthrough"}
	}
	if prof.ACPI {
		d.Features = &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}}
	}
	if b := spec.Boot; b != nil {
		d.OS.Kernel, d.OS.Initrd = b.Kernel, b.Initrd
		d.OS.Cmdline = withConsole(b.Cmdline, prof.ConsoleSpeed)
	} else if spec.ISO != "" {
		d.OS.BootDevices = []libvirtxml.DomainBootDevice{{Dev: "cdrom"}, {Dev: "hd"}}
	} else {
		d.OS.BootDevices = []libvirtxml.DomainBootDevice{{Dev: "hd"}}
	}
	if disk := spec.Disk; disk != nil {
		for i, disk := range append([]Disk{*disk}, spec.ExtraDisks...) {
			format := disk.Format
			if format == "" {
				format = "qcow2"
			}
			dd := libvirtxml.DomainDisk{
				Device: "disk",
				Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: format, Cache: "none", IO: "native"},
				Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: disk.Path}},
				Target: &libvirtxml.DomainDiskTarget{Dev: prof.DiskTargetPrefix + string(rune('a'+i)), Bus: prof.DiskBus},
			}
			if r := disk.RBD; r != nil {
				// A network disk: raw, through librbd, which has no native AIO.
				dd.Driver = &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw", Cache: "none"}
				dd.Source = &libvirtxml.DomainDiskSource{Network: r.source()}
			}
			d.Devices.Disks = append(d.Devices.Disks, dd)
		}
	}
	if spec.ISO != "" {
		d.Devices.Disks = append(d.Devices.Disks, isoDrive(prof, spec.ISO))
	}
	if spec.Seed != "" {
		seed := isoDrive(prof, spec.Seed)
		seed.Target.Dev = prof.CDROMTargetPrefix + "b"
		d.Devices.Disks = append(d.Devices.Disks, seed)
	}
	if prof.CDROMBus == "scsi" && (spec.ISO != "" || spec.Seed != "") {
		// A cdrom on the scsi bus is on this controller; without it libvirt picks an
		// emulated LSI adapter, which the guests' kernels need not have a driver for.
		zero := uint(0)
		d.Devices.Controllers = append(d.Devices.Controllers, libvirtxml.DomainController{Type: "scsi", Index: &zero, Model: "virtio-scsi"})
	}
	if l := spec.Lock; l != nil {
		// virtlockd joins <target path> and <lockspace> with '/' into the lockspace's
		// name: split the directory so the join gives it back.
		d.Devices.Leases = append(d.Devices.Leases, libvirtxml.DomainLease{
			Lockspace: filepath.Base(l.Lockspace), Key: l.Key,
			Target: &libvirtxml.DomainLeaseTarget{Path: filepath.Dir(l.Lockspace)},
		})
	}
	for _, nic := range spec.NICs {
		iface := libvirtxml.DomainInterface{
			Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: nic.Bridge}},
			Model:  &libvirtxml.DomainInterfaceModel{Type: prof.NICModel},
		}
		if nic.MAC != "" {
			iface.MAC = &libvirtxml.DomainInterfaceMAC{Address: nic.MAC}
		}
		if nic.MTU > 0 {
			iface.MTU = &libvirtxml.DomainInterfaceMTU{Size: uint(nic.MTU)}
		}
		if prof.NICNoTSO {
			iface.Driver = &libvirtxml.DomainInterfaceDriver{
				Host:  &libvirtxml.DomainInterfaceDriverHost{TSO4: "off", TSO6: "off"},
				Guest: &libvirtxml.DomainInterfaceDriverGuest{TSO4: "off", TSO6: "off"},
			}
		}
		d.Devices.Interfaces = append(d.Devices.Interfaces, iface)
	}
	if v := spec.VNC; v != nil {
		d.Devices.Graphics = []libvirtxml.DomainGraphic{{VNC: &libvirtxml.DomainGraphicVNC{
			AutoPort: "yes", Listen: v.Listen, Passwd: v.Password,
			Listeners: []libvirtxml.DomainGraphicListener{{Address: &libvirtxml.DomainGraphicListenerAddress{Address: v.Listen}}},
		}}}
	}
	port := uint(0)
	serial := libvirtxml.DomainSerial{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port},
	}
	if spec.ConsoleLog != "" {
		serial.Log = &libvirtxml.DomainChardevLog{File: spec.ConsoleLog, Append: "on"}
	}
	d.Devices.Serials = []libvirtxml.DomainSerial{serial}
	d.Devices.Consoles = []libvirtxml.DomainConsole{{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port},
	}}
	if prof.RNG {
		d.Devices.RNGs = []libvirtxml.DomainRNG{{Model: "virtio", Backend: &libvirtxml.DomainRNGBackend{Random: &libvirtxml.DomainRNGBackendRandom{Device: "/dev/urandom"}}}}
	}
	if prof.Balloon {
		d.Devices.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "virtio"}
	} else {
		d.Devices.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "none"}
	}
	return d, nil
}

// isoDrive is the guest's first cdrom, holding install media at path ("" for an
// empty drive: the media ejected).
func isoDrive(prof profile.Profile, path string) libvirtxml.DomainDisk {
	d := libvirtxml.DomainDisk{
		Device:   "cdrom",
		Driver:   &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
		Target:   &libvirtxml.DomainDiskTarget{Dev: prof.CDROMTargetPrefix + "a", Bus: prof.CDROMBus},
		ReadOnly: &libvirtxml.DomainDiskReadOnly{},
	}
	if path != "" {
		d.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: path}}
	}
	return d
}

// MaxCPUs bounds a guest's virtual CPUs: QEMU's pc and q35 machines take no more
// without x2apic tuning.
const MaxCPUs = 255

// check validates a spec and returns its profile. Errors name the guest and the field.
func (spec *GuestSpec) check() (profile.Profile, error) {
	if spec.Name == "" {
		return profile.Profile{}, errNoName
	}
	if err := checkText("name", spec.Name); err != nil || strings.Contains(spec.Name, "/") || strings.TrimSpace(spec.Name) != spec.Name {
		return profile.Profile{}, fmt.Errorf("guest name %q: use printable characters without '/' or surrounding spaces", spec.Name)
	}
	bad := func(format string, args ...any) (profile.Profile, error) {
		return profile.Profile{}, fmt.Errorf("guest %q: "+format, append([]any{spec.Name}, args...)...)
	}
	prof, err := profile.Lookup(spec.OS)
	if err != nil {
		return bad("%w", err)
	}
	if spec.UUID != "" && !uuidRE.MatchString(spec.UUID) {
		return bad("uuid %q is not a UUID such as 8a3d51a2-1c7e-4a8e-9a57-2f1c1c0e0b01", spec.UUID)
	}
	if spec.CPUs <= 0 || spec.CPUs > MaxCPUs {
		return bad("cpus must be 1 to %d, not %d", MaxCPUs, spec.CPUs)
	}
	if spec.MemoryBytes < 1<<20 {
		return bad("memory must be at least 1MiB, not %d bytes", spec.MemoryBytes)
	}
	if spec.Disk == nil && spec.Boot == nil {
		return bad("neither a disk nor a kernel to boot")
	}
	if spec.Disk == nil && len(spec.ExtraDisks) > 0 {
		return bad("extra disks without a first disk")
	}
	if len(spec.ExtraDisks) > MaxExtraDisks {
		return bad("%d extra disks: at most %d", len(spec.ExtraDisks), MaxExtraDisks)
	}
	if spec.Disk != nil {
		for _, d := range append([]Disk{*spec.Disk}, spec.ExtraDisks...) {
			if d.RBD != nil {
				if err := d.RBD.check(); err != nil {
					return bad("%w", err)
				}
				continue
			}
			if err := checkPath("disk", d.Path); err != nil {
				return bad("%w", err)
			}
			if !slices.Contains(diskFormats, d.Format) {
				return bad("disk format %q: use qcow2 or raw (or one of %s)", d.Format, strings.Join(diskFormats[3:], ", "))
			}
		}
	}
	if spec.ISO != "" {
		if err := checkPath("iso", spec.ISO); err != nil {
			return bad("%w", err)
		}
		if spec.Disk == nil {
			return bad("install media without a disk to install on")
		}
	}
	if spec.Seed != "" {
		if err := checkPath("cloud-init seed", spec.Seed); err != nil {
			return bad("%w", err)
		}
	}
	if v := spec.VNC; v != nil {
		ip := net.ParseIP(v.Listen)
		if ip == nil || ip.IsUnspecified() {
			return bad("VNC listen address %q: give the node's management address or loopback, an IP address of one interface (never 0.0.0.0 or ::)", v.Listen)
		}
		if n := len(v.Password); n == 0 || n > MaxVNCPassword || strings.IndexFunc(v.Password, func(r rune) bool { return r < '!' || r > '~' }) >= 0 {
			return bad("VNC password: give 1 to %d printable ASCII characters without spaces", MaxVNCPassword)
		}
	}
	if l := spec.Lock; l != nil {
		if err := checkPath("lockspace", l.Lockspace); err != nil {
			return bad("%w", err)
		}
		if l.Lockspace != filepath.Clean(l.Lockspace) || filepath.Dir(l.Lockspace) == "/" {
			// virtlockd names the lockspace "<target path>/<lockspace>": a directory
			// right under / would come out as //name and match no lockspace.
			return bad("lockspace %q: write the directory as a clean absolute path, as file_lockspace_dir names it, below a directory of its own (not /NAME)", l.Lockspace)
		}
		if l.Key == "" || strings.ContainsAny(l.Key, "/") || l.Key == "." || l.Key == ".." || checkText("lock key", l.Key) != nil {
			return bad("lock key %q: use a file name (printable, no '/')", l.Key)
		}
	}
	if b := spec.Boot; b != nil {
		if err := checkPath("kernel", b.Kernel); err != nil {
			return bad("%w", err)
		}
		if b.Initrd != "" {
			if err := checkPath("initrd", b.Initrd); err != nil {
				return bad("%w", err)
			}
		}
		if err := checkText("kernel cmdline", b.Cmdline); err != nil {
			return bad("%w", err)
		}
	}
	for i, nic := range spec.NICs {
		if nic.Bridge == "" {
			return bad("nic %d has no bridge", i)
		}
		if len(nic.Bridge) > 15 || strings.ContainsAny(nic.Bridge, "/ ") || checkText("bridge", nic.Bridge) != nil {
			return bad("nic %d: bridge %q is not a Linux interface name (at most 15 characters, no '/' or space)", i, nic.Bridge)
		}
		if nic.MAC != "" {
			// libvirt reads the colon form only; net.ParseMAC takes others too.
			hw, err := net.ParseMAC(nic.MAC)
			if err != nil || !macRE.MatchString(nic.MAC) || hw[0]&1 != 0 {
				return bad("nic %d: MAC %q is not a unicast Ethernet address such as 52:54:00:12:34:56", i, nic.MAC)
			}
		}
		if nic.MTU < 0 || nic.MTU > 65535 {
			return bad("nic %d: MTU %d is out of range 0..65535", i, nic.MTU)
		}
	}
	if spec.ConsoleLog != "" {
		if err := checkPath("console log", spec.ConsoleLog); err != nil {
			return bad("%w", err)
		}
	}
	switch spec.Failover {
	case "", "none", "restart", "twin":
	default:
		return bad("failover %q: use none, restart or twin", spec.Failover)
	}
	return prof, nil
}

// diskFormats are the image formats a disk may have ("" is qcow2): QEMU's, as libvirt
// names them.
var diskFormats = []string{"", "qcow2", "raw", "qed", "vdi", "vhdx", "vmdk", "vpc"}

var macRE = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// checkText refuses what XML cannot carry as it is: text that is not UTF-8, and control
// characters.
func checkText(field, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s %q is not UTF-8", field, s)
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == 0xFFFE || r == 0xFFFF {
			return fmt.Errorf("%s %q holds a control character", field, s)
		}
	}
	return nil
}

// checkPath wants an absolute file path that XML can carry.
func checkPath(field, p string) error {
	if err := checkText(field, p); err != nil {
		return err
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%s %q is not an absolute path", field, p)
	}
	return nil
}

// withConsole puts the profile's serial console on the kernel cmdline unless the image
// already names one.
func withConsole(cmdline string, speed int) string {
	if strings.Contains(cmdline, "console=") {
		return cmdline
	}
	c := "console=ttyS0," + strconv.Itoa(speed)
	if cmdline == "" {
		return c
	}
	return cmdline + " " + c
}

// ParseMetadata reads dvm's element from a domain's metadata; ok is false for a domain
// that dvm does not manage.
func ParseMetadata(s string) (GuestMetadata, bool) {
	var m struct {
		Name         string `xml:"name"`
		OS           string `xml:"os"`
		ConsoleSpeed int    `xml:"console-speed"`
		Failover     string `xml:"failover"`
		ISO          string `xml:"iso"`
		VNC          bool   `xml:"vnc"`
	}
	if s == "" || xml.Unmarshal([]byte(s), &m) != nil || m.Name == "" {
		return GuestMetadata{}, false
	}
	return GuestMetadata{Name: m.Name, OS: m.OS, ConsoleSpeed: m.ConsoleSpeed, Failover: m.Failover, ISO: m.ISO, VNC: m.VNC}, true
}
