// Package failovertest drives a whole cluster of failover.Machines in one
// process. It delivers their messages over links that can be cut, with faults
// (delays, drops, duplicates, reordering) or one message at a time; kills,
// pauses, resumes and restarts nodes from their HardState; gives every node a
// clock of its own, up to Timing.MaxClockSkew apart; plays memberlist (direct and
// indirect probes), raft (a replica per management-capable node: epochs, terms,
// logs, elections, replication, commit, re-formation from one replica, rejoins),
// the master's writes (client writes acknowledged on AckCopies replicas, losses
// and readmissions recorded with the recovery of the lost node's guests) and the
// agents (which start a node's guests only as its fencing rule allows). After
// every step it checks the invariants: at most one acting master, no generation
// going back, no fenced node serving, no node declared lost while it serves, no
// guest started while it runs on another node, no acknowledged write missing from
// an acting master's log. The scenario traces and the randomized simulation of
// package failover both run on it.
package failovertest

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/dvmproject/dvm/failover"
)

// Record is one line of a cluster's story: an action, a role change, or a
// change of acting.
type Record struct {
	At   time.Duration // since the cluster started
	Node string
	Text string
}

func (r Record) String() string {
	return fmt.Sprintf("%5.1fs %s: %s", r.At.Seconds(), r.Node, r.Text)
}

// Faults are what the network and the clocks do to a cluster.
type Faults struct {
	// Drop and Duplicate are the chances that a message is lost, or delivered
	// twice.
	Drop, Duplicate float64
	// MaxDelay is the most steps a message may take beyond the next one; messages
	// of a step are delivered in random order when it is set.
	MaxDelay int
	// Skew makes node clocks differ by up to Skew (each within ±Skew/2 of the
	// cluster's, drifting).
	Skew time.Duration
}

// Cluster is a simulated cluster. It is deterministic: the same calls (and the
// same Rand) give the same story.
type Cluster struct {
	// TickEvery is the step of simulated time; messages take one step.
	TickEvery time.Duration
	// ElectionTimeout is how long raft takes to elect a new leader among
	// connected voters once the leader is gone.
	ElectionTimeout time.Duration
	// Observe, if set, receives every Record.
	Observe func(Record)
	// Rand, if set, picks among eligible raft leaders and the leader an agent
	// asks, and drives Faults; otherwise the lowest name wins.
	Rand *rand.Rand
	// Faults are off unless set (they need Rand).
	Faults Faults
	// Writes makes the acting master write once a step, as clients do.
	Writes bool
	// PowerFenceDelay is how long the simulated power fence device takes to power a
	// node off after a master asks (PowerFence); PowerFenceFail is the share of
	// requests it fails (1: all; a share between needs Rand). A node it powers off is killed, its guests
	// with it, before the answer reaches the master.
	PowerFenceDelay time.Duration
	PowerFenceFail  float64
	powerFences     []powerFence

	cfg     failover.Config
	start   time.Time
	now     time.Time
	step    int
	names   []string
	capable map[string]bool
	err     error

	machines map[string]*failover.Machine
	hard     map[string]failover.HardState
	paused   map[string]bool
	// stopped: nodes whose dvmd stopped while the host and its guests run on, until
	// the fence guard stops the guests (Stop).
	stopped map[string]time.Time
	offset  map[string]time.Duration // clock offset of each node
	role    map[string]failover.Role
	acting  map[string]bool
	lastGen map[string]uint64
	health  map[string]failover.HealthReport
	probed  map[[2]string]failover.Probe

	net      // messages: links, faults, held messages
	raftSim  // replicas, leaders, writes
	guestSim // guests and agents
}

// New starts a cluster whose role table is view; every node runs a Machine
// with cfg (Self set per node) and reports health (a missing node reports no
// health). Every management-capable node has a raft replica of generation
// view.Generation holding the view's voters; guests restart guests are placed on
// the last nodes by name. The clock starts at a fixed instant.
func New(cfg failover.Config, view failover.ClusterView, health map[string]failover.HealthReport) (*Cluster, error) {
	return NewWithGuests(cfg, view, health, 0)
}

// NewWithGuests is New with that many guests of policy restart.
func NewWithGuests(cfg failover.Config, view failover.ClusterView, health map[string]failover.HealthReport, guests int) (*Cluster, error) {
	if err := view.Validate(); err != nil {
		return nil, err
	}
	c := &Cluster{
		TickEvery:       100 * time.Millisecond,
		ElectionTimeout: time.Second,
		cfg:             cfg,
		start:           time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		capable:         map[string]bool{},
		machines:        map[string]*failover.Machine{},
		hard:            map[string]failover.HardState{},
		paused:          map[string]bool{},
		stopped:         map[string]time.Time{},
		offset:          map[string]time.Duration{},
		role:            map[string]failover.Role{},
		acting:          map[string]bool{},
		lastGen:         map[string]uint64{},
		health:          map[string]failover.HealthReport{},
		probed:          map[[2]string]failover.Probe{},
	}
	c.now = c.start
	c.net.init()
	c.raftSim.init()
	c.guestSim.init()
	for n, h := range health {
		c.health[n] = h
	}
	for _, n := range view.Nodes {
		c.names = append(c.names, n.Name)
		c.capable[n.Name] = n.Capable
		mc := cfg
		mc.Self = n.Name
		m, err := failover.NewMachine(mc, view)
		if err != nil {
			return nil, fmt.Errorf("start node %q: %w", n.Name, err)
		}
		c.machines[n.Name] = m
		c.role[n.Name] = m.Role()
		c.lastGen[n.Name] = m.Generation()
	}
	sort.Strings(c.names)
	if err := c.placeGuests(guests); err != nil {
		return nil, err
	}
	c.startRaft(view)
	for _, n := range c.names {
		c.stepNode(n, failover.Tick{Now: c.clock(n)})
	}
	for _, n := range c.names {
		c.sendHealth(n)
	}
	return c, nil
}

// Nodes returns the registered node names, sorted.
func (c *Cluster) Nodes() []string { return slices.Clone(c.names) }

// Elapsed is the simulated time since the cluster started.
func (c *Cluster) Elapsed() time.Duration { return c.now.Sub(c.start) }

// Now returns the cluster's clock (a node's clock differs from it by its skew).
func (c *Cluster) Now() time.Time { return c.now }

// Machine returns the running Machine of node n, or nil if n is down.
func (c *Cluster) Machine(n string) *failover.Machine { return c.machines[n] }

// Alive reports whether node n is running (paused or not).
func (c *Cluster) Alive(n string) bool { return c.machines[n] != nil }

// Paused reports whether node n is paused.
func (c *Cluster) Paused(n string) bool { return c.paused[n] }

// up reports whether node n runs and is not paused: it takes part in anything.
func (c *Cluster) up(n string) bool { return c.machines[n] != nil && !c.paused[n] }

// RunsGuests reports whether node n may serve its HA guests (it is unfenced).
func (c *Cluster) RunsGuests(n string) bool { return c.serving[n] }

// clock is node n's own clock now.
func (c *Cluster) clock(n string) time.Time { return c.now.Add(c.offset[n]) }

func (c *Cluster) known(n string) error {
	if !slices.Contains(c.names, n) {
		return fmt.Errorf("unknown node %q: the cluster has %s", n, strings.Join(c.names, ","))
	}
	return nil
}

// Kill stops node n (its processes and guests die); its HardState and raft
// replica are kept for Revive, as on a disk.
func (c *Cluster) Kill(n string) error {
	if err := c.known(n); err != nil {
		return err
	}
	if m := c.machines[n]; m != nil {
		c.hard[n] = m.HardState()
		delete(c.machines, n)
		delete(c.paused, n)
		delete(c.queued, n)
		c.serving[n] = false
		c.acting[n] = false
		c.stopGuests(n)
		c.record(n, "killed")
		if r := c.replicas[n]; r != nil {
			// Raft keeps its term and log on disk; it starts again as a follower.
			r.leads, r.heard = false, time.Time{}
		}
	} else if _, ok := c.stopped[n]; ok {
		delete(c.stopped, n) // the host dies too: its guests with it
		c.stopGuests(n)
	}
	return nil
}

// Stop stops node n's dvmd, not its host (systemctl stop dvmd): its machine is gone
// as in Kill, but its guests run on until its fence guard stops them, the window of
// a real guard (lease_margin - max_clock_skew - 200ms) after the node's service time.
// Declaring it lost, or starting its guests elsewhere, before then is a violation.
func (c *Cluster) Stop(n string) error {
	m := c.machines[n]
	if m == nil || c.paused[n] {
		return c.Kill(n)
	}
	// A fenced node's agent has stopped its guests (the simulation stops them at the
	// fence); one that serves leaves them to the guard.
	until := c.now
	if !m.Fenced() {
		cfg := c.cfg.WithDefaults()
		until = m.ServiceUntil().Add(-c.offset[n]).Add(cfg.LeaseMargin - cfg.MaxClockSkew - 200*time.Millisecond)
	}
	c.hard[n] = m.HardState()
	delete(c.machines, n)
	delete(c.queued, n)
	c.serving[n] = false
	c.acting[n] = false
	c.stopped[n] = until
	c.record(n, "dvmd stopped; its guests run until "+until.Sub(c.start).String())
	if r := c.replicas[n]; r != nil {
		r.leads, r.heard = false, time.Time{}
	}
	return nil
}

// HandOver asks node n, if it runs, to hand its master's role over as before a
// planned stop (failover.HandOver).
func (c *Cluster) HandOver(n string) error {
	if err := c.known(n); err != nil {
		return err
	}
	if c.up(n) {
		c.stepNode(n, failover.HandOver{})
	}
	return nil
}

// Acting reports whether node n acts as master.
func (c *Cluster) Acting(n string) bool { return c.acting[n] }

// Revive restarts node n from its HardState.
func (c *Cluster) Revive(n string) error {
	if err := c.known(n); err != nil {
		return err
	}
	if c.machines[n] != nil {
		return c.Resume(n)
	}
	if _, ok := c.stopped[n]; ok {
		delete(c.stopped, n) // the guard has stopped them, or stops them now
		c.stopGuests(n)
	}
	mc := c.cfg
	mc.Self = n
	m, err := failover.RestartMachine(mc, c.hard[n])
	if err != nil {
		return fmt.Errorf("restart node %q: %w", n, err)
	}
	c.machines[n] = m
	for k := range c.probed {
		if k[0] == n {
			delete(c.probed, k)
		}
	}
	c.record(n, "restarted")
	c.role[n] = m.Role()
	c.stepNode(n, failover.Tick{Now: c.clock(n)})
	for _, o := range c.names {
		if h, ok := c.health[o]; ok {
			c.stepNode(n, failover.Health{Node: o, Report: h})
		}
	}
	return nil
}

// Pause stops every process of node n (SIGSTOP): its machine takes no event,
// messages to it wait, its raft replica takes no part and its guests are
// frozen, still holding their disks. Resume continues it with its stale state.
func (c *Cluster) Pause(n string) error {
	if err := c.known(n); err != nil {
		return err
	}
	if c.up(n) {
		c.paused[n] = true
		c.record(n, "paused")
	}
	return nil
}

// Resume continues a paused node: its machine first sees the time jump, then
// every message that waited for it, in the order they came.
func (c *Cluster) Resume(n string) error {
	if err := c.known(n); err != nil {
		return err
	}
	if !c.paused[n] || c.machines[n] == nil {
		return nil
	}
	delete(c.paused, n)
	c.record(n, "resumed")
	c.stepNode(n, failover.Tick{Now: c.clock(n)})
	// Gossip brings it what changed meanwhile.
	for _, o := range c.names {
		if h, ok := c.health[o]; ok && c.machines[n] != nil {
			c.stepNode(n, failover.Health{Node: o, Report: h})
		}
	}
	q := c.queued[n]
	delete(c.queued, n)
	for _, msg := range q {
		if c.machines[n] != nil {
			c.stepNode(n, msg)
		}
	}
	return nil
}

// Deregister tells every running node that an operator removed node n (only the
// acting master takes it).
func (c *Cluster) Deregister(n string) error {
	if err := c.known(n); err != nil {
		return err
	}
	for _, o := range c.names {
		if c.up(o) {
			c.stepNode(o, failover.Deregister{Node: n})
		}
	}
	return nil
}

// SetHealth changes node n's health report and gossips it to every running
// node.
func (c *Cluster) SetHealth(n string, h failover.HealthReport) error {
	if err := c.known(n); err != nil {
		return err
	}
	c.health[n] = h
	c.sendHealth(n)
	return nil
}

func (c *Cluster) sendHealth(n string) {
	h, ok := c.health[n]
	if !ok {
		return
	}
	for _, o := range c.names {
		if c.up(o) {
			c.stepNode(o, failover.Health{Node: n, Report: h})
		}
	}
}

func (c *Cluster) record(node, text string) {
	if c.Observe != nil {
		c.Observe(Record{At: c.Elapsed(), Node: node, Text: text})
	}
}

func (c *Cluster) fail(format string, a ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("at %v: %s", c.Elapsed(), fmt.Sprintf(format, a...))
	}
}

// Run advances the cluster by d in steps of TickEvery and returns the first
// invariant violation, if any.
func (c *Cluster) Run(d time.Duration) error {
	for end := c.now.Add(d); c.now.Before(end) && c.err == nil; {
		c.Step()
	}
	return c.err
}

// Err returns the first invariant violation seen so far.
func (c *Cluster) Err() error { return c.err }

// Step advances the cluster by one tick: deliver the messages due, deliver
// probe changes, let raft elect, replicate and commit, tick every machine and
// tell it what its replica says, let the master write and the agents start and
// stop guests, then check the invariants.
func (c *Cluster) Step() {
	c.now = c.now.Add(c.TickEvery)
	c.step++
	c.driftClocks()
	for n, until := range c.stopped {
		if !c.now.Before(until) && c.machines[n] == nil {
			c.stopGuests(n)
		}
	}
	c.powerDevice()
	c.deliver()
	c.probe()
	c.raftStep()
	for _, n := range c.names {
		if c.up(n) {
			c.stepNode(n, failover.Tick{Now: c.clock(n)})
		}
	}
	for _, n := range c.names {
		if c.up(n) && c.replicas[n] != nil {
			c.stepNode(n, c.replicaReport(n))
		}
	}
	c.write()
	c.agents()
	c.acknowledge()
	c.check()
}

func (c *Cluster) driftClocks() {
	if c.Faults.Skew <= 0 || c.Rand == nil {
		return
	}
	limit := c.Faults.Skew / 2
	d := c.TickEvery / 100
	for _, n := range c.names {
		o := c.offset[n] + time.Duration(c.Rand.Int64N(int64(2*d+1))) - d
		c.offset[n] = max(-limit, min(limit, o))
	}
}

func (c *Cluster) stepNode(n string, ev failover.Event) {
	m := c.machines[n]
	for _, a := range m.Step(ev) {
		switch a := a.(type) {
		case failover.Send:
			c.route(a.Msg)
			continue
		case failover.Fence:
			c.serving[n] = false
			c.fencedAt[n] = a.Since.Add(-c.offset[n])
		case failover.Unfence:
			c.serving[n] = true
			c.unfencedAt[n] = c.step
		case failover.DeclareLost:
			if c.up(a.Node) && c.serving[a.Node] {
				c.fail("%s declared %s lost while it still serves its HA guests: they would run twice", n, a.Node)
			}
			if until, ok := c.stopped[a.Node]; ok && c.now.Before(until) {
				c.fail("%s declared %s lost while its dvmd is stopped and its guests run until its fence guard acts (%v more)", n, a.Node, until.Sub(c.now))
			}
			c.recordLoss(n, a.Node)
		case failover.Readmit:
			c.recordReadmit(n, a.Node)
		case failover.ReForm:
			c.reform(n, a.Generation)
		case failover.Rejoin:
			c.rejoin(n, a.Generation)
		case failover.Join:
			c.join(n, a.Generation)
		case failover.TransferLeadership:
			c.transfer(n, a.To)
		case failover.SetMembership:
			c.setMembership(n, a)
		case failover.PowerFence:
			c.powerFences = append(c.powerFences, powerFence{node: a.Node, asker: n, asked: a.Asked, at: c.now.Add(c.PowerFenceDelay)})
		}
		c.record(n, a.String())
	}
	if m.ShutDown() {
		c.hard[n] = m.HardState()
		delete(c.machines, n)
		c.serving[n] = false
		c.acting[n] = false
		c.stopGuests(n)
	}
	if r := m.Role(); r != c.role[n] {
		c.record(n, fmt.Sprintf("role %s -> %s", c.role[n], r))
		c.role[n] = r
	}
	if a := m.Acting(); a != c.acting[n] {
		c.acting[n] = a
		if a {
			c.record(n, fmt.Sprintf("acting (generation %d)", m.Generation()))
		} else {
			c.record(n, "stops acting")
		}
	}
}

// powerFence is a power fence request the simulated device has yet to carry out.
type powerFence struct {
	node, asker string
	asked, at   time.Time
}

// powerDevice carries out the power fence requests that are due: it kills the node
// (its host: machine and guests) and answers the master that asked, if it still
// runs; or fails, with the share PowerFenceFail, leaving the node as it is.
func (c *Cluster) powerDevice() {
	var later []powerFence
	for _, f := range c.powerFences {
		if c.now.Before(f.at) {
			later = append(later, f)
			continue
		}
		ok := c.PowerFenceFail <= 0 || c.PowerFenceFail < 1 && c.Rand != nil && c.Rand.Float64() >= c.PowerFenceFail
		if ok {
			c.Kill(f.node)
			c.record(f.node, "powered off by the power fence device")
		}
		if c.up(f.asker) {
			ev := failover.PoweredOff{Node: f.node, Asked: f.asked, OK: ok}
			if !ok {
				ev.Why = "simulated device failure"
			}
			c.stepNode(f.asker, ev)
		}
	}
	c.powerFences = later
}

// probe plays memberlist: each running node learns when another node becomes
// directly reachable, reachable only through a third node, or unreachable. A
// paused node answers no probe and sends none.
func (c *Cluster) probe() {
	for _, o := range c.names {
		if !c.up(o) {
			continue
		}
		for _, t := range c.names {
			if t == o {
				continue
			}
			p := failover.Probe{Node: t}
			if c.up(t) {
				if c.Linked(o, t) {
					p.Reachable = true
				} else {
					for _, x := range c.names {
						if x != o && x != t && c.up(x) && c.Linked(o, x) && c.Linked(x, t) {
							p.Reachable, p.Via = true, x
							break
						}
					}
				}
			}
			k := [2]string{o, t}
			if old, ok := c.probed[k]; ok && old == p {
				continue
			}
			c.probed[k] = p
			c.stepNode(o, p)
			if c.machines[o] == nil {
				break
			}
		}
	}
}

// check verifies the invariants that must hold at every instant.
func (c *Cluster) check() {
	var actingMasters []string
	for _, n := range c.names {
		m := c.machines[n]
		if m == nil {
			if c.serving[n] {
				c.fail("%s is down but serves HA guests", n)
			}
			continue
		}
		if !m.Role().Valid() {
			c.fail("%s has no valid role: %q", n, m.Role())
		}
		if g := m.Generation(); g < c.lastGen[n] {
			c.fail("%s went back from generation %d to %d", n, c.lastGen[n], g)
		} else {
			c.lastGen[n] = g
		}
		if c.serving[n] && m.Fenced() {
			c.fail("%s is fenced but serves HA guests", n)
		}
		if m.Acting() && !c.paused[n] {
			actingMasters = append(actingMasters, n)
		}
	}
	if len(actingMasters) > 1 {
		c.fail("%d acting masters at once: %v", len(actingMasters), actingMasters)
	}
	for _, a := range actingMasters {
		// The master's count must be backed by the granting nodes' own
		// records (a restarted node's come from its HardState), each on its
		// own clock.
		k := 0
		var grants []string
		for _, n := range c.names {
			g := c.hard[n].Grant
			if m := c.machines[n]; m != nil {
				g = m.Grant()
			}
			if g.Holder == a && g.Until.After(c.clock(n)) {
				k++
			}
			grants = append(grants, fmt.Sprintf("%s->%s/g%d until +%v", n, g.Holder, g.Generation, g.Until.Sub(c.clock(n))))
		}
		if maj := len(c.names)/2 + 1; k < maj {
			c.fail("%s acts but only %d nodes hold a lease granted to it (majority %d); its leases %v; grants %v",
				a, k, maj, c.machines[a].LeaseAges(), grants)
		}
		c.checkAcked(a)
	}
}

// Converged checks the state a cluster must reach once every node runs, every
// link is up and the timers have run: one acting master; every node in its
// generation, in the role the master's table gives it; a master and two
// backups as the voters; no node lost; a node on hold only if not functional;
// raft led by the master in the view's generation, with the view's voters; every
// acknowledged write in its log; every guest running on the node the master's
// state places it on.
func (c *Cluster) Converged() error {
	var master *failover.Machine
	for _, n := range c.names {
		if m := c.machines[n]; m != nil && m.Acting() {
			master = m
		}
	}
	if master == nil {
		return fmt.Errorf("no acting master after %v; roles: %s", c.Elapsed(), c.Roles())
	}
	v := master.View()
	if err := v.Validate(); err != nil {
		return fmt.Errorf("master %s: %w", master.Self(), err)
	}
	for _, n := range v.Nodes {
		m := c.machines[n.Name]
		switch {
		case m == nil:
			return fmt.Errorf("%s is not running", n.Name)
		case c.paused[n.Name]:
			return fmt.Errorf("%s is paused", n.Name)
		case m.Generation() != v.Generation:
			return fmt.Errorf("%s is in generation %d, master %s in %d; roles: %s", n.Name, m.Generation(), master.Self(), v.Generation, c.Roles())
		case m.Role() != n.Role:
			return fmt.Errorf("%s is %s but master %s lists it as %s; roles: %s", n.Name, m.Role(), master.Self(), n.Role, c.Roles())
		case n.Role == failover.RoleLost:
			return fmt.Errorf("%s runs but is still lost; roles: %s", n.Name, c.Roles())
		case n.Role == failover.RoleOnHold && c.health[n.Name].Functional(failover.DefaultMinHealth):
			return fmt.Errorf("%s is functional but still on hold", n.Name)
		case m.Fenced():
			return fmt.Errorf("%s is still fenced; roles: %s", n.Name, c.Roles())
		}
	}
	for _, voter := range v.Voters {
		if r := v.Role(voter); r != failover.RoleMaster && r != failover.RoleBackup {
			return fmt.Errorf("voter %s is %s; roles: %s", voter, r, c.Roles())
		}
	}
	if err := c.raftConverged(master.Self(), v); err != nil {
		return err
	}
	return c.guestsConverged(master.Self())
}

// Roles is a one-line summary of every node's role, generation and state.
func (c *Cluster) Roles() string {
	var parts []string
	for _, n := range c.names {
		m := c.machines[n]
		if m == nil {
			parts = append(parts, n+"=down")
			continue
		}
		s := fmt.Sprintf("%s=%s/g%d", n, m.Role(), m.Generation())
		if m.Acting() {
			s += "/acting"
		}
		if m.Fenced() {
			s += "/fenced"
		}
		if c.paused[n] {
			s += "/paused"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// Table renders every node's role, generation, acting, fencing and lease
// holder, one line each.
func (c *Cluster) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-6s %-11s %-3s %-6s %-6s %s\n", "node", "role", "gen", "acting", "fenced", "lease")
	for _, n := range c.names {
		m := c.machines[n]
		if m == nil {
			fmt.Fprintf(&b, "%-6s %-11s\n", n, "(down)")
			continue
		}
		holder := "-"
		if g := m.Grant(); g.Until.After(c.clock(n)) {
			holder = fmt.Sprintf("%s/g%d", g.Holder, g.Generation)
		}
		role := string(m.Role())
		if c.paused[n] {
			role += "*"
		}
		fmt.Fprintf(&b, "%-6s %-11s %-3d %-6s %-6s %s\n", n, role, m.Generation(), yes(m.Acting()), yes(m.Fenced()), holder)
	}
	return strings.TrimRight(b.String(), "\n")
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
