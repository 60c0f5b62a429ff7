// Package metrics holds dvm's Prometheus metrics. Names follow Prometheus practice: one
// prefix (dvm_), base units, counters ending in _total, and `domain` as the label of a
// guest so dashboards join with the libvirt exporters.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Registry is one process's metrics. Each dvmd has its own, served at /metrics.
type Registry struct {
	*prometheus.Registry
	APIRequestDuration *prometheus.HistogramVec
	LibvirtErrors      *prometheus.CounterVec
	Migrations         *prometheus.CounterVec
	MigrationDuration  prometheus.Histogram
	MigrationDowntime  prometheus.Histogram
	Recoveries         *prometheus.CounterVec
	RecoveryDuration   prometheus.Histogram
}

// New makes a registry with the process and Go collectors and dvm's own metrics.
func New() *Registry {
	r := &Registry{
		Registry: prometheus.NewRegistry(),
		APIRequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dvm_api_request_duration_seconds",
			Help:    "Time to answer an API request, by method, route and status code.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method", "route", "code"}),
		LibvirtErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dvm_libvirt_errors_total",
			Help: "Failed libvirt calls, by node and operation.",
		}, []string{"node", "operation"}),
		Migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dvm_migrations_total",
			Help: "Finished live migrations, by outcome (ok or failed).",
		}, []string{"outcome"}),
		MigrationDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "dvm_migration_duration_seconds",
			Help:    "Total time of successful live migrations, as libvirt measured it.",
			Buckets: []float64{.5, 1, 2, 5, 10, 20, 30, 60, 120, 300},
		}),
		MigrationDowntime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "dvm_migration_downtime_seconds",
			Help:    "Guest downtime of successful live migrations, as libvirt measured it.",
			Buckets: []float64{.01, .025, .05, .1, .2, .3, .5, 1, 2, 5},
		}),
		Recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dvm_recoveries_total",
			Help: "Guests of lost nodes, by outcome: ok (running again), pending (nowhere to go yet), lost (policy none).",
		}, []string{"outcome"}),
		RecoveryDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "dvm_recovery_duration_seconds",
			Help:    "Time from a node declared lost to each of its guests running again elsewhere.",
			Buckets: []float64{.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 30, 60, 120},
		}),
	}
	for _, o := range []string{"ok", "pending", "lost"} {
		r.Recoveries.WithLabelValues(o)
	}
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		r.APIRequestDuration, r.LibvirtErrors, r.Migrations, r.MigrationDuration, r.MigrationDowntime,
		r.Recoveries, r.RecoveryDuration)
	return r
}

// RecoveryOutcome counts one guest of a lost node by outcome.
func (r *Registry) RecoveryOutcome(outcome string) { r.Recoveries.WithLabelValues(outcome).Inc() }

// RecoveryDone records a guest running again after its node was lost.
func (r *Registry) RecoveryDone(d time.Duration) {
	r.Recoveries.WithLabelValues("ok").Inc()
	r.RecoveryDuration.Observe(d.Seconds())
}
