package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/master"
	"github.com/dvmproject/dvm/internal/metrics"
	"github.com/hashicorp/raft"
)

// Node is a running dvmd: an agent over its hypervisor, its /metrics and /v1/health
// endpoint, and on a management node the master and the API.
type Node struct {
	Addr   string // URL of this dvmd's listener
	Token  string
	HV     *hypervisor.Node
	master *Master
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// StartNode starts a node as cfg says. It returns once the node serves and its agent
// runs; Stop ends it.
func StartNode(ctx context.Context, cfg config.Node, log *slog.Logger) (*Node, error) {
	reg := metrics.New()
	n := &Node{done: make(chan struct{})}
	var err error
	if cfg.Management {
		if n.Token, err = api.LoadOrCreateToken(cfg.TokenFile); err != nil {
			return nil, err
		}
		trans, err := raft.NewTCPTransport(cfg.RaftListen, nil, 3, 10*time.Second, io.Discard)
		if err != nil {
			return nil, fmt.Errorf("raft transport on %s: %w", cfg.RaftListen, err)
		}
		cfg.RaftListen = string(trans.LocalAddr()) // a port of 0 was chosen now
		renew := func() (raft.Transport, error) {
			return raft.NewTCPTransport(cfg.RaftListen, nil, 3, 10*time.Second, io.Discard)
		}
		if n.master, err = OpenMaster(MasterConfig{Name: cfg.Name, DataDir: cfg.DataDir, Transport: trans, NewTransport: renew, Bootstrap: cfg.Bootstrap,
			NodeTimeout: cfg.NodeTimeout, Log: log, RaftLog: logWriter{log}}); err != nil {
			trans.Close()
			return nil, err
		}
		reg.MustRegister(n.master.Collector())
	} else if n.Token, err = api.ReadToken(cfg.TokenFile); err != nil {
		return nil, fmt.Errorf("token: %w (copy the cluster's token file from a management node)", err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		n.closeMaster()
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	n.Addr = "http://" + ln.Addr().String()
	if cfg.Advertise == cfg.Listen {
		cfg.Advertise = ln.Addr().String() // a port of 0 was chosen now
	}
	masterAddr := cfg.Master
	if masterAddr == "" {
		masterAddr = "http://" + cfg.Advertise
	}
	client, err := api.NewClient(masterAddr, n.Token)
	if err != nil {
		ln.Close()
		n.closeMaster()
		return nil, err
	}
	ctx, n.cancel = context.WithCancel(ctx)
	var mm *master.Master
	if n.master != nil {
		mm = n.master.Master
		go mm.Run(ctx)
		if !cfg.Bootstrap {
			go master.JoinLoop(ctx, n.master.st, client, api.JoinRequest{Name: cfg.Name, RaftAddress: cfg.RaftListen})
		}
	}
	go func() {
		n.err = Serve(ctx, ln, master.Handler(mm, cfg.Name, n.Token, reg))
		close(n.done)
	}()
	a, hv, err := NewAgent(cfg, client, reg, log)
	if err != nil {
		n.Stop()
		return nil, err
	}
	n.HV = hv
	go a.Run(ctx)
	return n, nil
}

// Done is closed when the node's server stops; Err then says why.
func (n *Node) Done() <-chan struct{} { return n.done }

// Err is why the server stopped.
func (n *Node) Err() error { return n.err }

// Stop ends the node.
func (n *Node) Stop() {
	n.cancel()
	<-n.done
	if n.HV != nil {
		n.HV.Close()
	}
	n.closeMaster()
}

func (n *Node) closeMaster() {
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
