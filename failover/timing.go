package failover

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Timing is every duration the fencing rule rests on, in one place: the role
// machine's leases, the agent's fence, the runner's clock and what is assumed of
// the nodes' clocks. dvmd reads it from its config file (the keys below) and
// refuses, naming the key and the rule, any combination under which a node could
// still run a guest when the master restarts it elsewhere.
//
// The argument, in real time, for a node X and the master M:
//   - X serves its HA guests until the earlier of its own grant's expiry (its
//     clock: the request's arrival + LeaseDuration) and the master's ActingUntil
//     (M's clock), which M caps at its last grant received from X + LeaseDuration.
//   - X's machine sees that moment at its next tick, and the agent destroys the
//     guests FenceGrace after it, checking every FenceCheck.
//   - M declares X lost no sooner than LeaseDuration + LeaseMargin after X's last
//     grant reached it (M's clock), which is after X's grant was made.
//   - So X has stopped first if FenceGrace + Tick + FenceCheck + MaxClockSkew <=
//     LeaseMargin: the clocks of two nodes may differ by MaxClockSkew, and the rest
//     is what the node itself takes.
//
// Two masters never act at once because a node grants one holder at a time and a
// master counts a lease only until its request was sent + LeaseDuration -
// MaxClockSkew (its clock), before the granting node's own grant expires (its
// clock). The simulation runs nodes with clocks up to MaxClockSkew apart.
type Timing struct {
	// LeaseDuration (lease_duration) is how long a grant lasts on the granting node.
	LeaseDuration time.Duration
	// LeaseMargin (lease_margin) is how long before the master may declare a silent
	// node lost that node has stopped its guests; see the rule above.
	LeaseMargin time.Duration
	// RenewInterval (renew_interval) is how often a master renews its leases and a
	// semi-master asks for votes.
	RenewInterval time.Duration
	// ConfirmTimeout (confirm_timeout) is how long a node reachable only through
	// others stays suspected before it is declared lost, and how long the voters
	// must be out of reach before a survivor becomes semi-master.
	ConfirmTimeout time.Duration
	// FenceGrace (fence_grace) is how long after its lease lapsed a node waits for a
	// late renewal before it destroys its HA guests.
	FenceGrace time.Duration
	// FenceCheck is how often the agent checks whether its fence is due.
	FenceCheck time.Duration
	// Tick (tick) is the period of the role machine's clock on every node.
	Tick time.Duration
	// MaxClockSkew (max_clock_skew) is the most any two nodes' clocks may differ,
	// drift included: what NTP (or PTP) must keep them within.
	MaxClockSkew time.Duration
	// ElectionTimeout (raft_election_timeout) is raft's: how long a follower waits
	// for its leader before it stands for election.
	ElectionTimeout time.Duration
}

// Defaults of Timing: short, because guests are waiting (the seed waits
// minutes), and each within its rule.
const (
	DefaultLeaseDuration   = 2 * time.Second
	DefaultLeaseMargin     = time.Second
	DefaultRenewInterval   = 300 * time.Millisecond
	DefaultConfirmTimeout  = 3 * time.Second
	DefaultFenceGrace      = 500 * time.Millisecond
	DefaultFenceCheck      = 50 * time.Millisecond
	DefaultTick            = 100 * time.Millisecond
	DefaultMaxClockSkew    = 100 * time.Millisecond
	DefaultElectionTimeout = 500 * time.Millisecond
)

// DefaultTiming returns the defaults.
func DefaultTiming() Timing {
	return Timing{LeaseDuration: DefaultLeaseDuration, LeaseMargin: DefaultLeaseMargin,
		RenewInterval: DefaultRenewInterval, ConfirmTimeout: DefaultConfirmTimeout,
		FenceGrace: DefaultFenceGrace, FenceCheck: DefaultFenceCheck, Tick: DefaultTick,
		MaxClockSkew: DefaultMaxClockSkew, ElectionTimeout: DefaultElectionTimeout}
}

// WithDefaults returns t with every zero field set to its default.
func (t Timing) WithDefaults() Timing {
	d := DefaultTiming()
	def := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	def(&t.LeaseDuration, d.LeaseDuration)
	def(&t.LeaseMargin, d.LeaseMargin)
	def(&t.RenewInterval, d.RenewInterval)
	def(&t.ConfirmTimeout, d.ConfirmTimeout)
	def(&t.FenceGrace, d.FenceGrace)
	def(&t.FenceCheck, d.FenceCheck)
	def(&t.Tick, d.Tick)
	def(&t.MaxClockSkew, d.MaxClockSkew)
	def(&t.ElectionTimeout, d.ElectionTimeout)
	return t
}

// Keys maps each config key of t to its field (fence_check is not a key: the agent
// checks at that period).
func (t *Timing) Keys() map[string]*time.Duration {
	return map[string]*time.Duration{"lease_duration": &t.LeaseDuration, "lease_margin": &t.LeaseMargin,
		"renew_interval": &t.RenewInterval, "confirm_timeout": &t.ConfirmTimeout, "fence_grace": &t.FenceGrace,
		"tick": &t.Tick, "max_clock_skew": &t.MaxClockSkew, "raft_election_timeout": &t.ElectionTimeout}
}

// ErrBadTiming wraps every Timing validation error.
var ErrBadTiming = errors.New("timing")

// TimingError names the config key at fault and the rule it breaks.
type TimingError struct {
	Key  string
	Rule string
}

func (e *TimingError) Error() string { return fmt.Sprintf("%s: %s", e.Key, e.Rule) }

// Unwrap makes every TimingError an ErrBadTiming.
func (e *TimingError) Unwrap() error { return ErrBadTiming }

// Validate checks t after defaults are applied. The error names the config key to
// change and the rule that does not hold.
func (t Timing) Validate() error {
	t = t.WithDefaults()
	bad := func(key, format string, a ...any) error {
		return &TimingError{Key: key, Rule: fmt.Sprintf(format, a...)}
	}
	keys := t.Keys()
	keys["fence_check"] = &t.FenceCheck
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if v := *keys[k]; v < 0 {
			return bad(k, "%v is negative: leave it out for the default or give a positive duration", v)
		}
	}
	if t.LeaseMargin >= t.LeaseDuration {
		return bad("lease_margin", "%v must be shorter than lease_duration %v", t.LeaseMargin, t.LeaseDuration)
	}
	if need := t.FenceGrace + t.Tick + t.FenceCheck + t.MaxClockSkew; need > t.LeaseMargin {
		return bad("lease_margin", "%v is shorter than fence_grace %v + tick %v + fence check %v + max_clock_skew %v = %v: "+
			"a node whose lease lapsed must have stopped its guests before the master may restart them elsewhere; "+
			"raise lease_margin or lower fence_grace", t.LeaseMargin, t.FenceGrace, t.Tick, t.FenceCheck, t.MaxClockSkew, need)
	}
	if t.GuardWindow() < minGuardWindow {
		return bad("lease_margin", "%v leaves the fence guard (which acts when dvmd is gone) no window after max_clock_skew %v and its own %v: use at least %v",
			t.LeaseMargin, t.MaxClockSkew, guardAllowance, t.MaxClockSkew+guardAllowance+minGuardWindow)
	}
	if t.MaxClockSkew >= t.LeaseDuration/4 {
		return bad("max_clock_skew", "%v must be under a quarter of lease_duration %v: a master counts each lease for lease_duration - max_clock_skew", t.MaxClockSkew, t.LeaseDuration)
	}
	if 2*t.RenewInterval > t.LeaseDuration-t.LeaseMargin-t.MaxClockSkew {
		return bad("renew_interval", "%v leaves no room for a second renewal within lease_duration - lease_margin - max_clock_skew = %v: renew at least twice as often",
			t.RenewInterval, t.LeaseDuration-t.LeaseMargin-t.MaxClockSkew)
	}
	if t.Tick > t.RenewInterval {
		return bad("tick", "%v is longer than renew_interval %v: leases are renewed on ticks", t.Tick, t.RenewInterval)
	}
	if t.ConfirmTimeout <= 2*t.ElectionTimeout {
		return bad("confirm_timeout", "%v must be more than twice raft_election_timeout %v: "+
			"survivors must give raft the time to elect a backup before they re-form the group", t.ConfirmTimeout, t.ElectionTimeout)
	}
	return nil
}

// The fence guard (internal/fenceguard) stops a node's HA guests when dvmd is gone:
// it acts GuardWindow after the lease its dvmd last wrote, polling, then pausing or
// destroying (guardAllowance), within LeaseMargin less what the clocks may differ.
const (
	guardAllowance = 200 * time.Millisecond
	minGuardWindow = 100 * time.Millisecond
)

// GuardWindow is how long after its lease lapsed the fence guard lets the node's
// HA guests run: short of LeaseMargin by MaxClockSkew and the guard's own polling
// and stopping, so they are down before the master may restart them elsewhere.
func (t Timing) GuardWindow() time.Duration {
	return t.LeaseMargin - t.MaxClockSkew - guardAllowance
}

// leaseCount is how long a master counts a grant, from its request's SentAt: less
// than the granting node keeps it, by the most their clocks may differ.
func (t Timing) leaseCount() time.Duration { return t.LeaseDuration - t.MaxClockSkew }
