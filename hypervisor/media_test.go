package hypervisor

import (
	"strings"
	"testing"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

func TestISODrivePerProfile(t *testing.T) {
	for os, want := range map[string]string{"dragonfly": "hda/ide", "linux": "sda/sata"} {
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
