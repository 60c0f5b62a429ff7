// Package peerlab runs the peer dvm is measured against: Pacemaker with Corosync and
// resource-agents' VirtualDomain, on namespace hosts of the same kind as the dvm lab's
// (internal/lab's Host: its own mounts, eth0, virtlogd, virtlockd and libvirtd with the
// lab's libvirt configuration, tini as PID 1), booting the lab's guest image from
// shared storage. Fencing is off (stonith-enabled=false): the lab has no fence device,
// and a killed host is really dead, so recovery is not held up waiting for one. dvm's
// own lab fences (its nodes stop their guests when their lease lapses), which costs
// it nothing on a power loss either.
//
// The peer lab has its own bridge (peerlab0, 10.78.0.1/24) and hosts p1 … pN at
// 10.78.0.(10+K), so it can be up beside a dvm lab (dvmlab0, 10.77.0.0/24). Its files
// live under DIR (nodes/pK/{node.sh,node.log,private,…}, shared/{images,locks,domains,
// console}); DIR/peerlab.json records the hosts' PIDs, so that Up first brings down
// what a killed run left (the bridge's alias names the DIR that owns it).
package peerlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/lab"
	"github.com/vishvananda/netlink"
	"libvirt.org/go/libvirt"
)

const (
	// Bridge joins the peer lab's hosts in the root namespace.
	Bridge = "peerlab0"
	// BridgeAddr is the root namespace's address on Bridge.
	BridgeAddr = "10.78.0.1"

	bridgeAliasPrefix = "dvm-peerlab "
	stateFile         = "peerlab.json"
)

// LoadThreshold is Pacemaker's load-threshold in the peer lab (Pacemaker's default
// is 80%): see Up.
var LoadThreshold = "10000%"

// Corosync is the Corosync timing of a peer lab: what decides how soon a lost host
// is noticed.
type Corosync struct {
	// TokenMS is totem's token timeout in ms; 0 is Corosync's default (3000).
	TokenMS int
	// TokenCoefficient is added to the token timeout per node past two; nil is
	// Corosync's default (650 ms).
	TokenCoefficient *int
}

// String is the timing as corosync.conf's totem section spells it.
func (c Corosync) String() string {
	var parts []string
	if c.TokenMS > 0 {
		parts = append(parts, fmt.Sprintf("token: %d", c.TokenMS))
	} else {
		parts = append(parts, "token: default (3000)")
	}
	if c.TokenCoefficient != nil {
		parts = append(parts, fmt.Sprintf("token_coefficient: %d", *c.TokenCoefficient))
	} else {
		parts = append(parts, "token_coefficient: default (650)")
	}
	return strings.Join(parts, ", ")
}

// Options say what peer lab Up brings up.
type Options struct {
	Nodes      int    // 3 when 0; at most 7
	Dir        string // required: where the lab's files go
	ImageCache string // the guest image cache; "" is lab.DefaultImageCache
	Corosync   Corosync
	Log        io.Writer // one line per step; nil discards them
}

// Lab is a peer lab that is up.
type Lab struct {
	dir  string
	log  io.Writer
	opts Options
	img  lab.Image

	mu    sync.Mutex
	hosts []*host
}

// host is one host of the peer lab and its PID 1.
type host struct {
	Index    int    `json:"index"`
	Name     string `json:"name"`
	HostUUID string `json:"host_uuid"`
	PID      int    `json:"pid"`
	PIDStart uint64 `json:"pid_start"`
}

// Node is how to reach one host of the peer lab.
type Node struct {
	Name       string
	Addr       string
	LibvirtURI string
	PID        int // root namespace PID of the host's tini; 0 when killed
}

func hostName(k int) string { return fmt.Sprintf("p%d", k) }
func hostAddr(k int) string { return fmt.Sprintf("10.78.0.%d", 10+k) }
func vethName(k int) string { return fmt.Sprintf("peerlab-p%d", k) }

// mac is a fixed, locally administered MAC (02:78:00:00:hi:lo), kept across restarts
// for the reason the dvm lab keeps its own: stale neighbour entries.
func mac(hi, lo int) net.HardwareAddr { return net.HardwareAddr{0x02, 0x78, 0, 0, byte(hi), byte(lo)} }

// Dir is the lab's directory.
func (l *Lab) Dir() string { return l.dir }

// Corosync is the Corosync timing the lab runs with.
func (l *Lab) Corosync() Corosync { return l.opts.Corosync }

func (l *Lab) logf(format string, args ...any) {
	if l.log != nil {
		fmt.Fprintf(l.log, format+"\n", args...)
	}
}

func (l *Lab) nodeDir(name string) string { return filepath.Join(l.dir, "nodes", name) }

// Nodes lists the hosts in order.
func (l *Lab) Nodes() []Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Node
	for _, h := range l.hosts {
		pid := h.PID
		if !lab.HostAlive(h.PID, h.PIDStart) {
			pid = 0
		}
		out = append(out, Node{Name: h.Name, Addr: hostAddr(h.Index), LibvirtURI: "qemu+tcp://" + hostAddr(h.Index) + "/system", PID: pid})
	}
	return out
}

func (l *Lab) find(name string) (*host, error) {
	for _, h := range l.hosts {
		if h.Name == name {
			return h, nil
		}
	}
	return nil, fmt.Errorf("peer lab in %s has no host %q", l.dir, name)
}

// privateDirs are the paths a peer host keeps to itself beyond the dvm lab's: the
// cluster stack's configuration, state and logs. Corosync and Pacemaker name their
// IPC buffers in /dev/shm by PID, which the host's private /dev/shm takes care of.
var privateDirs = []struct {
	path  string
	owner string // "" is root; else owned by hacluster:haclient, as the packages make them
}{
	{"/etc/corosync", ""},
	{"/var/lib/corosync", ""},
	{"/var/log/corosync", ""},
	{"/var/lib/pacemaker", "hacluster"},
	{"/var/lib/pacemaker/cib", "hacluster"},
	{"/var/lib/pacemaker/pengine", "hacluster"},
	{"/var/lib/pacemaker/blackbox", "hacluster"},
	{"/var/lib/pacemaker/cores", "hacluster"},
	{"/var/log/pacemaker", "hacluster"},
}

// service runs Corosync, then Pacemaker once Corosync answers; the host ends when
// either ends.
const service = `log "starting corosync ($(grep -E '^\s*token' /etc/corosync/corosync.conf | tr -s ' \n' ' '))"
corosync -f >>"$nodedir/corosync.out" 2>&1 &
i=0
while ! corosync-cfgtool -s >/dev/null 2>&1; do
	i=$((i + 1))
	if [ "$i" -gt 300 ]; then log "corosync not answering after 30s: see $nodedir/private/var/log/corosync"; exit 1; fi
	sleep 0.1
done
log "starting pacemakerd (log: $nodedir/private/var/log/pacemaker/pacemaker.log)"
# pacemakerd stays in the foreground (Pacemaker 2): the host lives while it does.
PCMK_logfile=/var/log/pacemaker/pacemaker.log pacemakerd >>"$nodedir/pacemakerd.out" 2>&1 || log "pacemakerd exited with status $?"
exit 1`

// corosyncConf is the hosts' corosync.conf: knet on the lab's bridge, no crypto (lab
// addresses only), votequorum.
func (l *Lab) corosyncConf() string {
	var b strings.Builder
	b.WriteString("# dvm peer lab: written by peerlab.Up\ntotem {\n\tversion: 2\n\tcluster_name: peerlab\n\ttransport: knet\n\tcrypto_cipher: none\n\tcrypto_hash: none\n")
	if c := l.opts.Corosync; c.TokenMS > 0 {
		fmt.Fprintf(&b, "\ttoken: %d\n", c.TokenMS)
	}
	if c := l.opts.Corosync; c.TokenCoefficient != nil {
		fmt.Fprintf(&b, "\ttoken_coefficient: %d\n", *c.TokenCoefficient)
	}
	b.WriteString("}\nnodelist {\n")
	for _, h := range l.hosts {
		fmt.Fprintf(&b, "\tnode {\n\t\tring0_addr: %s\n\t\tname: %s\n\t\tnodeid: %d\n\t}\n", hostAddr(h.Index), h.Name, h.Index)
	}
	b.WriteString("}\nquorum {\n\tprovider: corosync_votequorum\n}\nlogging {\n\tto_logfile: yes\n\tlogfile: /var/log/corosync/corosync.log\n\tto_syslog: no\n\tto_stderr: no\n\ttimestamp: hires\n}\n")
	return b.String()
}

// libHost is h as the dvm lab's kind of host, running the cluster stack.
func (l *Lab) libHost(h *host) lab.Host {
	var hosts strings.Builder
	hosts.WriteString("# dvm peer lab: written by peerlab.Up\n127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	for _, o := range l.hosts {
		fmt.Fprintf(&hosts, "%s\t%s\n", hostAddr(o.Index), o.Name)
	}
	var mounts []string
	for _, d := range privateDirs {
		// A directory inside one already mounted comes with it.
		if len(mounts) == 0 || !strings.HasPrefix(d.path, mounts[len(mounts)-1]+"/") {
			mounts = append(mounts, d.path)
		}
	}
	return lab.Host{
		Name: h.Name, Dir: l.nodeDir(h.Name), LabDir: l.dir, Addr: hostAddr(h.Index), HostUUID: h.HostUUID,
		Lockspace: filepath.Join(l.dir, "shared", "locks"), Hosts: hosts.String(), Mounts: mounts, Service: service,
	}
}

// prepare writes h's files afresh, as for a host that rebooted: libvirt's state and
// the cluster stack's (the CIB comes back from the other hosts).
func (l *Lab) prepare(h *host) error {
	lh := l.libHost(h)
	if err := lh.Prepare(); err != nil {
		return err
	}
	priv := filepath.Join(lh.Dir, "private")
	if err := os.RemoveAll(priv); err != nil {
		return err
	}
	ha, err := user.Lookup("hacluster")
	if err != nil {
		return fmt.Errorf("peer lab: %w (apt-get install pacemaker)", err)
	}
	uid, _ := strconv.Atoi(ha.Uid)
	gid, _ := strconv.Atoi(ha.Gid)
	if g, err := user.LookupGroup("haclient"); err == nil {
		gid, _ = strconv.Atoi(g.Gid)
	}
	for _, d := range privateDirs {
		p := filepath.Join(priv, d.path)
		if err := os.MkdirAll(p, 0o750); err != nil {
			return err
		}
		if d.owner != "" {
			if err := os.Chown(p, uid, gid); err != nil {
				return err
			}
			if err := os.Chmod(p, 0o770); err != nil {
				return err
			}
		}
	}
	return os.WriteFile(filepath.Join(priv, "etc/corosync/corosync.conf"), []byte(l.corosyncConf()), 0o644)
}

// start starts h's namespaces and gives it its eth0 on the peer bridge.
func (l *Lab) start(h *host) error {
	if err := l.prepare(h); err != nil {
		return err
	}
	pid, start, err := lab.StartHost(l.libHost(h), func(pid int) error { return addVeth(h.Index, pid) })
	if err != nil {
		return err
	}
	h.PID, h.PIDStart = pid, start
	l.logf("peer host %s: PID %d, %s on %s", h.Name, pid, hostAddr(h.Index), vethName(h.Index))
	return l.save()
}

// save writes DIR/peerlab.json; l.mu is held or the lab is not shared yet.
func (l *Lab) save() error {
	b, err := json.MarshalIndent(l.hosts, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(l.dir, stateFile), append(b, '\n'), 0o600)
}

// waitLibvirt waits until h's libvirtd answers over TCP from the root namespace.
func (l *Lab) waitLibvirt(ctx context.Context, h *host) error {
	nd := l.nodeDir(h.Name)
	uri := "qemu+tcp://" + hostAddr(h.Index) + "/system"
	for {
		if !lab.HostAlive(h.PID, h.PIDStart) {
			return fmt.Errorf("peer host %s died while starting: see %s", h.Name, filepath.Join(nd, "node.log"))
		}
		if _, err := os.Stat(filepath.Join(nd, "libvirtd.ready")); err == nil {
			if c, err := libvirt.NewConnect(uri); err == nil {
				c.Close()
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("peer host %s: libvirtd not ready: %w: see %s", h.Name, ctx.Err(), filepath.Join(nd, "node.log"))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b) //nolint:errcheck // crypto/rand does not fail on Linux
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Up brings a peer lab up: the hosts, Corosync and Pacemaker on each, then the
// cluster's settings (fencing off, resources sticking where they run). It needs root,
// the packages pacemaker, corosync, resource-agents and pacemaker-cli-utils, and the
// dvm lab's. A peer lab that a killed run left up is brought down first.
func Up(ctx context.Context, opts Options) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, lab.ErrNotRoot
	}
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Nodes < 2 || opts.Nodes > lab.MaxNodes {
		return nil, fmt.Errorf("a peer lab has 2 to %d hosts, not %d", lab.MaxNodes, opts.Nodes)
	}
	if opts.Dir == "" {
		return nil, errors.New("peer lab: no directory")
	}
	if opts.ImageCache == "" {
		opts.ImageCache = lab.DefaultImageCache
	}
	for _, bin := range []string{"corosync", "pacemakerd", "crm_mon", "crm_resource", "cibadmin", "unshare", "tini", "libvirtd"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("peer lab: no %s: apt-get install pacemaker corosync resource-agents pacemaker-cli-utils (and what the dvm lab needs)", bin)
		}
	}
	if _, err := os.Stat("/usr/lib/ocf/resource.d/heartbeat/VirtualDomain"); err != nil {
		return nil, fmt.Errorf("peer lab: no VirtualDomain resource agent: apt-get install resource-agents")
	}
	if left, err := DownLeftover(ctx); err != nil {
		return nil, err
	} else if left != "" && opts.Log != nil {
		fmt.Fprintf(opts.Log, "brought down the peer lab a killed run left in %s\n", left)
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	l := &Lab{dir: dir, log: opts.Log, opts: opts}
	img, err := lab.EnsureImage(ctx, opts.ImageCache, opts.Log)
	if err != nil {
		return nil, err
	}
	l.img = img
	for _, d := range []string{"nodes", "shared"} {
		if err := os.RemoveAll(filepath.Join(dir, d)); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"nodes", "shared/locks", "shared/domains", "shared/console"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := img.CopyTo(l.ImageDir()); err != nil {
		return nil, err
	}
	for k := 1; k <= opts.Nodes; k++ {
		l.hosts = append(l.hosts, &host{Index: k, Name: hostName(k), HostUUID: newUUID()})
	}
	if err := l.save(); err != nil {
		return nil, err
	}
	fail := func(err error) (*Lab, error) {
		l.logf("peer lab up failed, bringing it down: %v", err)
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if derr := l.Down(dctx); derr != nil {
			err = fmt.Errorf("%w (and bringing the peer lab down failed: %v)", err, derr)
		}
		return nil, err
	}
	if err := lab.CreateBridge(Bridge, BridgeAddr, bridgeAliasPrefix+dir, mac(0, 1)); err != nil {
		return fail(err)
	}
	for _, h := range l.hosts {
		if err := l.start(h); err != nil {
			return fail(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for _, h := range l.hosts {
		if err := l.waitLibvirt(wctx, h); err != nil {
			return fail(err)
		}
	}
	if err := l.WaitWhole(wctx); err != nil {
		return fail(err)
	}
	// Fencing off: there is no fence device in the lab (see the package comment).
	// Stickiness: a recovered guest stays where it was restarted when its old host
	// returns, as dvm's does. Load threshold: Pacemaker throttles its recovery (one
	// job at a time) when the CPU load nears it, which on this shared 2-core machine
	// is always; dvm starts a lost node's guests at once whatever the load, so
	// Pacemaker is let do the same.
	for _, args := range [][]string{
		{"crm_attribute", "--type", "crm_config", "--name", "stonith-enabled", "--update", "false"},
		{"crm_attribute", "--type", "rsc_defaults", "--name", "resource-stickiness", "--update", "100"},
		{"crm_attribute", "--type", "crm_config", "--name", "load-threshold", "--update", LoadThreshold},
	} {
		if _, err := l.Exec(ctx, l.hosts[0].Name, args...); err != nil {
			return fail(err)
		}
	}
	l.logf("peer lab up: %d hosts in %s, corosync %s, fencing off", len(l.hosts), dir, opts.Corosync)
	return l, nil
}

// ImageDir holds the guest's kernel, initrd and cmdline on the shared storage.
func (l *Lab) ImageDir() string { return filepath.Join(l.dir, "shared", "images", "lab") }

// Exec runs a command inside host name's namespaces (where the cluster stack's IPC
// is) and returns its output.
func (l *Lab) Exec(ctx context.Context, name string, args ...string) (string, error) {
	l.mu.Lock()
	h, err := l.find(name)
	var pid int
	if err == nil {
		pid = h.PID
		if !lab.HostAlive(h.PID, h.PIDStart) {
			err = fmt.Errorf("peer host %s is down", name)
		}
	}
	l.mu.Unlock()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(pid), "-m", "-u", "-n", "-p", "--"}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=/root"}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("on %s: %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

// anyUp is the name of a live host, for commands any member can answer.
func (l *Lab) anyUp() (string, error) {
	for _, n := range l.Nodes() {
		if n.PID != 0 {
			return n.Name, nil
		}
	}
	return "", errors.New("peer lab: every host is down")
}

// Status is what crm_mon says of the cluster.
type Status struct {
	DC        string            // "" while there is none
	Online    []string          // hosts Pacemaker has online
	Resources map[string]string // resource → the host it is started on ("" when it is not)
	Pending   bool              // some resource is starting, stopping or failed
}

// crmMon is the part of `crm_mon --output-as=xml` Status reads.
type crmMon struct {
	Summary struct {
		DC struct {
			Present bool   `xml:"present,attr"`
			Name    string `xml:"name,attr"`
		} `xml:"current_dc"`
	} `xml:"summary"`
	Nodes []struct {
		Name    string `xml:"name,attr"`
		Online  bool   `xml:"online,attr"`
		Pending bool   `xml:"pending,attr"`
	} `xml:"nodes>node"`
	Resources []struct {
		ID     string `xml:"id,attr"`
		Role   string `xml:"role,attr"`
		Failed bool   `xml:"failed,attr"`
		Nodes  []struct {
			Name string `xml:"name,attr"`
		} `xml:"node"`
	} `xml:"resources>resource"`
}

// Status asks Pacemaker, on any live host, for the cluster's state.
func (l *Lab) Status(ctx context.Context) (Status, error) {
	name, err := l.anyUp()
	if err != nil {
		return Status{}, err
	}
	out, err := l.Exec(ctx, name, "crm_mon", "-1", "--output-as=xml")
	if err != nil {
		return Status{}, err
	}
	var m crmMon
	if err := xml.Unmarshal([]byte(out), &m); err != nil {
		return Status{}, fmt.Errorf("crm_mon on %s: %w", name, err)
	}
	st := Status{Resources: map[string]string{}}
	if m.Summary.DC.Present {
		st.DC = m.Summary.DC.Name
	}
	for _, n := range m.Nodes {
		if n.Online && !n.Pending {
			st.Online = append(st.Online, n.Name)
		}
	}
	for _, r := range m.Resources {
		st.Resources[r.ID] = ""
		if r.Role == "Started" && len(r.Nodes) == 1 {
			st.Resources[r.ID] = r.Nodes[0].Name
		} else if r.Role != "Stopped" || r.Failed {
			st.Pending = true
		}
	}
	return st, nil
}

// WaitWhole waits until every host is online in Pacemaker with a DC elected and no
// resource on the move.
func (l *Lab) WaitWhole(ctx context.Context) error {
	var last string
	for {
		st, err := l.Status(ctx)
		if err == nil && st.DC != "" && len(st.Online) == len(l.hosts) && !st.Pending {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("DC %q, online %v, resources %v", st.DC, st.Online, st.Resources)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("peer lab not whole: %w (last: %s)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// AddGuest defines a VirtualDomain resource named name for the lab's guest (the same
// domain dvm defines for a `--os linux --image lab` guest of that size, built by
// dvm's hypervisor package) started on host node, and waits until it runs there. The
// preference for node is then dropped, so the guest stays where it runs (sticky).
func (l *Lab) AddGuest(ctx context.Context, name, node string, cpus int, memory int64) error {
	d, err := hypervisor.BuildDomain(hypervisor.GuestSpec{
		Name: name, UUID: newUUID(), OS: "linux", CPUs: cpus, MemoryBytes: memory,
		Boot:       &hypervisor.DirectBoot{Kernel: filepath.Join(l.ImageDir(), "kernel"), Initrd: filepath.Join(l.ImageDir(), "initrd"), Cmdline: lab.GuestCmdline},
		ConsoleLog: filepath.Join(l.dir, "shared", "console", name+".log"),
		Failover:   "restart",
	}, hypervisor.AccelTCG)
	if err != nil {
		return err
	}
	x, err := d.Marshal()
	if err != nil {
		return err
	}
	conf := filepath.Join(l.dir, "shared", "domains", name+".xml")
	if err := os.WriteFile(conf, []byte(x), 0o644); err != nil {
		return err
	}
	// The start timeout is generous: a TCG guest's QEMU on a busy 2-core machine.
	prim := fmt.Sprintf(`<primitive id=%[1]q class="ocf" provider="heartbeat" type="VirtualDomain">
<instance_attributes id="%[1]s-ia"><nvpair id="%[1]s-config" name="config" value=%[2]q/><nvpair id="%[1]s-hv" name="hypervisor" value="qemu:///system"/></instance_attributes>
<meta_attributes id="%[1]s-meta"><nvpair id="%[1]s-role" name="target-role" value="Stopped"/></meta_attributes>
<operations><op id="%[1]s-start" name="start" interval="0" timeout="90s"/><op id="%[1]s-stop" name="stop" interval="0" timeout="90s"/><op id="%[1]s-monitor" name="monitor" interval="10s" timeout="30s"/></operations>
</primitive>`, name, conf)
	any, err := l.anyUp()
	if err != nil {
		return err
	}
	if _, err := l.Exec(ctx, any, "cibadmin", "--create", "-o", "resources", "--xml-text", prim); err != nil {
		return err
	}
	return l.MoveGuest(ctx, name, node, true)
}

// MoveGuest has Pacemaker run guest on node (stopped where it runs, started there)
// and waits until it runs there; start also sets it to be started.
func (l *Lab) MoveGuest(ctx context.Context, guest, node string, start bool) error {
	any, err := l.anyUp()
	if err != nil {
		return err
	}
	if _, err := l.Exec(ctx, any, "crm_resource", "--resource", guest, "--move", "--node", node); err != nil && !strings.Contains(err.Error(), "already active on") {
		return err
	}
	if start {
		if _, err := l.Exec(ctx, any, "crm_resource", "--resource", guest, "--meta", "--set-parameter", "target-role", "--parameter-value", "Started"); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		st, err := l.Status(wctx)
		if err == nil && st.Resources[guest] == node && !st.Pending {
			break
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("peer guest %s not running on %s: %w (last: %+v, %v)", guest, node, wctx.Err(), st, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	if _, err := l.Exec(ctx, any, "crm_resource", "--resource", guest, "--clear"); err != nil {
		return err
	}
	return l.WaitIdle(wctx)
}

// WaitIdle waits until the DC has no transition in progress (its controller is in
// S_IDLE), so that a kill finds the cluster at rest, as a host's failure finds a
// production cluster: a kill during a transition (the first result of a guest's
// recurring monitor still awaited) has been seen to cost Pacemaker a second more.
func (l *Lab) WaitIdle(ctx context.Context) error {
	var last string
	for {
		st, err := l.Status(ctx)
		if err == nil && st.DC != "" && !st.Pending {
			out, err := l.Exec(ctx, st.DC, "crmadmin", "-S", st.DC)
			if err == nil && strings.Contains(out, "S_IDLE") {
				return nil
			}
			last = fmt.Sprintf("%s %v", strings.TrimSpace(out), err)
		} else {
			last = fmt.Sprintf("%+v %v", st, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("peer lab not idle: %w (last: %s)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Kill ends every process of host name at once (SIGKILL to its PID 1): a power loss.
func (l *Lab) Kill(ctx context.Context, name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	h, err := l.find(name)
	if err != nil {
		return err
	}
	if !lab.HostAlive(h.PID, h.PIDStart) {
		return fmt.Errorf("peer host %s is not running", name)
	}
	if err := lab.KillHost(ctx, name, h.PID, h.PIDStart); err != nil {
		return err
	}
	h.PID, h.PIDStart = 0, 0
	l.logf("peer host %s killed", name)
	return errors.Join(delVeth(h.Index), l.save())
}

// Restart brings host name up again as a host that rebooted (empty libvirt and
// cluster state) and waits until the cluster is whole.
func (l *Lab) Restart(ctx context.Context, name string) error {
	l.mu.Lock()
	h, err := l.find(name)
	if err == nil {
		if err = lab.KillHost(ctx, name, h.PID, h.PIDStart); err == nil {
			if err = delVeth(h.Index); err == nil {
				err = l.start(h)
			}
		}
	}
	l.mu.Unlock()
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := l.waitLibvirt(wctx, h); err != nil {
		return err
	}
	return l.WaitWhole(wctx)
}

// Down kills every host and removes the bridge and veths. DIR stays, with its logs.
func (l *Lab) Down(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return downHosts(ctx, l.dir, l.hosts)
}

func downHosts(ctx context.Context, dir string, hosts []*host) error {
	var errs []error
	for _, h := range hosts {
		if err := lab.KillHost(ctx, h.Name, h.PID, h.PIDStart); err != nil {
			errs = append(errs, err)
		}
		h.PID, h.PIDStart = 0, 0
		if err := delVeth(h.Index); err != nil {
			errs = append(errs, err)
		}
	}
	if link, err := netlink.LinkByName(Bridge); err == nil && link.Attrs().Alias == bridgeAliasPrefix+dir {
		if err := netlink.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", Bridge, err))
		}
	}
	if b, err := json.MarshalIndent(hosts, "", "  "); err == nil && filepath.IsAbs(dir) {
		os.WriteFile(filepath.Join(dir, stateFile), append(b, '\n'), 0o600) //nolint:errcheck // only a record
	}
	return errors.Join(errs...)
}

// DownLeftover brings down a peer lab that a killed run left up, and returns its DIR
// ("" when there was none): the bridge's alias names the DIR, whose peerlab.json names
// its hosts' PIDs. Peer labs are run only by
// benches under the machine's lab lock, so one that is up when another comes up is a
// leftover.
func DownLeftover(ctx context.Context) (dir string, err error) {
	link, err := netlink.LinkByName(Bridge)
	if err != nil {
		return "", nil
	}
	dir, ok := strings.CutPrefix(link.Attrs().Alias, bridgeAliasPrefix)
	var hosts []*host
	if ok {
		if b, err := os.ReadFile(filepath.Join(dir, stateFile)); err == nil {
			json.Unmarshal(b, &hosts) //nolint:errcheck // a damaged record: only the bridge goes
		}
	} else {
		dir = "(unknown: " + Bridge + " has no lab's mark)"
	}
	if err := downHosts(ctx, dir, hosts); err != nil {
		return dir, fmt.Errorf("peer lab left in %s: %w", dir, err)
	}
	// A bridge without a readable alias is ours by its name alone.
	if link, err := netlink.LinkByName(Bridge); err == nil {
		if err := netlink.LinkDel(link); err != nil {
			return dir, fmt.Errorf("delete bridge %s: %w", Bridge, err)
		}
	}
	return dir, nil
}

func addVeth(k, pid int) error {
	return lab.AddVeth(Bridge, vethName(k), pid, mac(1, k), mac(0, 10+k))
}

func delVeth(k int) error { return lab.DelVeth(vethName(k)) }

// logTime is the timestamp at the head of a Corosync (timestamp: hires) or Pacemaker
// log line, in local time and without a year.
const logTime = "Jan 02 15:04:05.000"

// Timeline is what the DC's own logs say of a recovery after since: when Corosync
// formed a membership that a host left (failure detection: token and consensus), and
// when the DC initiated the start of the last of guests elsewhere (Pacemaker's
// decision: the scheduler's transition).
func (l *Lab) Timeline(dc string, since time.Time, guests []string) (membership, start time.Time, err error) {
	priv := filepath.Join(l.nodeDir(dc), "private", "var", "log")
	membership, err = firstLogLine(filepath.Join(priv, "corosync", "corosync.log"), since, func(s string) bool {
		return strings.Contains(s, "A new membership") && strings.Contains(s, "Members left")
	})
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	for _, g := range guests {
		t, err := firstLogLine(filepath.Join(priv, "pacemaker", "pacemaker.log"), since, func(s string) bool {
			return strings.Contains(s, "Initiating start operation "+g+"_start_0")
		})
		if err != nil {
			return time.Time{}, time.Time{}, err
		}
		if t.After(start) {
			start = t
		}
	}
	return membership, start, nil
}

// firstLogLine is the time of the first line of the log at path stamped after since
// for which match holds.
func firstLogLine(path string, since time.Time, match func(string) bool) (time.Time, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	since = since.Local()
	for _, line := range strings.Split(string(b), "\n") {
		if len(line) < len(logTime) || !match(line) {
			continue
		}
		t, err := time.ParseInLocation(logTime, line[:len(logTime)], time.Local)
		if err != nil {
			continue
		}
		t = t.AddDate(since.Year(), 0, 0)
		if t.Before(since.Truncate(time.Millisecond)) {
			continue
		}
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%s has no such line after %s", path, since.Format(logTime))
}

// KeepLogs copies every host's logs (node, Corosync, Pacemaker) into dir as
// peer-HOST-NAME, before the lab's DIR goes.
func (l *Lab) KeepLogs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var errs []error
	for _, h := range l.hosts {
		nd := l.nodeDir(h.Name)
		for _, f := range []string{"node.log", "corosync.out", "pacemakerd.out", "private/var/log/corosync/corosync.log", "private/var/log/pacemaker/pacemaker.log"} {
			b, err := os.ReadFile(filepath.Join(nd, f))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, "peer-"+h.Name+"-"+filepath.Base(f)), b, 0o644)
			}
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
