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
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/agent"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/master"
	"github.com/dvmproject/dvm/internal/metrics"
	"github.com/dvmproject/dvm/scheduler"
	"github.com/hashicorp/raft"
)

// DevOptions configure a dev cluster.
type DevOptions struct {
	Nodes   int
	Listen  string // API address; "127.0.0.1:0" picks a free port
	DataDir string
	Log     *slog.Logger
	// Scheduler overrides the dev cluster's scheduling (default: spread, no HA reserve).
	Scheduler *scheduler.Options
	// Hypervisors are the nodes of a dev cluster stopped with Detach, one a node, with
	// the guests still running on them: this cluster's agents take them over, as a
	// dvmd started again on a host finds the guests libvirtd kept running.
	Hypervisors []*hypervisor.Node
}

// Dev is a whole cluster in one process: a master and N agents, each agent on its own
// libvirt test-driver hypervisor.
type Dev struct {
	Addr    string // API URL (https)
	Token   string
	EnvFile string
	// CAFile is the dev cluster's CA certificate, which its API's is checked against.
	CAFile  string
	Nodes   []*hypervisor.Node
	master  *Master
	ctx     context.Context
	cancel  context.CancelFunc
	stopped chan struct{}  // closed when the API server has stopped
	agents  sync.WaitGroup // the agents' Run, waited for before their nodes are closed
	err     error          // why it stopped; set before stopped is closed
	keep    bool           // Detach: leave the hypervisors open

	killMu sync.Mutex
	alive  []*devAgent // by node, as Nodes; nil once killed (Kill)
	// bg is the dev cluster's own work on the master (declaring killed nodes lost,
	// taking them back), waited for before the master is closed.
	bg sync.WaitGroup
	// control is the listener of `dvmd dev kill` (ControlSocket); closed by Stop.
	control net.Listener
}

// devAgent is a dev node's agent while it runs: Kill stops it with cancel and waits for
// done.
type devAgent struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// devCapacity gives dev nodes different sizes, as real racks have.
func devCapacity(i int) hypervisor.Capacity {
	sizes := []hypervisor.Capacity{{CPUs: 16, MemoryBytes: 64 << 30}, {CPUs: 24, MemoryBytes: 96 << 30}, {CPUs: 32, MemoryBytes: 128 << 30}}
	return sizes[i%len(sizes)]
}

// StartDev starts a dev cluster; its state lives in DataDir and survives a restart.
func StartDev(ctx context.Context, o DevOptions) (*Dev, error) {
	if o.Nodes < 1 || o.Nodes > 64 {
		return nil, fmt.Errorf("--nodes %d: give 1 to 64", o.Nodes)
	}
	if len(o.Hypervisors) > 0 && len(o.Hypervisors) != o.Nodes {
		return nil, fmt.Errorf("%d hypervisors for %d nodes", len(o.Hypervisors), o.Nodes)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	token, err := api.LoadOrCreateToken(filepath.Join(dir, "token"))
	if err != nil {
		return nil, err
	}
	creds, err := devCredentials(filepath.Join(dir, "credentials"), o.Listen)
	if err != nil {
		return nil, err
	}
	raw, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w (is another dvmd dev running? use --listen)", o.Listen, err)
	}
	ln := tls.NewListener(raw, creds.APIServerTLS(nil))
	// One management node: a raft of one voter, in process.
	_, trans := raft.NewInmemTransport("")
	// The dev cluster's nodes share one images directory, as a real cluster's share
	// theirs.
	images := filepath.Join(dir, "images")
	if err := os.MkdirAll(images, 0o755); err != nil {
		ln.Close()
		return nil, fmt.Errorf("images directory: %w", err)
	}
	m, err := OpenMaster(MasterConfig{Name: "dev", DataDir: dir, Transport: trans, Bootstrap: true, NodeTimeout: 5 * time.Second,
		Scheduler: schedOpts(o.Scheduler), Log: o.Log, RaftLog: io.Discard, ImagesDir: images})
	if err != nil {
		ln.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	d := &Dev{Addr: "https://" + dialable(ln.Addr()), Token: token, EnvFile: filepath.Join(dir, "env"),
		CAFile: cluster.CACertPath(filepath.Join(dir, "credentials")), master: m, ctx: ctx, cancel: cancel, stopped: make(chan struct{})}
	fail := func(err error) (*Dev, error) {
		d.Stop()
		return nil, err
	}
	reg := metrics.New()
	reg.MustRegister(m.Collector())
	go m.Run(ctx)
	go m.KeepBootstrapToken(ctx, token)
	go func() {
		d.err = Serve(ctx, ln, master.Handler(m.Master, "dev", token, reg))
		close(d.stopped)
	}()
	// The dev cluster's agents speak to its API with the bootstrap token: it has no
	// agents' listener.
	client, err := d.Client()
	if err != nil {
		return fail(err)
	}
	hvDir := filepath.Join(dir, "hypervisors")
	if err := os.MkdirAll(hvDir, 0o700); err != nil {
		return fail(err)
	}
	for i := 0; i < o.Nodes; i++ {
		name := devNodeName(i)
		uri, err := hypervisor.TestDriverURI(hvDir, name, devCapacity(i))
		if err != nil {
			return fail(err)
		}
		cfg := config.Defaults()
		cfg.Name, cfg.LibvirtURI, cfg.AdvertiseLibvirtURI = name, uri, uri
		cfg.DataDir = filepath.Join(dir, "nodes", name)
		cfg.ImagesDir = images
		cfg.Advertise = ln.Addr().String()
		cfg.Labels = map[string]string{"rack": fmt.Sprintf("r%d", i%3+1)}
		var a *agent.Agent
		node := (*hypervisor.Node)(nil)
		if len(o.Hypervisors) > 0 {
			node = o.Hypervisors[i]
			cfg.LibvirtURI, cfg.AdvertiseLibvirtURI = node.URI(), node.URI()
			a, err = agentOver(node, cfg, client, o.Log, false, nil)
		} else {
			a, node, err = NewAgent(cfg, client, reg, o.Log, false, nil)
		}
		if err != nil {
			return fail(err)
		}
		d.Nodes = append(d.Nodes, node)
		actx, stop := context.WithCancel(ctx)
		run := &devAgent{cancel: stop, done: make(chan struct{})}
		d.alive = append(d.alive, run)
		d.agents.Add(1)
		go func() {
			defer d.agents.Done()
			defer close(run.done)
			a.Run(actx)
		}()
	}
	d.bg.Add(1)
	go d.readmitKilled()
	if d.control, err = listenControl(dir); err != nil {
		return fail(err)
	}
	go d.serveControl()
	if err := WriteEnv(d.EnvFile, d.Addr, token, d.CAFile); err != nil {
		return fail(fmt.Errorf("write env file: %w", err))
	}
	return d, nil
}

// devCredentials makes the dev cluster's CA the first time, and every time a
// certificate for its API, named "dev", for the loopback names and listen's host: the
// CA stays (vmctl's DVM_CA keeps working), the certificate follows --listen.
func devCredentials(dir, listen string) (*cluster.Credentials, error) {
	if _, err := os.Stat(cluster.CACertPath(dir)); errors.Is(err, fs.ErrNotExist) {
		if err := cluster.NewCA(dir); err != nil {
			return nil, fmt.Errorf("dev cluster credentials: %w", err)
		}
	}
	for _, f := range []string{cluster.NodeCertFile("dev"), cluster.NodeKeyFile("dev")} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	var names []string
	if host, _, err := net.SplitHostPort(listen); err == nil && host != "" {
		if ip := net.ParseIP(host); ip == nil {
			names = append(names, host)
		} else if !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
	}
	if err := cluster.Issue(dir, "dev", ips, names); err != nil {
		return nil, fmt.Errorf("dev cluster credentials: %w", err)
	}
	return cluster.Load(dir, "dev")
}

// dialable is a listener's address as a client dials it: an unspecified host
// (--listen 0.0.0.0:7460) is reached at loopback, which the certificate names.
func dialable(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if ip := net.ParseIP(host); err == nil && ip != nil && ip.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return a.String()
}

// Client is a client of the dev cluster's API with its bootstrap token, checking its
// certificate against its CA.
func (d *Dev) Client() (*api.Client, error) {
	c, err := api.NewClient(d.Addr, d.Token)
	if err != nil {
		return nil, err
	}
	return c, c.TrustCA(d.CAFile)
}

// Stopped is closed when the cluster's API server stops; Err then says why.
func (d *Dev) Stopped() <-chan struct{} { return d.stopped }

// Err is why the API server stopped (nil after Stop).
func (d *Dev) Err() error { return d.err }

// Stop ends the cluster and closes its state.
func (d *Dev) Stop() {
	d.cancel()
	if d.control != nil {
		d.control.Close()
	}
	<-d.stopped
	d.agents.Wait()
	// A Kill under way ends before the nodes close; one after it sees ctx ended.
	d.killMu.Lock()
	d.killMu.Unlock()
	d.bg.Wait()
	d.closeAll()
}

// Detach ends the cluster's master, API and agents, as a dvmd that stops, and leaves
// its hypervisors open with their guests running, as libvirtd keeps them; it returns
// them, for another dev cluster to take over (DevOptions.Hypervisors). Stop after
// Detach does nothing more.
func (d *Dev) Detach() []*hypervisor.Node {
	d.keep = true
	d.Stop()
	return d.Nodes
}

func (d *Dev) closeAll() {
	if d.master == nil {
		return // closed already
	}
	if !d.keep {
		for _, n := range d.Nodes {
			n.Close()
		}
	}
	d.master.Close()
	d.master = nil
}

func schedOpts(o *scheduler.Options) scheduler.Options {
	if o != nil {
		return *o
	}
	return scheduler.Options{Strategy: scheduler.Spread}
}
