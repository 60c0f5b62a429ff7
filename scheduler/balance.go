package scheduler

import (
	"errors"
	"fmt"
	"time"
)

// Balance is the automatic balancer's policy, as vSphere DRS and ProxLB keep one: the
// master acts when the spread of load (Imbalance.Spread) is above Threshold, then moves
// one guest at a time, each by the Rebalance plan, until the spread is at most Target.
// Between Target and Threshold it starts nothing: that band, and Cooldown, are the
// hysteresis that keeps it from moving guests back and forth. Off when Threshold is 0.
type Balance struct {
	Threshold float64       // spread above which the balancer acts (0 to 1); 0: off
	Target    float64       // spread at which it stops, below Threshold
	Interval  time.Duration // how often it looks
	Cooldown  time.Duration // a guest that moved less than this ago stays where it is
}

// DefaultBalance is the balancer off, with the other values a config leaves out.
func DefaultBalance() Balance {
	return Balance{Target: 0.10, Interval: time.Minute, Cooldown: time.Hour}
}

// On says whether the balancer acts at all.
func (b Balance) On() bool { return b.Threshold > 0 }

// ErrBadBalance: a balancer setting breaks one of Validate's rules.
var ErrBadBalance = errors.New("bad balancer setting")

// BalanceError names the config key to change and the rule that does not hold.
type BalanceError struct {
	Key  string
	Rule string
}

func (e *BalanceError) Error() string { return fmt.Sprintf("%s: %s", e.Key, e.Rule) }

// Unwrap makes every BalanceError an ErrBadBalance.
func (e *BalanceError) Unwrap() error { return ErrBadBalance }

// minThreshold is the least spread worth acting on: Rebalance moves nothing between
// nodes closer than rebalanceGap, so a lower threshold would only wake the balancer.
const minThreshold = rebalanceGap

// Validate checks the policy; the error names the config key (balance_threshold,
// balance_target, balance_interval, balance_cooldown) and the rule.
func (b Balance) Validate() error {
	bad := func(key, format string, a ...any) error {
		return &BalanceError{Key: key, Rule: fmt.Sprintf(format, a...)}
	}
	switch {
	case b.Threshold < 0 || b.Threshold > 1 || (b.Threshold > 0 && b.Threshold < minThreshold):
		return bad("balance_threshold", "%s must be 0 (off) or from %s to 100%%: below that no move evens nodes out", percent(b.Threshold), percent(minThreshold))
	case !b.On():
		return nil
	case b.Target < 0 || b.Target >= b.Threshold:
		return bad("balance_target", "%s must be at least 0%% and below balance_threshold (%s): the band between them keeps the balancer from moving guests back and forth", percent(b.Target), percent(b.Threshold))
	case b.Interval < time.Second || b.Interval > 24*time.Hour:
		return bad("balance_interval", "%v must be from 1s to 24h", b.Interval)
	case b.Cooldown < b.Interval:
		return bad("balance_cooldown", "%v must be at least balance_interval (%v), so that no guest moves in two rounds running", b.Cooldown, b.Interval)
	}
	return nil
}

// percent formats a share as the config writes it.
func percent(f float64) string { return fmt.Sprintf("%g%%", float64(int64(f*1000+0.5))/10) }
