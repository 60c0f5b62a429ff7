// Package config reads dvmd's node config file: one `key = value` per line, `#` starts a
// comment. Parsing is strict: an unknown key, a repeated key or a bad value is an error
// that names the key and the line, and the daemon does not start.
package config

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dvmproject/dvm/failover"
	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/units"
	"github.com/dvmproject/dvm/scheduler"
)

// Node is a dvmd node's configuration.
type Node struct {
	Name                string
	LibvirtURI          string
	AdvertiseLibvirtURI string
	Listen              string
	Advertise           string // host:port peers use to reach this dvmd; default: Listen
	DataDir             string
	TokenFile           string
	Management          bool
	RaftListen          string // raft between management nodes; default: listen's host, port 7461
	GossipListen        string // memberlist (UDP and TCP); default: listen's host, port 7462
	AgentListen         string // the agents' API over mutual TLS (management nodes); default: listen's host, port 7463
	GossipPeers         []string
	// Gossip's failure detector (memberlist): how often each node probes another,
	// how long it waits for the answer, and the suspicion multiplier (a suspected
	// member is declared dead about gossip_suspicion_mult probe intervals later).
	// A node is declared lost only when gossip no longer vouches for it and its
	// lease is out; zero takes the defaults (internal/cluster).
	GossipProbeInterval time.Duration
	GossipProbeTimeout  time.Duration
	GossipSuspicionMult int
	CredentialsDir      string // ca.crt, gossip.key, node-NAME.crt/key from `dvmd cluster issue`
	// APITLSCert and APITLSKey are an operator's certificate (PEM, leaf first) and key
	// for the API listener; empty: the node's certificate from the cluster's CA.
	APITLSCert, APITLSKey string
	// Timing is every duration the fencing rule rests on (lease_duration,
	// lease_margin, renew_interval, confirm_timeout, fence_grace, tick,
	// max_clock_skew, raft_election_timeout), checked together.
	Timing failover.Timing
	// Scheduling, read by the master on management nodes (keep them equal there).
	Strategy       string // spread or pack
	HAReserveNodes int    // headroom so the restart guests of any K lost nodes can be placed again
	HAWarnOnly     bool   // admit guests that break the headroom, with a warning
	// Balance is the automatic balancer's policy (balance_* keys; off by default).
	Balance   scheduler.Balance
	Bootstrap bool   // form a new cluster (one node, once, when the cluster is created)
	Master    string // comma-separated API addresses of management nodes
	ImagesDir string
	DisksDir  string
	// Pools are the node's storage pools (`pool.NAME = …` keys), sorted by name:
	// `vmctl vm create --pool NAME` puts a guest's disks in one; without it they go to
	// disks_dir as always.
	Pools []Pool
	// LockspaceDir is libvirt's lockspace (qemu-lockd.conf's file_lockspace_dir, spelt
	// the same) where dvmd keeps a lock for every restart guest; "": none.
	LockspaceDir string
	// PowerFence is the power fence agent the master runs to power off a node it
	// would declare lost (power_fence_* keys); no Agent: none, the lease rule alone.
	PowerFence      PowerFence
	Share           hypervisor.Share
	Accelerator     string
	Labels          map[string]string
	ShutdownTimeout time.Duration
	NodeTimeout     time.Duration
	LogLevel        string
}

// Defaults are the values of keys a file leaves out.
func Defaults() Node {
	return Node{
		LibvirtURI: "qemu:///system", Listen: "127.0.0.1:7460", DataDir: "/var/lib/dvm",
		Timing: failover.DefaultTiming(), Balance: scheduler.DefaultBalance(),
		Accelerator: "auto", ShutdownTimeout: 30 * time.Second, NodeTimeout: 5 * time.Second,
		Share:  hypervisor.Share{ReservedCPUs: 1, ReservedMemoryBytes: 1 << 30, CPUOvercommit: 4, MemoryOvercommit: 1},
		Labels: map[string]string{}, LogLevel: "info",
	}
}

// Load reads a config file.
func Load(path string) (Node, error) {
	f, err := os.Open(path)
	if err != nil {
		return Node{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	n, err := Parse(f)
	if err != nil {
		return Node{}, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// stripComment drops a comment: a '#' at the start of the line or after a space or
// tab. A '#' inside a value is kept (a path such as /tmp/run#2/locks is a path).
func stripComment(line string) string {
	line = strings.TrimSpace(line)
	if strings.HasPrefix(line, "#") {
		return ""
	}
	for i := 1; i < len(line); i++ {
		if line[i] == '#' && (line[i-1] == ' ' || line[i-1] == '\t') {
			return strings.TrimSpace(line[:i])
		}
	}
	return line
}

// Parse reads a config from r.
func Parse(r io.Reader) (Node, error) {
	n := Defaults()
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		text = stripComment(text)
		if text == "" {
			continue
		}
		key, val, ok := strings.Cut(text, "=")
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		if !ok || key == "" {
			return Node{}, fmt.Errorf("line %d: %q is not `key = value`", line, text)
		}
		if prev, dup := seen[key]; dup {
			return Node{}, fmt.Errorf("line %d: key %s already set on line %d", line, key, prev)
		}
		seen[key] = line
		if err := n.set(key, val); err != nil {
			return Node{}, fmt.Errorf("line %d: %s: %w", line, key, err)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return Node{}, fmt.Errorf("line %d: longer than %d KiB: no value needs that much", line+1, bufio.MaxScanTokenSize>>10)
		}
		return Node{}, err
	}
	if err := n.Validate(); err != nil {
		return Node{}, err
	}
	return n, nil
}

func (n *Node) set(key, val string) error {
	if p, ok := n.Timing.Keys()[key]; ok {
		d, err := parseDuration(val)
		*p = d
		return err
	}
	if name, ok := strings.CutPrefix(key, poolKeyPrefix); ok {
		p, err := parsePool(name, val)
		if err != nil {
			return err
		}
		n.Pools = append(n.Pools, p)
		return nil
	}
	var err error
	switch key {
	case "name":
		if fe := api.ValidateName("name", val); fe != nil {
			return fmt.Errorf("%s", fe.Msg)
		}
		n.Name = val
	case "libvirt_uri":
		n.LibvirtURI = val
	case "advertise_libvirt_uri":
		n.AdvertiseLibvirtURI = val
	case "listen":
		n.Listen = val
	case "advertise":
		n.Advertise = val
	case "data_dir":
		n.DataDir, err = absPath(val)
	case "token_file":
		n.TokenFile, err = absPath(val)
	case "management":
		n.Management, err = strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("%q is not true or false", val)
		}
	case "raft_listen":
		if _, _, err := net.SplitHostPort(val); err != nil {
			return fmt.Errorf("%q is not host:port", val)
		}
		n.RaftListen = val
	case "agent_listen":
		if _, _, err := net.SplitHostPort(val); err != nil {
			return fmt.Errorf("%q is not host:port", val)
		}
		n.AgentListen = val
	case "gossip_listen":
		if _, _, err := net.SplitHostPort(val); err != nil {
			return fmt.Errorf("%q is not host:port", val)
		}
		n.GossipListen = val
	case "gossip_probe_interval":
		n.GossipProbeInterval, err = parseDuration(val)
	case "gossip_probe_timeout":
		n.GossipProbeTimeout, err = parseDuration(val)
	case "gossip_suspicion_mult":
		k, perr := strconv.Atoi(val)
		if perr != nil || k < 1 || k > 10 {
			return fmt.Errorf("%q is not a whole number from 1 to 10", val)
		}
		n.GossipSuspicionMult = k
	case "gossip_peers":
		for _, p := range strings.Split(val, ",") {
			p = strings.TrimSpace(p)
			if _, _, err := net.SplitHostPort(p); err != nil {
				return fmt.Errorf("%q is not host:port (a peer's gossip_listen)", p)
			}
			n.GossipPeers = append(n.GossipPeers, p)
		}
	case "credentials_dir":
		n.CredentialsDir, err = absPath(val)
	case "api_tls_cert":
		n.APITLSCert, err = absPath(val)
	case "api_tls_key":
		n.APITLSKey, err = absPath(val)
	case "strategy":
		if val != "spread" && val != "pack" {
			return fmt.Errorf("%q is not spread or pack", val)
		}
		n.Strategy = val
	case "ha_reserve_nodes":
		n.HAReserveNodes, err = strconv.Atoi(val)
		if err != nil || n.HAReserveNodes < 0 || n.HAReserveNodes > 1000 {
			return fmt.Errorf("%q is not a number of nodes (0 to switch admission control off)", val)
		}
	case "balance_threshold":
		n.Balance.Threshold, err = parsePercent(val)
	case "balance_target":
		n.Balance.Target, err = parsePercent(val)
	case "balance_interval":
		n.Balance.Interval, err = parseDuration(val)
	case "balance_cooldown":
		n.Balance.Cooldown, err = parseDuration(val)
	case "ha_warn_only":
		n.HAWarnOnly, err = strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("%q is not true or false", val)
		}
	case "bootstrap":
		n.Bootstrap, err = strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("%q is not true or false", val)
		}
	case "master":
		if _, err := api.NewClient(val, "x"); err != nil {
			return err
		}
		n.Master = val
	case "images_dir":
		n.ImagesDir, err = absPath(val)
	case "disks_dir":
		n.DisksDir, err = absPath(val)
	case "lockspace_dir":
		if !filepath.IsAbs(val) || filepath.Clean(val) != val || filepath.Dir(val) == "/" {
			return fmt.Errorf("%q is not a clean absolute directory below another (such as /srv/dvm/locks): write it exactly as file_lockspace_dir in /etc/libvirt/qemu-lockd.conf", val)
		}
		n.LockspaceDir = val
	case "power_fence_agent":
		n.PowerFence.Agent, err = absPath(val)
	case "power_fence_after":
		n.PowerFence.After, err = parseDuration(val)
	case "power_fence_action":
		if val != "reboot" && val != "off" {
			return fmt.Errorf("%q is not reboot or off", val)
		}
		n.PowerFence.Action = val
	case "power_fence_options_dir":
		n.PowerFence.OptionsDir, err = absPath(val)
	case "reserved_cpus":
		n.Share.ReservedCPUs, err = strconv.Atoi(val)
		if err != nil || n.Share.ReservedCPUs < 0 {
			return fmt.Errorf("%q is not a whole number of cpus", val)
		}
	case "reserved_memory":
		n.Share.ReservedMemoryBytes, err = units.ParseBytes(val)
	case "cpu_overcommit":
		n.Share.CPUOvercommit, err = parseRatio(val)
	case "memory_overcommit":
		n.Share.MemoryOvercommit, err = parseRatio(val)
	case "accelerator":
		if val != "auto" && val != "kvm" && val != "tcg" {
			return fmt.Errorf("%q is not auto, kvm or tcg", val)
		}
		n.Accelerator = val
	case "labels":
		n.Labels, err = api.ParseLabels(val)
	case "shutdown_timeout":
		n.ShutdownTimeout, err = parseDuration(val)
	case "node_timeout":
		n.NodeTimeout, err = parseDuration(val)
	case "log_level":
		if val != "debug" && val != "info" && val != "warn" && val != "error" {
			return fmt.Errorf("%q is not debug, info, warn or error", val)
		}
		n.LogLevel = val
	default:
		return fmt.Errorf("unknown key: see configs/dvmd.conf for the keys dvmd reads")
	}
	return err
}

// PowerFence configures power fencing: see docs/operator-guide.md, "Power fencing".
type PowerFence struct {
	// Agent is an executable that speaks the fence-agents protocol (options as
	// name=value lines on standard input; exit 0 when done), such as fence_ipmilan.
	Agent string
	// After is how long after a silent node's last grant the master asks the agent
	// (default: lease_duration, so that only a node whose lease has lapsed is
	// powered off).
	After time.Duration
	// Action is the agent's action: reboot (default) or off.
	Action string
	// OptionsDir holds a file per node, named as the node, of more name=value
	// lines for its agent (its BMC's address, user, password).
	OptionsDir string
}

func (p *PowerFence) validate(t failover.Timing) error {
	if p.Agent == "" {
		if p.After != 0 || p.Action != "" || p.OptionsDir != "" {
			return errors.New("power_fence_after, power_fence_action and power_fence_options_dir need power_fence_agent: name the agent, or leave them out")
		}
		return nil
	}
	t = t.WithDefaults()
	if p.After == 0 {
		p.After = t.LeaseDuration
	}
	if p.Action == "" {
		p.Action = "reboot"
	}
	if p.After < 2*t.RenewInterval {
		return fmt.Errorf("power_fence_after %v is shorter than two renew_interval (%v): one late renewal would power a node off", p.After, 2*t.RenewInterval)
	}
	return nil
}

// absPath accepts an absolute path only: dvmd runs from systemd, whose working
// directory is /, and every node must name shared storage by the same path.
func absPath(s string) (string, error) {
	if !filepath.IsAbs(s) {
		return "", fmt.Errorf("%q is not an absolute path: write it from / (such as /var/lib/dvm)", s)
	}
	return filepath.Clean(s), nil
}

func parseRatio(s string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 1 || f > 64 {
		return 0, fmt.Errorf("%q is not a ratio between 1 and 64", s)
	}
	return f, nil
}

// parsePercent reads a share written as a percentage, "25%" or "25", as 0.25.
func parsePercent(s string) (float64, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(s, "%")), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("%q is not a percentage such as 25%%", s)
	}
	return f / 100, nil
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration such as 30s", s)
	}
	return d, nil
}

// Validate checks what no single key can: required keys and their combinations.
func (n *Node) Validate() error {
	if n.Name == "" {
		return fmt.Errorf("name is required: give the node a name such as n1")
	}
	if !n.Management && n.Master == "" {
		return fmt.Errorf("master is required on a node that is not a management node: give the management nodes' API addresses, such as https://10.0.0.1:7460")
	}
	if n.TokenFile == "" {
		n.TokenFile = n.DataDir + "/token"
	}
	if n.Advertise == "" {
		n.Advertise = n.Listen
	}
	if (n.APITLSCert == "") != (n.APITLSKey == "") {
		return fmt.Errorf("api_tls_cert and api_tls_key go together: give both (a certificate for the API and its key), or neither to use the node's certificate from the cluster's CA")
	}
	if n.Bootstrap && !n.Management {
		return fmt.Errorf("bootstrap = true needs management = true: only a management node can form the cluster")
	}
	if n.RaftListen == "" {
		host, _, err := net.SplitHostPort(n.Listen)
		if err != nil {
			return fmt.Errorf("listen %q is not host:port", n.Listen)
		}
		n.RaftListen = net.JoinHostPort(host, "7461")
	}
	if n.AgentListen == "" {
		host, _, _ := net.SplitHostPort(n.Listen)
		n.AgentListen = net.JoinHostPort(host, "7463")
	}
	if n.GossipListen == "" {
		host, _, _ := net.SplitHostPort(n.Listen)
		n.GossipListen = net.JoinHostPort(host, "7462")
	}
	if len(n.GossipPeers) == 0 && n.Master != "" {
		// Gossip with the management nodes, on the gossip port of their API hosts.
		for _, m := range strings.Split(n.Master, ",") {
			if u, err := url.Parse(strings.TrimSpace(m)); err == nil && u.Hostname() != "" {
				n.GossipPeers = append(n.GossipPeers, net.JoinHostPort(u.Hostname(), "7462"))
			}
		}
	}
	// The guarantee that a guest never runs twice rests on these together.
	pi, pt := n.GossipProbeInterval, n.GossipProbeTimeout
	if pi == 0 {
		pi = cluster.DefaultProbeInterval
	}
	if pt == 0 {
		pt = cluster.DefaultProbeTimeout
	}
	if pt >= pi {
		return fmt.Errorf("gossip_probe_timeout %v is not below gossip_probe_interval %v: the indirect probes need the rest of the interval", pt, pi)
	}
	if err := n.Timing.Validate(); err != nil {
		return err
	}
	if err := n.PowerFence.validate(n.Timing); err != nil {
		return err
	}
	if err := n.Balance.Validate(); err != nil {
		return err
	}
	if err := n.checkPools(); err != nil {
		return err
	}
	if n.AdvertiseLibvirtURI == "" {
		n.AdvertiseLibvirtURI = n.LibvirtURI
	}
	return n.Share.Validate()
}
