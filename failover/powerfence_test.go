package failover_test

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/failover"
	"github.com/dvmproject/dvm/failover/failovertest"
)

// TestPowerFence: with power fencing, a node that dies is powered off through the
// agent once PowerFenceAfter has passed since its last grant, and declared lost as
// soon as the agent confirms, before the lease rule's wait; when the agent fails,
// the lease rule alone declares it, no sooner than LeaseDuration + LeaseMargin.
func TestPowerFence(t *testing.T) {
	timing := failover.DefaultTiming()
	leaseRule := timing.LeaseDuration + timing.LeaseMargin
	for _, tc := range []struct {
		name      string
		after     time.Duration
		fail      float64
		early     bool   // declared lost before the lease rule's wait
		wantNote  string // a notify kind that must be seen
		wantFence bool   // a power-fence asked
	}{
		{"confirmed", 600 * time.Millisecond, 0, true, "power-fenced", true},
		{"agent fails", 600 * time.Millisecond, 1, false, "power-fence-failed", true},
		{"off", 0, 0, false, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := failovertest.New(failover.Config{PowerFenceAfter: tc.after}, testView(), nil)
			if err != nil {
				t.Fatal(err)
			}
			c.Rand = rand.New(rand.NewPCG(1, 2))
			c.PowerFenceDelay, c.PowerFenceFail = 200*time.Millisecond, tc.fail
			var declared, fenced time.Duration
			notes := map[string]bool{}
			var killedAt time.Duration
			c.Observe = func(r failovertest.Record) {
				switch {
				case strings.HasPrefix(r.Text, "declare-lost n5") && declared == 0:
					declared = r.At
					if tc.early != strings.Contains(r.Text, "powered off") {
						t.Errorf("declared lost as %q", r.Text)
					}
				case r.Text == "power-fence n5" && fenced == 0:
					fenced = r.At
				case strings.HasPrefix(r.Text, "notify "):
					kind, _, _ := strings.Cut(strings.TrimPrefix(r.Text, "notify "), " ")
					notes[kind] = true
				}
			}
			if err := c.Run(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			killedAt = c.Elapsed()
			if err := c.Kill("n5"); err != nil {
				t.Fatal(err)
			}
			if err := c.Run(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			if declared == 0 {
				t.Fatal("n5 was never declared lost")
			}
			took := declared - killedAt
			t.Logf("n5 killed: declared lost %v after", took)
			if (fenced != 0) != tc.wantFence {
				t.Fatalf("power fence asked: %v, want %v", fenced != 0, tc.wantFence)
			}
			if fenced != 0 && fenced-killedAt < tc.after-timing.RenewInterval {
				t.Errorf("power fence asked %v after the kill, before PowerFenceAfter (%v) since the last grant", fenced-killedAt, tc.after)
			}
			if tc.early && took >= leaseRule-timing.RenewInterval {
				t.Errorf("declared lost %v after the kill with the agent's confirmation: no sooner than the lease rule (%v)", took, leaseRule)
			}
			if !tc.early && took < leaseRule-timing.RenewInterval {
				t.Errorf("declared lost %v after the kill without a confirmation: sooner than the lease rule (%v)", took, leaseRule)
			}
			if tc.wantNote != "" && !notes[tc.wantNote] {
				t.Errorf("no %q event (notes: %v)", tc.wantNote, notes)
			}
		})
	}
	if err := (failover.Config{Self: "n1", PowerFenceAfter: 100 * time.Millisecond}).Validate(); err == nil || !strings.Contains(err.Error(), "renew intervals") {
		t.Errorf("PowerFenceAfter below two renew intervals: %v", err)
	}
}

// TestPowerFenceAnswerAfterReturn: a confirmation that comes after the node was heard
// from again (a reboot that brought it back first) says nothing of now: the node is
// not declared lost on it, and a later silence waits for the lease rule (or a new
// confirmation).
func TestPowerFenceAnswerAfterReturn(t *testing.T) {
	c, err := failovertest.New(failover.Config{PowerFenceAfter: 600 * time.Millisecond}, testView(), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.PowerFenceDelay = time.Hour // the device never answers by itself here
	var asked time.Time
	var notes, lost []string
	c.Observe = func(r failovertest.Record) {
		switch {
		case r.Text == "power-fence n5" && asked.IsZero():
			asked = c.Now()
		case strings.HasPrefix(r.Text, "notify power-fence"):
			notes = append(notes, r.Text)
		case strings.HasPrefix(r.Text, "declare-lost n5"):
			lost = append(lost, r.Text)
		}
	}
	if err := c.Run(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill("n5"); err != nil {
		t.Fatal(err)
	}
	for asked.IsZero() && c.Elapsed() < time.Minute {
		c.Step()
	}
	if asked.IsZero() {
		t.Fatal("no power fence asked for the silent n5")
	}
	if err := c.Revive("n5"); err != nil {
		t.Fatal(err)
	}
	if err := c.Run(time.Second); err != nil {
		t.Fatal(err)
	}
	m := c.Machine("n1")
	m.Step(failover.PoweredOff{Node: "n5", Asked: asked, OK: true})
	if len(notes) != 0 || len(lost) != 0 {
		t.Fatalf("a confirmation asked before n5 came back counted: notes %v, declared %v", notes, lost)
	}
	if err := c.Kill("n5"); err != nil {
		t.Fatal(err)
	}
	if err := c.Run(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if len(lost) != 1 || strings.Contains(lost[0], "powered off") {
		t.Fatalf("n5 silent again with no new confirmation: declared %v, want once by the lease rule", lost)
	}
}
