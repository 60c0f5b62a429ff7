package master

import (
	"context"
	"sort"
	"time"

	"github.com/dvmproject/dvm/failover"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/hashicorp/raft"
)

// RoleSource is the role machine of the node this master runs on.
type RoleSource interface {
	Status() (failover.Status, failover.ClusterView, bool)
	// Fenced says whether this node holds no lease from an acting master now.
	Fenced() bool
	// Remove takes a lost node out of the role table (acting master only).
	Remove(node string) error
}

// SetRoles gives the master its node's role machine, for `vmctl cluster status`.
func (m *Master) SetRoles(r RoleSource) { m.roles = r }

// ClusterStatus reports the management group as this node's role machine sees it:
// roles, generation, the ranked candidates and lease ages (on the master). Acting says
// whether the master this node follows holds its majority lease: on the master itself
// its own lease count; elsewhere whether this node holds a lease from an acting master.
func (m *Master) ClusterStatus() api.ClusterStatus {
	out := api.ClusterStatus{Generation: m.st.Meta().Generation, Master: m.st.Leader(), Acting: m.acting(), Adoption: m.adoptionStatus()}
	if m.roles != nil && !m.IsLeader() {
		out.Acting = !m.roles.Fenced()
	}
	if out.Generation == 0 {
		out.Generation = 1
	}
	roles := map[string]string{}
	leases := map[string]time.Duration{}
	if m.roles != nil {
		if st, view, ok := m.roles.Status(); ok {
			out.Generation, out.Master, out.Voters = view.Generation, view.Master, view.Voters
			for _, n := range view.Nodes {
				roles[n.Name] = string(n.Role)
			}
			if st.Role == failover.RoleSemiMaster {
				roles[st.Self] = string(st.Role)
			}
			leases = st.LeaseAges
			for _, c := range st.Candidates {
				out.Candidates = append(out.Candidates, c.Node)
			}
		}
	}
	if servers, err := m.st.Members(); err == nil {
		for _, s := range servers {
			if s.Suffrage == raft.Voter {
				out.RaftVoters = append(out.RaftVoters, string(s.ID))
			}
		}
		sort.Strings(out.RaftVoters)
	}
	nodes, _, _ := m.st.Snapshot()
	seen := map[string]bool{}
	for _, n := range nodes {
		seen[n.Name] = true
		role := roles[n.Name]
		if role == "" {
			role = string(failover.RoleNode)
		}
		cn := api.ClusterNode{Name: n.Name, Role: role}
		if d, ok := leases[n.Name]; ok {
			cn.LeaseSeconds = d.Seconds()
		}
		if !n.LostAt.IsZero() {
			cn.LostAt = n.LostAt
		}
		out.Nodes = append(out.Nodes, cn)
	}
	for name, role := range roles {
		if !seen[name] {
			cn := api.ClusterNode{Name: name, Role: role}
			if d, ok := leases[name]; ok {
				cn.LeaseSeconds = d.Seconds()
			}
			out.Nodes = append(out.Nodes, cn)
		}
	}
	sort.Slice(out.Nodes, func(i, j int) bool { return out.Nodes[i].Name < out.Nodes[j].Name })
	return out
}

// Events returns the events after seq, waiting up to wait for one when there is none.
func (m *Master) Events(ctx context.Context, after uint64, wait time.Duration) []api.Event {
	deadline := time.Now().Add(wait)
	for {
		idx := m.st.Index()
		evs := m.st.Events(after)
		if len(evs) > 0 || wait <= 0 || time.Now().After(deadline) {
			out := make([]api.Event, 0, len(evs))
			for _, e := range evs {
				out = append(out, api.Event{Seq: e.Seq, Time: e.Time, Kind: e.Kind, Node: e.Node, Guest: e.Guest, Detail: e.Detail, Token: e.Token})
			}
			return out
		}
		wctx, cancel := context.WithDeadline(ctx, deadline)
		m.st.Wait(wctx, idx)
		cancel()
		if ctx.Err() != nil {
			return []api.Event{}
		}
	}
}
