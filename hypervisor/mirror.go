package hypervisor

// Synchronous disk mirroring of a "twin" guest (issue 14): the primary's QEMU mirrors
// the guest's disk in write-blocking mode (a guest write completes only once the
// standby has it) over NBD with TLS to a qemu-storage-daemon on the standby node, which
// writes it to the standby's own local disk. No shared storage.
//
// Why QMP and not libvirt's virDomainBlockCopy: libvirt 9.0 gives an NBD destination
// TLS only with the certificates of qemu.conf's nbd_tls_x509_cert_dir (one directory
// for the whole daemon, read at libvirtd's start); the cluster's CA and node
// certificates cannot be handed to it per job without editing the system libvirtd's
// configuration. So the primary side speaks QMP through libvirt's monitor passthrough
// (the domain is marked "custom-monitor" tainted by libvirt: expected). libvirt ignores
// block jobs it did not start (it tracks its own by job id).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// MirrorCreds are PEM files of the cluster: its CA certificate and this node's
// certificate and key (internal/cluster's ca.crt, node-NAME.crt, node-NAME.key). The
// node certificate serves as TLS server and client certificate alike.
type MirrorCreds struct{ CACert, Cert, Key string }

// Endpoints of WriteQEMUCreds.
const (
	TLSServer = "server"
	TLSClient = "client"
)

// WriteQEMUCreds writes dir as QEMU's tls-creds-x509 object wants it: ca-cert.pem and
// ENDPOINT-cert.pem, ENDPOINT-key.pem (endpoint TLSServer or TLSClient), copies of c's
// files. Copies, not links: the reader may be a QEMU running as another user, which
// must not need access to the originals' directory. uid and gid own the copies (-1:
// unchanged); the key is mode 0600.
func WriteQEMUCreds(dir string, c MirrorCreds, endpoint string, uid, gid int) error {
	if endpoint != TLSServer && endpoint != TLSClient {
		return fmt.Errorf("TLS endpoint %q: want %s or %s", endpoint, TLSServer, TLSClient)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("TLS creds dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("TLS creds dir: %w", err)
	}
	if err := os.Lchown(dir, uid, gid); err != nil {
		return fmt.Errorf("TLS creds dir: %w", err)
	}
	for _, f := range []struct {
		src, dst string
		mode     os.FileMode
	}{
		{c.CACert, "ca-cert.pem", 0o644},
		{c.Cert, endpoint + "-cert.pem", 0o644},
		{c.Key, endpoint + "-key.pem", 0o600},
	} {
		if f.src == "" {
			return fmt.Errorf("TLS creds: no file for %s", f.dst)
		}
		b, err := os.ReadFile(f.src)
		if err != nil {
			return fmt.Errorf("TLS creds: %w", err)
		}
		dst := filepath.Join(dir, f.dst)
		tmp := dst + ".tmp"
		if err := os.WriteFile(tmp, b, f.mode); err != nil {
			return fmt.Errorf("TLS creds: %w", err)
		}
		if err := os.Chmod(tmp, f.mode); err != nil {
			return fmt.Errorf("TLS creds: %w", err)
		}
		if err := os.Lchown(tmp, uid, gid); err != nil {
			return fmt.Errorf("TLS creds: %w", err)
		}
		if err := os.Rename(tmp, dst); err != nil {
			return fmt.Errorf("TLS creds: %w", err)
		}
	}
	return nil
}

// ---- Standby side: qemu-storage-daemon ----

// QSD is the qemu-storage-daemon binary the standby runs.
var QSD = "qemu-storage-daemon"

// StandbySpec is one twin guest's export on its standby node.
type StandbySpec struct {
	Guest string // the export's name: the guest's name
	// Disk is the standby's copy: created as a standalone qcow2 of SizeBytes when
	// absent (no backing file: the mirror copies every block the guest sees).
	Disk      string
	SizeBytes uint64
	// Listen is "ip:port" on the node's cluster address; port 0: a free port is chosen.
	Listen string
	Creds  MirrorCreds
	// RunDir holds the process's pid file, QMP socket, state file and TLS creds dir,
	// each named after the guest, so that one directory may serve many guests.
	RunDir string
}

// Standby is a running qemu-storage-daemon that exports one guest's standby disk.
type Standby struct {
	guest, runDir, addr, disk string
	pid                       int
}

// standbyState is what FindStandby reads back after the agent restarted.
type standbyState struct {
	Pid  int    `json:"pid"`
	Addr string `json:"addr"`
	Disk string `json:"disk"`
}

func standbyPaths(runDir, guest string) (pid, qmp, state, tls string) {
	b := filepath.Join(runDir, "qsd-"+guest)
	return b + ".pid", b + ".qmp", b + ".json", b + ".tls"
}

// Standbys lists the standby exports running from runDir (after a restart of the
// caller: each adopted as FindStandby does), by guest.
func Standbys(runDir string) map[string]*Standby {
	out := map[string]*Standby{}
	pids, _ := filepath.Glob(filepath.Join(runDir, "qsd-*.pid"))
	for _, p := range pids {
		guest := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "qsd-"), ".pid")
		if s, ok := FindStandby(runDir, guest); ok {
			out[guest] = s
		}
	}
	return out
}

// StartStandby starts the guest's qemu-storage-daemon, detached in its own session
// (it outlives the caller: FindStandby adopts it after a restart), and returns once it
// listens. The export is writable and writethrough (a write is on the disk, flushed,
// before the primary's mirror has it acknowledged); its NBD server demands TLS with a
// client certificate signed by the cluster's CA (verify-peer).
func StartStandby(spec StandbySpec) (*Standby, error) {
	if spec.Guest == "" || strings.ContainsAny(spec.Guest, "/,\x00") {
		return nil, fmt.Errorf("standby: bad guest name %q", spec.Guest)
	}
	if !filepath.IsAbs(spec.Disk) || !filepath.IsAbs(spec.RunDir) || strings.Contains(spec.Disk+spec.RunDir, ",") {
		return nil, fmt.Errorf("standby %s: disk %q and run dir %q must be absolute paths without commas", spec.Guest, spec.Disk, spec.RunDir)
	}
	host, port, err := net.SplitHostPort(spec.Listen)
	if err != nil || net.ParseIP(host) == nil {
		return nil, fmt.Errorf("standby %s: listen address %q: want ip:port", spec.Guest, spec.Listen)
	}
	if s, ok := FindStandby(spec.RunDir, spec.Guest); ok {
		return nil, fmt.Errorf("standby %s: already running (pid %d, %s)", spec.Guest, s.pid, s.addr)
	}
	if err := os.MkdirAll(spec.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("standby %s: %w", spec.Guest, err)
	}
	pidFile, qmpSock, stateFile, tlsDir := standbyPaths(spec.RunDir, spec.Guest)
	if len(qmpSock) >= 108 {
		return nil, fmt.Errorf("standby %s: QMP socket path %s is too long for a unix socket", spec.Guest, qmpSock)
	}
	if err := WriteQEMUCreds(tlsDir, spec.Creds, TLSServer, -1, -1); err != nil {
		return nil, fmt.Errorf("standby %s: %w", spec.Guest, err)
	}
	if _, err := os.Stat(spec.Disk); errors.Is(err, os.ErrNotExist) {
		if spec.SizeBytes == 0 {
			return nil, fmt.Errorf("standby %s: no disk %s and no size to create it", spec.Guest, spec.Disk)
		}
		out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", spec.Disk, strconv.FormatUint(spec.SizeBytes, 10)).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("standby %s: create %s: %v: %s", spec.Guest, spec.Disk, err, bytes.TrimSpace(out))
		}
	} else if err != nil {
		return nil, fmt.Errorf("standby %s: %w", spec.Guest, err)
	}
	// Port 0: a port free now. Another process may take it before QSD binds it; then
	// QSD fails to start and another port is tried.
	tries := 1
	if port == "0" {
		tries = 5
	}
	var lastErr error
	for range tries {
		addr := spec.Listen
		if port == "0" {
			if addr, err = freeTCPPort(host); err != nil {
				return nil, fmt.Errorf("standby %s: %w", spec.Guest, err)
			}
		}
		s, err := startQSD(spec, addr, pidFile, qmpSock, stateFile, tlsDir)
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func freeTCPPort(host string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("find a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startQSD(spec StandbySpec, addr, pidFile, qmpSock, stateFile, tlsDir string) (*Standby, error) {
	host, port, _ := net.SplitHostPort(addr)
	os.Remove(pidFile)
	os.Remove(qmpSock)
	args := []string{
		"--object", "tls-creds-x509,id=tls0,endpoint=server,verify-peer=on,dir=" + tlsDir,
		"--blockdev", "driver=file,node-name=file0,filename=" + spec.Disk,
		"--blockdev", "driver=qcow2,node-name=disk0,file=file0",
		"--nbd-server", "addr.type=inet,addr.host=" + host + ",addr.port=" + port + ",tls-creds=tls0",
		"--export", "type=nbd,id=exp0,node-name=disk0,name=" + spec.Guest + ",writable=on,writethrough=on",
		"--chardev", "socket,id=qmp0,server=on,wait=off,path=" + qmpSock,
		"--monitor", "chardev=qmp0",
		"--pidfile", pidFile,
		// --daemonize: the parent exits once the daemon is set up (listening), after
		// the daemon has left for a session of its own.
		"--daemonize",
	}
	cmd := exec.Command(QSD, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("standby %s: %s on %s: %v: %s", spec.Guest, QSD, addr, err, bytes.TrimSpace(out))
	}
	pid, err := readPidFile(pidFile)
	if err != nil {
		return nil, fmt.Errorf("standby %s: %w", spec.Guest, err)
	}
	s := &Standby{guest: spec.Guest, runDir: spec.RunDir, addr: addr, disk: spec.Disk, pid: pid}
	b, _ := json.Marshal(standbyState{Pid: pid, Addr: addr, Disk: spec.Disk})
	if err := os.WriteFile(stateFile, b, 0o644); err != nil {
		s.Stop()
		return nil, fmt.Errorf("standby %s: %w", spec.Guest, err)
	}
	return s, nil
}

func readPidFile(p string) (int, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: %q", p, b)
	}
	return pid, nil
}

// FindStandby adopts the guest's qemu-storage-daemon started earlier (by this process
// or one before it): its pid file names a live process that is a QSD started with that
// very pid file.
func FindStandby(runDir, guest string) (*Standby, bool) {
	pidFile, _, stateFile, _ := standbyPaths(runDir, guest)
	pid, err := readPidFile(pidFile)
	if err != nil {
		return nil, false
	}
	b, err := os.ReadFile(stateFile)
	if err != nil {
		return nil, false
	}
	var st standbyState
	if json.Unmarshal(b, &st) != nil || st.Pid != pid {
		return nil, false
	}
	s := &Standby{guest: guest, runDir: runDir, addr: st.Addr, disk: st.Disk, pid: pid}
	if !s.Running() {
		return nil, false
	}
	return s, true
}

// isQSD says whether pid is a live (not zombie) qemu-storage-daemon started with
// pidFile: a pid reused by another process is not.
func isQSD(pid int, pidFile string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name's closing parenthesis.
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(cmdline), "\x00")
	if len(args) == 0 || filepath.Base(args[0]) != filepath.Base(QSD) {
		return false
	}
	for i := range len(args) - 1 {
		if args[i] == "--pidfile" && args[i+1] == pidFile {
			return true
		}
	}
	return false
}

// Addr is the address the export listens on.
func (s *Standby) Addr() string { return s.addr }

// Disk is the standby's copy of the guest's disk.
func (s *Standby) Disk() string { return s.disk }

// Pid is the daemon's process id.
func (s *Standby) Pid() int { return s.pid }

// Running says whether the daemon still runs. A stopped (SIGSTOP) daemon runs.
func (s *Standby) Running() bool {
	pidFile, _, _, _ := standbyPaths(s.runDir, s.guest)
	return isQSD(s.pid, pidFile)
}

// Stop kills the daemon (SIGKILL: it may be stopped or wedged) and returns once it is
// gone, its files closed: afterwards nothing writes to the disk, which promotion relies
// on. What the export acknowledged is on the disk already (writethrough).
func (s *Standby) Stop() error {
	pidFile, qmpSock, stateFile, _ := standbyPaths(s.runDir, s.guest)
	// A pidfd pins the process: the checks and the kill address the same one even if
	// it ends meanwhile and its pid is reused.
	pidfd, err := unix.PidfdOpen(s.pid, 0)
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("standby %s: pidfd of %d: %w", s.guest, s.pid, err)
	}
	if err == nil {
		defer unix.Close(pidfd)
	}
	// Not a QSD of this guest (any more): ended already, a zombie, or its pid reused.
	if err == nil && isQSD(s.pid, pidFile) {
		if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("standby %s: kill %d: %w", s.guest, s.pid, err)
		}
		// Readable once the process has ended (a zombie: its files are closed).
		deadline := time.Now().Add(30 * time.Second)
		for {
			fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, 1000)
			if n > 0 {
				break
			}
			if err != nil && !errors.Is(err, unix.EINTR) {
				return fmt.Errorf("standby %s: wait for %d: %w", s.guest, s.pid, err)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("standby %s: %d still runs 30s after SIGKILL", s.guest, s.pid)
			}
		}
	}
	for _, p := range []string{pidFile, qmpSock, stateFile} {
		os.Remove(p)
	}
	return nil
}

// ---- Primary side: QEMU's blockdev-mirror through libvirt ----

// MirrorTarget is where StartMirror mirrors a guest's disk: a standby's export.
type MirrorTarget struct {
	Addr   string // the standby's "ip:port"
	Export string // the export's name (the guest's name)
	Creds  MirrorCreds
	// CredsDir receives QEMU's client copy of Creds (WriteQEMUCreds), owned by the
	// guest's QEMU user: every directory above it must let that user pass.
	CredsDir string
}

// The mirror's names inside a guest's QEMU: one mirror per guest, so fixed.
const (
	mirrorJob  = "dvm-mirror"
	mirrorNode = "dvm-mirror-target"
	mirrorTLS  = "dvm-mirror-tls"
)

// mirrorConnectTimeout bounds the check that the target answers at all (probeNBD),
// made before blockdev-add: QEMU 7.2 opens an NBD export inside blockdev-add with its
// main loop waiting, and the guest with it (measured: the guest's console stops for
// the whole wait). Unchecked, an unreachable host would stall it for as long as the
// kernel retries the SYN, a stopped server until open-timeout.
const mirrorConnectTimeout = 2 * time.Second

// nbdGreeting is what an NBD server sends first, at once, on every connection
// (before TLS): "NBDMAGIC", the IHAVEOPT magic, 16 bits of handshake flags.
var nbdGreeting = []byte("NBDMAGICIHAVEOPT")

// ProbeNBD checks that an NBD server answers at addr: it connects and reads the
// server's greeting, then hangs up. A server whose host is gone, or whose process is
// stopped (its kernel still accepts connections), fails within mirrorConnectTimeout.
func ProbeNBD(addr string) error {
	c, err := net.DialTimeout("tcp", addr, mirrorConnectTimeout)
	if err != nil {
		return fmt.Errorf("target %s does not answer: %w", addr, err)
	}
	defer c.Close()
	if err := c.SetReadDeadline(time.Now().Add(mirrorConnectTimeout)); err != nil {
		return err
	}
	buf := make([]byte, len(nbdGreeting)+2)
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("target %s does not greet as an NBD server: %w", addr, err)
	}
	if !bytes.Equal(buf[:len(nbdGreeting)], nbdGreeting) {
		return fmt.Errorf("target %s is not an NBD server (it says %q)", addr, buf)
	}
	return nil
}

// mirrorOpenTimeout (seconds) is how long QEMU tries to open the target's export.
const mirrorOpenTimeout = 5

// qmpError is an error QEMU answered a QMP command with.
type qmpError struct{ Class, Desc string }

func (e *qmpError) Error() string { return e.Class + ": " + e.Desc }

// domainQMP runs one QMP command in the domain's QEMU through libvirt and decodes its
// return value into out (unless nil).
func domainQMP(d *libvirt.Domain, cmd string, args any, out any) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	resp, err := d.QemuMonitorCommand(string(b), libvirt.DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
	if err != nil {
		return fmt.Errorf("QMP %s: %w", cmd, err)
	}
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *qmpError       `json:"error"`
	}
	if err := json.Unmarshal([]byte(resp), &r); err != nil {
		return fmt.Errorf("QMP %s: answer %q: %w", cmd, resp, err)
	}
	if r.Error != nil {
		return fmt.Errorf("QMP %s: %w", cmd, r.Error)
	}
	if out != nil {
		if err := json.Unmarshal(r.Return, out); err != nil {
			return fmt.Errorf("QMP %s: return %s: %w", cmd, r.Return, err)
		}
	}
	return nil
}

// qmpJob is a job of query-jobs.
type qmpJob struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Status   string `json:"status"`
	Current  uint64 `json:"current-progress"`
	Total    uint64 `json:"total-progress"`
	ErrorMsg string `json:"error"`
}

func mirrorJobOf(d *libvirt.Domain) (*qmpJob, error) {
	var jobs []qmpJob
	if err := domainQMP(d, "query-jobs", nil, &jobs); err != nil {
		return nil, err
	}
	for i := range jobs {
		if jobs[i].ID == mirrorJob {
			return &jobs[i], nil
		}
	}
	return nil, nil
}

// finished says the job ended (or is ending) and will copy no more.
func (j *qmpJob) finished() bool {
	switch j.Status {
	case "aborting", "concluded", "null", "pending", "waiting":
		return true
	}
	return j.ErrorMsg != ""
}

// StartMirror starts copying the guest's (first) disk to t in full and then keeps the
// copy in step synchronously: once the job is ready (MirrorStatus), every guest write
// completes only after the target acknowledged it. It never pivots: the guest keeps its
// own disk. A healthy mirror to t already running: nil (to another target: an error).
// A failed one is cleaned up and started anew. The node must be the local hypervisor (the creds dir is written here
// for its QEMU).
func (n *Node) StartMirror(name string, t MirrorTarget) error {
	host, port, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return fmt.Errorf("mirror of %s: target %q: %w", name, t.Addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || ip.To4() == nil {
		// StopMirror could not cut the connection: SOCK_DESTROY through the netlink
		// package takes IPv4 addresses only.
		return fmt.Errorf("mirror of %s: target %q: want an IPv4 address and port", name, t.Addr)
	}
	if t.Export == "" || t.CredsDir == "" {
		return fmt.Errorf("mirror of %s: no export name or creds dir", name)
	}
	d, err := n.lookup(name)
	if err != nil {
		return err
	}
	defer d.Free()
	job, err := mirrorJobOf(d)
	if err != nil {
		return n.fail("mirror", fmt.Errorf("mirror of %s: %w", name, err))
	}
	if job != nil && !job.finished() {
		addr, err := mirrorAddr(d)
		if err != nil {
			return n.fail("mirror", fmt.Errorf("mirror of %s: %w", name, err))
		}
		if addr != t.Addr {
			return fmt.Errorf("mirror of %s: a mirror to %s runs: stop it first", name, addr)
		}
		n.mirrorTo.Store(name, t.Addr)
		return nil
	}
	// A failed or leftover mirror: its job, node and creds go before a new one.
	if err := n.endMirror(d, name, ""); err != nil {
		return err
	}
	node, err := diskNode(d)
	if err != nil {
		return fmt.Errorf("mirror of %s: %w", name, err)
	}
	uid, gid, err := qemuOwner(n.uri, name)
	if err != nil {
		return fmt.Errorf("mirror of %s: %w", name, err)
	}
	if err := WriteQEMUCreds(t.CredsDir, t.Creds, TLSClient, uid, gid); err != nil {
		return fmt.Errorf("mirror of %s: %w", name, err)
	}
	if err := ProbeNBD(t.Addr); err != nil {
		return fmt.Errorf("mirror of %s: %w", name, err)
	}
	n.mirrorTo.Store(name, t.Addr)
	ok := false
	defer func() {
		if !ok {
			n.endMirror(d, name, t.Addr) //nolint:errcheck // the first error is the one to report
		}
	}()
	if err := domainQMP(d, "object-add", map[string]any{
		"qom-type": "tls-creds-x509", "id": mirrorTLS, "dir": t.CredsDir, "endpoint": "client", "verify-peer": true,
	}, nil); err != nil {
		return n.fail("mirror", fmt.Errorf("mirror of %s: %w", name, err))
	}
	if err := domainQMP(d, "blockdev-add", map[string]any{
		"driver": "nbd", "node-name": mirrorNode,
		"server": map[string]any{"type": "inet", "host": host, "port": port},
		"export": t.Export, "tls-creds": mirrorTLS,
		// Bounds the wait in blockdev-add for a target that stopped answering
		// since probeNBD: the open fails after this long, instead of holding QEMU's
		// main loop, and with it the guest, for good.
		"open-timeout": mirrorOpenTimeout,
	}, nil); err != nil {
		return n.fail("mirror", fmt.Errorf("mirror of %s to %s: %w", name, t.Addr, err))
	}
	if err := sameSize(d, node, mirrorNode); err != nil {
		return fmt.Errorf("mirror of %s to %s: %w", name, t.Addr, err)
	}
	if err := domainQMP(d, "blockdev-mirror", map[string]any{
		"job-id": mirrorJob, "device": node, "target": mirrorNode,
		"sync": "full", "copy-mode": "write-blocking",
		// The job stays after it failed, so MirrorStatus can tell why; StopMirror
		// dismisses it.
		"auto-dismiss": false,
	}, nil); err != nil {
		return n.fail("mirror", fmt.Errorf("mirror of %s to %s: %w", name, t.Addr, err))
	}
	ok = true
	return nil
}

// diskNode is the node name of the guest's first disk in QEMU's block graph (libvirt's
// format node, "libvirt-N-format" or so), found with query-block by the disk's alias.
func diskNode(d *libvirt.Domain) (string, error) {
	x, err := d.GetXMLDesc(0)
	if err != nil {
		return "", err
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(x); err != nil {
		return "", err
	}
	alias := ""
	if dom.Devices != nil {
		for _, disk := range dom.Devices.Disks {
			if (disk.Device == "" || disk.Device == "disk") && disk.Alias != nil {
				alias = disk.Alias.Name
				break
			}
		}
	}
	if alias == "" {
		return "", errors.New("the guest has no disk")
	}
	var blocks []struct {
		Device   string `json:"device"`
		QDev     string `json:"qdev"`
		Inserted *struct {
			NodeName string `json:"node-name"`
		} `json:"inserted"`
	}
	if err := domainQMP(d, "query-block", nil, &blocks); err != nil {
		return "", err
	}
	for _, b := range blocks {
		if b.Inserted != nil && (strings.Contains(b.QDev, "/"+alias+"/") || b.QDev == alias || b.Device == "drive-"+alias) {
			return b.Inserted.NodeName, nil
		}
	}
	return "", fmt.Errorf("QEMU shows no block device of disk %s", alias)
}

// sameSize checks that the target shows the size of the guest's disk: QEMU's mirror
// would try to resize an export, which NBD cannot, and fail only after it started.
func sameSize(d *libvirt.Domain, source, target string) error {
	var nodes []struct {
		NodeName string `json:"node-name"`
		Image    struct {
			VirtualSize uint64 `json:"virtual-size"`
		} `json:"image"`
	}
	if err := domainQMP(d, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return err
	}
	size := map[string]uint64{}
	for _, nd := range nodes {
		size[nd.NodeName] = nd.Image.VirtualSize
	}
	if size[source] != size[target] {
		return fmt.Errorf("the guest's disk has %d bytes, the target's export %d", size[source], size[target])
	}
	return nil
}

// qemuOwner is the user and group the guest's QEMU runs as (libvirt's pid file, then
// /proc): the creds dir must be theirs.
func qemuOwner(uri, name string) (int, int, error) {
	pid, err := qemuPid(uri, name)
	if err != nil {
		return 0, 0, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d", pid), &st); err != nil {
		return 0, 0, fmt.Errorf("QEMU of %s: %w", name, err)
	}
	return int(st.Uid), int(st.Gid), nil
}

func qemuPid(uri, name string) (int, error) {
	if !strings.HasPrefix(uri, "qemu:///system") {
		return 0, fmt.Errorf("the guest's QEMU must run on this host under qemu:///system, not %s", uri)
	}
	return readPidFile(filepath.Join("/run/libvirt/qemu", name+".pid"))
}

// MirrorStatus is a mirror as QEMU reports it.
type MirrorStatus struct {
	Active bool   // the job exists and copies
	Ready  bool   // the copy is in step: every guest write reaches the target before it completes
	Done   uint64 // bytes copied so far (QEMU's progress: it may grow past Total while in step)
	Total  uint64
	Err    string // why a failed job failed (it stays, not Active, until StopMirror)
}

// MirrorStatus reports the guest's mirror. No mirror: the zero status.
func (n *Node) MirrorStatus(name string) (MirrorStatus, error) {
	d, err := n.lookup(name)
	if err != nil {
		return MirrorStatus{}, err
	}
	defer d.Free()
	job, err := mirrorJobOf(d)
	if err != nil {
		return MirrorStatus{}, n.fail("mirror", fmt.Errorf("mirror of %s: %w", name, err))
	}
	if job == nil {
		return MirrorStatus{}, nil
	}
	st := MirrorStatus{Done: job.Current, Total: job.Total, Err: job.ErrorMsg}
	st.Active = !job.finished()
	st.Ready = st.Active && job.Status == "ready"
	return st, nil
}

// StopMirror ends the guest's mirror without a pivot: the guest runs on its own disk,
// unprotected. It first cuts the mirror's TCP connection (SOCK_DESTROY), so that it
// returns promptly even when the target's host is gone without a word (no RST: TCP
// would retransmit for minutes, and QEMU's drain at the job's end would wait for the
// requests in flight): the connection's requests fail at once and no write waits for
// the target any more. No mirror: nil. It must run on the guest's host.
func (n *Node) StopMirror(name string) error {
	d, err := n.lookup(name)
	if err != nil {
		return err
	}
	defer d.Free()
	// The address StartMirror used, else (this process did not start the mirror)
	// QEMU's: a QMP command before the cut could wait behind a drain of the
	// connection's requests, which a dead target never answers.
	if addr, ok := n.mirrorTo.Load(name); ok {
		if err := cutTCP(addr.(string)); err != nil {
			return fmt.Errorf("stop mirror of %s: %w", name, err)
		}
	}
	addr, err := mirrorAddr(d)
	if err != nil {
		return n.fail("mirror", fmt.Errorf("stop mirror of %s: %w", name, err))
	}
	if err := n.endMirror(d, name, addr); err != nil {
		return err
	}
	n.mirrorTo.Delete(name)
	return nil
}

// mirrorAddr is the target's "ip:port" from the NBD node's filename
// ("nbd://HOST:PORT/EXPORT"); "" when there is no such node.
func mirrorAddr(d *libvirt.Domain) (string, error) {
	var nodes []struct {
		NodeName string `json:"node-name"`
		File     string `json:"file"`
	}
	if err := domainQMP(d, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return "", err
	}
	for _, nd := range nodes {
		if nd.NodeName != mirrorNode {
			continue
		}
		rest, ok := strings.CutPrefix(nd.File, "nbd://")
		if !ok {
			return "", fmt.Errorf("mirror target %q: not nbd://", nd.File)
		}
		hostPort, _, _ := strings.Cut(rest, "/")
		return hostPort, nil
	}
	return "", nil
}

// endMirror cuts the connection to addr (when not ""), then ends the job and removes
// the target node and the TLS object, whichever exist.
func (n *Node) endMirror(d *libvirt.Domain, name, addr string) error {
	if addr != "" {
		if err := cutTCP(addr); err != nil {
			return fmt.Errorf("stop mirror of %s: %w", name, err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	cancelled := false
	for {
		job, err := mirrorJobOf(d)
		if err != nil {
			return n.fail("mirror", fmt.Errorf("stop mirror of %s: %w", name, err))
		}
		if job == nil {
			break
		}
		switch {
		case job.Status == "concluded":
			if err := domainQMP(d, "job-dismiss", map[string]any{"id": mirrorJob}, nil); err != nil {
				return n.fail("mirror", fmt.Errorf("stop mirror of %s: %w", name, err))
			}
			continue
		case !cancelled && job.Status != "aborting" && job.Status != "null":
			// force: no final catch-up with the target, and a ready mirror is
			// abandoned, not completed.
			if err := domainQMP(d, "block-job-cancel", map[string]any{"device": mirrorJob, "force": true}, nil); err != nil {
				// The job may have ended meanwhile (its connection just cut): then
				// the next round dismisses it.
				if now, qerr := mirrorJobOf(d); qerr != nil || (now != nil && now.Status != "concluded" && now.Status != "aborting" && now.Status != "null") {
					return n.fail("mirror", fmt.Errorf("stop mirror of %s: %w", name, err))
				}
			}
			cancelled = true
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("stop mirror of %s: the job is still %s after 30s", name, job.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := domainQMP(d, "blockdev-del", map[string]any{"node-name": mirrorNode}, nil); err != nil && !isQMPNotFound(err) {
		return n.fail("mirror", fmt.Errorf("stop mirror of %s: %w", name, err))
	}
	if err := domainQMP(d, "object-del", map[string]any{"id": mirrorTLS}, nil); err != nil && !isQMPNotFound(err) {
		return n.fail("mirror", fmt.Errorf("stop mirror of %s: %w", name, err))
	}
	return nil
}

// isQMPNotFound: the node or object to delete does not exist.
func isQMPNotFound(err error) bool {
	var qe *qmpError
	if !errors.As(err, &qe) {
		return false
	}
	d := strings.ToLower(qe.Desc)
	return qe.Class == "DeviceNotFound" || strings.Contains(d, "not found") || strings.Contains(d, "failed to find")
}

// cutTCP destroys every TCP socket of this host (of its network namespace) connected
// to addr, IPv4 only (the netlink call supports no more). Only the mirror connects
// there: the standby's export serves one guest.
func cutTCP(addr string) error {
	remote, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return err
	}
	socks, err := netlink.SocketDiagTCP(unix.AF_INET)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list TCP sockets: %w", err)
	}
	for _, s := range socks {
		if s.ID.DestinationPort != uint16(remote.Port) || !s.ID.Destination.Equal(remote.IP) {
			continue
		}
		local := &net.TCPAddr{IP: s.ID.Source, Port: int(s.ID.SourcePort)}
		if err := netlink.SocketDestroy(local, remote); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("cut TCP %s -> %s: %w", local, remote, err)
		}
	}
	return nil
}
