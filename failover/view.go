package failover

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// ClusterView is the role table of one management generation: what the
// master writes to the replicated store and sends with its lease requests.
type ClusterView struct {
	// Generation counts re-formations of the management group (seed: the
	// "x+1 generation flag"), and the raises a winning master makes past what
	// another group's nodes saw. It never goes back on any node.
	Generation uint64
	// Epoch is the generation the master's raft group was re-formed in (on a
	// majority's witness votes, from the furthest log): a raise moves Generation
	// only, a re-formation both. Zero in a view written before epochs existed:
	// NewMachine takes Generation then.
	Epoch uint64
	// Version counts changes within a generation.
	Version uint64
	// Master is the node that leads this generation.
	Master string
	// Voters are the raft voters: the master and the two backups. A voter
	// that lost management status (lost, on-hold, or back on the list) stays
	// listed until a candidate replaces it.
	Voters []string
	// Nodes are all registered nodes, sorted by name.
	Nodes []NodeState
}

// NodeState is one registered node in a ClusterView.
type NodeState struct {
	Name string
	Role Role
	// Capable marks a management-capable node (the seed's hardware list).
	Capable bool
	// LostAt is when the node was last declared lost; zero if never. It
	// lowers the node's rank for Config.LostPenalty.
	LostAt time.Time
}

// ErrBadView wraps every ClusterView validation error.
var ErrBadView = errors.New("failover: bad cluster view")

// Validate checks that v is a consistent role table.
func (v ClusterView) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadView, fmt.Sprintf(format, a...))
	}
	if len(v.Nodes) == 0 {
		return bad("no registered nodes: list every node in Nodes")
	}
	if v.Epoch > v.Generation {
		return bad("epoch %d is past generation %d: a group is re-formed in a generation", v.Epoch, v.Generation)
	}
	seen := map[string]bool{}
	for i, n := range v.Nodes {
		if n.Name == "" {
			return bad("node %d has no name", i)
		}
		if seen[n.Name] {
			return bad("node %q is registered twice", n.Name)
		}
		seen[n.Name] = true
		if !n.Role.Valid() {
			return bad("node %q has unknown role %q: use one of %v", n.Name, n.Role, Roles)
		}
		if n.Role == RoleSemiMaster {
			return bad("node %q is semi-master in a view: that role is never written to the role table", n.Name)
		}
		if !n.Capable && (n.Role == RoleMaster || n.Role == RoleBackup || n.Role == RoleCandidate) {
			return bad("node %q is %s but not management-capable: set Capable or make it a plain node", n.Name, n.Role)
		}
	}
	// A new cluster starts with its first management node alone and grows to a master
	// and two backups as capable hosts join.
	if len(v.Voters) < 1 || len(v.Voters) > 3 {
		return bad("%d voters %v: the management group is a master and up to two backups", len(v.Voters), v.Voters)
	}
	for _, name := range v.Voters {
		n := v.node(name)
		if n == nil {
			return bad("voter %q is not registered", name)
		}
		if !n.Capable {
			return bad("voter %q is not management-capable", name)
		}
	}
	if !slices.Contains(v.Voters, v.Master) {
		return bad("master %q is not among the voters %v", v.Master, v.Voters)
	}
	masters := 0
	for _, n := range v.Nodes {
		if n.Role == RoleMaster {
			masters++
			if n.Name != v.Master {
				return bad("node %q has role master but the master is %q", n.Name, v.Master)
			}
		}
		if n.Role == RoleBackup && !slices.Contains(v.Voters, n.Name) {
			return bad("node %q is a backup but not a voter", n.Name)
		}
	}
	if masters > 1 {
		return bad("%d nodes have role master", masters)
	}
	return nil
}

// Clone returns a deep copy of v.
func (v ClusterView) Clone() ClusterView {
	v.Voters = slices.Clone(v.Voters)
	v.Nodes = slices.Clone(v.Nodes)
	return v
}

// Role returns the role of node name, or "" if it is not registered.
func (v ClusterView) Role(name string) Role {
	if n := v.node(name); n != nil {
		return n.Role
	}
	return ""
}

// Majority is how many leases (or witness votes) make a majority of all
// registered nodes.
func (v ClusterView) Majority() int { return len(v.Nodes)/2 + 1 }

func (v *ClusterView) node(name string) *NodeState {
	for i := range v.Nodes {
		if v.Nodes[i].Name == name {
			return &v.Nodes[i]
		}
	}
	return nil
}

func (v *ClusterView) setRole(name string, r Role) {
	if n := v.node(name); n != nil {
		n.Role = r
	}
}

// listRole is where a node goes when it loses management status: the ranked
// list if it is capable, plain node otherwise.
func (v *ClusterView) listRole(name string) Role {
	if n := v.node(name); n != nil && n.Capable {
		return RoleCandidate
	}
	return RoleNode
}
