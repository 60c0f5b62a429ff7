package master

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/hashicorp/raft"
)

// IsLeader says whether this node is the master now.
func (m *Master) IsLeader() bool { return m.st.IsLeader() }

// writeEpoch is the generation of the raft group this master leads (its raft epoch,
// or the generation its log records when that is newer; 1 at least) and raft's current
// term; ok is false when this node is not the raft leader.
func (m *Master) writeEpoch() (generation, term uint64, ok bool) {
	r := m.st.Raft()
	if r == nil || !m.st.IsLeader() {
		return 0, 0, false
	}
	return max(m.st.Epoch(), m.st.Meta().Generation, 1), r.CurrentTerm(), true
}

// leaderURL is the API address of the master, or nil when there is none now.
func (m *Master) leaderURL() *url.URL {
	name := m.st.Leader()
	if name == "" {
		return nil
	}
	// Without recent contact there is no master to forward to, and the client is
	// better told so at once than after a connect timeout.
	if m.st.LeaderSilence() > 2*time.Second {
		return nil
	}
	n, ok := m.st.Node(name)
	if !ok || n.Address == "" {
		return nil
	}
	scheme := "http"
	if m.peerTLS != nil {
		scheme = "https"
	}
	u, err := url.Parse(scheme + "://" + n.Address)
	if err != nil {
		return nil
	}
	return u
}

// SetPeerTLS makes this master forward requests to the master over TLS, checking the
// master's node certificate for its name (tlsFor gives the configuration for a node):
// the API listeners speak TLS. Without it (tests, a dev cluster) forwarding is plain.
func (m *Master) SetPeerTLS(tlsFor func(node string) *tls.Config) { m.peerTLS = tlsFor }

// forwardTransportTo is the transport that forwards to the master named node: one per
// master, since its TLS configuration names it.
func (m *Master) forwardTransportTo(node string) http.RoundTripper {
	if m.peerTLS == nil {
		return forwardTransport
	}
	m.fwdMu.Lock()
	defer m.fwdMu.Unlock()
	if m.fwd == nil {
		m.fwd = map[string]*http.Transport{}
	}
	tr, ok := m.fwd[node]
	if !ok {
		tr = forwardTransport.Clone()
		tr.TLSClientConfig = m.peerTLS(node)
		m.fwd[node] = tr
	}
	return tr
}

// forwardTransport dials the master with a short timeout: a master that just died does
// not answer at all, and a client waiting out the default 30 s dial never reaches the new
// master, elected within seconds. Answers themselves may take long (a drain).
var forwardTransport = func() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}).DialContext
	return tr
}()

// forward sends a request that only the master can answer to the master. A request
// already forwarded once is not forwarded again, so two nodes that each think the other
// leads cannot bounce it between them.
func (m *Master) forward(w http.ResponseWriter, r *http.Request) {
	u := m.leaderURL()
	if u == nil || r.Header.Get("X-Dvm-Forwarded") != "" {
		writeErr(w, http.StatusServiceUnavailable, "no master is elected right now: retry in a moment", "")
		return
	}
	p := httputil.NewSingleHostReverseProxy(u)
	p.Transport = m.forwardTransportTo(m.st.Leader())
	p.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		writeErr(w, http.StatusBadGateway, fmt.Sprintf("master %s did not answer: %v", u.Host, err), "")
	}
	r.Header.Set("X-Dvm-Forwarded", "1")
	// A master cut off mid-request never answers, and a kept-alive connection to it
	// skips the dial timeout: the request would hang until the client gives up
	// (minutes). It is ended as soon as this node stops hearing from that master or
	// sees another one, and the client moves on to the next node.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	leader := m.st.Leader()
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if m.st.IsLeader() || m.st.Leader() != leader || m.st.LeaderSilence() > 2*time.Second {
				cancel()
				return
			}
		}
	}()
	p.ServeHTTP(w, r.WithContext(ctx))
}

// Join adds a management node to the replicated state as a non-voting candidate that
// follows the log. Which nodes vote is the role machine's choice alone (the master and
// its two backups, from the ranked list): the raft leader makes raft's voters follow it
// (roles.Runner), so that raft never elects a node the role machine did not rank.
func (m *Master) Join(req api.JoinRequest) error {
	if fe := api.ValidateName("name", req.Name); fe != nil {
		return fe
	}
	if req.RaftAddress == "" {
		return &api.FieldError{Field: "raft_address", Msg: "is empty: give host:port of the node's raft listener"}
	}
	// A node declared lost joins again only once the role machine has taken it in
	// (the replicated state no longer holds it lost): the machine removes lost
	// nodes' servers, and a join before that would only be undone.
	if n, ok := m.st.Node(req.Name); ok && !n.LostAt.IsZero() {
		return fmt.Errorf("node %s is held lost since %s: it joins once the master takes it in again: %w", req.Name, n.LostAt.Format(time.RFC3339), ErrConflict)
	}
	r := m.st.Raft()
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	for _, s := range f.Configuration().Servers {
		if s.ID == raft.ServerID(req.Name) && s.Address == raft.ServerAddress(req.RaftAddress) {
			return nil // already a member
		}
	}
	if err := r.AddNonvoter(raft.ServerID(req.Name), raft.ServerAddress(req.RaftAddress), 0, 10*time.Second).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return fmt.Errorf("%w: %v", store.ErrNotLeader, err)
		}
		return fmt.Errorf("add management node %s: %w", req.Name, err)
	}
	m.log.Info("management node joined", "node", req.Name, "raft", req.RaftAddress)
	return nil
}

// JoinLoop asks the cluster at client to take this node into its management group,
// until this node is in the raft configuration or ctx ends.
func JoinLoop(ctx context.Context, st *store.Store, client *api.Client, req api.JoinRequest) {
	for ctx.Err() == nil {
		if f := st.Raft().GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				if s.ID == raft.ServerID(req.Name) {
					return
				}
			}
		}
		_ = client.Do(ctx, "POST", "/v1/cluster/join", req, nil)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
