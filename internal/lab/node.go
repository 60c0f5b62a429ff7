package lab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// nodeScript is run by tini as the only child of a node's PID 1. It makes the
// node's private mounts, configures eth0 (which the root namespace moves in), starts
// virtlogd and libvirtd, marks libvirtd ready, then runs the host's Service if it has
// one (another cluster stack: package peerlab), else the dvmd agent again and again
// as a service manager would, unless held (StopAgent), or sleeps, for a lab without
// agent. When the script ends, tini ends and with it the node.
var nodeScript = template.Must(template.New("node.sh").Funcs(template.FuncMap{"q": shellQuote}).Parse(`#!/bin/sh
# Node {{.Name}} of the dvm lab in {{.Dir}}; written by vmctl lab up. PID 1 is tini.
set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
nodedir={{q .NodeDir}}
log() { echo "$(date -u +%H:%M:%S.%N | cut -c1-12) {{.Name}}: $*"; }

log "starting (pid namespace init: tini)"
hostname {{.Name}}
mount --make-rprivate /
# What a host keeps to itself. /sys stays the root namespace's: libvirt needs the
# cgroup v1 controllers mounted there. DIR, and so DIR/shared, stays shared.
mount -t tmpfs -o mode=0755 dvmlab-run /run
mount -t tmpfs -o mode=1777 dvmlab-shm /dev/shm
mount --bind "$nodedir/hosts" /etc/hosts
mount --bind "$nodedir/etc/libvirt" /etc/libvirt
mount --bind "$nodedir/lib/libvirt" /var/lib/libvirt
mount --bind "$nodedir/log/libvirt" /var/log/libvirt
mount --bind "$nodedir/cache/libvirt" /var/cache/libvirt
{{range .Mounts}}mount --bind "$nodedir/private{{.}}" {{q .}}
{{end}}
ip link set lo up
i=0
while ! ip link show eth0 >/dev/null 2>&1; do
	i=$((i + 1))
	if [ "$i" -gt 200 ]; then log "eth0 did not appear in 10s"; exit 1; fi
	sleep 0.05
done
ip addr add {{.Addr}}/24 dev eth0
ip link set eth0 up
log "eth0 {{.Addr}}/24"

# QEMU's own image locks (OFD locks on the disk file) would span the lab's nodes only
# because they share one kernel; hosts on shared block storage do not see each other's.
# libvirtd finds its QEMU in PATH: this node's is a wrapper that turns them off, so
# that what guards a disk across nodes is what guards it there, the lock manager.
mkdir -p /run/dvmlab/bin
cp "$nodedir/qemu-nolock" /run/dvmlab/bin/qemu-system-x86_64

virtlogd -d
# virtlockd holds the guests' disk leases (libvirt's lock manager, lockspace on the
# shared storage): the second guard, after fencing, against a guest running twice.
virtlockd -d
libvirtd_ready() {
	i=0
	while [ "$i" -lt 300 ]; do
		if virsh -q -c qemu:///system capabilities >/dev/null 2>&1; then return 0; fi
		i=$((i + 1))
		sleep 0.1
	done
	return 1
}
PATH=/run/dvmlab/bin:$PATH libvirtd -d --listen
# The first start right after boot has been seen to fail ("libvirtd quit during
# handshake"): start it once more before calling the node broken.
if ! libvirtd_ready; then
	log "libvirtd not ready after 30s; starting it once more"
	if [ -f /run/libvirtd.pid ]; then kill "$(cat /run/libvirtd.pid)" 2>/dev/null || true; sleep 1; fi
	PATH=/run/dvmlab/bin:$PATH libvirtd -d --listen
	if ! libvirtd_ready; then log "libvirtd not ready: see $nodedir/log/libvirt/libvirtd.log"; exit 1; fi
fi
log "libvirtd ready at {{.LibvirtURI}}"
touch "$nodedir/libvirtd.ready"
{{if .Service}}
{{.Service}}
{{else if .Dvmd}}
while :; do
	# dvmd.hold keeps dvmd stopped (Lab.StopAgent) until it is removed (StartAgent).
	while [ -e "$nodedir/dvmd.hold" ]; do sleep 0.2; done
	log "starting dvmd agent (log: $nodedir/dvmd.log)"
	{{q .Dvmd}} agent --config "$nodedir/dvmd.conf" >>"$nodedir/dvmd.log" 2>&1 || log "dvmd agent exited with status $?"
	sleep 1
done
{{else}}
log "no agent (lab up without agent)"
exec sleep infinity
{{end}}`))

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// libvirtdConf is the node's libvirtd.conf: TCP without auth (lab addresses only)
// and a host UUID of its own, since libvirt refuses to migrate to a host with its
// own UUID.
const libvirtdConf = `# dvm lab node %s: written by vmctl lab up
listen_tcp = 1
listen_tls = 0
auth_tcp = "none"
host_uuid = "%s"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`

// qemuConf keeps the libvirtds of the lab from relabelling the files they share
// (images on shared storage) and from colliding in the one cgroup tree they share.
const qemuConf = `# dvm lab node %s: written by vmctl lab up
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
security_driver = "none"
lock_manager = "lockd"
`

// qemuLockdConf puts every guest disk under a lease in a lockspace on the shared
// storage, so two nodes can never run QEMU on the same disk at once.
const qemuLockdConf = `# dvm lab node %s: written by vmctl lab up
auto_disk_leases = 1
require_lease_for_disks = 1
file_lockspace_dir = "%s"
`

// qemuNoLock is the QEMU the node's libvirtd runs (see node.sh): the real one, with
// "locking":"off" added to every file -blockdev libvirt passes, so QEMU locks no image.
const qemuNoLock = `#!/bin/sh
# dvm lab node: written by vmctl lab up. QEMU without its own image locks.
for a in "$@"; do
	shift
	case $a in
	'{'*'"driver":"file"'*) a="${a%%'"driver":"file"'*}"'"driver":"file","locking":"off"'"${a#*'"driver":"file"'}" ;;
	esac
	set -- "$@" "$a"
done
exec /usr/bin/qemu-system-x86_64 "$@"
`

const virtlogdConf = `# dvm lab node %s: written by vmctl lab up
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
`

// Host is one namespace host of the lab's kind: its own mounts, eth0, virtlogd,
// virtlockd and libvirtd (with the lab's libvirt configuration), under tini as PID 1.
// The lab's nodes are Hosts running dvmd; package peerlab runs another cluster stack
// (Pacemaker) on Hosts of exactly this kind, so that the two are compared on equal
// hosts.
type Host struct {
	Name      string // its hostname
	Dir       string // its files (node.sh, node.log, libvirt's state and config)
	LabDir    string // the lab's DIR: named in node.sh's log lines
	Addr      string // its address on the lab's bridge (a /24)
	HostUUID  string // libvirtd's host_uuid
	Lockspace string // virtlockd's lockspace on the shared storage
	Hosts     string // its /etc/hosts
	// Mounts are more paths the host keeps to itself: Dir/private/PATH is bound over
	// PATH; Prepare leaves those directories to the caller.
	Mounts []string
	// Service is shell run once libvirtd is ready, in place of the dvmd agent; the
	// node ends when it ends.
	Service string
	// Dvmd is the agent run when there is no Service ("" sleeps: a lab without agent).
	Dvmd string
}

// LibvirtURI is the host's libvirtd over TCP.
func (h Host) LibvirtURI() string { return "qemu+tcp://" + h.Addr + "/system" }

// Prepare writes the host's files, clearing the libvirt state a host loses when it
// reboots (and, since a rebooted lab node comes back empty of guests, the persistent
// domain definitions in etc/libvirt); logs and Dir's other files stay.
func (h Host) Prepare() error {
	nd := h.Dir
	for _, d := range []string{"etc", "lib", "cache", "libvirtd.ready"} {
		if err := os.RemoveAll(filepath.Join(nd, d)); err != nil {
			return fmt.Errorf("node %s: %w", h.Name, err)
		}
	}
	for _, d := range []string{"etc/libvirt/qemu", "lib/libvirt/qemu", "lib/libvirt/images", "log/libvirt/qemu", "cache/libvirt", "data"} {
		if err := os.MkdirAll(filepath.Join(nd, d), 0o755); err != nil {
			return fmt.Errorf("node %s: %w", h.Name, err)
		}
	}
	if err := os.MkdirAll(h.Lockspace, 0o755); err != nil {
		return fmt.Errorf("node %s: lockspace: %w", h.Name, err)
	}
	var script bytes.Buffer
	err := nodeScript.Execute(&script, map[string]any{
		"Name": h.Name, "Dir": h.LabDir, "NodeDir": nd, "Addr": h.Addr,
		"LibvirtURI": h.LibvirtURI(), "Dvmd": h.Dvmd, "Mounts": h.Mounts, "Service": h.Service,
	})
	if err != nil {
		return err
	}
	files := []struct {
		path, data string
		mode       os.FileMode
	}{
		{"etc/libvirt/libvirtd.conf", fmt.Sprintf(libvirtdConf, h.Name, h.HostUUID), 0o644},
		{"etc/libvirt/qemu.conf", fmt.Sprintf(qemuConf, h.Name), 0o644},
		{"etc/libvirt/virtlogd.conf", fmt.Sprintf(virtlogdConf, h.Name), 0o644},
		{"etc/libvirt/qemu-lockd.conf", fmt.Sprintf(qemuLockdConf, h.Name, h.Lockspace), 0o644},
		{"etc/libvirt/libvirt.conf", "", 0o644},
		{"qemu-nolock", qemuNoLock, 0o755},
		{"hosts", h.Hosts, 0o644},
		{"node.sh", script.String(), 0o755},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(nd, f.path), []byte(f.data), f.mode); err != nil {
			return fmt.Errorf("node %s: %w", h.Name, err)
		}
	}
	return nil
}

// StartHost starts the host's namespaces and PID 1 (tini running node.sh, output
// appended to Dir/node.log), then calls attach with that PID to give it its eth0. It
// does not wait for libvirtd. pid and start identify the PID 1 (see HostAlive).
func StartHost(h Host, attach func(pid int) error) (pid int, start uint64, err error) {
	logf, err := os.OpenFile(filepath.Join(h.Dir, "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, 0, fmt.Errorf("node %s: %w", h.Name, err)
	}
	defer logf.Close()
	cmd := exec.Command("unshare", "--mount", "--net", "--uts", "--pid", "--fork", "--mount-proc",
		"--propagation", "private", "tini", "--", "/bin/sh", filepath.Join(h.Dir, "node.sh"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=/root"}
	// Its own session: the node outlives vmctl and takes no signal from its terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("node %s: start unshare: %w", h.Name, err)
	}
	// unshare waits for tini and ends with it; reap it while this process lives.
	go cmd.Wait() //nolint:errcheck

	pid, err = childOf(cmd.Process.Pid, 5*time.Second)
	if err != nil {
		_ = cmd.Process.Kill()
		return 0, 0, fmt.Errorf("node %s: %w (see %s)", h.Name, err, filepath.Join(h.Dir, "node.log"))
	}
	start = procStart(pid)
	if err := attach(pid); err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return 0, 0, fmt.Errorf("node %s: %w", h.Name, err)
	}
	return pid, start, nil
}

// host is node n as a Host.
func (l *Lab) host(n *nodeState) Host {
	var hosts strings.Builder
	hosts.WriteString("# dvm lab: written by vmctl lab up\n127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	for _, o := range l.st.Nodes {
		fmt.Fprintf(&hosts, "%s\t%s\n", nodeAddr(o.Index), o.Name)
	}
	return Host{
		Name: n.Name, Dir: l.nodeDir(n.Name), LabDir: l.dir, Addr: nodeAddr(n.Index), HostUUID: n.HostUUID,
		Lockspace: filepath.Join(l.dir, "shared", "locks"), Hosts: hosts.String(), Dvmd: l.st.Dvmd,
	}
}

// prepareNode writes the node's files: the Host's and the agent's config.
func (l *Lab) prepareNode(n *nodeState) error {
	if err := l.host(n).Prepare(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(l.nodeDir(n.Name), "dvmd.conf"), []byte(agentConfig(l.dir, n.Index, len(l.st.Nodes), l.st.Ceph, l.st.Settings)), 0o644); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return nil
}

// startNode starts the node's namespaces and PID 1, then gives it its eth0.
// It does not wait for libvirtd: see waitNode.
func (l *Lab) startNode(n *nodeState) error {
	if err := l.prepareNode(n); err != nil {
		return err
	}
	pid, start, err := StartHost(l.host(n), func(pid int) error { return addVeth(n.Index, pid) })
	if err != nil {
		return err
	}
	n.PID, n.PIDStart = pid, start
	l.logf("node %s: PID %d, %s on %s", n.Name, pid, nodeAddr(n.Index), vethName(n.Index))
	return nil
}

// childOf returns the first child of pid, waiting up to timeout for it.
func childOf(pid int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				return strconv.Atoi(f[0])
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("unshare (PID %d) started no tini within %s", pid, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procStart is the start time of pid (field 22 of /proc/PID/stat), 0 if it is gone.
func procStart(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces and parentheses: count from the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// alive says whether pid is still the process that started at start.
func alive(pid int, start uint64) bool {
	return pid > 0 && start != 0 && procStart(pid) == start
}

// HostAlive says whether the PID 1 StartHost returned still runs.
func HostAlive(pid int, start uint64) bool { return alive(pid, start) }

// pidNS is the PID namespace of pid ("pid:[4026532…]"), "" if pid is gone.
func pidNS(pid int) string {
	s, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		return ""
	}
	return s
}

// nsMembers lists the processes in PID namespace ns.
func nsMembers(ns string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pidNS(pid) == ns {
			out = append(out, pid)
		}
	}
	return out
}

// NodeProcesses lists the root namespace PIDs of every process of the node (its
// tini, libvirtd, virtlogd, qemu, agent …); none when the node is killed.
func (l *Lab) NodeProcesses(name string) ([]int, error) {
	l.mu.Lock()
	l.reload()
	n, err := l.find(name)
	if err != nil {
		l.mu.Unlock()
		return nil, err
	}
	pid, start := n.PID, n.PIDStart
	l.mu.Unlock()
	if !alive(pid, start) {
		return nil, nil
	}
	ns := pidNS(pid)
	if ns == "" {
		return nil, nil
	}
	return nsMembers(ns), nil
}

// killNode ends every process of the node at once (SIGKILL to its PID 1) and waits
// until they are gone and the node's veth with them; l.mu is held. A paused node
// dies the same way: SIGKILL ends stopped processes too, and the end of PID 1 kills
// the rest of its namespace.
func (l *Lab) killNode(ctx context.Context, n *nodeState) error {
	if err := KillHost(ctx, n.Name, n.PID, n.PIDStart); err != nil {
		return err
	}
	n.PID, n.PIDStart, n.Paused = 0, 0, false
	// The veth goes with the node's network namespace, a moment after its last
	// process; delete it here so that a restart can create it again at once.
	return delVeth(n.Index)
}

// KillHost ends every process of the host whose PID 1 is pid (started at start) at
// once, with SIGKILL to that PID 1, and waits until they are gone. A host that is
// not running is no error.
func KillHost(ctx context.Context, name string, pid int, start uint64) error {
	if !alive(pid, start) {
		return nil
	}
	ns := pidNS(pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill node %s (PID %d): %w", name, pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for ns != "" && len(nsMembers(ns)) > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("kill node %s: processes %v still alive after SIGKILL of its PID 1", name, nsMembers(ns))
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// waitNode waits until the node's libvirtd is ready: the node script marked it
// ready (virsh answered on the unix socket) and its TCP port answers on eth0.
func (l *Lab) waitNode(ctx context.Context, n nodeState) error {
	nd := l.nodeDir(n.Name)
	ready := filepath.Join(nd, "libvirtd.ready")
	for {
		if !alive(n.PID, n.PIDStart) {
			return fmt.Errorf("node %s died while starting: see %s and %s\n%s", n.Name,
				filepath.Join(nd, "node.log"), filepath.Join(nd, "log/libvirt/libvirtd.log"), tail(filepath.Join(nd, "node.log"), 8))
		}
		if _, err := os.Stat(ready); err == nil {
			c, err := dialIn(ctx, n.PID, net.JoinHostPort(nodeAddr(n.Index), strconv.Itoa(LibvirtPort)))
			if err == nil {
				c.Close()
				l.logf("node %s: libvirtd ready at %s", n.Name, libvirtURI(n.Index))
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: libvirtd not ready: %w: see %s and %s\n%s", n.Name, ctx.Err(),
				filepath.Join(nd, "node.log"), filepath.Join(nd, "log/libvirt/libvirtd.log"), tail(filepath.Join(nd, "node.log"), 8))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// tail returns the last n lines of a file, indented, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// Kill ends every process of the node at once, like a power loss: libvirtd,
// virtlogd, the agent and every guest's qemu. The node stays down until Restart.
func (l *Lab) Kill(node string) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()
	n, err := l.find(node)
	if err != nil {
		return err
	}
	if !l.st.Up {
		return fmt.Errorf("lab in %s is down", l.dir)
	}
	if !alive(n.PID, n.PIDStart) {
		return fmt.Errorf("node %s is not running: bring it back with `vmctl lab restart %s`", node, node)
	}
	if err := l.killNode(context.Background(), n); err != nil {
		return err
	}
	l.logf("node %s killed", node)
	return l.save()
}

// Restart brings the node up again as a host that rebooted: killed first if it
// runs, then started with empty libvirt state (no guests, fresh /var/lib/libvirt and
// /run); shared storage, logs and the agent's data dir stay, and so do the cuts.
func (l *Lab) Restart(ctx context.Context, node string) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	n, err := l.find(node)
	if err != nil {
		unlock()
		return err
	}
	if !l.st.Up {
		unlock()
		return fmt.Errorf("lab in %s is down: bring it up with `vmctl lab up --dir %s`", l.dir, l.dir)
	}
	if err := l.killNode(ctx, n); err != nil {
		unlock()
		return err
	}
	err = l.startNode(n)
	if err == nil {
		err = l.save()
	}
	ns, agent := *n, !l.st.NoAgent
	unlock()
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := l.waitNode(wctx, ns); err != nil {
		return err
	}
	if agent {
		if err := l.waitAgent(wctx, ns); err != nil {
			return err
		}
	}
	l.logf("node %s restarted", node)
	return nil
}
