package failover

import (
	"errors"
	"fmt"
	"time"
)

// Role is what a node does in management. Every registered node has exactly
// one.
type Role string

const (
	// RoleMaster leads the management group (the raft leader) and acts while it
	// holds a majority lease.
	RoleMaster Role = "master"
	// RoleBackup is one of the two other raft voters.
	RoleBackup Role = "backup"
	// RoleCandidate is a management-capable node on the ranked list.
	RoleCandidate Role = "candidate"
	// RoleNode is a node that is not management-capable.
	RoleNode Role = "node"
	// RoleSemiMaster is the survivor of a management group that lost its
	// quorum, collecting witness votes to re-form the group.
	RoleSemiMaster Role = "semi-master"
	// RoleOnHold is a node that returned but is not fully functional.
	RoleOnHold Role = "on-hold"
	// RoleLost is a node the master declared lost.
	RoleLost Role = "lost"
)

// Roles lists every role, in the order status tables show them.
var Roles = []Role{RoleMaster, RoleBackup, RoleSemiMaster, RoleCandidate, RoleNode, RoleOnHold, RoleLost}

// Valid reports whether r is one of Roles.
func (r Role) Valid() bool {
	for _, x := range Roles {
		if r == x {
			return true
		}
	}
	return false
}

// Defaults of the seed's other timers and numbers. The seed waits 24 hours to
// give up and 3 days of solitude; dvm's defaults are short because guests are
// waiting.
const (
	DefaultGiveUpAfter   = 2 * time.Minute
	DefaultSolitudeAfter = 10 * time.Minute
	DefaultLostPenalty   = 10 * time.Minute
	DefaultSpares        = 1
	DefaultMinHealth     = 0.2
)

// Config tunes one Machine. Zero durations take the defaults.
type Config struct {
	// Self is this node's name, as registered in the ClusterView.
	Self string
	// Timing holds the leases' durations and what the fencing rule assumes.
	Timing
	// GiveUpAfter is how long after being declared lost an unreachable node is
	// no longer contacted (and an operator is notified). Seed: 24 h.
	GiveUpAfter time.Duration
	// SolitudeAfter is how long a node that reaches no other node waits before
	// it writes its state and shuts its management down. Seed: 3 days.
	SolitudeAfter time.Duration
	// LostPenalty is how long a node that was lost ranks below all others.
	LostPenalty time.Duration
	// Spares is how many candidates beyond the two future backups a
	// semi-master waits for before re-forming. 0 means DefaultSpares; a
	// negative value means none.
	Spares int
	// MinHealth is the lowest network, CPU or disk score (0..1) of a fully
	// functional node; below it a node is held instead of put on the list.
	// 0 means DefaultMinHealth.
	MinHealth float64
	// PowerFenceAfter, when set, makes the master power a silent node off through
	// the cluster's power fence agent (PowerFence) once the node has been out of
	// reach as checkLost requires and PowerFenceAfter has passed since its last
	// grant arrived; once the agent confirms (PoweredOff), the node may be declared
	// lost without waiting out LeaseDuration + LeaseMargin. Zero: no power fencing,
	// the lease rule alone. Shorter than LeaseDuration, it powers off a node whose
	// lease has not lapsed yet (as Corosync's token timeout does): the price of
	// recovering sooner than the lease allows.
	PowerFenceAfter time.Duration
}

// ErrBadConfig wraps every Config validation error.
var ErrBadConfig = errors.New("failover: bad config")

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.Timing = c.Timing.WithDefaults()
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.GiveUpAfter, DefaultGiveUpAfter)
	def(&c.SolitudeAfter, DefaultSolitudeAfter)
	def(&c.LostPenalty, DefaultLostPenalty)
	if c.Spares == 0 {
		c.Spares = DefaultSpares
	} else if c.Spares < 0 {
		c.Spares = 0
	}
	if c.MinHealth == 0 {
		c.MinHealth = DefaultMinHealth
	}
	return c
}

// Validate checks c after defaults are applied.
func (c Config) Validate() error {
	c = c.WithDefaults()
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadConfig, fmt.Sprintf(format, a...))
	}
	if err := c.Timing.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	switch {
	case c.Self == "":
		return bad("Self is empty: set it to this node's registered name")
	case c.PowerFenceAfter != 0 && c.PowerFenceAfter < 2*c.RenewInterval:
		return bad("PowerFenceAfter %v is shorter than two renew intervals (%v): one late renewal would power a node off", c.PowerFenceAfter, 2*c.RenewInterval)
	case c.GiveUpAfter < 0, c.SolitudeAfter < 0, c.LostPenalty < 0:
		return bad("a duration is negative: use 0 for the default or a positive value")
	case c.MinHealth < 0 || c.MinHealth > 1:
		return bad("MinHealth %v is outside 0..1", c.MinHealth)
	}
	return nil
}
