package store

import (
	"errors"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// guard wraps this replica's raft transport for two things raft leaves to its
// user.
//
// Copies: on the leader it keeps, per peer, the newest log index the peer has
// stored in the leader's current term (from the answers to AppendEntries and
// InstallSnapshot), so that a client write is acknowledged only once enough
// replicas hold it (Store.WaitDurable), not merely once raft's majority of
// voters does.
//
// Admission: a replica takes raft's requests (appends, snapshots, votes,
// pre-votes, leadership transfers) only from a voter of its own latest
// configuration, or from anyone while it is no voter itself (fresh, rejoining, or
// following as a non-voter). A server removed while it was away keeps its old
// configuration; with another such server it can win an election among
// themselves, in a term newer than the current leader's, and a current member
// that obeyed it would cut committed entries from its log. Raft's own vote rule
// (a voter grants only to a candidate that votes in its configuration) does not
// cover appends.
type guard struct {
	raft.Transport
	self raft.ServerID
	// config returns this replica's latest raft configuration, false until raft
	// has loaded it.
	config   func() (raft.Configuration, bool)
	consumer chan raft.RPC
	done     chan struct{}
	once     sync.Once

	mu      sync.Mutex
	stored  map[raft.ServerID]storedAt
	changed chan struct{} // closed and replaced whenever stored grows
}

type storedAt struct{ term, index uint64 }

// errNotAdmitted answers a raft request from a server that is no voter of this
// replica's configuration.
var errNotAdmitted = errors.New("raft request refused: the sender is no voter of this replica's configuration")

func newGuard(t raft.Transport, self raft.ServerID, config func() (raft.Configuration, bool)) *guard {
	g := &guard{Transport: t, self: self, config: config, consumer: make(chan raft.RPC), done: make(chan struct{}),
		stored: map[raft.ServerID]storedAt{}, changed: make(chan struct{})}
	go g.filter()
	return g
}

var (
	_ raft.WithClose   = (*guard)(nil)
	_ raft.WithPreVote = (*guard)(nil)
)

func (g *guard) filter() {
	in := g.Transport.Consumer()
	for {
		select {
		case <-g.done:
			return
		case rpc := <-in:
			if !g.admit(rpc) {
				rpc.Respond(nil, errNotAdmitted)
				continue
			}
			select {
			case g.consumer <- rpc:
			case <-g.done:
				return
			}
		}
	}
}

// admit applies the admission rule to one request.
func (g *guard) admit(rpc raft.RPC) bool {
	h, ok := rpc.Command.(raft.WithRPCHeader)
	if !ok {
		return true
	}
	from := raft.ServerID(h.GetRPCHeader().ID)
	if from == "" {
		return true
	}
	conf, ok := g.config()
	for !ok {
		// Raft starts taking requests a moment before it can say its
		// configuration: wait for it rather than admit blindly.
		select {
		case <-g.done:
			return false
		case <-time.After(10 * time.Millisecond):
		}
		conf, ok = g.config()
	}
	servers := conf.Servers
	votes := func(id raft.ServerID) bool {
		return slices.ContainsFunc(servers, func(s raft.Server) bool { return s.ID == id && s.Suffrage == raft.Voter })
	}
	return !votes(g.self) || votes(from)
}

// Consumer hands raft the requests admitted.
func (g *guard) Consumer() <-chan raft.RPC { return g.consumer }

// SetHeartbeatHandler applies the admission rule to heartbeats too, which skip
// the consumer.
func (g *guard) SetHeartbeatHandler(cb func(raft.RPC)) {
	if cb == nil {
		g.Transport.SetHeartbeatHandler(nil)
		return
	}
	g.Transport.SetHeartbeatHandler(func(rpc raft.RPC) {
		if !g.admit(rpc) {
			rpc.Respond(nil, errNotAdmitted)
			return
		}
		cb(rpc)
	})
}

func (g *guard) note(id raft.ServerID, term, index uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if s := g.stored[id]; term > s.term || term == s.term && index > s.index {
		g.stored[id] = storedAt{term, index}
		close(g.changed)
		g.changed = make(chan struct{})
	}
}

// copies counts the peers among servers that stored index in term, and returns a
// channel closed when that may have changed.
func (g *guard) copies(servers []raft.Server, term, index uint64) (int, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := 0
	for _, s := range servers {
		if st := g.stored[s.ID]; s.ID != g.self && st.term == term && st.index >= index {
			k++
		}
	}
	return k, g.changed
}

func (g *guard) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	err := g.Transport.AppendEntries(id, target, args, resp)
	if err == nil && resp.Success {
		g.note(id, args.Term, args.PrevLogEntry+uint64(len(args.Entries)))
	}
	return err
}

func (g *guard) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	err := g.Transport.InstallSnapshot(id, target, args, resp, data)
	if err == nil && resp.Success {
		g.note(id, args.Term, args.LastLogIndex)
	}
	return err
}

func (g *guard) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := g.Transport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	gp := &guardPipeline{AppendPipeline: p, g: g, id: id, out: make(chan raft.AppendFuture), done: make(chan struct{})}
	go gp.watch()
	return gp, nil
}

// RequestPreVote passes pre-votes on when the transport under it has them.
func (g *guard) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	pv, ok := g.Transport.(raft.WithPreVote)
	if !ok {
		return errors.New("raft transport has no pre-vote")
	}
	return pv.RequestPreVote(id, target, args, resp)
}

// Close stops the filter and closes the transport under it.
func (g *guard) Close() error {
	g.once.Do(func() { close(g.done) })
	if c, ok := g.Transport.(raft.WithClose); ok {
		return c.Close()
	}
	return nil
}

// guardPipeline notes what each pipelined append stored as its answer comes.
type guardPipeline struct {
	raft.AppendPipeline
	g    *guard
	id   raft.ServerID
	out  chan raft.AppendFuture
	done chan struct{}
	once sync.Once
}

func (p *guardPipeline) watch() {
	in := p.AppendPipeline.Consumer()
	for {
		select {
		case <-p.done:
			return
		case f, ok := <-in:
			if !ok {
				close(p.out)
				return
			}
			if f.Error() == nil {
				if req, resp := f.Request(), f.Response(); resp != nil && resp.Success {
					p.g.note(p.id, req.Term, req.PrevLogEntry+uint64(len(req.Entries)))
				}
			}
			select {
			case p.out <- f:
			case <-p.done:
				return
			}
		}
	}
}

func (p *guardPipeline) Consumer() <-chan raft.AppendFuture { return p.out }

func (p *guardPipeline) Close() error {
	p.once.Do(func() { close(p.done) })
	return p.AppendPipeline.Close()
}
