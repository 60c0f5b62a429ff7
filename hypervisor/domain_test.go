package hypervisor

import (
	"strings"
	"testing"

	"github.com/dvmproject/dvm/hypervisor/profile"
	"libvirt.org/go/libvirtxml"
)

// roundTrip builds a domain, marshals it as libvirt would receive it, and parses it back,
// so the checks below see the XML, not the Go struct.
func roundTrip(t *testing.T, spec GuestSpec, accel Accelerator) *libvirtxml.Domain {
	t.Helper()
	d, err := BuildDomain(spec, accel)
	if err != nil {
		t.Fatal(err)
	}
	x, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var back libvirtxml.Domain
	if err := back.Unmarshal(x); err != nil {
		t.Fatal(err)
	}
	return &back
}

func TestDomainPerProfile(t *testing.T) {
	for _, name := range profile.Names() {
		t.Run(name, func(t *testing.T) {
			spec := GuestSpec{Name: "g1", OS: name, CPUs: 2, MemoryBytes: 2 << 30,
				Disk: &Disk{Path: "/shared/disks/g1.qcow2"},
				NICs: []NIC{{Bridge: "dvmbr42", MAC: "52:54:00:12:34:56"}}, ConsoleLog: "/var/log/g1.log"}
			d := roundTrip(t, spec, AccelTCG)
			prof := profile.All[name]
			if d.Type != "qemu" || d.OS.Type.Machine != prof.Machine || d.OS.Type.Arch != "x86_64" {
				t.Errorf("type %q machine %q arch %q", d.Type, d.OS.Type.Machine, d.OS.Type.Arch)
			}
			if d.Memory.Value != 2<<20 || d.Memory.Unit != "KiB" || d.VCPU.Value != 2 {
				t.Errorf("memory %d %s, vcpu %d", d.Memory.Value, d.Memory.Unit, d.VCPU.Value)
			}
			if len(d.Devices.Disks) != 1 {
				t.Fatalf("%d disks", len(d.Devices.Disks))
			}
			disk := d.Devices.Disks[0]
			if disk.Target.Bus != "virtio" || disk.Target.Dev != "vda" || disk.Source.File.File != "/shared/disks/g1.qcow2" || disk.Driver.Type != "qcow2" {
				t.Errorf("disk %+v %+v", disk.Target, disk.Driver)
			}
			if len(d.Devices.Interfaces) != 1 {
				t.Fatalf("%d interfaces", len(d.Devices.Interfaces))
			}
			nic := d.Devices.Interfaces[0]
			if nic.Model.Type != "virtio" || nic.Source.Bridge.Bridge != "dvmbr42" || nic.MAC.Address != "52:54:00:12:34:56" {
				t.Errorf("nic %+v", nic)
			}
			tsoOff := nic.Driver != nil && nic.Driver.Host.TSO4 == "off" && nic.Driver.Guest.TSO4 == "off"
			if tsoOff != prof.NICNoTSO {
				t.Errorf("tso off = %v, profile wants %v", tsoOff, prof.NICNoTSO)
			}
			if len(d.Devices.Serials) != 1 || d.Devices.Serials[0].Log.File != "/var/log/g1.log" || len(d.Devices.Consoles) != 1 || d.Devices.Consoles[0].Target.Type != "serial" {
				t.Errorf("serial console missing or without log")
			}
			// A pty serial with a <log>: libvirt opens consoles only on a pty, and the
			// log keeps being written while one is open (OpenConsole).
			if s := d.Devices.Serials; len(s) == 1 && (s[0].Source == nil || s[0].Source.Pty == nil || s[0].Source.File != nil) {
				t.Errorf("serial is not a pty: %+v", s[0].Source)
			}
			if (len(d.Devices.RNGs) == 1) != prof.RNG {
				t.Errorf("rng devices %d, profile rng %v", len(d.Devices.RNGs), prof.RNG)
			}
			if d.OnCrash != "destroy" {
				t.Errorf("on_crash %q: a crashed guest must stay down for the cluster to decide", d.OnCrash)
			}
			m, ok := ParseMetadata(d.Metadata.XML)
			if !ok || m.Name != "g1" || m.OS != name || m.ConsoleSpeed != 115200 {
				t.Errorf("metadata %q -> %+v %v", d.Metadata.XML, m, ok)
			}
		})
	}
}

func TestDragonFlyDefaults(t *testing.T) {
	d := roundTrip(t, GuestSpec{Name: "dfly", CPUs: 1, MemoryBytes: 1 << 30, Disk: &Disk{Path: "/d.qcow2"}, Failover: "restart"}, AccelKVM)
	if d.Type != "kvm" || d.CPU == nil || d.CPU.Mode != "host-passthrough" {
		t.Errorf("kvm node: type %q cpu %+v", d.Type, d.CPU)
	}
	if d.OS.Type.Machine != "pc" || d.Devices.Disks[0].Target.Bus != "virtio" {
		t.Errorf("DragonFly wants pc machine and virtio-blk (vbd), got %q %q", d.OS.Type.Machine, d.Devices.Disks[0].Target.Bus)
	}
	m, _ := ParseMetadata(d.Metadata.XML)
	if m.OS != "dragonfly" || m.ConsoleSpeed != 115200 || m.Failover != "restart" {
		t.Errorf("default profile: %+v", m)
	}
}

func TestDirectBootConsole(t *testing.T) {
	d := roundTrip(t, GuestSpec{Name: "lab1", OS: "linux", CPUs: 1, MemoryBytes: 128 << 20,
		Boot: &DirectBoot{Kernel: "/img/kernel", Initrd: "/img/initrd", Cmdline: "quiet"}}, AccelTCG)
	if d.OS.Kernel != "/img/kernel" || d.OS.Initrd != "/img/initrd" || d.OS.Cmdline != "quiet console=ttyS0,115200" {
		t.Errorf("direct boot: %q %q %q", d.OS.Kernel, d.OS.Initrd, d.OS.Cmdline)
	}
	if len(d.Devices.Disks) != 0 || len(d.OS.BootDevices) != 0 {
		t.Errorf("a diskless direct-boot guest got disks or boot devices")
	}
	d = roundTrip(t, GuestSpec{Name: "lab2", OS: "linux", CPUs: 1, MemoryBytes: 128 << 20,
		Boot: &DirectBoot{Kernel: "/k", Cmdline: "console=ttyS0"}}, AccelTCG)
	if d.OS.Cmdline != "console=ttyS0" {
		t.Errorf("an image's own console= must be kept, got %q", d.OS.Cmdline)
	}
}

func TestBuildDomainRejects(t *testing.T) {
	ok := GuestSpec{Name: "g", CPUs: 1, MemoryBytes: 1 << 30, Disk: &Disk{Path: "/d"}}
	bad := map[string]func(s *GuestSpec){
		"no name":     func(s *GuestSpec) { s.Name = "" },
		"unknown os":  func(s *GuestSpec) { s.OS = "windows" },
		"zero cpus":   func(s *GuestSpec) { s.CPUs = 0 },
		"tiny memory": func(s *GuestSpec) { s.MemoryBytes = 1000 },
		"no boot":     func(s *GuestSpec) { s.Disk = nil },
		"nic bridge":  func(s *GuestSpec) { s.NICs = []NIC{{}} },
		"nic mtu":     func(s *GuestSpec) { s.NICs = []NIC{{Bridge: "dvmbr1", MTU: -1}} },
		// Found by FuzzBuildDomain: libvirt refuses these, or XML cannot carry them.
		"uuid":             func(s *GuestSpec) { s.UUID = "0" },
		"disk format":      func(s *GuestSpec) { s.Disk.Format = "0" },
		"mac":              func(s *GuestSpec) { s.NICs = []NIC{{Bridge: "br0", MAC: "0"}} },
		"mac no colons":    func(s *GuestSpec) { s.NICs = []NIC{{Bridge: "br0", MAC: "525400123456"}} },
		"mac multicast":    func(s *GuestSpec) { s.NICs = []NIC{{Bridge: "br0", MAC: "01:00:5e:00:00:01"}} },
		"name slash":       func(s *GuestSpec) { s.Name = "a/b" },
		"bridge not utf-8": func(s *GuestSpec) { s.NICs = []NIC{{Bridge: "\xff"}} },
		"control char":     func(s *GuestSpec) { s.Disk.Path = "/d\x01" },
		// What libvirt's test driver takes but QEMU, or the host, would not.
		"too many cpus":   func(s *GuestSpec) { s.CPUs = MaxCPUs + 1 },
		"relative disk":   func(s *GuestSpec) { s.Disk.Path = "d.qcow2" },
		"no kernel":       func(s *GuestSpec) { s.Disk, s.Boot = nil, &DirectBoot{Cmdline: "quiet"} },
		"long bridge":     func(s *GuestSpec) { s.NICs = []NIC{{Bridge: "dvmbr1234567890123"}} },
		"console log":     func(s *GuestSpec) { s.ConsoleLog = "g.log" },
		"failover":        func(s *GuestSpec) { s.Failover = "sometimes" },
		"name in spaces":  func(s *GuestSpec) { s.Name = " g" },
		"lock relative":   func(s *GuestSpec) { s.Lock = &GuestLock{Lockspace: "locks", Key: "k"} },
		"lock unclean":    func(s *GuestSpec) { s.Lock = &GuestLock{Lockspace: "/srv/locks/", Key: "k"} },
		"lock root":       func(s *GuestSpec) { s.Lock = &GuestLock{Lockspace: "/", Key: "k"} },
		"lock under root": func(s *GuestSpec) { s.Lock = &GuestLock{Lockspace: "/locks", Key: "k"} },
		"lock key slash":  func(s *GuestSpec) { s.Lock = &GuestLock{Lockspace: "/srv/locks", Key: "a/b"} },
		"lock key dots":   func(s *GuestSpec) { s.Lock = &GuestLock{Lockspace: "/srv/locks", Key: ".."} },
		"lock no key":     func(s *GuestSpec) { s.Lock = &GuestLock{Lockspace: "/srv/locks"} },
	}
	for name, mutate := range bad {
		s := ok
		disk := *ok.Disk
		s.Disk = &disk
		mutate(&s)
		if _, err := BuildDomain(s, AccelTCG); err == nil {
			t.Errorf("%s: accepted", name)
		} else if name == "unknown os" && !strings.Contains(err.Error(), "dragonfly") {
			t.Errorf("unknown os error does not list the profiles: %v", err)
		}
	}
}

// TestGuestLock: a guest's lock becomes a domain <lease> whose target path and
// lockspace virtlockd joins back into the lockspace directory; no lock, no lease.
func TestGuestLock(t *testing.T) {
	spec := GuestSpec{Name: "g1", CPUs: 1, MemoryBytes: 1 << 30, Boot: &DirectBoot{Kernel: "/images/lab/kernel"},
		Lock: &GuestLock{Lockspace: "/srv/dvm/locks", Key: "dvm-guest-42"}}
	d := roundTrip(t, spec, AccelTCG)
	if len(d.Devices.Leases) != 1 {
		t.Fatalf("%d leases, want 1", len(d.Devices.Leases))
	}
	l := d.Devices.Leases[0]
	if l.Target == nil || l.Target.Path+"/"+l.Lockspace != "/srv/dvm/locks" || l.Key != "dvm-guest-42" {
		t.Errorf("lease %+v target %+v: virtlockd would look for another lockspace or key", l, l.Target)
	}
	spec.Lock = nil
	if d := roundTrip(t, spec, AccelTCG); len(d.Devices.Leases) != 0 {
		t.Errorf("a guest without a lock has %d leases", len(d.Devices.Leases))
	}
}

// TestNICMTU: an overlay NIC carries the bridge's MTU to the guest (<mtu size=…/>), and a
// NIC without one gets no <mtu> element.
func TestNICMTU(t *testing.T) {
	d := roundTrip(t, GuestSpec{Name: "g", OS: "linux", CPUs: 1, MemoryBytes: 128 << 20, Boot: &DirectBoot{Kernel: "/k"},
		NICs: []NIC{{Bridge: "dvmbr42", MAC: "52:54:00:00:00:01", MTU: 1450}, {Bridge: "br0"}}}, AccelTCG)
	if len(d.Devices.Interfaces) != 2 {
		t.Fatalf("%d interfaces", len(d.Devices.Interfaces))
	}
	if m := d.Devices.Interfaces[0].MTU; m == nil || m.Size != 1450 {
		t.Errorf("overlay NIC mtu %+v; want 1450", m)
	}
	if m := d.Devices.Interfaces[1].MTU; m != nil {
		t.Errorf("NIC without MTU got %+v", m)
	}
}

// TestExtraDisks: extra disks follow the first on its bus (vdb, vdc), each with its
// format; more than MaxExtraDisks, or extra disks without a first, are refused.
func TestExtraDisks(t *testing.T) {
	spec := GuestSpec{Name: "g1", OS: "dragonfly", CPUs: 1, MemoryBytes: 1 << 30,
		Disk:       &Disk{Path: "/d/g1.qcow2", Format: "qcow2"},
		ExtraDisks: []Disk{{Path: "/d/g1.disk1.qcow2", Format: "qcow2"}, {Path: "/d/g1.disk2.qcow2"}}}
	d := roundTrip(t, spec, AccelTCG)
	var got []string
	for _, disk := range d.Devices.Disks {
		got = append(got, disk.Target.Dev+"="+disk.Source.File.File+"/"+disk.Driver.Type+"/"+disk.Target.Bus)
	}
	want := "vda=/d/g1.qcow2/qcow2/virtio vdb=/d/g1.disk1.qcow2/qcow2/virtio vdc=/d/g1.disk2.qcow2/qcow2/virtio"
	if strings.Join(got, " ") != want {
		t.Fatalf("disks %v, want %s", got, want)
	}
	many := spec
	many.ExtraDisks = make([]Disk, MaxExtraDisks+1)
	for i := range many.ExtraDisks {
		many.ExtraDisks[i] = Disk{Path: "/d/x.qcow2"}
	}
	if _, err := BuildDomain(many, AccelTCG); err == nil || !strings.Contains(err.Error(), "at most 25") {
		t.Errorf("26 extra disks: %v", err)
	}
	none := spec
	none.Disk, none.Boot = nil, &DirectBoot{Kernel: "/k"}
	if _, err := BuildDomain(none, AccelTCG); err == nil || !strings.Contains(err.Error(), "without a first disk") {
		t.Errorf("extra disks alone: %v", err)
	}
}
