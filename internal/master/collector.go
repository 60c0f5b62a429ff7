package master

import (
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the cluster's state at scrape time, read from the store, so the
// figures are never stale copies.
type Collector struct{ m *Master }

// Collector returns the master's metrics collector.
func (m *Master) Collector() prometheus.Collector { return Collector{m} }

var (
	descNodeCPUs      = prometheus.NewDesc("dvm_node_cpus", "CPUs the node offers to guests (its pool share, after host reservation and overcommit).", []string{"node"}, nil)
	descNodeMemory    = prometheus.NewDesc("dvm_node_memory_bytes", "Memory the node offers to guests (its pool share).", []string{"node"}, nil)
	descNodeAllocCPU  = prometheus.NewDesc("dvm_node_allocated_cpus", "CPUs held on the node: its guests, the twins it holds room for, moves toward it.", []string{"node"}, nil)
	descNodeAllocMem  = prometheus.NewDesc("dvm_node_allocated_memory_bytes", "Memory held on the node: its guests, the twins it holds room for, moves toward it.", []string{"node"}, nil)
	descNodeHostCPUs  = prometheus.NewDesc("dvm_node_host_cpus", "CPUs of the node's host, before reservation.", []string{"node"}, nil)
	descNodeHostMem   = prometheus.NewDesc("dvm_node_host_memory_bytes", "Memory of the node's host, before reservation.", []string{"node"}, nil)
	descNodeUp        = prometheus.NewDesc("dvm_node_up", "1 when the node reported within the node timeout, else 0.", []string{"node"}, nil)
	descNodeInfo      = prometheus.NewDesc("dvm_node_info", "Static facts of a node, as labels.", []string{"node", "accelerator", "libvirt_uri"}, nil)
	descGuests        = prometheus.NewDesc("dvm_guests", "Guests by state.", []string{"state"}, nil)
	descGuestsPolicy  = prometheus.NewDesc("dvm_guests_by_failover", "Guests by failover policy.", []string{"failover"}, nil)
	descGuestInfo     = prometheus.NewDesc("dvm_guest_info", "A guest and where it is placed, as labels; domain is the libvirt domain name.", []string{"domain", "node", "os", "failover", "state"}, nil)
	descNodeLost      = prometheus.NewDesc("dvm_node_lost_seconds", "How long ago the role machine declared the node lost; absent while it is not.", []string{"node"}, nil)
	descTwinProtected = prometheus.NewDesc("dvm_twin_protected", "1 when a twin guest survives the loss of its node now: its standby is placed (shared storage) or holds a copy of its disk in step (a mirrored twin); 0 when it runs unprotected or its copy is syncing.", []string{"domain"}, nil)
	descTwinSync      = prometheus.NewDesc("dvm_twin_sync_remaining_bytes", "Bytes a mirrored twin's standby copy still lacks while it is filled (syncing), 0 once in step; absent while no mirror runs to its standby.", []string{"domain", "standby"}, nil)
	descNodeDraining  = prometheus.NewDesc("dvm_node_draining", "1 while a node is drained or in maintenance.", []string{"node"}, nil)
	descHalted        = prometheus.NewDesc("dvm_replica_halted", "1 when this management node's replica of the cluster state met a log entry or snapshot its dvmd cannot read and applies nothing more (GET /v1/health says which).", nil, nil)
	allGuestStates    = []string{api.GuestLost, api.GuestPending, api.GuestStarting, api.GuestRunning, api.GuestStopping, api.GuestStopped, api.GuestMigrating, api.GuestDeleting, api.GuestFailed, api.GuestUnknown}
	allFailoverPolicy = []string{api.FailoverNone, api.FailoverRestart, api.FailoverTwin}
)

func (c Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodeCPUs, descNodeMemory, descNodeAllocCPU, descNodeAllocMem, descNodeHostCPUs, descNodeHostMem, descNodeUp, descNodeInfo, descGuests, descGuestsPolicy, descGuestInfo, descNodeLost, descTwinProtected, descTwinSync, descNodeDraining, descHalted} {
		ch <- d
	}
}

func (c Collector) Collect(ch chan<- prometheus.Metric) {
	halted := 0.0
	if c.m.st.Halted() != nil {
		halted = 1
	}
	ch <- prometheus.MustNewConstMetric(descHalted, prometheus.GaugeValue, halted)
	nodes, records, _ := c.m.st.Snapshot()
	for _, n := range nodes {
		if !n.LostAt.IsZero() {
			ch <- prometheus.MustNewConstMetric(descNodeLost, prometheus.GaugeValue, time.Since(n.LostAt).Seconds(), n.Name)
		}
		d := 0.0
		if n.Draining || n.Maintenance {
			d = 1
		}
		ch <- prometheus.MustNewConstMetric(descNodeDraining, prometheus.GaugeValue, d, n.Name)
	}
	for _, g := range records {
		if g.Failover == api.FailoverTwin {
			p, pr := 0.0, c.m.protectionOf(g)
			if pr.State == api.ProtectionProtected {
				p = 1
			}
			ch <- prometheus.MustNewConstMetric(descTwinProtected, prometheus.GaugeValue, p, g.Name)
			if pr.Total > 0 && (pr.State == api.ProtectionSyncing || pr.State == api.ProtectionProtected) {
				left := float64(pr.Total - min(pr.Done, pr.Total))
				if pr.State == api.ProtectionProtected {
					left = 0
				}
				ch <- prometheus.MustNewConstMetric(descTwinSync, prometheus.GaugeValue, left, g.Name, pr.Node)
			}
		}
	}
	for _, n := range c.m.Nodes() {
		g := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, n.Name)
		}
		g(descNodeCPUs, float64(n.CPUs))
		g(descNodeMemory, float64(n.MemoryBytes))
		g(descNodeAllocCPU, float64(n.AllocatedCPUs))
		g(descNodeAllocMem, float64(n.AllocatedMemoryBytes))
		g(descNodeHostCPUs, float64(n.HostCPUs))
		g(descNodeHostMem, float64(n.HostMemoryBytes))
		up := 0.0
		if n.State == api.NodeReady {
			up = 1
		}
		g(descNodeUp, up)
		ch <- prometheus.MustNewConstMetric(descNodeInfo, prometheus.GaugeValue, 1, n.Name, n.Accelerator, n.LibvirtURI)
	}
	byState := map[string]int{}
	byPolicy := map[string]int{}
	for _, g := range c.m.Guests() {
		byState[g.State]++
		byPolicy[g.Failover]++
		ch <- prometheus.MustNewConstMetric(descGuestInfo, prometheus.GaugeValue, 1, g.Name, g.Node, g.OS, g.Failover, g.State)
	}
	for _, s := range allGuestStates {
		ch <- prometheus.MustNewConstMetric(descGuests, prometheus.GaugeValue, float64(byState[s]), s)
	}
	for _, p := range allFailoverPolicy {
		ch <- prometheus.MustNewConstMetric(descGuestsPolicy, prometheus.GaugeValue, float64(byPolicy[p]), p)
	}
}
