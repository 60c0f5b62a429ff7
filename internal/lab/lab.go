package lab

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/dvmproject/dvm/internal/cluster"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// DefaultDir holds a lab's files when Options.Dir is empty.
	DefaultDir = "/var/lib/dvm-lab"
	// DefaultImageCache is where the guest image is built once and kept between labs.
	DefaultImageCache = "/var/cache/dvm/lab-image"
	// DefaultNodes is the size of a lab when Options.Nodes is 0.
	DefaultNodes = 3
	// MaxNodes bounds a lab: seven nodes fit the machines the project runs on (2 cores).
	MaxNodes = 7
	// Bridge joins the nodes in the root namespace.
	Bridge = "dvmlab0"
	// BridgeAddr is the root namespace's address on Bridge.
	BridgeAddr = "10.77.0.1"
	// AgentPort is where every node's dvmd agent listens.
	AgentPort = 7460
	// LibvirtPort is libvirtd's TCP port (qemu+tcp).
	LibvirtPort = 16509

	stateFile = "lab.json"
)

// ErrNoLab is returned by Load when DIR holds no lab state.
var ErrNoLab = errors.New("no lab in this directory")

// Options say what lab Up brings up.
type Options struct {
	// Nodes is the number of nodes, 1 to MaxNodes; 0 means DefaultNodes.
	Nodes int
	// Dir holds every file of the lab; empty means DefaultDir. Made absolute.
	Dir string
	// DvmdPath is the dvmd binary started as agent in every node. Empty means dvmd
	// next to the running executable, else dvmd in $PATH.
	DvmdPath string
	// Ceph starts a one-node Ceph (monitor, manager, one OSD) on the bridge address
	// before the nodes, and names it in every node's dvmd.conf as the storage pool
	// CephStoragePool (see ceph.go).
	Ceph bool
	// NoAgent starts nodes with libvirt only (no dvmd): for tests of the lab itself.
	NoAgent bool
	// ImageCache is where the guest image is built and cached; empty means
	// DefaultImageCache.
	ImageCache string
	// Timeout bounds each wait of Up (libvirtd ready, master lists the nodes);
	// 0 means 2 minutes.
	Timeout time.Duration
	// Log receives one line per step; nil discards them.
	Log io.Writer
	// Settings are dvmd.conf keys every node gets besides the lab's own (the timing
	// keys, say: lease_duration = 1s), kept for the nodes' restarts. Keys the lab
	// writes itself are refused, and the whole file must pass dvmd's own parser.
	Settings map[string]string
	// PowerFence gives the lab a power switch (`vmctl lab power`, see power.go) and
	// names its agent in every node's dvmd.conf as power_fence_agent: the master
	// powers a silent node off through it. Needs an agent (not NoAgent).
	PowerFence bool
	// ParseConfig is dvmd's own config parser (config.Parse, which this package
	// cannot import: the hypervisor's tests use the lab), run on a node's dvmd.conf
	// with Settings before the lab changes anything; nil skips that check.
	ParseConfig func(io.Reader) error
}

// Lab is a lab that is (or was) up, as recorded in DIR/lab.json.
type Lab struct {
	dir string
	log io.Writer

	mu sync.Mutex
	st state
}

// state is the content of DIR/lab.json.
type state struct {
	Dir     string    `json:"dir"`
	Up      bool      `json:"up"`
	Created time.Time `json:"created"`
	Dvmd    string    `json:"dvmd,omitempty"`
	NoAgent bool      `json:"no_agent"`
	Ceph    bool      `json:"ceph,omitempty"`
	// PowerFence: the lab runs its power switch (Options.PowerFence).
	PowerFence bool        `json:"power_fence,omitempty"`
	Image      string      `json:"image"`
	Nodes      []nodeState `json:"nodes"`
	Cuts       []Cut       `json:"cuts,omitempty"`
	// Settings: see Options.Settings.
	Settings map[string]string `json:"settings,omitempty"`
}

// nodeState is what the lab remembers of a node between commands.
type nodeState struct {
	Name     string `json:"name"`
	Index    int    `json:"index"`
	HostUUID string `json:"host_uuid"`
	// PID is the root namespace's PID of the node's tini (its PID 1); 0 when the
	// node is killed. PIDStart is that process's start time (clock ticks since boot,
	// /proc/PID/stat field 22), so that a reused PID is never taken for the node.
	PID      int    `json:"pid"`
	PIDStart uint64 `json:"pid_start"`
	// Paused is set by Pause and cleared by Resume, Kill and Restart: every process
	// of the node is stopped (SIGSTOP).
	Paused bool `json:"paused,omitempty"`
}

// Cut is one fault of the network: Node's traffic to From (every peer and the root
// namespace when From is empty) is dropped, both ways.
type Cut struct {
	Node string   `json:"node"`
	From []string `json:"from,omitempty"`
}

// Node is how to reach one node of the lab.
type Node struct {
	Name       string `json:"name"`        // n1 … n7
	Addr       string `json:"addr"`        // 10.77.0.(10+K)
	LibvirtURI string `json:"libvirt_uri"` // qemu+tcp://ADDR/system
	AgentURL   string `json:"agent_url"`   // https://ADDR:7460
	Dir        string `json:"dir"`         // DIR/nodes/nK
	PID        int    `json:"pid"`         // root namespace PID of the node's PID 1 (tini); 0 when killed
	Paused     bool   `json:"paused"`      // every process stopped by Pause until Resume
}

func nodeName(k int) string   { return fmt.Sprintf("n%d", k) }
func nodeAddr(k int) string   { return fmt.Sprintf("10.77.0.%d", 10+k) }
func vethName(k int) string   { return fmt.Sprintf("dvmlab-n%d", k) }
func libvirtURI(k int) string { return "qemu+tcp://" + nodeAddr(k) + "/system" }
func agentURL(k int) string   { return fmt.Sprintf("https://%s:%d", nodeAddr(k), AgentPort) }

// MasterURL is the dvm API of the lab: the agent of n1 runs the master.
func MasterURL() string { return agentURL(1) }

// Dir is the lab's directory.
func (l *Lab) Dir() string { return l.dir }

// EnvFile is DIR/env: DVM_ADDR, DVM_TOKEN, DVM_CA and DVM_LAB_NODES for vmctl, virsh
// and tests, and DVM_LAB_DIR, so that `vmctl lab kill n2` after sourcing it acts on
// this lab.
func (l *Lab) EnvFile() string { return filepath.Join(l.dir, "env") }

// CAFile is DIR/credentials/ca.crt, the lab cluster's CA: the nodes' API certificates
// are checked against it.
func (l *Lab) CAFile() string { return filepath.Join(l.dir, "credentials", "ca.crt") }

// TLSConfig checks the nodes' API certificates against the lab's CA (none trusted
// before the lab has made it).
func (l *Lab) TLSConfig() *tls.Config {
	pool := x509.NewCertPool()
	if b, err := os.ReadFile(l.CAFile()); err == nil {
		pool.AppendCertsFromPEM(b)
	}
	return &tls.Config{RootCAs: pool}
}

// apiClient is an HTTP client for the nodes' API (TLS, the lab's CA) over tr.
func (l *Lab) apiClient(tr *http.Transport) *http.Client {
	tr.TLSClientConfig = l.TLSConfig()
	return &http.Client{Timeout: 2 * time.Second, Transport: tr}
}

// TokenFile is DIR/token, the bearer token of the lab's dvm API.
func (l *Lab) TokenFile() string { return filepath.Join(l.dir, "token") }

// Token reads the lab's API token.
func (l *Lab) Token() (string, error) {
	b, err := os.ReadFile(l.TokenFile())
	if err != nil {
		return "", fmt.Errorf("read lab token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ImageDir is DIR/shared/images/lab: the guest image's kernel, initrd and cmdline,
// seen at the same path by every node, where the master writes the image "lab" when
// the lab imports it.
func (l *Lab) ImageDir() string { return filepath.Join(l.dir, "shared", "images", GuestImage) }

// GuestImage is the name of the lab guest's image in the cluster (vm create --image lab).
const GuestImage = "lab"

// GuestDir is DIR/guest: the guest image as the lab built it, which it imports.
func (l *Lab) GuestDir() string { return filepath.Join(l.dir, "guest") }

// Nodes lists the lab's nodes in order.
func (l *Lab) Nodes() []Node {
	l.mu.Lock()
	l.reload()
	defer l.mu.Unlock()
	out := make([]Node, 0, len(l.st.Nodes))
	for _, n := range l.st.Nodes {
		out = append(out, l.nodeOf(n))
	}
	return out
}

// Node returns the node called name.
func (l *Lab) Node(name string) (Node, error) {
	l.mu.Lock()
	l.reload()
	defer l.mu.Unlock()
	n, err := l.find(name)
	if err != nil {
		return Node{}, err
	}
	return l.nodeOf(*n), nil
}

func (l *Lab) nodeOf(n nodeState) Node {
	return Node{
		Name:       n.Name,
		Addr:       nodeAddr(n.Index),
		LibvirtURI: libvirtURI(n.Index),
		AgentURL:   agentURL(n.Index),
		Dir:        l.nodeDir(n.Name),
		PID:        n.PID,
		Paused:     n.Paused && n.PID != 0,
	}
}

func (l *Lab) nodeDir(name string) string { return filepath.Join(l.dir, "nodes", name) }

// find returns the node called name; l.mu is held.
func (l *Lab) find(name string) (*nodeState, error) {
	for i := range l.st.Nodes {
		if l.st.Nodes[i].Name == name {
			return &l.st.Nodes[i], nil
		}
	}
	names := make([]string, 0, len(l.st.Nodes))
	for _, n := range l.st.Nodes {
		names = append(names, n.Name)
	}
	return nil, fmt.Errorf("lab in %s has no node %q (nodes: %s)", l.dir, name, strings.Join(names, ", "))
}

func (l *Lab) logf(format string, args ...any) {
	if l.log != nil {
		fmt.Fprintf(l.log, format+"\n", args...)
	}
}

// Load reads the lab recorded in dir (empty means DefaultDir), up or down.
func Load(dir string) (*Lab, error) {
	dir, err := absDir(dir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s has no %s (bring one up with `vmctl lab up --dir %s`)", ErrNoLab, dir, stateFile, dir)
	}
	if errors.Is(err, os.ErrPermission) && os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if err != nil {
		return nil, fmt.Errorf("load lab: %w", err)
	}
	l := &Lab{dir: dir}
	if err := json.Unmarshal(b, &l.st); err != nil {
		return nil, fmt.Errorf("load lab: %s is damaged: %w", filepath.Join(dir, stateFile), err)
	}
	return l, nil
}

// SetLog sets where the lab reports its steps (nil: nowhere).
func (l *Lab) SetLog(w io.Writer) { l.log = w }

// IsUp says whether the lab was brought up and not yet brought down.
func (l *Lab) IsUp() bool {
	l.mu.Lock()
	l.reload()
	defer l.mu.Unlock()
	return l.st.Up
}

// lock takes l.mu and the lab's directory lock (DIR/lab.lock) and reads the state
// again, so that vmctl commands run at once (`lab kill n2 & lab cut n3`) do not
// lose each other's changes. unlock releases both.
func (l *Lab) lock() (unlock func(), err error) {
	l.mu.Lock()
	f, err := os.OpenFile(filepath.Join(l.dir, "lab.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("lock lab: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		l.mu.Unlock()
		return nil, fmt.Errorf("lock lab: %w", err)
	}
	l.reload()
	return func() { f.Close(); l.mu.Unlock() }, nil
}

// reload reads the state again from lab.json, which another process (vmctl lab
// kill, in a test's shell) may have changed; l.mu is held. A state that cannot be
// read leaves the one in memory.
func (l *Lab) reload() {
	b, err := os.ReadFile(filepath.Join(l.dir, stateFile))
	if err != nil {
		return
	}
	var st state
	if json.Unmarshal(b, &st) == nil {
		l.st = st
	}
}

// save writes lab.json atomically; l.mu is held.
func (l *Lab) save() error {
	b, err := json.MarshalIndent(&l.st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(l.dir, stateFile), append(b, '\n'), 0o600)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func absDir(dir string) (string, error) {
	if dir == "" {
		dir = DefaultDir
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("lab directory %q: %w", dir, err)
	}
	// A node mounts its private state over these paths; DIR below one of them would
	// be hidden from the node (or from the root namespace), so shared storage and
	// logs would not be shared.
	for _, p := range []string{"/run", "/var/run", "/dev", "/proc", "/sys", "/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt"} {
		if abs == p || strings.HasPrefix(abs, p+"/") {
			return "", fmt.Errorf("lab directory %s is under %s, which every node mounts privately: choose another --dir (default %s)", abs, p, DefaultDir)
		}
	}
	if abs == "/" {
		return "", fmt.Errorf("lab directory cannot be /: choose another --dir (default %s)", DefaultDir)
	}
	return abs, nil
}

func newToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func newUUID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// Up brings a lab up as opts say, or fails with nothing changed outside opts.Dir
// (a lab that fails half way is brought down again). It needs root, the packages
// Preflight names, and no other lab on the machine.
func Up(ctx context.Context, opts Options) (*Lab, error) {
	start := time.Now()
	if opts.Nodes == 0 {
		opts.Nodes = DefaultNodes
	}
	if opts.Nodes < 1 || opts.Nodes > MaxNodes {
		return nil, fmt.Errorf("a lab has 1 to %d nodes, not %d: use --nodes 1..%d", MaxNodes, opts.Nodes, MaxNodes)
	}
	dir, err := absDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	if opts.PowerFence {
		if opts.NoAgent {
			return nil, errors.New("--power-fence needs the nodes' agents: leave out --no-agent")
		}
		if _, ok := opts.Settings["power_fence_agent"]; ok {
			return nil, errors.New("--set power_fence_agent: with --power-fence the lab names its own agent; leave one of them out")
		}
		settings := maps.Clone(opts.Settings)
		if settings == nil {
			settings = map[string]string{}
		}
		settings["power_fence_agent"] = filepath.Join(dir, PowerFenceAgentFile)
		opts.Settings = settings
	}
	if err := checkSettings(dir, opts.Nodes, opts.Ceph, opts.Settings, opts.ParseConfig); err != nil {
		return nil, err
	}
	if opts.ImageCache == "" {
		opts.ImageCache = DefaultImageCache
	}
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Minute
	}
	l := &Lab{dir: dir, log: opts.Log}

	// A lab up in this DIR is named before the bridge it holds.
	if err := checkNoLab(dir); err != nil {
		return nil, err
	}
	if err := Preflight(); err != nil {
		return nil, err
	}
	if opts.Ceph {
		if err := CheckCephPackages(); err != nil {
			return nil, err
		}
	}
	dvmd := ""
	if !opts.NoAgent {
		if dvmd, err = findDvmd(opts.DvmdPath); err != nil {
			return nil, err
		}
	}
	labBin := ""
	if opts.PowerFence {
		// The switch and the nodes' agent are vmctl-lab, built beside dvmd.
		labBin = filepath.Join(filepath.Dir(dvmd), "vmctl-lab")
		if _, err := os.Stat(labBin); err != nil {
			return nil, fmt.Errorf("--power-fence needs vmctl-lab beside dvmd: %w", err)
		}
	}

	l.logf("guest image: %s", opts.ImageCache)
	img, err := EnsureImage(ctx, opts.ImageCache, opts.Log)
	if err != nil {
		return nil, err
	}

	// From here on the machine changes; any failure brings the lab down again.
	if err := resetDir(dir); err != nil {
		return nil, err
	}
	// The guest image is imported through the cluster's API once the master is up,
	// as an operator imports one (importGuestImage); until then it waits here.
	if err := img.CopyTo(l.GuestDir()); err != nil {
		return nil, err
	}
	token, err := newToken()
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(l.TokenFile(), []byte(token), 0o600); err != nil {
		return nil, fmt.Errorf("write lab token: %w", err)
	}
	// The cluster's credentials, as an operator makes them with `dvmd cluster init` and
	// `dvmd cluster issue`: a CA and gossip key, and each node's certificate for its
	// lab address. Nodes trust each other through these only.
	if err := cluster.NewCA(filepath.Join(dir, "credentials")); err != nil {
		return nil, fmt.Errorf("lab credentials: %w", err)
	}
	for k := 1; k <= opts.Nodes; k++ {
		ip := net.ParseIP(nodeAddr(k))
		if err := cluster.IssueTo(filepath.Join(dir, "credentials"), credentialsDir(dir, k), nodeName(k), []net.IP{ip}, nil); err != nil {
			return nil, fmt.Errorf("lab credentials of %s: %w", nodeName(k), err)
		}
	}
	l.st = state{Dir: dir, Up: true, Created: time.Now().UTC(), Dvmd: dvmd, NoAgent: opts.NoAgent, Ceph: opts.Ceph, PowerFence: opts.PowerFence, Image: img.Version, Settings: opts.Settings}
	for k := 1; k <= opts.Nodes; k++ {
		u, err := newUUID()
		if err != nil {
			return nil, err
		}
		l.st.Nodes = append(l.st.Nodes, nodeState{Name: nodeName(k), Index: k, HostUUID: u})
	}
	l.mu.Lock()
	err = l.save()
	l.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("write lab state: %w", err)
	}

	fail := func(err error) (*Lab, error) {
		l.logf("lab up failed, bringing it down: %v", err)
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		l.mu.Lock()
		derr := l.down(dctx)
		l.mu.Unlock()
		if derr != nil {
			err = fmt.Errorf("%w (and bringing the lab down again failed: %v)", err, derr)
		}
		return nil, err
	}

	if err := createNetwork(dir); err != nil {
		return fail(err)
	}
	l.logf("bridge %s %s/24, nftables table bridge %s", Bridge, BridgeAddr, nftTable)
	if opts.Ceph {
		// Before the nodes: their agents read the keyring and define its secret.
		if err := l.startCeph(ctx, opts.Timeout); err != nil {
			return fail(err)
		}
	}
	if opts.PowerFence {
		if err := writeFileAtomic(filepath.Join(dir, PowerFenceAgentFile), []byte(powerAgentScript(labBin, dir)), 0o755); err != nil {
			return fail(err)
		}
		if err := startPowerSwitch(dir, labBin); err != nil {
			return fail(err)
		}
		l.logf("power switch on %s (vmctl lab power): every node's power_fence_agent", l.PowerSocket())
	}
	for i := range l.st.Nodes {
		err := l.startNode(&l.st.Nodes[i])
		if err == nil {
			// Saved node by node, so that `lab down` finds every node Up started.
			l.mu.Lock()
			err = l.save()
			l.mu.Unlock()
		}
		if err != nil {
			return fail(err)
		}
	}
	if err := l.waitNodes(ctx, opts.Timeout, l.st.Nodes); err != nil {
		return fail(err)
	}
	if err := l.writeEnv(token); err != nil {
		return fail(err)
	}
	if opts.NoAgent {
		// No cluster to import into: the lab's own tests boot the image from here.
		if err := img.CopyTo(l.ImageDir()); err != nil {
			return fail(err)
		}
	} else {
		if err := l.waitMaster(ctx, opts.Timeout, token); err != nil {
			return fail(err)
		}
		if err := l.importGuestImage(ctx, token); err != nil {
			return fail(err)
		}
	}
	l.logf("lab up: %d nodes in %s (%.1fs); env in %s", len(l.st.Nodes), dir, time.Since(start).Seconds(), l.EnvFile())
	return l, nil
}

// waitNodes waits until the libvirtd of every given node is ready, concurrently.
func (l *Lab) waitNodes(ctx context.Context, timeout time.Duration, nodes []nodeState) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.waitNode(ctx, n)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// writeEnv writes DIR/env, the same form as `dvmd dev` plus DVM_LAB_NODES and
// DVM_LAB_DIR.
func (l *Lab) writeEnv(token string) error {
	var nodes []string
	for _, n := range l.st.Nodes {
		nodes = append(nodes, n.Name+"="+libvirtURI(n.Index))
	}
	env := fmt.Sprintf("DVM_ADDR=%s\nDVM_TOKEN=%s\nDVM_CA=%s\nDVM_LAB_NODES=%s\nDVM_LAB_DIR=%s\n",
		masterURLs(len(l.st.Nodes)), token, l.CAFile(), strings.Join(nodes, ","), l.dir)
	if err := writeFileAtomic(l.EnvFile(), []byte(env), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", l.EnvFile(), err)
	}
	return nil
}

// resetDir removes what a previous lab left in dir (only the lab's own entries:
// dir may hold other files) and creates the layout.
func resetDir(dir string) error {
	for _, e := range []string{"nodes", "shared", "credentials", "ceph", "token", "env", stateFile, stateFile + ".tmp"} {
		if err := os.RemoveAll(filepath.Join(dir, e)); err != nil {
			return fmt.Errorf("clean lab directory: %w", err)
		}
	}
	for _, d := range []string{"nodes", "shared/images", "shared/disks"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("create lab directory: %w", err)
		}
	}
	return nil
}

// checkNoLab refuses to bring a lab up over one that is still up.
func checkNoLab(dir string) error {
	l, err := Load(dir)
	if errors.Is(err, ErrNoLab) {
		return nil
	}
	if err != nil {
		return err
	}
	if !l.st.Up {
		return nil
	}
	for _, n := range l.st.Nodes {
		if alive(n.PID, n.PIDStart) {
			return fmt.Errorf("a lab is already up in %s (node %s runs as PID %d): bring it down first with `vmctl lab down --dir %s`", dir, n.Name, n.PID, dir)
		}
	}
	return nil
}

// Down brings the lab down: every node's processes, the veths, the bridge and the
// nftables table go. DIR stays with its logs. Down of a lab that is down does nothing.
func (l *Lab) Down(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return l.down(ctx)
}

// down is Down with l.mu held, on the state in memory.
func (l *Lab) down(ctx context.Context) error {
	var errs []error
	// The switch first: a reboot it carries out must not start a node again.
	if err := stopPowerSwitch(l.dir); err != nil {
		errs = append(errs, err)
	}
	for i := range l.st.Nodes {
		if err := l.killNode(ctx, &l.st.Nodes[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if l.st.Ceph {
		if err := stopCeph(l.dir); err != nil {
			errs = append(errs, err)
		}
	}

	if err := removeNetwork(l.dir, l.st.Nodes); err != nil {
		errs = append(errs, err)
	}
	l.st.Up = false
	l.st.Cuts = nil
	if err := l.save(); err != nil {
		errs = append(errs, fmt.Errorf("write lab state: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab down: %w", err)
	}
	l.logf("lab down: %s", l.dir)
	return nil
}

// Purge removes DIR's lab files (state, token, env, nodes, shared storage) after Down.
func (l *Lab) Purge() error {
	if l.IsUp() {
		return fmt.Errorf("lab in %s is up: bring it down before purging", l.dir)
	}
	for _, e := range []string{"nodes", "shared", "credentials", "ceph", "token", "env", stateFile, "lab.lock"} {
		if err := os.RemoveAll(filepath.Join(l.dir, e)); err != nil {
			return fmt.Errorf("purge lab: %w", err)
		}
	}
	return nil
}
