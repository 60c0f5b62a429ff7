package master

import (
	"fmt"
	"slices"
	"sort"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/version"
)

// UpgradeCheck says whether the cluster can take the next step of a rolling upgrade:
// upgrading one more node's dvmd (to the version to, when given). A step needs every
// node in reach (a node restarting while another is away may leave too few for a
// majority lease, or for the management group), no other step under way (no node
// draining or in maintenance), an acting master with its three voters, and versions
// no more than one release apart once the step is made.
func (m *Master) UpgradeCheck(to string) (api.UpgradeCheck, error) {
	if to != "" {
		if _, err := version.Parse(to); err != nil {
			return api.UpgradeCheck{}, &api.FieldError{Field: "to", Msg: err.Error()}
		}
	}
	cs := m.ClusterStatus()
	roles := map[string]string{}
	for _, n := range cs.Nodes {
		roles[n.Name] = n.Role
	}
	out := api.UpgradeCheck{To: to, Master: cs.Master, Acting: cs.Acting, Voters: cs.Voters, Reasons: []string{}}
	var versions []string
	for _, n := range m.Nodes() {
		un := api.UpgradeNode{Name: n.Name, Version: version.Or(n.Version), State: n.State, Role: roles[n.Name],
			Draining: n.Draining || n.Maintenance}
		if un.Role == "" {
			un.Role = "node"
		}
		out.Nodes = append(out.Nodes, un)
		versions = append(versions, un.Version)
		switch {
		case n.State == api.NodeLost:
			out.Reasons = append(out.Reasons, fmt.Sprintf("node %s is lost: bring it back, or remove it if it is gone for good (vmctl node remove %s)", n.Name, n.Name))
		case n.State != api.NodeReady:
			out.Reasons = append(out.Reasons, fmt.Sprintf("node %s is %s: wait until it reports again", n.Name, n.State))
		}
		if un.Draining {
			out.Reasons = append(out.Reasons, fmt.Sprintf("node %s is draining or in maintenance: finish its step first (vmctl node maintenance off %s, or vmctl node undrain %s)", n.Name, n.Name, n.Name))
		}
	}
	if len(versions) > 0 {
		sort.Slice(versions, func(i, j int) bool { return version.Compare(versions[i], versions[j]) < 0 })
		out.Oldest, out.Newest = versions[0], versions[len(versions)-1]
		if why := version.NextStep(out.Oldest, out.Newest); why != "" && out.Oldest != out.Newest {
			out.Reasons = append(out.Reasons, "the nodes run versions too far apart: "+why)
		}
		if to != "" {
			if why := version.NextStep(out.Oldest, to); why != "" {
				out.Reasons = append(out.Reasons, why)
			}
		}
	}
	if err := m.st.Halted(); err != nil {
		out.Reasons = append(out.Reasons, "the master's replica has halted: "+err.Error())
	}
	if !out.Acting {
		out.Reasons = append(out.Reasons, "the master does not hold leases from a majority of nodes now")
	}
	if m.roles != nil && len(cs.Voters) < 3 && len(cs.Candidates) > 0 {
		out.Reasons = append(out.Reasons, fmt.Sprintf("the management group has %d voters: wait until the master has promoted a candidate (vmctl cluster status)", len(cs.Voters)))
	}
	if a := m.adopting(); a != nil {
		out.Reasons = append(out.Reasons, adoptingErr(a).Error())
	}
	out.Reasons = slices.Compact(out.Reasons)
	out.Ready = len(out.Reasons) == 0
	return out, nil
}
