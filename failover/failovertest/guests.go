package failovertest

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// guestsPerNode is how many guests the simulated scheduler puts on a node.
const guestsPerNode = 2

// guestSim plays the guests (all of policy restart) and the nodes' agents. An
// agent reads its node's assignment from a raft leader it reaches (any epoch: a
// stale group's leader answers too) and starts a guest placed on its node only
// as the real agent does: unfenced, from an assignment read since, not recorded
// lost there, written by the holder of its lease (as raft's leader). It
// destroys its guests FenceGrace after it is fenced, and a guest placed
// elsewhere at once (the master's eviction). A guest's QEMU holds its disk lock
// until it stops: a start while another node runs it would be the worst bug, so
// it fails the run, unless that node is paused (a frozen host keeps its lock,
// and the lock manager refuses the second start: counted in LockRefusals).
type guestSim struct {
	guests     []string
	initial    map[string]string
	running    map[string]string // guest -> node whose QEMU holds it
	serving    map[string]bool   // node unfenced
	fencedAt   map[string]time.Time
	unfencedAt map[string]int // step
	refusals   int
}

func (g *guestSim) init() {
	g.initial = map[string]string{}
	g.running = map[string]string{}
	g.serving = map[string]bool{}
	g.fencedAt = map[string]time.Time{}
	g.unfencedAt = map[string]int{}
}

// placeGuests names k guests g1..gk and places them on the last nodes by name.
func (c *Cluster) placeGuests(k int) error {
	if k > guestsPerNode*len(c.names) {
		return fmt.Errorf("%d guests do not fit %d nodes of %d guests", k, len(c.names), guestsPerNode)
	}
	for i := range k {
		g := fmt.Sprintf("g%d", i+1)
		c.guests = append(c.guests, g)
		c.initial[g] = c.names[len(c.names)-1-i%len(c.names)]
	}
	return nil
}

// LockRefusals counts guest starts the disk lock refused because a paused node
// still held the guest.
func (c *Cluster) LockRefusals() int { return c.refusals }

func load(st state) map[string]int {
	n := map[string]int{}
	for _, node := range st.place {
		if node != "" {
			n[node]++
		}
	}
	return n
}

// fits picks the first node by name that is up, not recorded lost, not except
// and has room.
func (c *Cluster) fits(st state, count map[string]int, except string) string {
	for _, n := range c.names {
		if n != except && c.up(n) && !st.lost[n] && count[n] < guestsPerNode {
			return n
		}
	}
	return ""
}

// recover places the guests of the lost node elsewhere, or leaves them pending.
func (c *Cluster) recover(st state, node string) map[string]string {
	count := load(st)
	moves := map[string]string{}
	for _, g := range c.guests {
		if st.place[g] == node {
			to := c.fits(st, count, node)
			moves[g] = to
			count[node]--
			if to != "" {
				count[to]++
			}
		}
	}
	return moves
}

func (c *Cluster) placePending(st state) map[string]string {
	count := load(st)
	moves := map[string]string{}
	for _, g := range c.guests {
		if p, ok := st.place[g]; ok && p == "" {
			if to := c.fits(st, count, ""); to != "" {
				moves[g] = to
				count[to]++
			}
		}
	}
	return moves
}

func (c *Cluster) stopGuests(n string) {
	for _, g := range c.guests {
		if c.running[g] == n {
			delete(c.running, g)
			if c.up(n) {
				c.record(n, "stops "+g)
			}
		}
	}
}

type assignment struct {
	epoch  uint64
	master string
	st     state
}

// readAssignment is what node n reads: from a raft leader it reaches, the one of
// the newest epoch, or a random one under Rand.
func (c *Cluster) readAssignment(n string) (assignment, bool) {
	var from []string
	for _, l := range c.names {
		if _, ok := c.leads(l); ok && c.Linked(n, l) {
			from = append(from, l)
		}
	}
	slices.SortStableFunc(from, func(a, b string) int { return cmpTerm(c.replicas[a].epoch, c.replicas[b].epoch) })
	if len(from) == 0 {
		return assignment{}, false
	}
	l := from[len(from)-1]
	if c.Rand != nil {
		l = from[c.Rand.IntN(len(from))]
	}
	r := c.replicas[l]
	return assignment{epoch: r.epoch, master: l, st: r.st}, true
}

func (c *Cluster) agents() {
	if len(c.guests) == 0 {
		return
	}
	// Every agent stops what it must before any starts: the steps of one tick
	// happen at once, and a fence due is due before a start elsewhere.
	grace := c.cfg.WithDefaults().FenceGrace
	asgs := map[string]assignment{}
	for _, n := range c.names {
		if !c.up(n) {
			continue
		}
		if !c.serving[n] && !c.now.Before(c.fencedAt[n].Add(grace)) {
			c.stopGuests(n)
		}
		asg, ok := c.readAssignment(n)
		if !ok {
			continue
		}
		asgs[n] = asg
		for _, g := range c.guests {
			if c.running[g] == n && asg.st.place[g] != n {
				delete(c.running, g)
				c.record(n, "evicts "+g)
			}
		}
	}
	for _, n := range c.names {
		asg, ok := asgs[n]
		if !ok || !c.mayStart(n, asg) {
			continue
		}
		for _, g := range c.guests {
			if asg.st.place[g] != n || c.running[g] == n {
				continue
			}
			switch holder := c.running[g]; {
			case holder == "":
				c.running[g] = n
				c.record(n, "starts "+g)
			case c.paused[holder]:
				c.refusals++
			default:
				c.fail("%s would start %s while it runs on %s (read from %s, generation %d): the disk lock would have to refuse it",
					n, g, holder, asg.master, asg.epoch)
			}
		}
	}
}

// mayStart is the agent's rule for starting HA guests from asg.
func (c *Cluster) mayStart(n string, asg assignment) bool {
	m := c.machines[n]
	if !c.serving[n] || c.unfencedAt[n] > c.step || asg.st.lost[n] {
		return false
	}
	return m.Grant().Holder == asg.master
}

// Guests describes every guest: where the acting master's state places it and
// where it runs.
func (c *Cluster) Guests() string {
	var st state
	for _, n := range c.names {
		if m := c.machines[n]; m != nil && m.Acting() && c.replicas[n] != nil {
			st = c.replicas[n].st
		}
	}
	var parts []string
	for _, g := range c.guests {
		p, run := "?", c.running[g]
		if st.place != nil {
			p = st.place[g]
		}
		parts = append(parts, fmt.Sprintf("%s placed %s runs %s", g, or(p, "-"), or(run, "-")))
	}
	return strings.Join(parts, "; ")
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (c *Cluster) guestsConverged(master string) error {
	st := c.replicas[master].st
	for _, g := range c.guests {
		if p := st.place[g]; p == "" || c.running[g] != p {
			return fmt.Errorf("guest %s placed on %q runs on %q; %s", g, p, c.running[g], c.Guests())
		}
	}
	return nil
}
