package agent

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/internal/version"
	"libvirt.org/go/libvirtxml"
)

// TestISOInstallThenEject: a guest assigned with install media is defined with the
// image's file in a cdrom booted before its empty disk, and started; once an
// assignment comes without it (vmctl vm eject), the node ejects it from the running
// guest's definition and keeps it running; install media not in images_dir fails
// the define, naming the file looked for.
func TestISOInstallThenEject(t *testing.T) {
	dir := t.TempDir()
	node := testNode(t, dir)
	images := imagesDir(t, dir, map[string]string{"dfly": "disk.iso"})
	a, err := New(Config{Name: "n1", Node: node, ImagesDir: images, DisksDir: filepath.Join(dir, "disks"),
		Net: NetConfig{Disabled: true}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	inst := api.AssignedGuest{Name: "inst", UUID: "5c338286-c360-4b65-a1c1-a97ca933a4a1", OS: "dragonfly", CPUs: 1, MemoryBytes: 64 << 20,
		Failover: api.FailoverNone, DiskBytes: 20 << 30, Desired: store.DesiredRunning, ISO: "dfly"}
	read := func(guests ...api.AssignedGuest) {
		a.reconcile(context.Background(), heldAssignment{Assignment: api.Assignment{Master: "m1", Generation: 1,
			Version: version.Version, Guests: guests}, asked: time.Now()})
	}
	definition := func() (boot []string, drives []string) {
		x, err := node.DomainXML("inst")
		if err != nil {
			t.Fatal(err)
		}
		var d libvirtxml.Domain
		if err := d.Unmarshal(x); err != nil {
			t.Fatal(err)
		}
		for _, b := range d.OS.BootDevices {
			boot = append(boot, b.Dev)
		}
		for _, disk := range d.Devices.Disks {
			src := "empty"
			if disk.Source != nil && disk.Source.File != nil && disk.Source.File.File != "" {
				src = strings.TrimPrefix(disk.Source.File.File, dir+"/")
			}
			drives = append(drives, disk.Device+":"+disk.Target.Dev+"="+src)
		}
		return boot, drives
	}
	read(inst)
	if st, err := node.State("inst"); err != nil || st != hypervisor.StateRunning {
		t.Fatalf("inst: %v, %v; errors %v", st, err, a.errs)
	}
	boot, drives := definition()
	if strings.Join(boot, ",") != "cdrom,hd" || strings.Join(drives, " ") != "disk:vda=disks/inst.qcow2 cdrom:hda=images/dfly/disk.iso" {
		t.Fatalf("inst defined booting %v from %v", boot, drives)
	}

	inst.ISO = ""
	read(inst)
	if st, _ := node.State("inst"); st != hypervisor.StateRunning || a.errs["inst"] != "" {
		t.Fatalf("after the eject: %v, error %q", st, a.errs["inst"])
	}
	list, _ := node.List()
	if len(list) != 1 || list[0].ISO != "" {
		t.Fatalf("listed after the eject: %+v", list)
	}
	if err := node.Destroy("inst"); err != nil { // the definition is what the next boot uses
		t.Fatal(err)
	}
	if _, drives := definition(); strings.Join(drives, " ") != "disk:vda=disks/inst.qcow2 cdrom:hda=empty" {
		t.Fatalf("definition after the eject: %v", drives)
	}

	gone := inst
	gone.Name, gone.UUID, gone.ISO = "other", "5c338286-c360-4b65-a1c1-a97ca933a4a2", "nope"
	if err := a.define(gone); err == nil || !strings.Contains(err.Error(), filepath.Join(images, "nope", "disk.iso")) {
		t.Fatalf("define with install media not there: %v", err)
	}
}

// TestVNCOnManagementAddress: a guest assigned a VNC password gets a display on the
// host of the node's management address, or on loopback when that is every address,
// and the node reports it as a guest with one.
func TestVNCOnManagementAddress(t *testing.T) {
	for address, want := range map[string]string{"10.0.0.5:7460": "10.0.0.5", "0.0.0.0:7460": "127.0.0.1"} {
		dir := t.TempDir()
		node := testNode(t, dir)
		a := &Agent{cfg: Config{Name: "n1", Node: node, Address: address, Log: slog.New(slog.DiscardHandler)}}
		g := api.AssignedGuest{Name: "gui", UUID: "5c338286-c360-4b65-a1c1-a97ca933a4a3", OS: "linux", CPUs: 1, MemoryBytes: 64 << 20,
			Failover: api.FailoverNone, DiskBytes: 1 << 30, VNCPassword: "abcd2345"}
		if err := node.EnsureDiskPool(filepath.Join(dir, "disks")); err != nil {
			t.Fatal(err)
		}
		if err := a.define(g); err != nil {
			t.Fatal(err)
		}
		x, err := node.DomainXML("gui")
		if err != nil {
			t.Fatal(err)
		}
		var d libvirtxml.Domain
		if err := d.Unmarshal(x); err != nil {
			t.Fatal(err)
		}
		if len(d.Devices.Graphics) != 1 || d.Devices.Graphics[0].VNC == nil || d.Devices.Graphics[0].VNC.Listen != want {
			t.Fatalf("%s: graphics %+v, want VNC on %s", address, d.Devices.Graphics, want)
		}
		if list, _ := node.List(); len(list) != 1 || !list[0].VNC {
			t.Fatalf("%s: listed %+v", address, list)
		}
	}
}

// TestCloudInitSeed: a guest assigned a cloud-init seed gets one written beside its
// disks (0600: user data may hold secrets), holding its hostname, UUID, keys, user
// data and its NIC's address, in a second cdrom; the delete removes it, disks kept
// or not.
func TestCloudInitSeed(t *testing.T) {
	dir := t.TempDir()
	node := testNode(t, dir)
	disks := filepath.Join(dir, "disks")
	if err := node.EnsureDiskPool(disks); err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{Name: "n1", Node: node, DisksDir: disks, Log: slog.New(slog.DiscardHandler)}}
	g := api.AssignedGuest{Name: "web", UUID: "5c338286-c360-4b65-a1c1-a97ca933a4a4", OS: "linux", CPUs: 1, MemoryBytes: 64 << 20,
		Failover: api.FailoverNone, DiskBytes: 1 << 30, NICs: []api.AssignedNIC{{Network: "blue", VNI: 42, MAC: "52:54:00:aa:bb:01", IP: "10.1.0.2/24"}},
		CloudInit: &api.CloudInit{SSHKeys: []string{"ssh-ed25519 AAAAC3Nz you@host"}, UserData: "#cloud-config\npackages: [nginx]\n"}}
	if err := a.define(g); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(disks, "web.cidata.iso")
	st, err := os.Stat(seed)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("seed: %v, %v", st, err)
	}
	b, _ := os.ReadFile(seed)
	for _, want := range []string{`local-hostname: "web"`, `instance-id: "5c338286-c360-4b65-a1c1-a97ca933a4a4"`, "ssh-ed25519 AAAAC3Nz you@host",
		"packages: [nginx]", `macaddress: "52:54:00:aa:bb:01"`, `- "10.1.0.2/24"`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("the seed lacks %s", want)
		}
	}
	x, _ := node.DomainXML("web")
	if !strings.Contains(x, "<source file='"+seed+"'/>") || !strings.Contains(x, "dev='sdb' bus='scsi'") {
		t.Fatalf("web's domain has no seed drive:\n%s", x)
	}
	g.KeepDisks = true
	if err := a.deleteDisks(g); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(seed); !os.IsNotExist(err) {
		t.Fatalf("seed after the delete: %v", err)
	}
	if err := a.deleteDisks(g); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	a.cfg.DisksDir = ""
	if err := a.define(g); err == nil || !strings.Contains(err.Error(), "set disks_dir") {
		t.Fatalf("a seed without disks_dir: %v", err)
	}
}
