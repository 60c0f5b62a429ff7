// Package failovertest drives a whole cluster of failover.Machines in one
// process: it delivers their messages over links that can be cut, kills and
// restarts nodes from their HardState, plays memberlist (direct and indirect
// probes) and raft (leader election among a generation's voters), and checks
// the safety invariants after every step. The scenario traces and the
// randomized simulation of package failover both run on it.
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

// Cluster is a simulated cluster. It is deterministic: the same calls give the
// same story.
type Cluster struct {
	// TickEvery is the step of simulated time; messages take one step.
	TickEvery time.Duration
	// ElectionTimeout is how long raft takes to elect a new leader among
	// connected voters once the leader is gone.
	ElectionTimeout time.Duration
	// Observe, if set, receives every Record.
	Observe func(Record)
	// Rand, if set, picks among eligible raft leaders; otherwise the lowest
	// name wins.
	Rand *rand.Rand

	cfg      failover.Config
	start    time.Time
	now      time.Time
	names    []string
	machines map[string]*failover.Machine
	hard     map[string]failover.HardState
	cut      map[[2]string]bool // directed: {from, to}
	health   map[string]failover.HealthReport
	guests   map[string]bool // a node runs its HA guests
	inflight []failover.Message
	probed   map[[2]string]failover.Probe
	lastGen  map[string]uint64
	role     map[string]failover.Role
	acting   map[string]bool
	leader   map[uint64]string
	term     map[uint64]uint64
	down     map[uint64]time.Time
	err      error
}

// New starts a cluster whose role table is view; every node runs a Machine
// with cfg (Self set per node) and reports health (a missing node reports no
// health). The clock starts at a fixed instant.
func New(cfg failover.Config, view failover.ClusterView, health map[string]failover.HealthReport) (*Cluster, error) {
	if err := view.Validate(); err != nil {
		return nil, err
	}
	c := &Cluster{
		TickEvery:       100 * time.Millisecond,
		ElectionTimeout: time.Second,
		cfg:             cfg,
		start:           time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		machines:        map[string]*failover.Machine{},
		hard:            map[string]failover.HardState{},
		cut:             map[[2]string]bool{},
		health:          map[string]failover.HealthReport{},
		guests:          map[string]bool{},
		probed:          map[[2]string]failover.Probe{},
		lastGen:         map[string]uint64{},
		role:            map[string]failover.Role{},
		acting:          map[string]bool{},
		leader:          map[uint64]string{view.Generation: view.Master},
		term:            map[uint64]uint64{},
		down:            map[uint64]time.Time{},
	}
	c.now = c.start
	for n, h := range health {
		c.health[n] = h
	}
	for _, n := range view.Nodes {
		c.names = append(c.names, n.Name)
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
	for _, n := range c.names {
		c.stepNode(n, failover.Tick{Now: c.now})
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

// Machine returns the running Machine of node n, or nil if n is down.
func (c *Cluster) Machine(n string) *failover.Machine { return c.machines[n] }

// Alive reports whether node n is running.
func (c *Cluster) Alive(n string) bool { return c.machines[n] != nil }

// RunsGuests reports whether node n runs its HA guests.
func (c *Cluster) RunsGuests(n string) bool { return c.guests[n] }

func (c *Cluster) known(n string) error {
	if !slices.Contains(c.names, n) {
		return fmt.Errorf("unknown node %q: the cluster has %s", n, strings.Join(c.names, ","))
	}
	return nil
}

// Kill stops node n; its HardState is kept for Revive.
func (c *Cluster) Kill(n string) error {
	if err := c.known(n); err != nil {
		return err
	}
	if m := c.machines[n]; m != nil {
		c.hard[n] = m.HardState()
		delete(c.machines, n)
		c.guests[n] = false
		c.acting[n] = false
		c.record(n, "killed")
	}
	return nil
}

// Revive restarts node n from its HardState.
func (c *Cluster) Revive(n string) error {
	if err := c.known(n); err != nil {
		return err
	}
	if c.machines[n] != nil {
		return nil
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
	c.stepNode(n, failover.Tick{Now: c.now})
	for _, o := range c.names {
		if h, ok := c.health[o]; ok {
			c.stepNode(n, failover.Health{Node: o, Report: h})
		}
	}
	return nil
}

// Cut breaks the link between a and b, both ways.
func (c *Cluster) Cut(a, b string) error {
	if err := c.CutOneWay(a, b); err != nil {
		return err
	}
	return c.CutOneWay(b, a)
}

// CutOneWay drops what from sends to to; the other way still works. Probes
// (which need an answer) and raft then see the pair as cut.
func (c *Cluster) CutOneWay(from, to string) error {
	if err := c.known(from); err != nil {
		return err
	}
	if err := c.known(to); err != nil {
		return err
	}
	c.cut[[2]string{from, to}] = true
	return nil
}

// Heal restores the link between a and b, both ways.
func (c *Cluster) Heal(a, b string) error {
	if err := c.known(a); err != nil {
		return err
	}
	if err := c.known(b); err != nil {
		return err
	}
	delete(c.cut, [2]string{a, b})
	delete(c.cut, [2]string{b, a})
	return nil
}

// HealAll restores every link.
func (c *Cluster) HealAll() { c.cut = map[[2]string]bool{} }

// Partition cuts every link between nodes of different groups. Every node
// must be in exactly one group.
func (c *Cluster) Partition(groups ...[]string) error {
	group := map[string]int{}
	for i, g := range groups {
		for _, n := range g {
			if err := c.known(n); err != nil {
				return err
			}
			if _, dup := group[n]; dup {
				return fmt.Errorf("node %q is in two groups: list each node once", n)
			}
			group[n] = i
		}
	}
	for _, n := range c.names {
		if _, ok := group[n]; !ok {
			return fmt.Errorf("node %q is in no group: list every node", n)
		}
	}
	for _, a := range c.names {
		for _, b := range c.names {
			if group[a] != group[b] {
				c.cut[[2]string{a, b}] = true
			}
		}
	}
	return nil
}

// Linked reports whether a and b can talk both ways.
func (c *Cluster) Linked(a, b string) bool {
	return a == b || !c.cut[[2]string{a, b}] && !c.cut[[2]string{b, a}]
}

func (c *Cluster) carries(from, to string) bool { return !c.cut[[2]string{from, to}] }

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
		if c.machines[o] != nil {
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

// Step advances the cluster by one tick: deliver the messages sent during the
// last step, deliver probe changes, run raft elections, tick every machine,
// then check the invariants.
func (c *Cluster) Step() {
	c.now = c.now.Add(c.TickEvery)
	msgs := c.inflight
	c.inflight = nil
	for _, msg := range msgs {
		if c.machines[msg.To] != nil && c.carries(msg.From, msg.To) {
			c.stepNode(msg.To, msg)
		}
	}
	c.probe()
	c.elect()
	for _, n := range c.names {
		if c.machines[n] != nil {
			c.stepNode(n, failover.Tick{Now: c.now})
		}
	}
	c.check()
}

func (c *Cluster) stepNode(n string, ev failover.Event) {
	m := c.machines[n]
	for _, a := range m.Step(ev) {
		switch a := a.(type) {
		case failover.Send:
			c.inflight = append(c.inflight, a.Msg)
			continue
		case failover.Fence:
			c.guests[n] = false
		case failover.Unfence:
			c.guests[n] = true
		case failover.DeclareLost:
			if c.guests[a.Node] {
				c.fail("%s declared %s lost while it still runs its HA guests: they would run twice", n, a.Node)
			}
		case failover.ReForm:
			c.leader[a.Generation] = n
			c.term[a.Generation] = max(c.term[a.Generation], 1)
			delete(c.down, a.Generation)
		}
		c.record(n, a.String())
	}
	if m.ShutDown() {
		c.hard[n] = m.HardState()
		delete(c.machines, n)
		c.guests[n] = false
		c.acting[n] = false
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

// probe plays memberlist: each running node learns when another node becomes
// directly reachable, reachable only through a third node, or unreachable.
func (c *Cluster) probe() {
	for _, o := range c.names {
		if c.machines[o] == nil {
			continue
		}
		for _, t := range c.names {
			if t == o {
				continue
			}
			p := failover.Probe{Node: t}
			if c.machines[t] != nil {
				if c.Linked(o, t) {
					p.Reachable = true
				} else {
					for _, x := range c.names {
						if x != o && x != t && c.machines[x] != nil && c.Linked(o, x) && c.Linked(x, t) {
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

// elect plays raft: for each generation, when its leader is down, no longer
// master, or cut off from every other voter of that generation, two connected
// voters still in the generation elect one of them after ElectionTimeout.
func (c *Cluster) elect() {
	gens := make([]uint64, 0, len(c.leader))
	for g := range c.leader {
		gens = append(gens, g)
	}
	slices.Sort(gens)
	for _, g := range gens {
		voters := c.votersOf(g)
		if l := c.leader[g]; c.leads(l, g, voters) {
			delete(c.down, g)
			continue
		}
		if _, ok := c.down[g]; !ok {
			c.down[g] = c.now
		}
		if c.now.Sub(c.down[g]) < c.ElectionTimeout {
			continue
		}
		var eligible []string
		for _, a := range voters {
			if c.machines[a].Role() != failover.RoleBackup {
				continue
			}
			for _, b := range voters {
				if a != b && c.Linked(a, b) {
					eligible = append(eligible, a)
					break
				}
			}
		}
		if len(eligible) == 0 {
			continue
		}
		pick := eligible[0]
		if c.Rand != nil {
			pick = eligible[c.Rand.IntN(len(eligible))]
		}
		c.leader[g] = pick
		c.term[g]++
		delete(c.down, g)
		for _, v := range voters {
			if c.Linked(pick, v) && c.machines[v] != nil {
				c.stepNode(v, failover.LeaderObserved{Leader: pick, Generation: g, Term: c.term[g]})
			}
		}
	}
}

// votersOf returns the running voters of generation g that are still in it,
// as the newest view of g among them lists them.
func (c *Cluster) votersOf(g uint64) []string {
	var best *failover.ClusterView
	for _, n := range c.names {
		m := c.machines[n]
		if m == nil || m.Generation() != g {
			continue
		}
		if v := m.View(); best == nil || v.Version > best.Version {
			best = &v
		}
	}
	if best == nil {
		return nil
	}
	var out []string
	for _, v := range best.Voters {
		if m := c.machines[v]; m != nil && m.Generation() == g &&
			(m.Role() == failover.RoleMaster || m.Role() == failover.RoleBackup) {
			out = append(out, v)
		}
	}
	return out
}

func (c *Cluster) leads(l string, g uint64, voters []string) bool {
	m := c.machines[l]
	if m == nil || m.Role() != failover.RoleMaster || m.Generation() != g {
		return false
	}
	for _, v := range voters {
		if v != l && c.Linked(l, v) {
			return true
		}
	}
	return false
}

// check verifies the invariants that must hold at every instant.
func (c *Cluster) check() {
	var actingMasters []string
	for _, n := range c.names {
		m := c.machines[n]
		if m == nil {
			if c.guests[n] {
				c.fail("%s is down but runs HA guests", n)
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
		if c.guests[n] && m.Fenced() {
			c.fail("%s is fenced but runs HA guests", n)
		}
		if m.Acting() {
			actingMasters = append(actingMasters, n)
		}
	}
	if len(actingMasters) > 1 {
		c.fail("%d acting masters at once: %v", len(actingMasters), actingMasters)
	}
	for _, a := range actingMasters {
		// The master's count must be backed by the granting nodes' own
		// records (a restarted node's come from its HardState).
		k := 0
		var grants []string
		for _, n := range c.names {
			g := c.hard[n].Grant
			if m := c.machines[n]; m != nil {
				g = m.Grant()
			}
			if g.Holder == a && g.Until.After(c.now) {
				k++
			}
			grants = append(grants, fmt.Sprintf("%s->%s/g%d until +%v", n, g.Holder, g.Generation, g.Until.Sub(c.now)))
		}
		if maj := len(c.names)/2 + 1; k < maj {
			c.fail("%s acts but only %d nodes hold a lease granted to it (majority %d); its leases %v; grants %v",
				a, k, maj, c.machines[a].LeaseAges(), grants)
		}
	}
}

// Converged checks the state a cluster must reach once every node runs, every
// link is up and the timers have run: one acting master; every node in its
// generation, in the role the master's table gives it; a master and two
// backups as the voters; no node lost; a node on hold only if not functional.
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
	return nil
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
		if g := m.Grant(); g.Until.After(c.now) {
			holder = fmt.Sprintf("%s/g%d", g.Holder, g.Generation)
		}
		fmt.Fprintf(&b, "%-6s %-11s %-3d %-6s %-6s %s\n", n, m.Role(), m.Generation(), yes(m.Acting()), yes(m.Fenced()), holder)
	}
	return strings.TrimRight(b.String(), "\n")
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
