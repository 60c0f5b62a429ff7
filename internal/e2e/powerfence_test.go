package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/lab"
	"github.com/dvmproject/dvm/internal/lab/labtest"
)

// TestPowerFenceTakesAPausedNode: with a power fence agent (the lab's power switch,
// action reboot), a node paused whole — its guest still running on paper, its lease
// not yet lapsed — is powered off by the master, declared lost as soon as the switch
// confirms, and its restart guest runs on another node; no sample ever sees it on two
// nodes. The switch's reboot starts the node again, and it comes back to the group.
func TestPowerFenceTakesAPausedNode(t *testing.T) {
	labtest.Require(t)
	dvmd, vmctl := labtest.Build(t)
	settings, err := lab.ParseSettings(strings.Fields("lease_duration=1s lease_margin=350ms renew_interval=150ms fence_grace=150ms max_clock_skew=50ms " +
		"raft_election_timeout=300ms gossip_probe_interval=200ms gossip_probe_timeout=100ms gossip_suspicion_mult=2 power_fence_after=500ms power_fence_action=reboot"))
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, labtest.Start(t, lab.Options{Nodes: 3, DvmdPath: dvmd, PowerFence: true, Settings: settings}), vmctl)
	node := c.victim(t)
	c.gatherOn(t, node, "pf1")
	s := c.startSampler("pf1")
	c.run("lab", "pause", node, "--dir", c.lab.Dir())
	paused := time.Now()
	waitFor(t, "pf1 running on another node", 60*time.Second, func() bool { return c.allRunningElsewhere([]string{"pf1"}, node) })
	t.Logf("FIGURE node paused to its guest running elsewhere, with power fencing: %.2f s", time.Since(paused).Seconds())

	var fenced, lost *api.Event
	dec := json.NewDecoder(strings.NewReader(c.run("-o", "json", "events")))
	for dec.More() {
		var e api.Event
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("vmctl -o json events: %v", err)
		}
		if e.Node != node || e.Time.Before(paused) {
			continue
		}
		switch {
		case e.Kind == "power-fenced" && fenced == nil:
			fenced = &e
		case e.Kind == "node-lost" && lost == nil:
			lost = &e
		}
	}
	if fenced == nil || lost == nil {
		t.Fatalf("after the pause of %s: power-fenced event %v, node-lost event %v", node, fenced, lost)
	}
	if !strings.Contains(lost.Detail, "powered off by its power fence agent") {
		t.Fatalf("node-lost %q: declared by the lease rule, not on the switch's confirmation", lost.Detail)
	}
	t.Logf("pause to power-fenced %.2f s, to node-lost %.2f s", fenced.Time.Sub(paused).Seconds(), lost.Time.Sub(paused).Seconds())
	// The switch rebooted it (nobody else starts it): the node is back in the group
	// and takes guests again, and pf1 never ran twice meanwhile.
	c.waitNodeBack(t, node)
	s.finish(t)
}
