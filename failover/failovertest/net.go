package failovertest

import (
	"fmt"
	"strings"

	"github.com/dvmproject/dvm/failover"
)

// net is the simulated network: links that can be cut (each way), messages in
// flight with their delivery step, messages held for a trace to deliver or drop
// one at a time, and messages waiting for a paused node.
type net struct {
	cut      map[[2]string]bool // directed: {from, to}
	inflight []flight
	hold     bool
	held     []failover.Message
	queued   map[string][]failover.Message
}

type flight struct {
	msg failover.Message
	at  int // the step that delivers it
}

func (n *net) init() {
	n.cut = map[[2]string]bool{}
	n.queued = map[string][]failover.Message{}
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

// route sends msg: held for the trace, or in flight with the faults applied.
func (c *Cluster) route(msg failover.Message) {
	if c.hold {
		c.held = append(c.held, msg)
		return
	}
	f := c.Faults
	r := c.Rand
	if r == nil {
		c.inflight = append(c.inflight, flight{msg, c.step + 1})
		return
	}
	if f.Drop > 0 && r.Float64() < f.Drop {
		return
	}
	copies := 1
	if f.Duplicate > 0 && r.Float64() < f.Duplicate {
		copies = 2
	}
	for range copies {
		delay := 0
		if f.MaxDelay > 0 {
			delay = r.IntN(f.MaxDelay + 1)
		}
		c.inflight = append(c.inflight, flight{msg, c.step + 1 + delay})
	}
}

// deliver hands every message due this step to its node, in random order when
// faults reorder; a paused node's wait for it to resume.
func (c *Cluster) deliver() {
	var due []failover.Message
	keep := c.inflight[:0]
	for _, f := range c.inflight {
		if f.at <= c.step {
			due = append(due, f.msg)
		} else {
			keep = append(keep, f)
		}
	}
	c.inflight = keep
	if c.Rand != nil && c.Faults.MaxDelay > 0 {
		c.Rand.Shuffle(len(due), func(i, j int) { due[i], due[j] = due[j], due[i] })
	}
	for _, msg := range due {
		c.deliverOne(msg)
	}
}

func (c *Cluster) deliverOne(msg failover.Message) {
	switch {
	case c.machines[msg.To] == nil || !c.carries(msg.From, msg.To):
	case c.paused[msg.To]:
		c.queued[msg.To] = append(c.queued[msg.To], msg)
	default:
		c.stepNode(msg.To, msg)
	}
}

// Hold makes messages wait until Deliver or Drop names them (on), or go on their
// way each step again (off: those held go out with the next step).
func (c *Cluster) Hold(on bool) {
	c.hold = on
	if !on {
		for _, m := range c.held {
			c.inflight = append(c.inflight, flight{m, c.step + 1})
		}
		c.held = nil
	}
}

// Held lists the messages waiting, oldest first.
func (c *Cluster) Held() []failover.Message { return append([]failover.Message(nil), c.held...) }

// MsgFilter picks held messages: an empty field matches any.
type MsgFilter struct {
	From, To string
	Type     failover.MsgType
}

func (f MsgFilter) match(m failover.Message) bool {
	return (f.From == "" || f.From == m.From) && (f.To == "" || f.To == m.To) && (f.Type == "" || f.Type == m.Type)
}

func (f MsgFilter) String() string {
	var p []string
	for _, s := range []string{f.From, f.To, string(f.Type)} {
		if s == "" {
			s = "*"
		}
		p = append(p, s)
	}
	return strings.Join(p, " ")
}

// Deliver hands the held messages f matches to their nodes now, oldest first
// (over cut links they are lost), and returns how many. Messages those nodes send
// in turn are held too.
func (c *Cluster) Deliver(f MsgFilter) int {
	return c.takeHeld(f, true)
}

// Drop throws away the held messages f matches and returns how many.
func (c *Cluster) Drop(f MsgFilter) int {
	return c.takeHeld(f, false)
}

func (c *Cluster) takeHeld(f MsgFilter, deliver bool) int {
	var take []failover.Message
	keep := c.held[:0]
	for _, m := range c.held {
		if f.match(m) {
			take = append(take, m)
		} else {
			keep = append(keep, m)
		}
	}
	c.held = keep
	if deliver {
		for _, m := range take {
			c.deliverOne(m)
		}
		c.check()
	}
	return len(take)
}
