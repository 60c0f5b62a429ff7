package daemon

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
)

// TestRealQEMUInstallMedia runs on this host's libvirtd under TCG what the test
// driver cannot show: a guest with install media, a VNC display and a cloud-init
// seed starts in a real QEMU; its VNC display listens on loopback at the port the
// node reports and asks for a password (RFB); vm eject takes the ISO out of the
// running guest's drive (libvirt's UpdateDeviceFlags), and the guest runs on.
func TestRealQEMUInstallMedia(t *testing.T) {
	rn := startRealNode(t, "dvmtest-media")
	c, n, name := rn.client, rn.node, rn.guest
	ctx := context.Background()
	importFile(t, c, "install", "iso", isoFile(t, rn.dir))
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: name, OS: "linux", CPUs: 1, MemoryBytes: 128 << 20, DiskBytes: 64 << 20,
		ISO: "install", VNC: true, Failover: api.FailoverNone, CloudInit: &api.CloudInit{SSHKeys: []string{"ssh-ed25519 AAAAC3Nz you@host"}}}, nil); err != nil {
		t.Fatal(err)
	}
	waitLong(t, name+" running", 2*time.Minute, func() bool { return guest(t, c, name).State == api.GuestRunning })
	media := filepath.Join(rn.cfg.ImagesDir, "install", "disk.iso")
	x, err := n.HV.DomainXML(name)
	if err != nil || !strings.Contains(x, "<source file='"+media+"'") || !strings.Contains(x, name+".cidata.iso'") {
		t.Fatalf("%s runs without its cdroms: %v\n%s", name, err, x)
	}
	var display string
	waitLong(t, "the VNC display reported", time.Minute, func() bool {
		g := guest(t, c, name)
		if g.VNC != nil {
			display = g.VNC.Display
		}
		return display != ""
	})
	if !strings.HasPrefix(display, "127.0.0.1:59") {
		t.Fatalf("VNC display %q, want loopback from port 5900", display)
	}
	conn, err := net.DialTimeout("tcp", display, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	hello, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || !strings.HasPrefix(hello, "RFB 003.") {
		t.Fatalf("VNC display at %s said %q, %v", display, hello, err)
	}
	var v api.VNC
	if err := c.Do(ctx, "GET", "/v1/guests/"+name+"/vnc", nil, &v); err != nil || v.Display != display || len(v.Password) != 8 {
		t.Fatalf("vnc: %+v, %v", v, err)
	}

	if err := c.Do(ctx, "POST", "/v1/guests/"+name+"/eject", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitLong(t, "the ISO out of the running guest", time.Minute, func() bool {
		x, err := n.HV.DomainXML(name)
		return err == nil && !strings.Contains(x, media)
	})
	if g := guest(t, c, name); g.State != api.GuestRunning || g.ISO != "" {
		t.Fatalf("%s after the eject: %+v", name, g)
	}
	if err := c.Do(ctx, "DELETE", "/v1/guests/"+name, nil, nil); err != nil {
		t.Fatal(err)
	}
}
