package hypervisor

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/hypervisor/profile"
	"libvirt.org/go/libvirtxml"
)

// FuzzBuildDomain turns arbitrary guest specs into domain XML. BuildDomain must never
// panic and must refuse, with an error naming what is wrong, what it cannot turn into
// a domain; what it accepts must marshal, parse back with libvirtxml to the same XML,
// keep what the spec said (name, size, disk, kernel, NICs, console, metadata), and be
// accepted by libvirt's test driver, which checks the definition as libvirt does.
// profile picks one of the known profiles (seeds cover each), or past them os itself.
// A restart guest is given a lock, as dvmd gives one: its lockspace is the console
// log's directory and its key comes from the uuid, so both are fuzzed without a change
// to the corpus's arguments.
func FuzzBuildDomain(f *testing.F) {
	f.Add("g1", "8a3d51a2-1c7e-4a8e-9a57-2f1c1c0e0b01", "", uint8(0), 2, int64(2<<30), "/shared/disks/g1.qcow2", "qcow2",
		"", "", "", "dvmbr42", "52:54:00:12:34:56", 1450, "/var/log/dvm/g1.log", "restart", uint8(2))
	names := profile.Names()
	node := openTestNode(f, Capacity{CPUs: 64, MemoryBytes: 256 << 30})
	f.Fuzz(func(t *testing.T, name, uuid, os string, pick uint8, cpus int, memory int64, disk, format,
		kernel, initrd, cmdline, bridge, mac string, mtu int, console, failover string, accel uint8) {
		spec := GuestSpec{Name: name, UUID: uuid, OS: os, CPUs: cpus, MemoryBytes: memory, ConsoleLog: console, Failover: failover}
		if int(pick) < len(names) {
			spec.OS = names[pick]
		}
		if disk != "" || format != "" {
			spec.Disk = &Disk{Path: disk, Format: format}
		}
		if kernel != "" || initrd != "" || cmdline != "" {
			spec.Boot = &DirectBoot{Kernel: kernel, Initrd: initrd, Cmdline: cmdline}
		}
		if bridge != "" || mac != "" || mtu != 0 {
			spec.NICs = []NIC{{Bridge: bridge, MAC: mac, MTU: mtu}}
		}
		if failover == "restart" {
			spec.Lock = &GuestLock{Lockspace: filepath.Dir(console), Key: "dvm-guest-" + uuid}
		}
		a := []Accelerator{AccelKVM, AccelTCG, AccelTest}[accel%3]
		d, err := BuildDomain(spec, a)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an empty error")
			}
			return
		}
		x, err := d.Marshal()
		if err != nil {
			t.Fatalf("accepted, but the domain does not marshal: %v", err)
		}
		var back libvirtxml.Domain
		if err := back.Unmarshal(x); err != nil {
			t.Fatalf("the XML does not parse back: %v\n%s", err, x)
		}
		if y, err := back.Marshal(); err != nil || y != x {
			t.Fatalf("the XML changes when parsed and written again (%v):\n%s\n%s", err, x, y)
		}
		checkSpecKept(t, spec, &back)
		// libvirt's test driver defines only domains of its own type.
		if err := node.Define(spec); err != nil {
			t.Fatalf("accepted, but libvirt's test driver refuses it: %v\n%s", err, x)
		}
		if err := node.Undefine(spec.Name); err != nil {
			t.Fatalf("undefine %q: %v", spec.Name, err)
		}
	})
}

// checkSpecKept checks that the parsed domain says what the spec said.
func checkSpecKept(t *testing.T, spec GuestSpec, d *libvirtxml.Domain) {
	t.Helper()
	prof, _ := profile.Lookup(spec.OS)
	fail := func(what string, got, want any) {
		t.Helper()
		t.Fatalf("%s: the XML says %v, the spec %v", what, got, want)
	}
	if d.Name != spec.Name {
		fail("name", d.Name, spec.Name)
	}
	if !strings.EqualFold(d.UUID, spec.UUID) {
		fail("uuid", d.UUID, spec.UUID)
	}
	if d.Memory == nil || int64(d.Memory.Value) != spec.MemoryBytes>>10 || d.VCPU == nil || int(d.VCPU.Value) != spec.CPUs {
		fail("size", []any{d.Memory, d.VCPU}, []any{spec.MemoryBytes, spec.CPUs})
	}
	if spec.Disk != nil {
		if len(d.Devices.Disks) != 1 || d.Devices.Disks[0].Source.File.File != spec.Disk.Path {
			fail("disk", d.Devices.Disks, spec.Disk.Path)
		}
	}
	if b := spec.Boot; b != nil {
		if d.OS.Kernel != b.Kernel || d.OS.Initrd != b.Initrd || !strings.HasPrefix(d.OS.Cmdline, b.Cmdline) {
			fail("kernel, initrd, cmdline", []string{d.OS.Kernel, d.OS.Initrd, d.OS.Cmdline}, []string{b.Kernel, b.Initrd, b.Cmdline})
		}
	}
	if len(d.Devices.Interfaces) != len(spec.NICs) {
		fail("interfaces", len(d.Devices.Interfaces), len(spec.NICs))
	}
	for i, nic := range spec.NICs {
		got := d.Devices.Interfaces[i]
		if got.Source.Bridge.Bridge != nic.Bridge || (nic.MAC != "" && !strings.EqualFold(got.MAC.Address, nic.MAC)) {
			fail("nic", got, nic)
		}
	}
	if spec.ConsoleLog != "" && (len(d.Devices.Serials) != 1 || d.Devices.Serials[0].Log == nil || d.Devices.Serials[0].Log.File != spec.ConsoleLog) {
		fail("console log", d.Devices.Serials, spec.ConsoleLog)
	}
	if l := spec.Lock; l != nil {
		if len(d.Devices.Leases) != 1 || d.Devices.Leases[0].Target == nil || d.Devices.Leases[0].Key != l.Key ||
			d.Devices.Leases[0].Target.Path+"/"+d.Devices.Leases[0].Lockspace != l.Lockspace {
			fail("lock", d.Devices.Leases, l)
		}
	}
	m, ok := ParseMetadata(d.Metadata.XML)
	if !ok || m.Name != spec.Name || m.OS != prof.Name || m.Failover != spec.Failover {
		fail("metadata", m, spec)
	}
}
