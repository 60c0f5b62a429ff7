package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/config"
)

// TestPoolDisks: a guest assigned with a dir or shared pool gets its disks in that
// pool's directory, not disks_dir; deleting it removes them there; a pool the node
// lacks fails the define naming it.
func TestPoolDisks(t *testing.T) {
	dir := t.TempDir()
	node := testNode(t, dir)
	pools := []config.Pool{
		{Name: "local", Kind: config.PoolDir, Path: filepath.Join(dir, "local")},
		{Name: "nfs", Kind: config.PoolShared, Path: filepath.Join(dir, "nfs")},
	}
	cfg := Config{Name: "n1", Node: node, Pools: pools, Log: slog.New(slog.DiscardHandler)}
	if err := ensurePools(cfg); err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: cfg}
	g := api.AssignedGuest{Name: "web1", UUID: "5c338286-c360-4b65-a1c1-a97ca933a4a1", CPUs: 1, MemoryBytes: 64 << 20,
		Failover: api.FailoverNone, DiskBytes: 1 << 30, ExtraDiskBytes: []int64{2 << 30}, Pool: "local"}
	if err := a.define(g); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, disk := range diskFiles(t, node, "web1") {
		got = append(got, disk.Source.File.File)
	}
	want := filepath.Join(dir, "local", "web1.qcow2") + " " + filepath.Join(dir, "local", "web1.disk1.qcow2")
	if strings.Join(got, " ") != want {
		t.Fatalf("disks %v, want %s", got, want)
	}
	if err := node.Undefine("web1"); err != nil {
		t.Fatal(err)
	}
	if err := a.deleteDisks(g); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "local", "*")); len(left) != 0 {
		t.Fatalf("deleted guest's disks left: %v", left)
	}
	g.Pool = "ceph"
	if err := a.define(g); err == nil || !strings.Contains(err.Error(), `storage pool "ceph", which node n1 does not have`) {
		t.Fatalf("define on a pool the node lacks: %v", err)
	}
}

// TestRBDPoolNeedsItsKeyring: a node whose rbd pool's keyring is missing or holds no
// key does not start, naming the pool and the file.
func TestRBDPoolNeedsItsKeyring(t *testing.T) {
	dir := t.TempDir()
	node := testNode(t, dir)
	keyring := filepath.Join(dir, "ceph.client.dvm.keyring")
	pool := config.Pool{Name: "ceph", Kind: config.PoolRBD, Monitors: []string{"127.0.0.1:6789"}, RBDPool: "vms", Client: "dvm", Keyring: keyring}
	cfg := Config{Name: "n1", Node: node, Pools: []config.Pool{pool}}
	if err := ensurePools(cfg); err == nil || !strings.Contains(err.Error(), "storage pool ceph") || !strings.Contains(err.Error(), keyring) {
		t.Fatalf("a missing keyring: %v", err)
	}
	if err := os.WriteFile(keyring, []byte("[client.dvm]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ensurePools(cfg); err == nil || !strings.Contains(err.Error(), "has no `key = …` line") {
		t.Fatalf("a keyring without a key: %v", err)
	}
	// A good keyring becomes a libvirt secret, which the test driver cannot keep:
	// TestStoragePools (internal/e2e) runs that on real nodes.
}
