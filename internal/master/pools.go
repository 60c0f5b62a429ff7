package master

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// Storage pools are named in each node's dvmd.conf (`pool.NAME = kind=…`) and
// reported with its status; the master places a guest on a pool only on a node that
// has it, of the same kind as when the guest was created.

// poolLabel is the scheduler label that says a node has storage pool name (its value
// is poolHas). A ':' is in no operator's label (api.ParseLabels), so none can clash.
// A pool has one kind on every node: a create checks it (guestPool).
func poolLabel(name string) string { return "pool:" + name }

const poolHas = "yes"

// schedLabels are a node's labels as the scheduler sees them: its own and one per
// storage pool.
func schedLabels(n store.NodeRecord) map[string]string {
	if len(n.Pools) == 0 {
		return n.Labels
	}
	out := maps.Clone(n.Labels)
	if out == nil {
		out = map[string]string{}
	}
	for name := range n.Pools {
		out[poolLabel(name)] = poolHas
	}
	return out
}

// schedConstraints are a guest's constraints as the scheduler sees them: its own, and
// its storage pool's label.
func schedConstraints(g store.GuestRecord) map[string]string {
	if g.Pool == "" {
		return g.Constraints
	}
	out := maps.Clone(g.Constraints)
	if out == nil {
		out = map[string]string{}
	}
	out[poolLabel(g.Pool)] = poolHas
	return out
}

// poolKinds is every storage pool the nodes not lost report, kind by name; a pool
// two nodes report with different kinds has both, comma-separated.
func poolKinds(nodes []store.NodeRecord) map[string]string {
	kinds := map[string][]string{}
	for _, n := range nodes {
		if !n.LostAt.IsZero() {
			continue
		}
		for name, kind := range n.Pools {
			if !slices.Contains(kinds[name], kind) {
				kinds[name] = append(kinds[name], kind)
			}
		}
	}
	out := make(map[string]string, len(kinds))
	for name, k := range kinds {
		sort.Strings(k)
		out[name] = strings.Join(k, ",")
	}
	return out
}

// guestPool checks a create's storage pool, and returns its kind: a pool some node
// has, of one kind, that keeps the guest's data where its failover policy needs it.
func (m *Master) guestPool(req api.CreateGuest) (string, error) {
	if req.Pool == "" {
		return "", nil
	}
	nodes, _, _ := m.st.SnapshotWhere(func(*store.GuestRecord) bool { return false })
	kinds := poolKinds(nodes)
	kind, ok := kinds[req.Pool]
	if !ok {
		names := slices.Sorted(maps.Keys(kinds))
		have := "no node names any storage pool (pool.NAME keys in dvmd.conf)"
		if len(names) > 0 {
			have = "the nodes have " + strings.Join(names, ", ")
		}
		return "", &api.FieldError{Field: "pool", Msg: fmt.Sprintf("no node has storage pool %q: %s; nothing was changed", req.Pool, have)}
	}
	if strings.Contains(kind, ",") {
		return "", &api.FieldError{Field: "pool", Msg: fmt.Sprintf("storage pool %q is of kinds %s on different nodes: give it one kind in every node's dvmd.conf; nothing was changed", req.Pool, kind)}
	}
	if kind == "dir" && req.Failover == api.FailoverRestart {
		return "", &api.FieldError{Field: "pool", Msg: fmt.Sprintf("storage pool %q is a directory of each node's own (kind dir): a restart guest on it could not come back on another node with its data; give --failover none, or a pool of kind shared or rbd (restart is the default policy); nothing was changed", req.Pool)}
	}
	if err := m.nodesRun("a guest on a storage pool", api.PoolsSince); err != nil {
		return "", err
	}
	if kind == "dir" && req.Failover == api.FailoverTwin {
		// A mirrored twin: its one disk (api.CreateGuest.Validate) is copied to its
		// standby's node.
		if err := m.nodesRun("a mirrored twin (a twin on a pool of kind dir)", api.MirrorSince); err != nil {
			return "", err
		}
	}
	return kind, nil
}

// onNodePool says whether g's disks are on a storage pool of kind dir of its node's:
// on that node only.
func (m *Master) onNodePool(g store.GuestRecord) bool {
	if g.Pool == "" || g.Node == "" {
		return false
	}
	n, ok := m.st.Node(g.Node)
	return ok && n.Pools[g.Pool] == "dir"
}
