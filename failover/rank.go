package failover

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// HealthReport is what a node's agent reports about its host. Scores are 0..1,
// higher is better.
type HealthReport struct {
	Network, CPU, Disk float64
	// Uptime is how long the host has been up; Downtime is its downtime
	// record (total time down over the tracked window).
	Uptime, Downtime time.Duration
}

// Functional reports whether every score reaches min: the seed's "fully
// accessible and functional".
func (h HealthReport) Functional(min float64) bool {
	return h.Network >= min && h.CPU >= min && h.Disk >= min
}

// CandidateInfo is one management-capable node being ranked.
type CandidateInfo struct {
	Node   string
	Health HealthReport
	// LostAt is when the node was last declared lost; zero if never.
	LostAt time.Time
}

// Rank orders candidates best first, as the seed's priority list: network and
// CPU first (their sum, in steps of 0.1 so noise does not outrank uptime), then
// disk (in steps of 0.1), then longer uptime, then shorter downtime record,
// then name. A node declared lost within cfg.LostPenalty ranks below every
// other. The input is not changed.
func Rank(candidates []CandidateInfo, now time.Time, cfg Config) []CandidateInfo {
	cfg = cfg.WithDefaults()
	out := slices.Clone(candidates)
	penalized := func(c CandidateInfo) int {
		if !c.LostAt.IsZero() && now.Sub(c.LostAt) < cfg.LostPenalty {
			return 1
		}
		return 0
	}
	step := func(x float64) int { return int(math.Round(x * 10)) }
	slices.SortStableFunc(out, func(a, b CandidateInfo) int {
		return cmp.Or(
			cmp.Compare(penalized(a), penalized(b)),
			cmp.Compare(step(b.Health.Network+b.Health.CPU), step(a.Health.Network+a.Health.CPU)),
			cmp.Compare(step(b.Health.Disk), step(a.Health.Disk)),
			cmp.Compare(b.Health.Uptime, a.Health.Uptime),
			cmp.Compare(a.Health.Downtime, b.Health.Downtime),
			cmp.Compare(a.Node, b.Node),
		)
	})
	return out
}
