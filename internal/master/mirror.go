package master

import (
	"fmt"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// A mirrored twin is a twin guest whose disk is on a storage pool of kind dir: a
// directory of each node's own. Its standby is not a definition over a shared disk
// but a copy of the disk on the standby's node, which the standby's agent serves
// over NBD with TLS and the guest's node fills and keeps in step with QEMU's
// synchronous (write-blocking) mirror: a write the guest sees done is on both.
//
// What the master does with one:
//   - tells the guest's node where the standby serves its copy (api.MirrorTarget,
//     from the standby node's last report), and the standby's node to serve it;
//   - records in the replicated state when the guest's node reports the copy in step
//     (store.GuestRecord.TwinProtected), and when it reports it not;
//   - promotes the standby when the guest's node is lost only if the copy was
//     recorded in step; otherwise the guest waits for its node and its disk.

// mirroredIn says whether g is a mirrored twin, with its nodes' records by name.
// A pool has one kind on every node that has it (a create is refused otherwise).
func mirroredIn(g *store.GuestRecord, nodes map[string]store.NodeRecord) bool {
	if g.Failover != api.FailoverTwin || g.Pool == "" {
		return false
	}
	for _, n := range []string{g.Node, g.TwinNode} {
		if kind, ok := nodes[n].Pools[g.Pool]; ok {
			return kind == "dir"
		}
	}
	return false
}

// mirrored is mirroredIn with the nodes read from the state.
func (m *Master) mirrored(g store.GuestRecord) bool {
	nodes := map[string]store.NodeRecord{}
	for _, name := range []string{g.Node, g.TwinNode} {
		if n, ok := m.st.Node(name); ok {
			nodes[name] = n
		}
	}
	return mirroredIn(&g, nodes)
}

// mirrorTarget is where g's node mirrors its disk: the standby's export as the
// standby's node last reported it (a report without it changes nothing); with no
// address while that node has reported none to this master (one that just took over
// has heard from nobody yet); nil when g has no standby.
func (m *Master) mirrorTarget(g *store.GuestRecord) *api.MirrorTarget {
	if g.TwinNode == "" || g.TwinNode == g.Node {
		return nil
	}
	m.obsMu.RLock()
	at, ok := m.standbyAt[g.Name]
	m.obsMu.RUnlock()
	t := &api.MirrorTarget{Node: g.TwinNode, Protected: g.TwinProtected}
	if ok && at.Node == g.TwinNode {
		t.Address = at.Address
	}
	return t
}

// protectionOf is a twin guest's protection as the API shows it; nil for other
// policies.
func (m *Master) protectionOf(g store.GuestRecord) *api.Protection {
	if g.Failover != api.FailoverTwin {
		return nil
	}
	switch {
	case g.TwinNode == "" || g.TwinNode == g.Node:
		why := "no node can hold its standby now"
		if g.Node == "" {
			why = "the guest is not placed"
		}
		return &api.Protection{State: api.ProtectionUnprotected, Reason: why}
	case !m.mirrored(g):
		// Both nodes reach the one disk: the standby is ready once placed.
		return &api.Protection{State: api.ProtectionProtected, Node: g.TwinNode}
	}
	obs := m.observedOn(g.Node, g.Name).Protection
	switch {
	case obs == nil && g.TwinProtected:
		// No word from the guest's node yet (this master just took over): what the
		// state records holds until it reports.
		return &api.Protection{State: api.ProtectionProtected, Node: g.TwinNode}
	case obs == nil || obs.Node != g.TwinNode:
		return &api.Protection{State: api.ProtectionUnprotected, Node: g.TwinNode,
			Reason: fmt.Sprintf("node %s has not reported a mirror to the standby on %s yet", g.Node, g.TwinNode)}
	case obs.State == api.ProtectionProtected && !g.TwinProtected:
		// In step as the node says, not yet as the cluster records it: a promotion
		// now would not boot from the copy.
		return &api.Protection{State: api.ProtectionSyncing, Node: g.TwinNode, Done: obs.Done, Total: obs.Total}
	}
	p := *obs
	return &p
}

// protectionReport compares what g's node reports of its mirror (obs) with what the
// state records and returns the write that records the change (nil for none) and
// the event that tells it.
func protectionReport(g store.GuestRecord, obs api.ObservedGuest) (*store.GuestRecord, string) {
	p := obs.Protection
	if p == nil {
		// An agent too old to mirror, or one that has not looked yet: a guest that
		// does not run keeps its copy in step (its disk does not change), and one
		// that runs is judged by the next report.
		return nil, ""
	}
	inStep := p.State == api.ProtectionProtected && p.Node == g.TwinNode && g.TwinNode != ""
	if inStep == g.TwinProtected {
		return nil, ""
	}
	g.TwinProtected = inStep
	if inStep {
		return &g, fmt.Sprintf("standby on %s in step (%d bytes copied): the guest survives the loss of %s", g.TwinNode, p.Total, g.Node)
	}
	why := p.Reason
	if why == "" {
		why = p.State
	}
	return &g, fmt.Sprintf("standby on %s no longer in step: %s", g.TwinNode, why)
}
