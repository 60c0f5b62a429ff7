package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
)

// TestRestartGuestLock: with a lockspace, a restart guest's domain carries a lease
// keyed by its UUID whose file exists (virtlockd does not create it), a guest of
// another policy gets none, and a lockspace dvmd cannot write fails the define with
// the key to look at.
func TestRestartGuestLock(t *testing.T) {
	dir := t.TempDir()
	node := testNode(t, dir)
	images := imagesDir(t, dir, map[string]string{"lab": "kernel"})
	locks := filepath.Join(dir, "locks")
	if err := os.Mkdir(locks, 0o755); err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{Name: "n1", Node: node, ImagesDir: images, LockspaceDir: locks}}
	const uuid = "5c338286-c360-4b65-a1c1-a97ca933a4ad"
	guest := func(name, policy, id string) api.AssignedGuest {
		return api.AssignedGuest{Name: name, UUID: id, Image: "lab", CPUs: 1, MemoryBytes: 64 << 20, Failover: policy}
	}
	if err := a.define(guest("r", api.FailoverRestart, uuid)); err != nil {
		t.Fatal(err)
	}
	x, err := node.DomainXML("r")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(x, "<key>dvm-guest-"+uuid+"</key>") || !strings.Contains(x, "<lockspace>locks</lockspace>") || !strings.Contains(x, "<target path='"+dir+"'") {
		t.Errorf("restart guest's domain has no lease on %s:\n%s", locks, x)
	}
	if _, err := os.Stat(filepath.Join(locks, "dvm-guest-"+uuid)); err != nil {
		t.Errorf("lock file: %v", err)
	}
	if err := a.define(guest("n", api.FailoverNone, "6c338286-c360-4b65-a1c1-a97ca933a4ad")); err != nil {
		t.Fatal(err)
	}
	if x, _ := node.DomainXML("n"); strings.Contains(x, "<lease>") {
		t.Errorf("a guest of policy none has a lease:\n%s", x)
	}
	a.cfg.LockspaceDir = filepath.Join(dir, "missing")
	err = a.define(guest("r2", api.FailoverRestart, "7c338286-c360-4b65-a1c1-a97ca933a4ad"))
	if err == nil || !strings.Contains(err.Error(), "lockspace_dir") {
		t.Errorf("define with a missing lockspace: %v; want an error naming lockspace_dir", err)
	}
}

// testNode is a node on libvirt's test driver, closed when the test ends.
func testNode(t *testing.T, dir string) *hypervisor.Node {
	t.Helper()
	uri, err := hypervisor.TestDriverURI(dir, "n1", hypervisor.Capacity{CPUs: 4, MemoryBytes: 8 << 30})
	if err != nil {
		t.Fatal(err)
	}
	node, err := hypervisor.Open(hypervisor.Options{URI: uri, Accelerator: "auto"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	return node
}

// imagesDir makes DIR/images with an image directory per name, holding one file.
func imagesDir(t *testing.T, dir string, files map[string]string) string {
	t.Helper()
	images := filepath.Join(dir, "images")
	for name, file := range files {
		if err := os.MkdirAll(filepath.Join(images, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(images, name, file), []byte("k"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return images
}
