package cluster

import (
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// logFSM records applied entries and hands them to a channel.
type logFSM struct {
	mu      sync.Mutex
	entries []string
	applied chan string
}

func newLogFSM() *logFSM { return &logFSM{applied: make(chan string, 16)} }

func (f *logFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	f.entries = append(f.entries, string(l.Data))
	f.mu.Unlock()
	select {
	case f.applied <- string(l.Data):
	default:
	}
	return nil
}

func (f *logFSM) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.entries)
}

func (f *logFSM) Snapshot() (raft.FSMSnapshot, error) {
	return nil, errors.New("no snapshots in this test")
}
func (f *logFSM) Restore(io.ReadCloser) error { return errors.New("no snapshots in this test") }

type raftNode struct {
	id        raft.ServerID
	addr      raft.ServerAddress
	layer     *StreamLayer
	transport *raft.NetworkTransport
	fsm       *logFSM
	raft      *raft.Raft
	refused   chan error
}

// startRaftNode makes the TLS stream layer and raft transport of a node, listening on a
// port the OS chooses; allow, if given, are the only nodes its listener admits. start
// then runs a real raft instance with in-memory stores on it.
func startRaftNode(t *testing.T, creds *Credentials, allow ...string) *raftNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &raftNode{id: raft.ServerID(creds.Node()), fsm: newLogFSM(), refused: make(chan error, 64)}
	n.layer = creds.RaftStreamLayer(ln, nil)
	n.layer.Refused = func(_ net.Addr, err error) {
		select {
		case n.refused <- err:
		default:
		}
	}
	if len(allow) > 0 {
		n.layer.Allow = func(node string) bool { return slices.Contains(allow, node) }
	}
	n.addr = raft.ServerAddress(ln.Addr().String())
	n.transport = raft.NewNetworkTransport(n.layer, 3, 2*time.Second, io.Discard)
	t.Cleanup(func() { n.transport.Close() })
	return n
}

func (n *raftNode) start(t *testing.T, bootstrap []raft.Server) {
	t.Helper()
	cfg := raft.DefaultConfig()
	cfg.LocalID = n.id
	cfg.HeartbeatTimeout = 300 * time.Millisecond
	cfg.ElectionTimeout = 300 * time.Millisecond
	cfg.LeaderLeaseTimeout = 150 * time.Millisecond
	cfg.CommitTimeout = 10 * time.Millisecond
	cfg.Logger = hclog.NewNullLogger()
	logs, stable, snaps := raft.NewInmemStore(), raft.NewInmemStore(), raft.NewInmemSnapshotStore()
	if err := raft.BootstrapCluster(cfg, logs, stable, snaps, n.transport, raft.Configuration{Servers: bootstrap}); err != nil {
		t.Fatal(err)
	}
	r, err := raft.NewRaft(cfg, n.fsm, logs, stable, snaps, n.transport)
	if err != nil {
		t.Fatal(err)
	}
	n.raft = r
	t.Cleanup(func() { r.Shutdown().Error() })
}

func (n *raftNode) server() raft.Server {
	return raft.Server{Suffrage: raft.Voter, ID: n.id, Address: n.addr}
}

// untilDeadline is a channel closed shortly before the test's deadline (go test
// -timeout), so a wait that never ends fails with a message rather than a panic.
func untilDeadline(t *testing.T) <-chan time.Time {
	d, ok := t.Deadline()
	if !ok {
		return nil
	}
	return time.After(time.Until(d) - 5*time.Second)
}

func waitLeader(t *testing.T, nodes ...*raftNode) *raftNode {
	t.Helper()
	deadline := untilDeadline(t)
	for {
		for _, n := range nodes {
			if n.raft.State() == raft.Leader {
				return n
			}
		}
		select {
		case <-deadline:
			t.Fatal("no leader elected")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// apply commits entry through whichever node leads, trying again if leadership moves
// meanwhile (a loaded test machine can miss a heartbeat), and returns the leader.
func apply(t *testing.T, entry string, nodes ...*raftNode) *raftNode {
	t.Helper()
	for {
		leader := waitLeader(t, nodes...)
		err := leader.raft.Apply([]byte(entry), 5*time.Second).Error()
		if err == nil {
			return leader
		}
		if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) {
			t.Fatalf("apply %q on %s: %v", entry, leader.id, err)
		}
	}
}

func waitApplied(t *testing.T, n *raftNode, want string) {
	t.Helper()
	deadline := untilDeadline(t)
	for {
		select {
		case got := <-n.fsm.applied:
			if got == want {
				return
			}
		case <-deadline:
			t.Fatalf("%s never applied %q", n.id, want)
		}
	}
}

func TestRaftOverMutualTLS(t *testing.T) {
	_, creds := newCluster(t, "n1", "n2")
	_, foreign := newCluster(t, "n3")
	n1, n2 := startRaftNode(t, creds["n1"]), startRaftNode(t, creds["n2"])
	voters := []raft.Server{n1.server(), n2.server()}
	n1.start(t, voters)
	n2.start(t, voters)

	apply(t, "guest web1 on n2", n1, n2)
	waitApplied(t, n1, "guest web1 on n2")
	waitApplied(t, n2, "guest web1 on n2")

	// A host with another cluster's certificate runs raft, believing itself a voter of
	// the same group, and campaigns. Every connection it makes is refused.
	n3 := startRaftNode(t, foreign["n3"])
	n3.start(t, append(voters, n3.server()))
	var resp raft.RequestVoteResponse
	req := &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ID: []byte("n3"), Addr: []byte(n3.addr)}, Term: 1 << 40, LastLogIndex: 1 << 40, LastLogTerm: 1 << 40}
	err := n3.transport.RequestVote(n1.id, n1.addr, req, &resp)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("foreign RequestVote to n1: err %v, want a certificate error", err)
	}
	select {
	case err := <-n1.refused:
		t.Logf("n1 refused the foreign raft: %v", err)
	case <-untilDeadline(t):
		t.Fatal("n1's stream layer reported no refused handshake")
	}
	// The real group goes on: a new entry still commits on both, and the foreign raft,
	// which can never get a vote, has applied nothing.
	leader := apply(t, "guest web2 on n1", n1, n2)
	waitApplied(t, n1, "guest web2 on n1")
	waitApplied(t, n2, "guest web2 on n1")
	if c := n3.fsm.count(); c != 0 || n3.raft.State() == raft.Leader {
		t.Errorf("foreign raft applied %d entries, state %s", c, n3.raft.State())
	}
	if term := leader.raft.Stats()["term"]; term == "1099511627776" {
		t.Errorf("the foreign raft's vote request reached the group: term %s", term)
	}
}

func TestRaftDialChecksAddress(t *testing.T) {
	_, creds := newCluster(t, "n1", "n2")
	// n1's certificate lists 127.0.0.1; a raft server at 127.0.0.2 holding it is refused.
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	server := creds["n1"].RaftStreamLayer(ln, nil)
	defer server.Close()
	go func() {
		for {
			conn, err := server.Accept()
			if err != nil {
				return
			}
			go func() { conn.Read(make([]byte, 1)); conn.Close() }()
		}
	}()
	lnClient, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client := creds["n2"].RaftStreamLayer(lnClient, nil)
	defer client.Close()
	_, err = client.Dial(raft.ServerAddress(ln.Addr().String()), 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "dvmd cluster issue --ip 127.0.0.2") {
		t.Errorf("dial a server whose certificate lacks its address: %v", err)
	}
	if _, err := client.Dial("no-port", time.Second); err == nil || !strings.Contains(err.Error(), `raft address "no-port"`) {
		t.Errorf("dial a bad address: %v", err)
	}
}

func TestRaftAllowKeepsOtherNodesOff(t *testing.T) {
	_, creds := newCluster(t, "n1", "n2", "n3")
	// n3 holds a valid certificate of this cluster but no management role.
	n1 := startRaftNode(t, creds["n1"], "n2")
	n2, n3 := startRaftNode(t, creds["n2"]), startRaftNode(t, creds["n3"])
	go func() {
		for rpc := range n1.transport.Consumer() {
			rpc.Respond(&raft.RequestVoteResponse{Term: 1}, nil)
		}
	}()
	req := &raft.RequestVoteRequest{Term: 1}
	var resp raft.RequestVoteResponse
	if err := n2.transport.RequestVote(n1.id, n1.addr, req, &resp); err != nil {
		t.Fatalf("allowed node n2: %v", err)
	}
	if err := n3.transport.RequestVote(n1.id, n1.addr, req, &resp); err == nil {
		t.Fatal("node n3 reached raft past Allow")
	}
	select {
	case err := <-n1.refused:
		if !strings.Contains(err.Error(), `node "n3" is not allowed`) {
			t.Errorf("refusal: %v", err)
		}
	case <-untilDeadline(t):
		t.Fatal("no refusal reported")
	}
}

// TestRaftEpochKeepsGenerationsApart: a raft peer whose replica belongs to another
// management generation is refused (an old group's leader must not reach the re-formed
// group); the same generation, or a replica that knows none yet, is admitted.
func TestRaftEpochKeepsGenerationsApart(t *testing.T) {
	_, creds := newCluster(t, "n1", "n2", "n3", "n4")
	epochOf := func(e uint64) func() uint64 { return func() uint64 { return e } }
	n1 := startRaftNode(t, creds["n1"])
	n1.layer.Epoch = epochOf(2)
	go func() {
		for rpc := range n1.transport.Consumer() {
			rpc.Respond(&raft.AppendEntriesResponse{Term: 1, Success: true}, nil)
		}
	}()
	req := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ID: []byte("x"), Addr: []byte("x")}, Term: 9}
	for _, tc := range []struct {
		node  string
		epoch uint64
		ok    bool
	}{{"n2", 2, true}, {"n3", 0, true}, {"n4", 1, false}} {
		peer := startRaftNode(t, creds[tc.node])
		peer.layer.Epoch = epochOf(tc.epoch)
		var resp raft.AppendEntriesResponse
		err := peer.transport.AppendEntries(n1.id, n1.addr, req, &resp)
		if (err == nil) != tc.ok {
			t.Errorf("%s with epoch %d: append entries error %v, want admitted %v", tc.node, tc.epoch, err, tc.ok)
		}
	}
	select {
	case err := <-n1.refused:
		if !errors.Is(err, ErrEpoch) || !strings.Contains(err.Error(), "generation 1, this node's of 2") {
			t.Errorf("refusal: %v", err)
		}
	case <-untilDeadline(t):
		t.Fatal("no refusal reported")
	}
}
