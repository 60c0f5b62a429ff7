package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The lab's Ceph (`vmctl lab up --ceph`): one monitor, one manager and one OSD
// (bluestore on a sparse file) in the root namespace, on the bridge address, so that
// every node reaches it as a real cluster's nodes reach theirs, and a node's kill
// leaves it running. Guests use it through QEMU's own librbd (no kernel module).
const (
	// CephMonAddr is the lab monitor's address (messenger v1, which libvirt names
	// as host and port; v2 listens on 3300 beside it).
	CephMonAddr = BridgeAddr + ":6789"
	// CephPool is the RBD pool the lab makes, with one replica (one OSD).
	CephPool = "dvm"
	// CephClient is the cephx user the nodes use (client.dvm, profile rbd on CephPool).
	CephClient = "dvm"
	// CephStoragePool is the dvm storage pool that names the lab's Ceph in every
	// node's dvmd.conf (vmctl vm create --pool ceph).
	CephStoragePool = "ceph"
	// cephOSDBytes is the OSD's file: sparse, so it costs what is written.
	cephOSDBytes = 4 << 30
	cephFSID     = "5f0e3d55-6c1f-4a39-9d8e-2d1f0a6b7c11"
)

// cephRequirements are the programs the lab's Ceph runs, and their packages.
var cephRequirements = []requirement{
	{"ceph-mon", "ceph-mon"},
	{"ceph-mgr", "ceph-mgr"},
	{"ceph-osd", "ceph-osd"},
	{"ceph", "ceph-common"},
	{"rbd", "ceph-common"},
	{"ceph-authtool", "ceph-common"},
	{"monmaptool", "ceph-base"},
	{"qemu-img", "qemu-utils"},
}

// qemuRBD is QEMU's rbd block driver, loaded by QEMU as a module.
const qemuRBD = "/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so"

// CheckCephPackages says which packages the lab's Ceph needs and lacks, as a
// *MissingError.
func CheckCephPackages() error {
	miss := &MissingError{}
	miss.lookFor(cephRequirements)
	if _, err := os.Stat(qemuRBD); err != nil {
		miss.add("qemu-block-extra", "no QEMU rbd block driver "+qemuRBD+" (package qemu-block-extra)")
	}
	return miss.orNil()
}

// CephDir is DIR/ceph: the Ceph cluster's config, keyrings, data and logs.
func CephDir(dir string) string { return filepath.Join(dir, "ceph") }

// CephConf is the lab Ceph's config file, for `ceph -c` and `rbd -c`.
func CephConf(dir string) string { return filepath.Join(CephDir(dir), "ceph.conf") }

// CephKeyring is the keyring of the nodes' cephx user (client.dvm): the rbd pool of
// every node's dvmd.conf names it. DIR is seen by every node at the same path.
func CephKeyring(dir string) string {
	return filepath.Join(CephDir(dir), "ceph.client."+CephClient+".keyring")
}

// CephAdminKeyring is client.admin's keyring, for the lab's own commands and tests.
func CephAdminKeyring(dir string) string {
	return filepath.Join(CephDir(dir), "ceph.client.admin.keyring")
}

// HasCeph says whether the lab was brought up with Ceph.
func (l *Lab) HasCeph() bool {
	l.mu.Lock()
	l.reload()
	defer l.mu.Unlock()
	return l.st.Ceph
}

const cephConf = `# dvm lab Ceph: written by vmctl lab up --ceph
[global]
fsid = %[2]s
mon_host = [v2:%[3]s:3300,v1:%[3]s:6789]
public_network = %[3]s/24
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = %[1]s/ceph.$name.keyring
run_dir = %[1]s/run
pid_file = %[1]s/run/$name.pid
admin_socket = %[1]s/run/$name.asok
log_file = %[1]s/log/$name.log
# One OSD: one replica, and no health warning for having only one.
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
# Small and quick: the lab shares two cores with everything else.
osd_memory_target = 536870912
bluestore_cache_autotune = false
bluestore_cache_size = 67108864
[mon]
mon_data = %[1]s/mon
[mgr]
mgr_data = %[1]s/mgr
[osd]
osd_data = %[1]s/osd
osd_objectstore = bluestore
bluestore_block_path = %[1]s/osd.block
bluestore_block_size = %[4]d
bluestore_block_create = true
`

// startCeph makes and starts the lab's Ceph: monitor, manager, one OSD on a sparse
// file, the pool CephPool (one replica, rbd) and the nodes' user CephClient. The
// bridge address must be up (the daemons bind to it). It returns once an RBD image
// can be written.
func (l *Lab) startCeph(ctx context.Context, timeout time.Duration) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cd := CephDir(l.dir)
	if err := os.RemoveAll(cd); err != nil {
		return fmt.Errorf("ceph: clean %s: %w", cd, err)
	}
	for _, d := range []string{"run", "log", "mon", "mgr", "osd"} {
		if err := os.MkdirAll(filepath.Join(cd, d), 0o700); err != nil {
			return fmt.Errorf("ceph: %w", err)
		}
	}
	conf := CephConf(l.dir)
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(cephConf, cd, cephFSID, BridgeAddr, cephOSDBytes)), 0o644); err != nil {
		return fmt.Errorf("ceph: %w", err)
	}
	run := func(name string, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = cd
		// Daemons fork and leave the lab's process group: they outlive vmctl and
		// are stopped by their pid files (stopCeph).
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return out.String(), fmt.Errorf("ceph: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(lastLines(out.String(), 5)))
		}
		return out.String(), nil
	}
	ceph := func(args ...string) (string, error) {
		return run("ceph", append([]string{"-c", conf, "-n", "client.admin", "--connect-timeout", "10"}, args...)...)
	}
	monKeyring := filepath.Join(cd, "ceph.mon..keyring")
	admin := CephAdminKeyring(l.dir)
	steps := [][]string{
		{"ceph-authtool", "--create-keyring", monKeyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"},
		{"ceph-authtool", "--create-keyring", admin, "--gen-key", "-n", "client.admin",
			"--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"},
		{"ceph-authtool", monKeyring, "--import-keyring", admin},
		{"monmaptool", "--create", "--addv", "a", fmt.Sprintf("[v2:%s:3300,v1:%s:6789]", BridgeAddr, BridgeAddr),
			"--fsid", cephFSID, filepath.Join(cd, "monmap")},
		{"ceph-mon", "-c", conf, "--mkfs", "-i", "a", "--monmap", filepath.Join(cd, "monmap"), "--keyring", monKeyring},
		{"ceph-mon", "-c", conf, "-i", "a"},
	}
	for _, s := range steps {
		if _, err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	l.logf("ceph: monitor a on %s", CephMonAddr)
	if _, err := ceph("auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd", "allow *", "-o", filepath.Join(cd, "ceph.mgr.x.keyring")); err != nil {
		return err
	}
	if _, err := run("ceph-mgr", "-c", conf, "-i", "x"); err != nil {
		return err
	}
	uuid, err := newUUID()
	if err != nil {
		return err
	}
	out, err := ceph("osd", "new", uuid)
	if err != nil {
		return err
	}
	id := strings.TrimSpace(out)
	if _, err := strconv.Atoi(id); err != nil {
		return fmt.Errorf("ceph: osd new answered %q, not an OSD id", id)
	}
	if _, err := ceph("auth", "get-or-create", "osd."+id, "mon", "allow profile osd", "mgr", "allow profile osd", "osd", "allow *",
		"-o", filepath.Join(cd, "ceph.osd."+id+".keyring")); err != nil {
		return err
	}
	if _, err := run("ceph-osd", "-c", conf, "-i", id, "--mkfs", "--osd-uuid", uuid); err != nil {
		return err
	}
	if _, err := run("ceph-osd", "-c", conf, "-i", id); err != nil {
		return err
	}
	if err := waitOSD(ctx, ceph); err != nil {
		return err
	}
	l.logf("ceph: osd.%s up (bluestore on %s, %d GiB sparse)", id, filepath.Join(cd, "osd.block"), cephOSDBytes>>30)
	for _, args := range [][]string{
		{"osd", "pool", "create", CephPool, "8", "8"},
		{"osd", "pool", "set", CephPool, "size", "1", "--yes-i-really-mean-it"},
		{"auth", "get-or-create", "client." + CephClient, "mon", "profile rbd", "osd", "profile rbd pool=" + CephPool,
			"mgr", "profile rbd pool=" + CephPool, "-o", CephKeyring(l.dir)},
	} {
		if _, err := ceph(args...); err != nil {
			return err
		}
	}
	// pool init writes to the pool, so it returns once its placement groups are
	// active: then an image can be made.
	if _, err := run("rbd", "-c", conf, "-n", "client.admin", "pool", "init", CephPool); err != nil {
		return err
	}
	// The nodes' dvmd reads the keyring; DIR is shared with them.
	if err := os.Chmod(CephKeyring(l.dir), 0o600); err != nil {
		return fmt.Errorf("ceph: %w", err)
	}
	l.logf("ceph: pool %s (1 replica), user client.%s, keyring %s (%.1fs)", CephPool, CephClient, CephKeyring(l.dir), time.Since(start).Seconds())
	return nil
}

// waitOSD waits until the monitor counts one OSD up and in.
func waitOSD(ctx context.Context, ceph func(...string) (string, error)) error {
	var last string
	for {
		out, err := ceph("osd", "stat", "-f", "json")
		if err != nil {
			last = err.Error()
		} else {
			var st struct {
				Up int `json:"num_up_osds"`
				In int `json:"num_in_osds"`
			}
			if json.Unmarshal([]byte(out), &st) == nil && st.Up >= 1 && st.In >= 1 {
				return nil
			}
			last = strings.TrimSpace(out)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ceph: the OSD did not come up (%s)", last)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// stopCeph stops the lab's Ceph daemons (SIGTERM, then SIGKILL after a few seconds)
// and removes its data, the OSD's file with it; its logs stay in DIR/ceph/log.
func stopCeph(dir string) error {
	cd := CephDir(dir)
	pids, _ := filepath.Glob(filepath.Join(cd, "run", "*.pid"))
	var live []int
	for _, p := range pids {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || !isCephDaemon(pid, cd) {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGTERM)
		live = append(live, pid)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range live {
		for isCephDaemon(pid, cd) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if isCephDaemon(pid, cd) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	var errs []error
	for _, e := range []string{"mon", "mgr", "osd", "osd.block", "run"} {
		if err := os.RemoveAll(filepath.Join(cd, e)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ceph: %w", err)
	}
	return nil
}

// isCephDaemon says whether pid is a live Ceph daemon of the lab in cd (its command
// line names cd's config), so that a reused PID is never signalled.
func isCephDaemon(pid int, cd string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// A zombie has ended; its parent has not reaped it yet.
		if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
			return false
		}
	}
	args := strings.Split(string(b), "\x00")
	return len(args) > 0 && strings.HasPrefix(filepath.Base(args[0]), "ceph-") &&
		strings.Contains(string(b), filepath.Join(cd, "ceph.conf"))
}

// cephPoolConfig is the rbd storage pool line of a lab node's dvmd.conf.
func cephPoolConfig(dir string) string {
	host, port, _ := net.SplitHostPort(CephMonAddr)
	return fmt.Sprintf("kind=rbd,monitors=%s,rbd_pool=%s,client=%s,keyring=%s",
		net.JoinHostPort(host, port), CephPool, CephClient, CephKeyring(dir))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
