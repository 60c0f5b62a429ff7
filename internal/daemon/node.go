package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dvmproject/dvm/failover"
	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/agent"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/fenceguard"
	"github.com/dvmproject/dvm/internal/master"
	"github.com/dvmproject/dvm/internal/metrics"
	"github.com/dvmproject/dvm/internal/roles"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/internal/version"
	"github.com/dvmproject/dvm/scheduler"
	"github.com/hashicorp/raft"
)

// Node is a running dvmd: an agent over its hypervisor, its role machine, its
// /metrics and /v1/health endpoint, and on a management node its replica of the cluster
// state, the master role when raft elects it, and the API.
type Node struct {
	Addr  string // URL of this dvmd's API listener (https)
	Token string // the secret of its token file ("" on nodes without one)
	// CAFile is the cluster's CA certificate, which the API's certificate is checked
	// against (unless the node shows an operator's certificate).
	CAFile string
	// AgentAddr is a management node's mutual-TLS listener for agents ("" elsewhere).
	AgentAddr string
	HV        *hypervisor.Node
	Roles     *roles.Runner
	agent     sync.WaitGroup // the agent's Run, waited for before HV is closed
	// writers are the loops that write files in data_dir (the role machine's state,
	// the fence guard's lease file): Stop waits for them, so a caller that removes
	// the directory next (a test's cleanup, an operator's script) races with nothing.
	writers  sync.WaitGroup
	members  *cluster.Members
	agentLn  net.Listener
	master   *Master
	raftAddr string
	cancel   context.CancelFunc
	done     chan struct{}
	err      error
}

// StartNode starts a node as cfg says. It returns once the node serves and its agent
// runs; Stop ends it.
func StartNode(ctx context.Context, cfg config.Node, log *slog.Logger) (*Node, error) {
	if cfg.CredentialsDir == "" {
		return nil, errors.New("credentials_dir is required: nodes trust each other only through the cluster's credentials; make them with `dvmd cluster init` and `dvmd cluster issue`")
	}
	creds, err := cluster.Load(cfg.CredentialsDir, cfg.Name)
	if err != nil {
		return nil, err
	}
	apiTLS, err := apiServerTLS(cfg, creds)
	if err != nil {
		return nil, err
	}
	reg := metrics.New()
	n := &Node{done: make(chan struct{}), CAFile: cluster.CACertPath(cfg.CredentialsDir)}
	ctx, n.cancel = context.WithCancel(ctx)
	fail := func(err error) (*Node, error) {
		n.cancel()
		n.closeAll()
		return nil, err
	}

	raw, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fail(fmt.Errorf("listen on %s: %w", cfg.Listen, err))
	}
	ln := tls.NewListener(raw, apiTLS)
	n.Addr = "https://" + ln.Addr().String()
	if cfg.Advertise == cfg.Listen {
		cfg.Advertise = ln.Addr().String() // a port of 0 was chosen now
	}

	var agentLn net.Listener
	if cfg.Management {
		if cfg.AgentListen == "" {
			host, _, _ := net.SplitHostPort(cfg.Listen)
			cfg.AgentListen = net.JoinHostPort(host, "0")
		}
		raw, err := net.Listen("tcp", cfg.AgentListen)
		if err != nil {
			ln.Close()
			return fail(fmt.Errorf("agent listener on %s: %w", cfg.AgentListen, err))
		}
		agentLn = tls.NewListener(raw, creds.ServerTLS())
		cfg.AgentListen = raw.Addr().String() // a port of 0 was chosen now
		n.agentLn, n.AgentAddr = agentLn, cfg.AgentListen
	}

	// Gossip: membership, failure detection and the role machine's messages.
	gh, gp, err := net.SplitHostPort(cfg.GossipListen)
	if err != nil {
		ln.Close()
		return fail(fmt.Errorf("gossip_listen %q: %w", cfg.GossipListen, err))
	}
	gport, _ := strconv.Atoi(gp)
	meta := cluster.Meta{API: cfg.Advertise, Agent: cfg.AgentListen, Management: cfg.Management, Network: 1, CPU: 1, Disk: 1, UpSince: bootTime(),
		Version: version.Version}
	n.members, err = cluster.Join(cluster.MemberConfig{
		Credentials: creds, BindAddr: gh, BindPort: gport, Peers: cfg.GossipPeers, Meta: meta,
		ProbeInterval: cfg.GossipProbeInterval, ProbeTimeout: cfg.GossipProbeTimeout, SuspicionMult: cfg.GossipSuspicionMult,
		Log: log.With("component", "gossip"),
	})
	if err != nil {
		ln.Close()
		return fail(err)
	}
	if len(cfg.GossipPeers) > 0 {
		go rejoin(ctx, n.members, cfg.GossipPeers)
	}

	var client *api.Client
	if n.Token, err = tokenFile(cfg); err != nil {
		ln.Close()
		return fail(err)
	}
	if cfg.Management {
		if err := n.openMaster(cfg, creds, log); err != nil {
			ln.Close()
			return fail(err)
		}
		if err := setIssuer(n.master.Master, cfg.CredentialsDir, log); err != nil {
			ln.Close()
			return fail(err)
		}
		// Peers name this node's raft address when they move to a group it leads.
		meta.Raft = n.raftAddr
		if err := n.members.UpdateMeta(meta); err != nil {
			log.Warn("gossip the raft address", "err", err)
		}
		reg.MustRegister(n.master.Collector())
		n.master.st.SetPeerVersion(n.memberVersion)
	}
	// Agent traffic (status reports, assignments, joins) goes to the management nodes'
	// mutual-TLS listeners, which membership announces, with this node's certificate,
	// which is what authenticates it there (a token, if the node has one, is not needed).
	if client, err = api.NewClient(agentURLs(cfg), n.Token); err != nil {
		ln.Close()
		return fail(err)
	}
	client.UseTLS(creds.ClientTLS())
	client.Discover = func() []string {
		var urls []string
		for _, m := range n.members.Members() {
			if m.State == cluster.StateAlive && m.Meta.Management && m.Meta.Agent != "" {
				urls = append(urls, "https://"+m.Meta.Agent)
			}
		}
		sort.Strings(urls)
		return urls
	}

	lease := func() (string, uint64, bool) {
		if n.Roles == nil {
			return "", 0, false
		}
		return n.Roles.Lease()
	}
	a, hv, err := NewAgent(cfg, client, reg, log, true, lease)
	if err != nil {
		ln.Close()
		return fail(err)
	}
	n.HV = hv

	var st *storeHandle
	if n.master != nil {
		st = &storeHandle{n.master}
	}
	// An unfence is written to the lease file at once, not at the vouch loop's next
	// tick: the agent resumes paused guests a moment later, and the fence guard must
	// not pause them again on a lease file that still says the lease lapsed.
	vouchNow := make(chan struct{}, 1)
	unfence := func() {
		a.Unfence()
		select {
		case vouchNow <- struct{}{}:
		default:
		}
	}
	hooks := roles.Hooks{Fence: a.Fence, Unfence: unfence, Event: func(kind, node, detail string) {
		log.Info("cluster event", "kind", kind, "node", node, "detail", detail)
		if n.master != nil && n.master.IsLeader() {
			n.master.Record(kind, node, "", detail)
		}
	}}
	if n.master != nil {
		hooks.DeclareLost = n.master.RecoverNode
		hooks.Readmit = n.master.Readmit
		join := api.JoinRequest{Name: cfg.Name, RaftAddress: n.raftAddr}
		hooks.Join = func() {
			jctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := client.Do(jctx, "POST", "/v1/cluster/join", join, nil); err != nil {
				log.Warn("ask the master to take this replica in", "err", err)
			}
		}
	}
	fcfg := failover.Config{Timing: cfg.Timing}
	if pf := cfg.PowerFence; pf.Agent != "" && cfg.Management {
		// Only a master powers nodes off; a node that can never be master needs no agent.
		if err := checkExecutable(pf.Agent); err != nil {
			ln.Close()
			return fail(fmt.Errorf("power_fence_agent: %w", err))
		}
		fcfg.PowerFenceAfter = pf.After
		hooks.PowerFence = roles.PowerFenceAgent{Agent: pf.Agent, Action: pf.Action, OptionsDir: pf.OptionsDir}.Run
	}
	n.Roles, err = roles.New(roles.Config{
		Self: cfg.Name, Capable: cfg.Management, Bootstrap: cfg.Bootstrap,
		Failover:  fcfg,
		StateFile: filepath.Join(cfg.DataDir, "roles.json"), Members: n.members, Store: st.store(), Hooks: hooks,
		Log: log, Health: selfHealth(cfg.DataDir), ProbeTLS: creds.PeerAPITLS,
	})
	if err != nil {
		ln.Close()
		return fail(err)
	}
	reg.MustRegister(n.Roles.Collector())
	var mm *master.Master
	if n.master != nil {
		mm = n.master.Master
		mm.SetAuthority(n.Roles)
		mm.SetRoles(n.Roles)
		mm.SetPeerTLS(creds.PeerAPITLS)
		mm.SetNodeTLS(creds.PeerAPIClientTLS)
		if n.Token != "" {
			go mm.KeepBootstrapToken(ctx, n.Token)
		}
		go mm.Run(ctx)
		if !cfg.Bootstrap {
			// A first start asks at once; later the role machine asks (Join) when the
			// replica hears from no leader while a master speaks to the node.
			go master.JoinLoop(ctx, n.master.st, client, api.JoinRequest{Name: cfg.Name, RaftAddress: n.raftAddr})
		}
	}
	go func() {
		n.err = Serve(ctx, ln, apiHandler(a, master.Handler(mm, cfg.Name, n.Token, reg)))
		close(n.done)
	}()
	if agentLn != nil {
		go Serve(ctx, agentLn, master.AgentHandler(mm, cfg.Name, n.Token, reg))
	}
	n.writers.Add(2)
	go func() {
		defer n.writers.Done()
		n.Roles.Run(ctx)
	}()
	n.agent.Add(1)
	go func() {
		defer n.agent.Done()
		a.Run(ctx)
	}()
	leaseFile := filepath.Join(cfg.DataDir, "lease")
	go func() {
		defer n.writers.Done()
		vouch(ctx, n.Roles, leaseFile, vouchNow)
	}()
	if err := startFenceGuard(cfg, leaseFile, log); err != nil {
		n.Stop()
		return nil, err
	}
	return n, nil
}

// apiHandler serves a node's API listener: the API (api, which on a node without a
// management role is only /metrics and /v1/health) and the node's own console
// endpoint, which the master alone uses (agent.Agent.ConsoleHandler).
func apiHandler(a *agent.Agent, api http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/node/", a.ConsoleHandler())
	mux.Handle("/", api)
	return mux
}

// apiServerTLS is the API listener's TLS: an operator's certificate (api_tls_cert and
// api_tls_key), or the node's, which must then name the host the API is reached at.
func apiServerTLS(cfg config.Node, creds *cluster.Credentials) (*tls.Config, error) {
	if cfg.APITLSCert != "" {
		op, err := cluster.LoadAPICertificate(cfg.APITLSCert, cfg.APITLSKey)
		if err != nil {
			return nil, fmt.Errorf("api_tls_cert, api_tls_key: %w", err)
		}
		return creds.APIServerTLS(&op), nil
	}
	host, _, err := net.SplitHostPort(cfg.Advertise)
	if err != nil {
		return nil, fmt.Errorf("advertise %q is not host:port", cfg.Advertise)
	}
	if err := creds.CheckAPIHost(host); err != nil {
		return nil, err
	}
	return creds.APIServerTLS(nil), nil
}

// tokenFile reads the node's token file: made at the first start of the node that
// forms the cluster (the admin token "bootstrap"); on other nodes read if it is there
// (a cluster made before tokens had scopes copied it to every node), and not needed.
func tokenFile(cfg config.Node) (string, error) {
	if cfg.Management && cfg.Bootstrap {
		return api.LoadOrCreateToken(cfg.TokenFile)
	}
	tok, err := api.ReadToken(cfg.TokenFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	return tok, err
}

// setIssuer lets the master sign joining hosts' certificates when this management
// node holds the cluster's CA key.
func setIssuer(m *master.Master, dir string, log *slog.Logger) error {
	if _, err := os.Stat(filepath.Join(dir, cluster.CAKeyFile)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	iss, err := cluster.LoadIssuer(dir)
	if err != nil {
		return fmt.Errorf("%s is there, so this node would sign joining hosts' certificates, but: %w", filepath.Join(dir, cluster.CAKeyFile), err)
	}
	m.SetIssuer(iss)
	log.Info("this management node signs the certificates of hosts that join with a join token", "ca_key", filepath.Join(dir, cluster.CAKeyFile))
	return nil
}

// Client is a client of this node's API with its token file's secret, checking the
// node's certificate against the cluster's CA.
func (n *Node) Client() (*api.Client, error) {
	c, err := api.NewClient(n.Addr, n.Token)
	if err != nil {
		return nil, err
	}
	return c, c.TrustCA(n.CAFile)
}

// vouch writes to the lease file, while this node holds its lease, until when the
// lease lets it serve its HA guests: the fence guard stops them a window after that
// time if dvmd (stalled, hung, dead) no longer moves it on.
func vouch(ctx context.Context, r *roles.Runner, path string, now <-chan struct{}) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-now:
		}
		if until, ok := r.ServiceUntil(); ok {
			fenceguard.Vouch(path, until)
		}
	}
}

// startFenceGuard starts this node's fence guard, a process of its own that outlives
// dvmd, unless one already guards this data directory. Only a dvmd binary starts one
// (tests running a node in-process have no guard to spawn).
func startFenceGuard(cfg config.Node, leaseFile string, log *slog.Logger) error {
	exe, err := os.Executable()
	if err != nil || filepath.Base(exe) != "dvmd" {
		return nil
	}
	pidFile := filepath.Join(cfg.DataDir, "fence-guard.pid")
	if b, err := os.ReadFile(pidFile); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) == nil {
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), "fence-guard") {
				return nil // still guarding
			}
		}
	}
	// The config's timing was validated with the guard's window in it.
	window := cfg.Timing.GuardWindow()
	logf, err := os.OpenFile(filepath.Join(cfg.DataDir, "fence-guard.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(exe, "fence-guard", "--libvirt-uri", cfg.LibvirtURI, "--lease-file", leaseFile, "--window", window.String(),
		"--paused-file", PausedFile(cfg))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // not in dvmd's process group: it must outlive dvmd
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start fence guard: %w", err)
	}
	go cmd.Wait() // reap it if it ends while this dvmd lives
	log.Info("fence guard started", "pid", cmd.Process.Pid, "window", window)
	return os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o600)
}

// PausedFile is where a node records the HA guests it paused when its lease lapsed,
// shared by its agent and its fence guard.
func PausedFile(cfg config.Node) string { return filepath.Join(cfg.DataDir, "paused-guests.json") }

// raftIOTimeout is raft's timeout for a connection and one exchange with a peer
// (snapshots get more, in proportion to their size).
const raftIOTimeout = 2 * time.Second

// openMaster opens this management node's replica of the cluster state, with raft
// over mutual TLS: only nodes holding a certificate of the cluster's CA, and known as
// management-capable, may speak raft.
func (n *Node) openMaster(cfg config.Node, creds *cluster.Credentials, log *slog.Logger) error {
	epoch, err := store.OpenEpoch(filepath.Join(cfg.DataDir, "raft"))
	if err != nil {
		return err
	}
	listen := func(addr string) (raft.Transport, error) {
		rl, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("raft listener on %s: %w", addr, err)
		}
		sl := creds.RaftStreamLayer(rl, nil)
		sl.Allow = func(node string) bool {
			for _, m := range n.members.Members() {
				if m.Name == node {
					return m.Meta.Management
				}
			}
			return false
		}
		sl.Refused = func(remote net.Addr, err error) { log.Warn("raft peer refused", "remote", remote, "err", err) }
		sl.Epoch = epoch.Get
		// Raft's I/O timeout bounds a dial to a dead peer too, and raft's shutdown
		// waits for its calls: a replica moving to a re-formed group (Rejoin) would
		// otherwise wait out a 10 s dial to a killed voter. Peers answer within
		// milliseconds on a LAN.
		return raft.NewNetworkTransport(sl, 3, raftIOTimeout, io.Discard), nil
	}
	trans, err := listen(cfg.RaftListen)
	if err != nil {
		return err
	}
	n.raftAddr = string(trans.LocalAddr()) // a port of 0 was chosen now
	renew := func() (raft.Transport, error) { return listen(n.raftAddr) }
	n.master, err = OpenMaster(MasterConfig{Name: cfg.Name, DataDir: cfg.DataDir, Transport: trans, NewTransport: renew,
		Bootstrap: cfg.Bootstrap, NodeTimeout: cfg.NodeTimeout, Log: log, RaftLog: logWriter{log}, Epoch: epoch,
		ElectionTimeout: cfg.Timing.ElectionTimeout,
		Scheduler: scheduler.Options{Strategy: scheduler.Strategy(cfg.Strategy), FailureDomains: []string{"rack", "zone"},
			HAReserveNodes: cfg.HAReserveNodes, HAWarnOnly: cfg.HAWarnOnly},
		Balance: cfg.Balance, ImagesDir: cfg.ImagesDir})
	if err != nil {
		if c, ok := trans.(io.Closer); ok {
			c.Close()
		}
		return err
	}
	return nil
}

// memberVersion is the dvmd version a member gossips; "" for one not in reach or
// from before versions were carried.
func (n *Node) memberVersion(node string) string {
	for _, m := range n.members.Members() {
		if m.Name == node && m.State == cluster.StateAlive && m.MetaErr == nil {
			return m.Meta.Version
		}
	}
	// Not alive in gossip: a dead or lost node (whose guests are being recovered), or
	// one not yet seen since this dvmd started. Its replica applies nothing until it
	// runs again, and a binary changes only across a restart; the version its agent
	// last reported (replicated, so known after this dvmd's own restart too) is the
	// best word on it: when it comes back it reads what was written meanwhile with
	// that dvmd or a newer one (upgrades go forward). Without this every gated write,
	// the count of the very loss that made it silent and the recovery of a guest
	// with a newer field among them, would be refused while a management node is down.
	if n.master != nil && n.master.st != nil {
		if rec, ok := n.master.st.Node(node); ok {
			return rec.Version
		}
	}
	return ""
}

// storeHandle gives the role runner the store of a management node, nil elsewhere.
type storeHandle struct{ m *Master }

func (h *storeHandle) store() *store.Store {
	if h == nil {
		return nil
	}
	return h.m.st
}

// rejoin keeps joining the gossip peers that membership does not see alive: a node
// that starts before its peers, or a partition that healed, is whole again within
// seconds instead of waiting for memberlist's periodic sync with the dead (30 s).
func rejoin(ctx context.Context, m *cluster.Members, peers []string) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		alive := map[string]bool{}
		for _, mb := range m.Members() {
			if mb.State == cluster.StateAlive {
				alive[mb.Addr.String()] = true
			}
		}
		var missing []string
		for _, p := range peers {
			if !alive[p] {
				missing = append(missing, p)
			}
		}
		if len(missing) > 0 {
			m.JoinPeers(missing...)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// bootTime is when the host came up (uptime counts for the candidate ranking).
func bootTime() time.Time {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return time.Now()
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return time.Now()
	}
	secs, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return time.Now()
	}
	return time.Now().Add(-time.Duration(secs * float64(time.Second)))
}

// selfHealth measures this node for the candidate ranking: free disk of the data
// directory and CPU headroom from the load average; the network score is 1 while the
// node reaches the cluster at all (the role machine sees reachability itself).
func selfHealth(dataDir string) func() failover.HealthReport {
	up := bootTime()
	return func() failover.HealthReport {
		h := failover.HealthReport{Network: 1, CPU: 1, Disk: 1, Uptime: time.Since(up)}
		var fs syscall.Statfs_t
		if syscall.Statfs(dataDir, &fs) == nil && fs.Blocks > 0 {
			h.Disk = float64(fs.Bavail) / float64(fs.Blocks)
		}
		if b, err := os.ReadFile("/proc/loadavg"); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				if l, err := strconv.ParseFloat(f[0], 64); err == nil {
					// A busy host is not a broken one: the score falls from 1 (up to two
					// runnable tasks per CPU) to 0.3 (eight per CPU) and no lower, so load
					// ranks candidates but never makes a node "not functional".
					perCPU := l / float64(runtime.NumCPU())
					h.CPU = max(0.3, min(1, 1-(perCPU-2)*0.7/6))
				}
			}
		}
		return h
	}
}

// Done is closed when the node's server stops; Err then says why.
func (n *Node) Done() <-chan struct{} { return n.done }

// Err is why the server stopped.
func (n *Node) Err() error { return n.err }

// handOverWait bounds how long a stopping master waits for raft's leadership to
// reach its successor: a transfer takes one round of raft messages.
const handOverWait = 2 * time.Second

// Stop ends the node. A master that acts hands its role to a backup first, so that
// a planned stop (an upgrade, a restart) costs the nodes no lapsed lease.
func (n *Node) Stop() {
	if n.Roles != nil {
		n.Roles.HandOver(handOverWait) // the role machine's hand-over event says it
	}
	n.cancel()
	if n.Addr != "" {
		<-n.done
	}
	n.agent.Wait()
	n.writers.Wait()
	n.closeAll()
}

func (n *Node) closeAll() {
	if n.agentLn != nil {
		n.agentLn.Close()
	}
	if n.members != nil {
		n.members.Leave(time.Second)
		n.members.Shutdown()
	}
	if n.HV != nil {
		n.HV.Close()
	}
	if n.master != nil {
		n.master.Close()
	}
}

// logWriter sends raft's log lines to the daemon's logger.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Warn(strings.TrimSpace(string(p)), "component", "raft")
	return len(p), nil
}

// agentURLs are the management nodes' mutual-TLS agent listeners: the hosts of the
// master addresses (or this node's own, on a lone management node) on the agent port.
func agentURLs(cfg config.Node) string {
	_, port, _ := net.SplitHostPort(cfg.AgentListen)
	var urls []string
	for _, m := range strings.Split(cfg.Master, ",") {
		if u, err := url.Parse(strings.TrimSpace(m)); err == nil && u.Hostname() != "" {
			urls = append(urls, "https://"+net.JoinHostPort(u.Hostname(), port))
		}
	}
	if len(urls) == 0 || cfg.Master == "" {
		urls = append(urls, "https://"+cfg.AgentListen)
	}
	return strings.Join(urls, ",")
}

// checkExecutable says why path cannot be run as a program, or nil.
func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file: install the agent (such as fence-agents' fence_ipmilan) or fix its mode", path)
	}
	return nil
}
