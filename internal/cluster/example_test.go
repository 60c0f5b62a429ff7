package cluster_test

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/hashicorp/raft"
)

// A node's daemon loads its credentials, joins gossip, and runs raft over mutual TLS.
func Example() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	creds, err := cluster.Load("/etc/dvm/cluster", "n2")
	if err != nil {
		log.Error("credentials", "err", err) // says which file is missing, expired or foreign
		return
	}

	members, err := cluster.Join(cluster.MemberConfig{
		Credentials: creds,
		BindAddr:    "10.0.0.12", BindPort: 7946,
		Peers: []string{"10.0.0.11:7946"},
		Meta:  cluster.Meta{API: "10.0.0.12:7460", Management: true, Network: 0.9, CPU: 0.8, Disk: 0.7, UpSince: time.Now()},
		Log:   log,
	})
	if err != nil {
		log.Error("gossip", "err", err)
		return
	}
	defer members.Shutdown()
	go func() {
		for ev := range members.Events() {
			fmt.Println(ev.Kind, ev.Member.Name) // to the role machine: join, leave, failed, update
		}
	}()
	go func() {
		for msg := range members.Messages() {
			fmt.Println("from", msg.From, len(msg.Payload)) // From is checked against its certificate
		}
	}()

	ln, err := net.Listen("tcp", "10.0.0.12:7461")
	if err != nil {
		log.Error("raft listener", "err", err)
		return
	}
	layer := creds.RaftStreamLayer(ln, nil)
	layer.Refused = func(remote net.Addr, err error) { log.Warn("refused raft connection", "from", remote, "err", err) }
	transport := raft.NewNetworkTransport(layer, 3, 10*time.Second, io.Discard)
	_ = transport // raft.NewRaft(config, fsm, logs, stable, snapshots, transport)

	// Leaving on purpose: the others see EventLeave, not EventFailed.
	members.Leave(5 * time.Second)
}
