package failover_test

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/failover"
	"github.com/dvmproject/dvm/failover/failovertest"
)

var (
	simSeed  = flag.Uint64("seed", 0, "run the simulation with this seed only (0: the fixed set)")
	simSteps = flag.Int("steps", 3000, "simulation steps (of 100ms) per seed")
	simSeeds = flag.Int("seeds", 24, "how many seeds of the fixed set to run")
)

// TestSimulation drives clusters through random kills, restarts, pauses,
// partitions, cut links, heals and health changes, with messages delayed,
// dropped, duplicated and reordered and node clocks apart by up to
// max_clock_skew, while clients write through the acting master and three
// restart guests run. It checks at every step that at most one master acts
// (backed by the granting nodes' own records), no generation goes back, no
// fenced or dead node serves HA guests, no node is declared lost while it
// serves, no guest is started while it runs on another node, and no acting
// master lacks an acknowledged write. At the end every link heals and every node
// restarts, and the cluster must converge: one acting master leading raft with
// the view's voters, every node in its generation and in exactly the role the
// master's table gives it, every guest running where the master placed it.
func TestSimulation(t *testing.T) {
	var seeds []uint64
	if *simSeed != 0 {
		seeds = []uint64{*simSeed}
	} else {
		for s := 1; s <= *simSeeds; s++ {
			seeds = append(seeds, uint64(s))
		}
	}
	stats := map[string]int{}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			if err := simulate(seed, *simSteps, stats); err != nil {
				t.Fatalf("%v\nreplay: go test ./failover -run 'TestSimulation$' -seed %d -steps %d -v", err, seed, *simSteps)
			}
		})
	}
	t.Logf("%d seeds x %d steps: %v", len(seeds), *simSteps, stats)
	if *simSeed != 0 || t.Failed() {
		return
	}
	// A simulation that never reaches a scenario proves nothing about it.
	for _, kind := range []string{"kill", "revive", "pause", "resume", "partition", "cut", "heal", "health", "isolate", "one-way",
		"declare-lost", "replace-voter", "raft-elected", "semi-master", "re-form", "rejoin", "merge",
		"hold", "demote", "readmit", "set-membership", "transfer-leadership", "give-up", "solitude-shutdown",
		"fence", "unfence", "starts", "stops", "hand-over", "stop", "power-fence", "powered"} {
		if stats[kind] == 0 {
			t.Errorf("the fixed seeds never reached %q: widen the fault mix", kind)
		}
	}
}

// simCluster builds a cluster of 5 to 9 nodes: a master, two backups, at
// least one candidate (re-forming needs two backups and a spare), the rest
// split between candidates and plain nodes.
func simCluster(rng *rand.Rand) (*failovertest.Cluster, error) {
	size := 5 + rng.IntN(5)
	view := failover.ClusterView{Generation: 1, Version: 1, Master: "n1", Voters: []string{"n1", "n2", "n3"}}
	health := map[string]failover.HealthReport{}
	for i := 1; i <= size; i++ {
		n := failover.NodeState{Name: fmt.Sprintf("n%d", i), Role: failover.RoleCandidate, Capable: true}
		switch {
		case i == 1:
			n.Role = failover.RoleMaster
		case i <= 3:
			n.Role = failover.RoleBackup
		case i > 4 && rng.IntN(3) == 0:
			n.Role, n.Capable = failover.RoleNode, false
		}
		view.Nodes = append(view.Nodes, n)
		health[n.Name] = randomHealth(rng, true)
	}
	cfg := failover.Config{GiveUpAfter: 20 * time.Second, SolitudeAfter: 20 * time.Second}
	powerFencing := rng.IntN(3) == 0
	if powerFencing {
		// Sooner than the lease (2 s): nodes are powered off while their lease holds.
		cfg.PowerFenceAfter = time.Duration(6+rng.IntN(15)) * 100 * time.Millisecond
	}
	c, err := failovertest.NewWithGuests(cfg, view, health, 3)
	if err != nil {
		return nil, err
	}
	c.Rand, c.Writes = rng, true
	if powerFencing {
		c.PowerFenceDelay = time.Duration(rng.IntN(10)) * 100 * time.Millisecond
		c.PowerFenceFail = 0.2
	}
	if rng.IntN(3) != 0 {
		c.Faults = failovertest.Faults{Drop: 0.02, Duplicate: 0.02, MaxDelay: 2, Skew: cfg.WithDefaults().MaxClockSkew}
	}
	return c, nil
}

func randomHealth(rng *rand.Rand, functional bool) failover.HealthReport {
	score := func() float64 {
		if functional {
			return 0.3 + 0.7*rng.Float64()
		}
		return rng.Float64()
	}
	return failover.HealthReport{Network: score(), CPU: score(), Disk: score(),
		Uptime:   time.Duration(rng.IntN(1000)) * time.Hour,
		Downtime: time.Duration(rng.IntN(100)) * time.Minute}
}

// simulate runs one seed; it returns the first violation with the story that
// led to it. If stats is not nil it counts the faults injected.
func simulate(seed uint64, steps int, stats map[string]int) error {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	c, err := simCluster(rng)
	if err != nil {
		return err
	}
	var story []string
	c.Observe = func(r failovertest.Record) {
		if stats != nil {
			kind, _, _ := strings.Cut(r.Text, " ")
			switch {
			case strings.HasPrefix(r.Text, "promote "+r.Node+" to master"):
				kind = "raft-elected"
			case strings.HasPrefix(r.Text, "notify semi-master"):
				kind = "semi-master"
			}
			stats[kind]++
		}
		story = append(story, r.String())
		if len(story) > 400 {
			story = story[len(story)-300:]
		}
	}
	nodes := c.Nodes()
	pick := func(alive bool) string {
		var from []string
		for _, n := range nodes {
			if c.Alive(n) == alive {
				from = append(from, n)
			}
		}
		if len(from) == 0 {
			return ""
		}
		return from[rng.IntN(len(from))]
	}
	note := func(kind string) {
		if stats != nil {
			k, _, _ := strings.Cut(kind, " ")
			stats[k]++
		}
		story = append(story, fmt.Sprintf("%5.1fs fault: %s", c.Elapsed().Seconds(), kind))
	}
	fail := func(err error) error {
		return fmt.Errorf("seed %d: %v\nroles: %s\nlast records:\n%s", seed, err, c.Roles(),
			strings.Join(story[max(0, len(story)-120):], "\n"))
	}
	for step := 0; step < steps; step++ {
		switch r := rng.IntN(1000); {
		case r < 8:
			if n := pick(true); n != "" {
				note("kill " + n)
				c.Kill(n)
			}
		case r < 12:
			// dvmd stopped (an upgrade, a crash of dvmd alone): the host and its
			// guests run on until its fence guard acts.
			if n := pick(true); n != "" && !c.Paused(n) {
				note("stop " + n)
				c.Stop(n)
			}
		case r < 18:
			if n := pick(false); n != "" {
				note("revive " + n)
				if err := c.Revive(n); err != nil {
					return fail(err)
				}
			}
		case r < 26:
			var a, b []string
			for _, n := range nodes {
				if rng.IntN(2) == 0 {
					a = append(a, n)
				} else {
					b = append(b, n)
				}
			}
			note(fmt.Sprintf("partition %v %v", a, b))
			c.Partition(a, b)
		case r < 34:
			a, b := nodes[rng.IntN(len(nodes))], nodes[rng.IntN(len(nodes))]
			if a != b {
				note("cut " + a + " " + b)
				c.Cut(a, b)
			}
		case r < 46:
			note("heal all")
			c.HealAll()
		case r < 50:
			n := nodes[rng.IntN(len(nodes))]
			note("health " + n)
			c.SetHealth(n, randomHealth(rng, rng.IntN(3) != 0))
		case r < 58:
			a, b := nodes[rng.IntN(len(nodes))], nodes[rng.IntN(len(nodes))]
			if a != b {
				note("one-way " + a + " " + b)
				c.CutOneWay(a, b)
			}
		case r < 62:
			n := nodes[rng.IntN(len(nodes))]
			note("isolate " + n)
			for _, o := range nodes {
				if o != n {
					c.Cut(n, o)
				}
			}
		case r < 70:
			if n := pick(true); n != "" && !c.Paused(n) {
				note("pause " + n)
				c.Pause(n)
			}
		case r < 82:
			for _, n := range nodes {
				if c.Paused(n) {
					note("resume " + n)
					c.Resume(n)
					break
				}
			}
		case r < 86:
			// A planned stop: the acting master hands its role over, and its dvmd
			// stops at once or a little later (or never: a stop that hung).
			for _, n := range nodes {
				if c.Acting(n) && c.Alive(n) && !c.Paused(n) {
					note("hand-over " + n)
					c.HandOver(n)
					if rng.IntN(2) == 0 {
						note("stop " + n)
						c.Stop(n)
					}
					break
				}
			}
		}
		c.Step()
		if err := c.Err(); err != nil {
			return fail(err)
		}
	}
	note("end: heal all, restart and resume all, all functional, messages on time")
	c.HealAll()
	c.Faults = failovertest.Faults{Skew: c.Faults.Skew}
	for _, n := range nodes {
		if err := c.Revive(n); err != nil {
			return fail(err)
		}
		c.SetHealth(n, randomHealth(rng, true))
	}
	if err := c.Run(60 * time.Second); err != nil {
		return fail(err)
	}
	if err := c.Converged(); err != nil {
		return fail(err)
	}
	return nil
}
