package scheduler

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestBalanceValidate(t *testing.T) {
	on := func(f func(*Balance)) Balance {
		b := DefaultBalance()
		b.Threshold = 0.25
		f(&b)
		return b
	}
	if err := DefaultBalance().Validate(); err != nil || DefaultBalance().On() {
		t.Fatalf("default: %v, on %v; want valid and off", err, DefaultBalance().On())
	}
	if err := on(func(*Balance) {}).Validate(); err != nil {
		t.Fatalf("threshold 25%%: %v", err)
	}
	cases := map[string]struct {
		b    Balance
		want string
	}{
		"threshold too low":   {on(func(b *Balance) { b.Threshold = 0.04 }), "balance_threshold: 4% must be 0 (off) or from 5% to 100%"},
		"threshold over 100%": {on(func(b *Balance) { b.Threshold = 1.5 }), "balance_threshold: 150%"},
		"negative threshold":  {on(func(b *Balance) { b.Threshold = -0.2 }), "balance_threshold"},
		"target at threshold": {on(func(b *Balance) { b.Target = 0.25 }), "balance_target: 25% must be at least 0% and below balance_threshold (25%)"},
		"negative target":     {on(func(b *Balance) { b.Target = -0.1 }), "balance_target"},
		"interval too short":  {on(func(b *Balance) { b.Interval = time.Millisecond }), "balance_interval: 1ms must be from 1s to 24h"},
		"cooldown too short":  {on(func(b *Balance) { b.Cooldown = 30 * time.Second }), "balance_cooldown: 30s must be at least balance_interval (1m0s)"},
	}
	for name, tc := range cases {
		err := tc.b.Validate()
		if err == nil || !errors.Is(err, ErrBadBalance) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an ErrBadBalance containing %q", name, err, tc.want)
		}
	}
	// Off, the other keys are not judged: they do nothing.
	off := DefaultBalance()
	off.Target = 0.9
	if err := off.Validate(); err != nil {
		t.Errorf("off with target 90%%: %v", err)
	}
}
