package hypervisor

import (
	"strings"
	"testing"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

func TestISODrivePerProfile(t *testing.T) {
	for os, want := range map[string]string{"dragonfly": "hda/ide", "linux": "sda/scsi"} {
		spec := GuestSpec{Name: "inst", OS: os, CPUs: 1, MemoryBytes: 1 << 30,
			Disk: &Disk{Path: "/d/inst.qcow2"}, ISO: "/images/dfly/disk.iso"}
		d := roundTrip(t, spec, AccelTCG)
		var boot []string
		for _, b := range d.OS.BootDevices {
			boot = append(boot, b.Dev)
		}
		if strings.Join(boot, ",") != "cdrom,hd" {
			t.Errorf("%s: boot order %v, want cdrom,hd", os, boot)
		}
		cd := d.Devices.Disks[len(d.Devices.Disks)-1]
		if cd.Device != "cdrom" || cd.ReadOnly == nil || cd.Source.File.File != spec.ISO || cd.Target.Dev+"/"+cd.Target.Bus != want {
			t.Errorf("%s: cdrom %+v target %+v, want read-only %s on %s", os, cd, cd.Target, spec.ISO, want)
		}
		// Linux's cdroms are on virtio-scsi: Debian's cloud kernel has no AHCI driver.
		var ctl []string
		for _, c := range d.Devices.Controllers {
			if c.Type == "scsi" {
				ctl = append(ctl, c.Model)
			}
		}
		if wantCtl := map[string]string{"dragonfly": "", "linux": "virtio-scsi"}[os]; strings.Join(ctl, ",") != wantCtl {
			t.Errorf("%s: scsi controllers %v, want %q", os, ctl, wantCtl)
		}
	}
	noDisk := GuestSpec{Name: "inst", CPUs: 1, MemoryBytes: 1 << 30, Boot: &DirectBoot{Kernel: "/k"}, ISO: "/i.iso"}
	if _, err := BuildDomain(noDisk, AccelTCG); err == nil || !strings.Contains(err.Error(), "without a disk") {
		t.Errorf("install media without a disk: %v", err)
	}
	relative := GuestSpec{Name: "inst", CPUs: 1, MemoryBytes: 1 << 30, Disk: &Disk{Path: "/d/x.qcow2"}, ISO: "i.iso"}
	if _, err := BuildDomain(relative, AccelTCG); err == nil || !strings.Contains(err.Error(), "not an absolute path") {
		t.Errorf("relative iso: %v", err)
	}
}

// TestEjectISO: the media leaves the definition (the drive stays, empty) and the
// listed metadata, of a stopped guest and of a running one; a guest without media
// is left alone.
func TestEjectISO(t *testing.T) {
	n := openTestNode(t, Capacity{CPUs: 8, MemoryBytes: 16 << 30})
	for _, run := range []bool{false, true} {
		name := "stopped"
		if run {
			name = "running"
		}
		spec := GuestSpec{Name: name, OS: "dragonfly", CPUs: 1, MemoryBytes: 1 << 30,
			Disk: &Disk{Path: "/d/" + name + ".qcow2"}, ISO: "/images/dfly/disk.iso"}
		if err := n.Define(spec); err != nil {
			t.Fatal(err)
		}
		if run {
			if err := n.Start(name); err != nil {
				t.Fatal(err)
			}
		}
		if g := listed(t, n, name); g.ISO != spec.ISO {
			t.Fatalf("%s: listed ISO %q, want %q", name, g.ISO, spec.ISO)
		}
		for range 2 { // the second finds nothing to do
			if err := n.EjectISO(name); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		g := listed(t, n, name)
		if g.ISO != "" || (g.State == StateRunning) != run {
			t.Fatalf("%s after eject: %+v", name, g)
		}
		def := inactiveXML(t, n, name)
		var cdroms int
		for _, d := range def.Devices.Disks {
			if d.Device == "cdrom" {
				cdroms++
				if d.Source != nil && d.Source.File != nil && d.Source.File.File != "" {
					t.Errorf("%s: cdrom still holds %+v", name, d.Source.File)
				}
			}
		}
		if cdroms != 1 || len(def.Devices.Disks) != 2 || def.UUID == "" {
			t.Errorf("%s: disks after eject %+v", name, def.Devices.Disks)
		}
	}
	plain := GuestSpec{Name: "plain", CPUs: 1, MemoryBytes: 1 << 30, Disk: &Disk{Path: "/d/plain.qcow2"}}
	if err := n.Define(plain); err != nil {
		t.Fatal(err)
	}
	before := inactiveXML(t, n, "plain")
	if err := n.EjectISO("plain"); err != nil {
		t.Fatal(err)
	}
	if after := inactiveXML(t, n, "plain"); len(after.Devices.Disks) != len(before.Devices.Disks) {
		t.Errorf("a guest without media changed: %+v", after.Devices.Disks)
	}
}

func listed(t *testing.T, n *Node, name string) Guest {
	t.Helper()
	list, err := n.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range list {
		if g.Name == name {
			return g
		}
	}
	t.Fatalf("guest %s not listed: %+v", name, list)
	return Guest{}
}

func inactiveXML(t *testing.T, n *Node, name string) libvirtxml.Domain {
	t.Helper()
	d, err := n.lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	x, err := d.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		t.Fatal(err)
	}
	var def libvirtxml.Domain
	if err := def.Unmarshal(x); err != nil {
		t.Fatal(err)
	}
	return def
}

// TestVNCDisplay: a guest's VNC display listens on the one address given, behind its
// password; every address, no address and a password VNC cannot carry are refused;
// a node's listen address is its management address's host, or loopback; a migration
// moves the display to the destination's address, on a port the destination chooses.
func TestVNCDisplay(t *testing.T) {
	spec := GuestSpec{Name: "inst", OS: "linux", CPUs: 1, MemoryBytes: 1 << 30, Disk: &Disk{Path: "/d/inst.qcow2"},
		VNC: &VNC{Listen: "10.0.0.5", Password: "abcd2345"}}
	d := roundTrip(t, spec, AccelTCG)
	if len(d.Devices.Graphics) != 1 {
		t.Fatalf("graphics %+v", d.Devices.Graphics)
	}
	v := d.Devices.Graphics[0].VNC
	if v == nil || v.Listen != "10.0.0.5" || v.Passwd != "abcd2345" || v.AutoPort != "yes" ||
		len(v.Listeners) != 1 || v.Listeners[0].Address == nil || v.Listeners[0].Address.Address != "10.0.0.5" {
		t.Fatalf("vnc %+v", v)
	}
	if m, ok := ParseMetadata(d.Metadata.XML); !ok || !m.VNC {
		t.Errorf("metadata %q does not say vnc", d.Metadata.XML)
	}
	for _, bad := range []VNC{{Listen: "0.0.0.0", Password: "x"}, {Listen: "::", Password: "x"}, {Listen: "", Password: "x"},
		{Listen: "node1", Password: "x"}, {Listen: "127.0.0.1"}, {Listen: "127.0.0.1", Password: "123456789"}, {Listen: "127.0.0.1", Password: "a b"}} {
		s := spec
		s.VNC = &bad
		if _, err := BuildDomain(s, AccelTCG); err == nil || !strings.Contains(err.Error(), "VNC") {
			t.Errorf("VNC %+v: %v", bad, err)
		}
	}
	for in, want := range map[string]string{"10.0.0.5:7460": "10.0.0.5", "10.0.0.5": "10.0.0.5", "0.0.0.0:7460": "127.0.0.1",
		"[::]:7460": "127.0.0.1", ":7460": "127.0.0.1", "node1:7460": "127.0.0.1", "": "127.0.0.1", "[fd00::5]:7460": "fd00::5"} {
		if got := VNCListen(in); got != want {
			t.Errorf("VNCListen(%q) = %q, want %q", in, got, want)
		}
	}
	x, _ := d.Marshal()
	moved, ok, err := vncMoved(strings.Replace(x, "autoport=\"yes\"", "port=\"5901\" autoport=\"yes\"", 1), VNCListen(migrateHost("tcp://10.0.0.6")))
	if err != nil || !ok || !strings.Contains(moved, `listen="10.0.0.6"`) || strings.Contains(moved, "10.0.0.5") || strings.Contains(moved, "5901") {
		t.Fatalf("moved %v %v:\n%s", ok, err, moved)
	}
	plain := spec
	plain.VNC = nil
	px, _ := roundTrip(t, plain, AccelTCG).Marshal()
	if _, ok, err := vncMoved(px, "10.0.0.6"); ok || err != nil {
		t.Errorf("a guest without VNC moved: %v %v", ok, err)
	}
}

// TestSeedDrive: a cloud-init seed is a second read-only cdrom, after the install
// media's, never in the boot order; ejecting the media leaves it.
func TestSeedDrive(t *testing.T) {
	n := openTestNode(t, Capacity{CPUs: 4, MemoryBytes: 8 << 30})
	spec := GuestSpec{Name: "web", OS: "linux", CPUs: 1, MemoryBytes: 1 << 30, Disk: &Disk{Path: "/d/web.qcow2"},
		ISO: "/images/deb/disk.iso", Seed: "/d/web.cidata.iso"}
	if err := n.Define(spec); err != nil {
		t.Fatal(err)
	}
	drives := func() string {
		var out []string
		for _, d := range inactiveXML(t, n, "web").Devices.Disks {
			src := "empty"
			if d.Source != nil && d.Source.File != nil && d.Source.File.File != "" {
				src = d.Source.File.File
			}
			ro := ""
			if d.ReadOnly != nil {
				ro = ",ro"
			}
			out = append(out, d.Device+":"+d.Target.Dev+"="+src+ro)
		}
		return strings.Join(out, " ")
	}
	if got := drives(); got != "disk:vda=/d/web.qcow2 cdrom:sda=/images/deb/disk.iso,ro cdrom:sdb=/d/web.cidata.iso,ro" {
		t.Fatalf("drives %s", got)
	}
	if err := n.EjectISO("web"); err != nil {
		t.Fatal(err)
	}
	if got := drives(); got != "disk:vda=/d/web.qcow2 cdrom:sda=empty,ro cdrom:sdb=/d/web.cidata.iso,ro" {
		t.Fatalf("drives after the eject %s", got)
	}
	bad := spec
	bad.Name, bad.Seed = "bad", "seed.iso"
	if _, err := BuildDomain(bad, AccelTCG); err == nil || !strings.Contains(err.Error(), "cloud-init seed") {
		t.Errorf("relative seed: %v", err)
	}
}
