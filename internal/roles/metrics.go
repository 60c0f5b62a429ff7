package roles

import (
	"github.com/dvmproject/dvm/failover"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	descRole        = prometheus.NewDesc("dvm_node_role", "1 for each node's role in the management group, as this node's role machine sees it.", []string{"node", "role"}, nil)
	descGeneration  = prometheus.NewDesc("dvm_generation", "Generation of the management group, as this node knows it.", nil, nil)
	descTransitions = prometheus.NewDesc("dvm_role_transitions_total", "Role changes of this node.", []string{"from", "to"}, nil)
	descLease       = prometheus.NewDesc("dvm_lease_remaining_seconds", "On the master: time left on the lease each node granted it.", []string{"node"}, nil)
	descActing      = prometheus.NewDesc("dvm_master_acting", "1 when this node is the master and holds leases from a majority of nodes.", nil, nil)
	descFenced      = prometheus.NewDesc("dvm_node_fenced", "1 when this node holds no lease and may not run HA guests.", nil, nil)
	descVoters      = prometheus.NewDesc("dvm_management_voters", "Voters of the management group (master and backups) in this node's view.", nil, nil)
	descPowerFences = prometheus.NewDesc("dvm_power_fences_total", "Runs of the power fence agent by this node as master, by node and result (off: confirmed; failed: any other end).", []string{"node", "result"}, nil)
)

type collector struct{ r *Runner }

// Collector exports the role machine's state.
func (r *Runner) Collector() prometheus.Collector { return collector{r} }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRole, descGeneration, descTransitions, descLease, descActing, descFenced, descVoters, descPowerFences} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st, view, ok := c.r.Status()
	fences := c.r.PowerFences()
	if ok {
		// Every node's counters from zero, so that an alert on an increase sees the
		// first failure too.
		for _, n := range view.Nodes {
			for _, result := range []string{"off", "failed"} {
				if _, seen := fences[[2]string{n.Name, result}]; !seen && n.Name != st.Self {
					fences[[2]string{n.Name, result}] = 0
				}
			}
		}
	}
	for k, v := range fences {
		ch <- prometheus.MustNewConstMetric(descPowerFences, prometheus.CounterValue, float64(v), k[0], k[1])
	}
	for k, v := range c.r.Transitions() {
		from, to := splitTransition(k)
		ch <- prometheus.MustNewConstMetric(descTransitions, prometheus.CounterValue, float64(v), from, to)
	}
	if !ok {
		return
	}
	for _, n := range view.Nodes {
		role := n.Role
		if n.Name == st.Self {
			role = st.Role
		}
		for _, r := range failover.Roles {
			v := 0.0
			if r == role {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descRole, prometheus.GaugeValue, v, n.Name, string(r))
		}
	}
	ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(view.Generation))
	ch <- prometheus.MustNewConstMetric(descVoters, prometheus.GaugeValue, float64(len(view.Voters)))
	for n, d := range st.LeaseAges {
		ch <- prometheus.MustNewConstMetric(descLease, prometheus.GaugeValue, d.Seconds(), n)
	}
	b := func(x bool) float64 {
		if x {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(descActing, prometheus.GaugeValue, b(st.Acting))
	ch <- prometheus.MustNewConstMetric(descFenced, prometheus.GaugeValue, b(st.Fenced))
}

func splitTransition(k string) (string, string) {
	for i := 0; i+1 < len(k); i++ {
		if k[i] == '-' && k[i+1] == '>' {
			return k[:i], k[i+2:]
		}
	}
	return k, ""
}
