package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/lab"
	"github.com/dvmproject/dvm/internal/lab/labtest"
)

// TestRealQEMUGuest runs dvmd on this host's libvirtd (qemu:///system) under TCG: a
// real guest (the lab kernel and busybox initramfs) is created through the API, boots,
// runs, answers an ACPI shutdown by powering itself off, and is deleted.
func TestRealQEMUGuest(t *testing.T) {
	rn := startRealNode(t, "dvmtest-qemu")
	c, n, name, cfg := rn.client, rn.node, rn.guest, rn.cfg
	ctx := context.Background()
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: name, OS: "linux", Image: "lab", CPUs: 1, MemoryBytes: 128 << 20, Failover: api.FailoverRestart}, nil); err != nil {
		t.Fatal(err)
	}
	waitLong(t, name+" running", 2*time.Minute, func() bool { return guest(t, c, name).State == api.GuestRunning })
	console := filepath.Join(cfg.DataDir, "console", name+".log")
	waitLong(t, "the guest's init on its console", 2*time.Minute, func() bool { return fileHas(console, "dvm-lab-guest: acpi ready") })
	x, err := n.HV.DomainXML(name)
	if err != nil || !strings.Contains(x, "type='qemu'") {
		t.Fatalf("domain is not a TCG qemu domain: %v\n%s", err, x)
	}

	if err := c.Do(ctx, "POST", "/v1/guests/"+name+"/stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitLong(t, name+" stopped", 2*time.Minute, func() bool { return guest(t, c, name).State == api.GuestStopped })
	if !fileHas(console, "dvm-lab-guest: power button: powering off") {
		t.Fatalf("the guest did not shut down on ACPI (forced off instead); console:\n%s", tail(console))
	}

	if err := c.Do(ctx, "DELETE", "/v1/guests/"+name, nil, nil); err != nil {
		t.Fatal(err)
	}
	waitLong(t, name+" deleted", time.Minute, func() bool {
		_, err := n.HV.State(name)
		return errors.Is(err, hypervisor.ErrNotFound)
	})
}

// realNode is a one-node cluster (management, bootstrap) over this host's libvirtd
// (qemu:///system) under TCG, with the lab image as image "lab", and the name of the
// guest its test makes; a failed test logs what each layer saw of that guest.
type realNode struct {
	node   *Node
	client *api.Client // the bootstrap (admin) token's
	cfg    config.Node
	dir    string
	guest  string
}

// startRealNode starts a realNode, skipping (failing where CI=true) without libvirtd.
func startRealNode(t *testing.T, prefix string) *realNode {
	t.Helper()
	labtest.Require(t)
	hv, err := hypervisor.Open(hypervisor.Options{URI: "qemu:///system", Accelerator: "tcg"})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("libvirtd at qemu:///system: %v (scripts/test starts it)", err)
		}
		t.Skipf("no libvirtd at qemu:///system: %v", err)
	}
	hv.Close()

	img, err := lab.EnsureImage(context.Background(), lab.DefaultImageCache, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// QEMU runs as libvirt-qemu on a stock host: it must be able to reach the kernel.
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if strings.HasPrefix(d, os.TempDir()+"/") {
			os.Chmod(d, 0o755)
		}
	}
	if err := img.CopyTo(filepath.Join(dir, "images", "lab")); err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.Name, cfg.Management, cfg.Bootstrap, cfg.RaftListen, cfg.GossipListen, cfg.AgentListen = "host1", true, true, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.CredentialsDir = filepath.Join(dir, "credentials")
	if err := cluster.NewCA(cfg.CredentialsDir); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Issue(cfg.CredentialsDir, "host1", []net.IP{net.ParseIP("127.0.0.1")}, nil); err != nil {
		t.Fatal(err)
	}
	cfg.Listen, cfg.Advertise = "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir, cfg.TokenFile = filepath.Join(dir, "data"), filepath.Join(dir, "data", "token")
	cfg.ImagesDir, cfg.DisksDir = filepath.Join(dir, "images"), filepath.Join(dir, "disks")
	cfg.Accelerator, cfg.ShutdownTimeout = "tcg", 60*time.Second
	cfg.Share.ReservedCPUs, cfg.Share.ReservedMemoryBytes = 0, 256<<20
	logPath := filepath.Join(dir, "dvmd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	name := fmt.Sprintf("%s-%d", prefix, os.Getpid())
	// Cleanups run last first: the node is stopped (and its libvirt connection closed,
	// so its agent starts nothing again) before a guest a failed run leaves behind is
	// undefined through a connection of its own.
	t.Cleanup(func() {
		if hv, err := hypervisor.Open(hypervisor.Options{URI: "qemu:///system", Accelerator: "tcg"}); err == nil {
			hv.Undefine(name)
			hv.Close()
		}
	})
	n, err := StartNode(context.Background(), cfg, slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	c, err := n.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A failure on a CI machine is only worth something with what each layer saw.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		var g api.Guest
		gerr := c.Do(ctx, "GET", "/v1/guests/"+name, nil, &g)
		t.Logf("guest record: %+v (err %v)", g, gerr) // the node still runs: cleanups run last first
		if st, err := n.HV.State(name); err == nil || !errors.Is(err, hypervisor.ErrNotFound) {
			t.Logf("libvirt state: %v (err %v)", st, err)
		}
		t.Logf("dvmd log:\n%s", tail(logPath))
		t.Logf("libvirt's QEMU log:\n%s", tail(filepath.Join("/var/log/libvirt/qemu", name+".log")))
		t.Logf("console:\n%s", tail(filepath.Join(cfg.DataDir, "console", name+".log")))
	})
	waitFor(t, "node registered", func() bool {
		var ns []api.Node
		return c.Do(ctx, "GET", "/v1/nodes", nil, &ns) == nil && len(ns) == 1 && ns[0].State == api.NodeReady
	})
	return &realNode{node: n, client: c, cfg: cfg, dir: dir, guest: name}
}

func waitLong(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting after %s: %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func fileHas(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.Contains(string(b), s)
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}
