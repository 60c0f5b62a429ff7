// Package daemon wires dvmd's parts together: the master with its store and API, and
// node agents over their hypervisors. `dvmd agent` runs one node; `dvmd dev` runs several
// in one process on libvirt's test driver.
package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/agent"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/master"
	"github.com/dvmproject/dvm/internal/metrics"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/scheduler"
	"github.com/hashicorp/raft"
)

// Master is a running management role with its replica of the cluster state.
type Master struct {
	*master.Master
	st *store.Store
}

// MasterConfig says how to open a master.
type MasterConfig struct {
	Name         string
	DataDir      string
	Transport    raft.Transport
	NewTransport func() (raft.Transport, error)
	Bootstrap    bool
	NodeTimeout  time.Duration
	Scheduler    scheduler.Options
	Log          *slog.Logger
	RaftLog      io.Writer
	// Epoch is the replica's raft epoch, shared with the transport (nil: not kept).
	Epoch *store.Epoch
	// ElectionTimeout is raft's (failover.Timing); zero takes the store's default.
	ElectionTimeout time.Duration
	// Balance is the automatic balancer's policy; the zero value is off.
	Balance scheduler.Balance
	// ImagesDir is the shared images directory imported images are written to.
	ImagesDir string
}

// OpenMaster opens this node's replica of the cluster state (DataDir/raft) and makes a
// master over it. It acts only while its raft is the leader.
func OpenMaster(c MasterConfig) (*Master, error) {
	st, err := store.Open(store.Config{NodeID: c.Name, Dir: filepath.Join(c.DataDir, "raft"), Transport: c.Transport,
		NewTransport: c.NewTransport, Bootstrap: c.Bootstrap, LogOutput: c.RaftLog, Epoch: c.Epoch,
		HeartbeatTimeout: c.ElectionTimeout, ElectionTimeout: c.ElectionTimeout})
	if err != nil {
		return nil, err
	}
	m, err := master.New(st, master.Options{NodeTimeout: c.NodeTimeout, Scheduler: c.Scheduler, Log: c.Log, Balance: c.Balance,
		ImagesDir: c.ImagesDir})
	if err != nil {
		st.Close()
		return nil, err
	}
	return &Master{Master: m, st: st}, nil
}

// Close closes the master's state.
func (m *Master) Close() error { return m.st.Close() }

// Serve serves handler on a listener until ctx ends.
func Serve(ctx context.Context, ln net.Listener, handler http.Handler) error {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// NewAgent opens a node's hypervisor and makes its agent.
// fencing: the node has a role machine and obeys its Fence and Unfence.
// lease, when fencing, says which master holds the node's lease (roles.Runner.Lease).
func NewAgent(cfg config.Node, client *api.Client, reg *metrics.Registry, log *slog.Logger, fencing bool, lease func() (string, uint64, bool)) (*agent.Agent, *hypervisor.Node, error) {
	node, err := hypervisor.Open(hypervisor.Options{
		URI: cfg.LibvirtURI, Accelerator: cfg.Accelerator,
		OnError: func(op string) { reg.LibvirtErrors.WithLabelValues(cfg.Name, op).Inc() },
	})
	if err != nil {
		return nil, nil, err
	}
	a, err := agentOver(node, cfg, client, log, fencing, lease)
	if err != nil {
		node.Close()
		return nil, nil, err
	}
	return a, node, nil
}

// agentOver makes a node's agent over a hypervisor already open.
func agentOver(node *hypervisor.Node, cfg config.Node, client *api.Client, log *slog.Logger, fencing bool, lease func() (string, uint64, bool)) (*agent.Agent, error) {
	disks := cfg.DisksDir
	if disks == "" {
		disks = filepath.Join(cfg.DataDir, "disks")
	}
	a, err := agent.New(agent.Config{
		Name: cfg.Name, Node: node, Share: cfg.Share, Labels: cfg.Labels, Client: client,
		Address: cfg.Advertise, LibvirtURI: cfg.AdvertiseLibvirtURI, ImagesDir: cfg.ImagesDir,
		DisksDir: disks, Pools: cfg.Pools, LockspaceDir: cfg.LockspaceDir, ConsoleDir: filepath.Join(cfg.DataDir, "console"),
		PausedFile:      filepath.Join(cfg.DataDir, "paused-guests.json"),
		ShutdownTimeout: cfg.ShutdownTimeout, Log: log.With("node", cfg.Name),
		Fencing: fencing, FenceGrace: cfg.Timing.FenceGrace, FenceCheck: cfg.Timing.FenceCheck, Lease: lease,
		// On libvirt's test driver (dvmd dev) guests have no taps: networks stay objects.
		Net:    agent.NetConfig{Disabled: node.Accelerator() == hypervisor.AccelTest},
		Mirror: mirrorConfig(cfg),
	})
	if err != nil {
		return nil, err
	}
	log.Info("node ready", "node", cfg.Name, "libvirt", cfg.LibvirtURI, "accelerator", node.Accelerator(),
		"host_cpus", node.HostCapacity().CPUs, "host_memory_bytes", node.HostCapacity().MemoryBytes,
		"pool_cpus", a.PoolShare().CPUs, "pool_memory_bytes", a.PoolShare().MemoryBytes)
	return a, nil
}

// mirrorConfig is what the node's agent needs for mirrored twins: the cluster's
// credentials (the standby copies' NBD exports and the mirrors to them are TLS with
// them, both ends checked) and the node's address as peers reach it. Empty without
// credentials (dvmd dev): such a node refuses mirrored twins, saying why.
func mirrorConfig(cfg config.Node) agent.MirrorConfig {
	if cfg.CredentialsDir == "" {
		return agent.MirrorConfig{}
	}
	host, _, err := net.SplitHostPort(cfg.Advertise)
	if err != nil {
		host = cfg.Advertise
	}
	return agent.MirrorConfig{
		Creds: hypervisor.MirrorCreds{
			CACert: filepath.Join(cfg.CredentialsDir, cluster.CACertFile),
			Cert:   filepath.Join(cfg.CredentialsDir, cluster.NodeCertFile(cfg.Name)),
			Key:    filepath.Join(cfg.CredentialsDir, cluster.NodeKeyFile(cfg.Name)),
		},
		RunDir: filepath.Join(cfg.DataDir, "mirrors"),
		Host:   host,
	}
}

// WriteEnv writes the env file that points vmctl at a cluster: DVM_ADDR, DVM_TOKEN and
// DVM_CA lines (plus extra lines), mode 0600, replaced atomically.
func WriteEnv(path, addrs, token, ca string, extra ...string) error {
	body := "DVM_ADDR=" + addrs + "\nDVM_TOKEN=" + token + "\nDVM_CA=" + ca + "\n"
	for _, e := range extra {
		body += e + "\n"
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
