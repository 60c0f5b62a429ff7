package hypervisor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRBDDiskDomain(t *testing.T) {
	r := RBD{Monitors: []string{"10.0.0.5:6789", "10.0.0.6:6789"}, Pool: "vms", Client: "dvm", Keyring: "/etc/ceph/k", Secret: "dvm-pool-ceph"}
	spec := GuestSpec{Name: "g1", OS: "linux", CPUs: 1, MemoryBytes: 1 << 30}
	d0, d1 := r.Disk("g1", 0), r.Disk("g1", 1)
	spec.Disk, spec.ExtraDisks = &d0, []Disk{d1}
	d := roundTrip(t, spec, AccelTCG)
	if len(d.Devices.Disks) != 2 {
		t.Fatalf("%d disks, want 2", len(d.Devices.Disks))
	}
	for i, want := range []string{"vms/g1.disk0", "vms/g1.disk1"} {
		disk := d.Devices.Disks[i]
		n := disk.Source.Network
		if n == nil || n.Protocol != "rbd" || n.Name != want || disk.Driver.Type != "raw" || disk.Source.File != nil {
			t.Fatalf("disk %d: %+v %+v, want network rbd %s, raw", i, disk.Source, disk.Driver, want)
		}
		if len(n.Hosts) != 2 || n.Hosts[0].Name != "10.0.0.5" || n.Hosts[0].Port != "6789" || n.Hosts[1].Name != "10.0.0.6" {
			t.Fatalf("disk %d hosts %+v", i, n.Hosts)
		}
		if n.Auth == nil || n.Auth.Username != "dvm" || n.Auth.Secret == nil || n.Auth.Secret.Type != "ceph" || n.Auth.Secret.Usage != "dvm-pool-ceph" {
			t.Fatalf("disk %d auth %+v", i, n.Auth)
		}
	}
	for name, bad := range map[string]func(*RBDDisk){
		"no monitor":   func(r *RBDDisk) { r.Monitors = nil },
		"monitor port": func(r *RBDDisk) { r.Monitors = []string{"10.0.0.5"} },
		"image":        func(r *RBDDisk) { r.Image = "noslash" },
		"snapshot":     func(r *RBDDisk) { r.Image = "vms/g1@snap" },
		"no user":      func(r *RBDDisk) { r.Client = "" },
		"control char": func(r *RBDDisk) { r.Secret = "a\x01" },
	} {
		d := r.Disk("g1", 0)
		bad(d.RBD)
		spec.Disk, spec.ExtraDisks = &d, nil
		if _, err := BuildDomain(spec, AccelTCG); err == nil {
			t.Errorf("%s: built a domain from %+v", name, d.RBD)
		}
	}
}

func TestRBDNames(t *testing.T) {
	if got := RBDImage("web", 0); got != "web.disk0" {
		t.Fatalf("RBDImage(web, 0) = %q", got)
	}
	for image, want := range map[string]bool{"web.disk0": true, "web.disk12": true, "web.disk01": false, "web2.disk0": false, "web.disk": false, "web.disk-1": false} {
		if got := isRBDImageOf("web", image); got != want {
			t.Errorf("isRBDImageOf(web, %s) = %v, want %v", image, got, want)
		}
	}
	r := RBD{Monitors: []string{"10.0.0.5:6789", "10.0.0.6:6789"}, Pool: "vms", Client: "dvm", Keyring: "/k"}
	if got, want := r.uri("g.disk0"), `rbd:vms/g.disk0:id=dvm:keyring=/k:mon_host=10.0.0.5\:6789\;10.0.0.6\:6789`; got != want {
		t.Fatalf("uri %s, want %s", got, want)
	}
}

func TestReadKeyring(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key, err := ReadKeyring(write("good", "[client.dvm]\n\tkey = AQBd8BZrMpd5GBAAr6kwTwSOOkTLo25M8EK8VA==\n\tcaps mon = \"profile rbd\"\n"))
	if err != nil || len(key) != 28 {
		t.Fatalf("key of %d bytes, %v", len(key), err)
	}
	for name, text := range map[string]string{"no key": "[client.dvm]\n", "not base64": "[client.dvm]\nkey = %%%\n"} {
		if _, err := ReadKeyring(write(name, text)); err == nil || !strings.Contains(err.Error(), "keyring") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ReadKeyring(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing keyring was read")
	}
}
