package hypervisor

// A twin is a guest kept in lockstep on two nodes with QEMU's COLO replication: the
// primary runs the guest, the secondary runs a replica that QEMU checkpoints from the
// primary and whose outgoing packets are compared with the primary's before they leave.
// libvirt cannot drive COLO, so the node agent runs the two QEMU processes itself; this
// file turns a guest spec into a twin half's QEMU command line, twin_process.go runs and
// supervises the process, twin_colo.go drives replication and failover over QMP
// (go-qemu), twin_probe.go finds out whether a node's QEMU can serve twins at all.
//
// How the agents use it, the secondary on node B and the primary on node A:
//
//	ProbeTwinSupport(ctx, "", accel)       on each node, once: refuse twins where it fails
//	B: s := StartSecondary(ctx, spec)      its own copy of the disk, Links on A and B
//	A: p := StartPrimary(ctx, spec)        (or the guest already runs as a primary)
//	B: s.PrepareSecondary(ctx)             NBD export, x-colo
//	A: p.Protect(ctx, links)               disk mirror if running, replication, compare, COLO
//	…  Status(ctx) on either: protected / syncing / unprotected, checkpoints
//	A lost: s.Failover(ctx)                the replica runs on, now the primary
//	B lost: p.PrimaryAlone(ctx)            the primary runs on unprotected
//	then a new secondary elsewhere and Protect again, with the new links
//
// Pair does PrepareSecondary and Protect for a caller holding both halves. Failover and
// PrimaryAlone must only follow the cluster's verdict that the other half is lost.
//
// What QEMU 7.2.22 (Debian 12) does, measured here: every part exists and pairing,
// failover and re-protection work; the secondary aborts loading a q35 checkpoint, so
// twins use i440fx; and within its first few checkpoints the primary freezes for good
// (a race in its COLO thread), which ProbeTwinSupport detects and refuses.
//
// Names used on both halves (they must match for QEMU's migration stream and the COLO
// commands): the guest's disk is the quorum node "colo-disk0" (device "disk0"), the NIC
// is netdev "hn0" (device "net0"). The primary's replication child is "replication0";
// the secondary's own copy of the disk is "parent0", exported over NBD under that name.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dvmproject/dvm/hypervisor/profile"
)

// TwinRole is the part a twin half plays.
type TwinRole string

const (
	TwinPrimary   TwinRole = "primary"   // runs the guest; its output is what clients see
	TwinSecondary TwinRole = "secondary" // the replica, promoted by Failover
)

// DefaultQEMU is the QEMU binary of a twin half that names none.
const DefaultQEMU = "qemu-system-x86_64"

// TwinLinks are the TCP addresses ("host:port") of the links between the two halves of
// a twin. The caller chooses them: loopback in tests, each node's address on the cluster
// network in the lab and in production. Both halves get the same TwinLinks.
type TwinLinks struct {
	// On the primary's node: the primary listens, the secondary connects.
	Mirror  string // packets arriving for the guest, mirrored to the secondary
	Compare string // the secondary's outgoing packets, compared with the primary's
	// On the secondary's node: the secondary listens, the primary connects.
	Migrate string // the migration stream: the first full copy, then every checkpoint
	NBD     string // the secondary's copy of the disk, exported to the primary
}

// TwinSpec is one half of a twin: the guest (the same GuestSpec and OS profile that
// libvirt guests are built from) and where this half runs.
type TwinSpec struct {
	Guest GuestSpec
	// Guest.Disk is this half's own copy of the disk. The secondary's copy must be a
	// separate file of the same size: COLO replicates writes into it and merges the
	// secondary's overlays into it on failover, so shared storage cannot serve both.
	Role  TwinRole
	Accel Accelerator // AccelKVM or AccelTCG: the node's setting
	// RunDir holds this half's QMP socket, pidfile, QEMU log, unix sockets and (on the
	// secondary) the active and hidden overlays. It is created if missing; Stop removes
	// what the process made in it except the QEMU log.
	RunDir string
	Links  TwinLinks
	QEMU   string // binary; "" is DefaultQEMU
	// Paused starts a primary with its vCPUs stopped (QEMU -S): a fresh pair, whose
	// disks are identical, is then paired without copying the disk, and COLO starts
	// the guest. Ignored for a secondary.
	Paused bool
	// CheckpointInterval is how long COLO lets the two halves run between checkpoints
	// when their outputs agree (QEMU's x-checkpoint-delay); 0 keeps QEMU's default.
	CheckpointInterval time.Duration
	// MigrationBandwidth caps the migration stream in bytes per second; 0 keeps QEMU's
	// default (32 MiB/s in QEMU 7.2, slow for a first copy on a fast network).
	MigrationBandwidth int64
}

// twinMachine is the machine type of every twin, whatever its profile says: QEMU 7.2's
// COLO secondary aborts loading a checkpoint of a q35 machine ("memory_region_add_
// subregion_common: Assertion `!subregion->container' failed", seen on Debian's 7.2),
// and i440fx ("pc") works. Guests of the q35 profiles (linux) run on it as well.
const twinMachine = "pc"

// ErrTwinUnsupported: COLO cannot serve this guest or this node. The wrapping error
// says what is missing or which device is at fault.
var ErrTwinUnsupported = errors.New("twin not supported")

// Files in a twin half's RunDir.
const (
	twinQMPSocket  = "qmp.sock"
	twinPidfile    = "qemu.pid"
	twinQEMULog    = "qemu.log"
	twinCompareIn  = "compare0.sock"    // primary: its own outgoing packets into colo-compare
	twinCompareOut = "compare-out.sock" // primary: packets colo-compare lets out
	twinActive     = "secondary-active.qcow2"
	twinHidden     = "secondary-hidden.qcow2"
	twinTraceFIFO  = "colo-trace.fifo"
)

// Validate checks a twin half's spec: what BuildDomain checks for every guest, plus what
// COLO needs. It names the field at fault and what to do.
func (s TwinSpec) Validate() error {
	g := s.Guest
	if _, err := BuildDomain(g, AccelTCG); err != nil {
		return fmt.Errorf("twin: %w", err)
	}
	if s.Role != TwinPrimary && s.Role != TwinSecondary {
		return fmt.Errorf("twin %q: role %q: use %q or %q", g.Name, s.Role, TwinPrimary, TwinSecondary)
	}
	if s.Accel != AccelKVM && s.Accel != AccelTCG {
		return fmt.Errorf("twin %q: accelerator %q: a twin runs under %q or %q", g.Name, s.Accel, AccelKVM, AccelTCG)
	}
	if s.RunDir == "" || !filepath.IsAbs(s.RunDir) {
		return fmt.Errorf("twin %q: run directory %q must be an absolute path", g.Name, s.RunDir)
	}
	// A unix socket path is limited to 107 bytes.
	if len(filepath.Join(s.RunDir, twinCompareOut)) > 107 {
		return fmt.Errorf("twin %q: run directory %q is too long for a unix socket path: use one under 90 bytes", g.Name, s.RunDir)
	}
	if err := checkTwinDevices(g); err != nil {
		return err
	}
	if err := s.checkLinks(s.Links); err != nil {
		return err
	}
	if s.CheckpointInterval < 0 || s.MigrationBandwidth < 0 {
		return fmt.Errorf("twin %q: checkpoint interval and migration bandwidth must not be negative", g.Name)
	}
	return nil
}

// checkLinks checks the addresses of the links this guest's devices need.
func (s TwinSpec) checkLinks(l TwinLinks) error {
	g := s.Guest
	links := []struct{ name, addr string }{{"migrate", l.Migrate}}
	if g.Disk != nil {
		links = append(links, struct{ name, addr string }{"nbd", l.NBD})
	}
	if len(g.NICs) > 0 {
		links = append(links, struct{ name, addr string }{"mirror", l.Mirror}, struct{ name, addr string }{"compare", l.Compare})
	}
	for _, l := range links {
		if _, _, err := splitHostPort(l.addr); err != nil {
			return fmt.Errorf("twin %q: %s link %q: %v: give host:port", g.Name, l.name, l.addr, err)
		}
	}
	return nil
}

// checkTwinDevices refuses the guest devices COLO cannot replicate, naming each.
func checkTwinDevices(g GuestSpec) error {
	if len(g.NICs) > 1 {
		return fmt.Errorf("twin %q has %d NICs: %w: a twin has at most one NIC (each NIC needs its own colo-compare and links, which dvm does not set up yet); give the guest one NIC", g.Name, len(g.NICs), ErrTwinUnsupported)
	}
	if d := g.Disk; d != nil {
		switch d.Format {
		case "", "qcow2", "raw":
		default:
			return fmt.Errorf("twin %q: disk format %q: %w: COLO's replication driver takes qcow2 or raw disks", g.Name, d.Format, ErrTwinUnsupported)
		}
		if d.Path == "" {
			return fmt.Errorf("twin %q: disk has no path", g.Name)
		}
	}
	return nil
}

// splitHostPort parses "host:port" with a numeric port.
func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 1 to 65535", p)
	}
	if h == "" {
		return "", 0, errors.New("no host")
	}
	return h, port, nil
}

func (s TwinSpec) qemu() string {
	if s.QEMU == "" {
		return DefaultQEMU
	}
	return s.QEMU
}

func (s TwinSpec) path(name string) string { return filepath.Join(s.RunDir, name) }

// diskFormat is the format of a disk, qcow2 when unset (as in BuildDomain).
func diskFormat(d *Disk) string {
	if d.Format == "" {
		return "qcow2"
	}
	return d.Format
}

// TwinCommand is a twin half's QEMU command line: no shell ever sees it. tapFD is the
// file descriptor number the process gets its NIC's tap on (-1: no NIC).
func TwinCommand(s TwinSpec, tapFD int) ([]string, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return twinCommand(s, tapFD)
}

// twinCommand builds the command line of a spec that was validated, or of the
// probe's guest-less pair.
func twinCommand(s TwinSpec, tapFD int) ([]string, error) {
	g := s.Guest
	prof, _ := profile.Lookup(g.OS)
	args := []string{
		"-name", "guest=" + qemuOpt(g.Name) + ",debug-threads=on",
		"-machine", twinMachine + ",accel=" + string(s.Accel),
		"-m", strconv.FormatInt(g.MemoryBytes>>20, 10),
		"-smp", strconv.Itoa(g.CPUs),
		// Only the devices below: no default NIC, VGA, floppy or CD whose state would
		// have to match on both halves.
		"-nodefaults", "-no-user-config", "-display", "none",
		"-rtc", "base=utc",
		"-msg", "timestamp=on",
		"-qmp", "unix:" + qemuOpt(s.path(twinQMPSocket)) + ",server=on,wait=off",
		"-pidfile", s.path(twinPidfile),
		// COLO's checkpoint messages, read by the runner from a pipe: QEMU 7.2 has no
		// QMP counter or duration of checkpoints, its trace events are the only record.
		"-D", s.path(twinTraceFIFO),
		"-trace", "enable=colo_send_message", "-trace", "enable=colo_receive_message", "-trace", "enable=colo_vm_state_change",
	}
	if g.UUID != "" {
		args = append(args, "-uuid", g.UUID)
	}
	if s.Accel == AccelKVM {
		// As BuildDomain: the nodes of a pool are one CPU model.
		args = append(args, "-cpu", "host")
	}
	if !prof.ACPI {
		args = append(args, "-no-acpi")
	}
	if g.ConsoleLog != "" {
		args = append(args, "-chardev", "file,id=console0,path="+qemuOpt(g.ConsoleLog)+",append=on")
	} else {
		args = append(args, "-chardev", "null,id=console0")
	}
	args = append(args, "-serial", "chardev:console0")
	if b := g.Boot; b != nil {
		args = append(args, "-kernel", b.Kernel, "-append", withConsole(b.Cmdline, prof.ConsoleSpeed))
		if b.Initrd != "" {
			args = append(args, "-initrd", b.Initrd)
		}
	}
	if d := g.Disk; d != nil {
		quorum := "if=none,id=colo-disk0,driver=quorum,read-pattern=fifo,vote-threshold=1,"
		switch s.Role {
		case TwinPrimary:
			args = append(args, "-drive", quorum+"children.0.file.filename="+qemuOpt(d.Path)+",children.0.driver="+diskFormat(d))
		case TwinSecondary:
			args = append(args,
				"-drive", "if=none,id=parent0,driver="+diskFormat(d)+",file.filename="+qemuOpt(d.Path),
				"-drive", "if=none,id=childs0,driver=replication,mode=secondary,top-id=colo-disk0,"+
					"file.driver=qcow2,file.file.filename="+qemuOpt(s.path(twinActive))+
					",file.backing.driver=qcow2,file.backing.file.filename="+qemuOpt(s.path(twinHidden))+
					",file.backing.backing=parent0",
				"-drive", quorum+"children.0=childs0")
		}
		dev := "virtio-blk-pci,id=disk0,drive=colo-disk0"
		if g.Boot == nil {
			dev += ",bootindex=1"
		}
		args = append(args, "-device", dev)
	}
	if len(g.NICs) == 1 {
		if tapFD < 0 {
			return nil, fmt.Errorf("twin %q: a NIC needs a tap file descriptor", g.Name)
		}
		nic := g.NICs[0]
		// vhost bypasses QEMU's net filters, which COLO's packet compare is made of.
		args = append(args, "-netdev", "tap,id=hn0,fd="+strconv.Itoa(tapFD)+",vhost=off")
		dev := "virtio-net-pci,id=net0,netdev=hn0"
		if nic.MAC != "" {
			dev += ",mac=" + nic.MAC
		}
		if prof.NICNoTSO {
			dev += ",host_tso4=off,host_tso6=off,guest_tso4=off,guest_tso6=off"
		}
		args = append(args, "-device", dev)
		mh, mp, _ := splitHostPort(s.Links.Mirror)
		ch, cp, _ := splitHostPort(s.Links.Compare)
		switch s.Role {
		case TwinPrimary:
			// The sockets exist from the start so that a secondary can connect at any
			// time; the filters and colo-compare that use them are added by Pair.
			args = append(args,
				"-chardev", inetChardev("mirror0", mh, mp, true),
				"-chardev", inetChardev("compare1", ch, cp, true),
				"-chardev", "socket,id=compare0,path="+qemuOpt(s.path(twinCompareIn))+",server=on,wait=off",
				"-chardev", "socket,id=compare0-0,path="+qemuOpt(s.path(twinCompareIn)),
				"-chardev", "socket,id=compare_out,path="+qemuOpt(s.path(twinCompareOut))+",server=on,wait=off",
				"-chardev", "socket,id=compare_out0,path="+qemuOpt(s.path(twinCompareOut)))
		case TwinSecondary:
			args = append(args,
				"-chardev", inetChardev("red0", mh, mp, false),
				"-chardev", inetChardev("red1", ch, cp, false),
				"-object", "filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0",
				"-object", "filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1",
				"-object", "filter-rewriter,id=rew0,netdev=hn0,queue=all")
		}
	}
	if prof.RNG {
		args = append(args, "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,id=rng0dev,rng=rng0")
	}
	if prof.Balloon {
		args = append(args, "-device", "virtio-balloon-pci,id=balloon0")
	}
	switch s.Role {
	case TwinPrimary:
		if s.Paused {
			args = append(args, "-S")
		}
	case TwinSecondary:
		h, p, _ := splitHostPort(s.Links.Migrate)
		args = append(args, "-incoming", "tcp:"+bracketIPv6(h)+":"+strconv.Itoa(p))
	}
	return args, nil
}

// inetChardev is a TCP chardev; a client reconnects every second, so that either
// half may start first and a secondary outlives a restart of the link.
func inetChardev(id, host string, port int, server bool) string {
	s := "socket,id=" + id + ",host=" + qemuOpt(host) + ",port=" + strconv.Itoa(port)
	if server {
		return s + ",server=on,wait=off"
	}
	return s + ",reconnect=1"
}

func bracketIPv6(h string) string {
	if strings.Contains(h, ":") {
		return "[" + h + "]"
	}
	return h
}

// qemuOpt escapes a value inside a QEMU option list, where a comma is doubled.
func qemuOpt(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// removeIfExists removes a file, ignoring that it is already gone.
func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
