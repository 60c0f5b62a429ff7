package failover_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/failover"
)

// TestTimingValidate: every rule the fencing safety rests on refuses a
// combination that breaks it, naming the config key to change.
func TestTimingValidate(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name string
		t    failover.Timing
		key  string // "" for valid
	}{
		{"defaults", failover.Timing{}, ""},
		{"negative", failover.Timing{FenceGrace: -ms}, "fence_grace"},
		{"margin not under lease", failover.Timing{LeaseDuration: time.Second, LeaseMargin: time.Second}, "lease_margin"},
		{"fence slower than the margin", failover.Timing{LeaseMargin: 700 * ms, FenceGrace: 500 * ms}, "lease_margin"},
		{"skew eats the margin", failover.Timing{MaxClockSkew: 400 * ms}, "lease_margin"},
		{"skew too large for the lease", failover.Timing{LeaseDuration: 2 * time.Second, LeaseMargin: 1500 * ms, MaxClockSkew: 600 * ms, FenceGrace: 100 * ms, RenewInterval: 100 * ms}, "max_clock_skew"},
		{"one renewal only", failover.Timing{RenewInterval: 500 * ms}, "renew_interval"},
		{"tick slower than renewals", failover.Timing{Tick: 400 * ms, LeaseDuration: 4 * time.Second, LeaseMargin: 1500 * ms, FenceGrace: 100 * ms}, "tick"},
		{"confirm within an election", failover.Timing{ConfirmTimeout: time.Second}, "confirm_timeout"},
		{"tight but valid", failover.Timing{LeaseDuration: 2 * time.Second, LeaseMargin: 800 * ms, RenewInterval: 300 * ms,
			FenceGrace: 500 * ms, Tick: 100 * ms, FenceCheck: 50 * ms, MaxClockSkew: 100 * ms}, ""},
		{"no window for the fence guard", failover.Timing{LeaseDuration: time.Second, LeaseMargin: 300 * ms, RenewInterval: 150 * ms,
			FenceGrace: 50 * ms, MaxClockSkew: 50 * ms}, "lease_margin"},
		// The fast profile of docs/operator-guide.md and scripts/bench-recovery.
		{"fast profile", failover.Timing{LeaseDuration: 1200 * ms, LeaseMargin: 350 * ms, RenewInterval: 200 * ms,
			FenceGrace: 150 * ms, MaxClockSkew: 50 * ms, ElectionTimeout: 300 * ms}, ""},
	} {
		err := tc.t.Validate()
		var te *failover.TimingError
		switch {
		case tc.key == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.key != "" && (err == nil || !errors.As(err, &te) || te.Key != tc.key || !errors.Is(err, failover.ErrBadTiming)):
			t.Errorf("%s: got %v, want a TimingError for %s", tc.name, err, tc.key)
		case tc.key != "" && !strings.HasPrefix(err.Error(), tc.key+": "):
			t.Errorf("%s: %q does not start with the key", tc.name, err)
		}
	}
}
