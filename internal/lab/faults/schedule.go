package faults

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Kind is what a step of a schedule does to the lab.
type Kind string

// The faults and their undoing. A cut isolates a node from every peer (not from this
// host: the checker keeps asking its libvirtd); a link cut drops the traffic between
// two nodes only. Restart boots a killed node again (or reboots a live one), empty of
// guests, as the lab's restart does.
const (
	Kill    Kind = "kill"
	Pause   Kind = "pause"
	Resume  Kind = "resume"
	Cut     Kind = "cut"
	CutLink Kind = "cut-link"
	Heal    Kind = "heal"
	Restart Kind = "restart"
)

// Step is one action of a schedule and how long the schedule waits after it.
type Step struct {
	Kind Kind
	Node string // empty for a heal of every cut
	Peer string // the other end of a link cut
	Wait time.Duration
}

// Action is the step without its wait: "pause n3", "cut-link n1 n4", "heal".
func (s Step) Action() string {
	switch {
	case s.Peer != "":
		return fmt.Sprintf("%s %s %s", s.Kind, s.Node, s.Peer)
	case s.Node != "":
		return fmt.Sprintf("%s %s", s.Kind, s.Node)
	}
	return string(s.Kind)
}

func (s Step) String() string {
	if s.Wait == 0 {
		return s.Action()
	}
	return fmt.Sprintf("%s, wait %s", s.Action(), s.Wait)
}

// Schedule is a seeded fault schedule over a lab of Nodes nodes: Steps in order, then
// Finale, which undoes every fault left (resume, heal, restart) so that the cluster
// can recover. The same seed, node count and step count always give the same
// schedule.
type Schedule struct {
	Seed   uint64
	Nodes  int
	Steps  []Step
	Finale []Step
}

func (s Schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d, %d steps over %d nodes:\n", s.Seed, len(s.Steps), s.Nodes)
	for i, st := range s.Steps {
		fmt.Fprintf(&b, "  %2d. %s\n", i+1, st)
	}
	var fin []string
	for _, st := range s.Finale {
		fin = append(fin, st.Action())
	}
	if len(fin) == 0 {
		fin = append(fin, "nothing left to undo")
	}
	fmt.Fprintf(&b, "  finale: %s\n", strings.Join(fin, "; "))
	return b.String()
}

// model is the lab's fault state as a schedule leaves it: what Plan draws the next
// step from, so that every step makes sense where it comes (no resume of a node that
// is not paused, no kill of a killed one).
type model struct {
	nodes  []string
	killed map[string]bool
	paused map[string]bool
	links  map[[2]string]bool // cut links, the pair sorted
}

func newModel(n int) *model {
	m := &model{killed: map[string]bool{}, paused: map[string]bool{}, links: map[[2]string]bool{}}
	for k := 1; k <= n; k++ {
		m.nodes = append(m.nodes, fmt.Sprintf("n%d", k))
	}
	return m
}

func link(a, b string) [2]string {
	if b < a {
		a, b = b, a
	}
	return [2]string{a, b}
}

// isolated says whether every link of node is cut.
func (m *model) isolated(node string) bool {
	for _, o := range m.nodes {
		if o != node && !m.links[link(node, o)] {
			return false
		}
	}
	return true
}

// down says whether node takes no part in the cluster now: killed, paused or cut off.
func (m *model) down(node string) bool {
	return m.killed[node] || m.paused[node] || m.isolated(node)
}

func (m *model) downCount() int {
	n := 0
	for _, o := range m.nodes {
		if m.down(o) {
			n++
		}
	}
	return n
}

// maxDown is how many nodes a schedule takes down at once: fewer than half, so a
// majority of the nodes is always up and the cluster is expected to keep (or regain)
// a master during the schedule too, not only after it.
func (m *model) maxDown() int { return (len(m.nodes) - 1) / 2 }

// apply changes the model as step does to the lab.
func (m *model) apply(s Step) {
	switch s.Kind {
	case Kill:
		m.killed[s.Node], m.paused[s.Node] = true, false
	case Pause:
		m.paused[s.Node] = true
	case Resume:
		m.paused[s.Node] = false
	case Cut:
		for _, o := range m.nodes {
			if o != s.Node {
				m.links[link(s.Node, o)] = true
			}
		}
	case CutLink:
		m.links[link(s.Node, s.Peer)] = true
	case Heal:
		for l := range m.links {
			if s.Node == "" || l[0] == s.Node || l[1] == s.Node {
				delete(m.links, l)
			}
		}
	case Restart:
		m.killed[s.Node], m.paused[s.Node] = false, false
	}
}

// allowed says whether step makes sense in this state and keeps the limit on nodes
// down.
func (m *model) allowed(s Step) bool {
	switch s.Kind {
	case Kill:
		if m.killed[s.Node] {
			return false
		}
	case Pause:
		if m.killed[s.Node] || m.paused[s.Node] {
			return false
		}
	case Resume:
		return m.paused[s.Node]
	case Cut:
		if m.killed[s.Node] || m.isolated(s.Node) {
			return false
		}
	case CutLink:
		if s.Node == s.Peer || m.links[link(s.Node, s.Peer)] {
			return false
		}
	case Heal:
		return len(m.links) > 0
	case Restart:
		return true
	}
	next := &model{nodes: m.nodes, killed: clone(m.killed), paused: clone(m.paused), links: clone(m.links)}
	next.apply(s)
	return next.downCount() <= max(m.maxDown(), m.downCount())
}

func clone[K comparable](m map[K]bool) map[K]bool {
	out := make(map[K]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Plan draws a schedule of steps faults over a lab of nodes nodes (n1 … nN) from
// seed. Waits are a few hundred milliseconds (a pause under a second, as a GC stall)
// to ten seconds (past the leases and the confirmation timeout); half the pauses are
// resumed at the next step, under a second later.
func Plan(seed uint64, nodes, steps int) Schedule {
	rng := rand.New(rand.NewPCG(seed, 0x64766d2d6661756c)) // "dvm-faul"
	m := newModel(nodes)
	s := Schedule{Seed: seed, Nodes: nodes}
	for len(s.Steps) < steps {
		var st Step
		if last := len(s.Steps) - 1; last >= 0 && s.Steps[last].Kind == Pause && m.paused[s.Steps[last].Node] && rng.IntN(2) == 0 {
			// A short pause: the previous step waited under a second.
			s.Steps[last].Wait = shortWait(rng)
			st = Step{Kind: Resume, Node: s.Steps[last].Node}
		} else {
			st = m.draw(rng)
		}
		st.Wait = wait(rng)
		m.apply(st)
		s.Steps = append(s.Steps, st)
	}
	for _, n := range m.nodes {
		if m.paused[n] {
			s.Finale = append(s.Finale, Step{Kind: Resume, Node: n})
		}
	}
	if len(m.links) > 0 {
		s.Finale = append(s.Finale, Step{Kind: Heal})
	}
	for _, n := range m.nodes {
		if m.killed[n] {
			s.Finale = append(s.Finale, Step{Kind: Restart, Node: n})
		}
	}
	return s
}

// draw picks a step the model allows: a kind by weight among the kinds that have
// one, then one of its steps, all alike. A restart of a killed node is drawn more
// often than a reboot of a live one.
func (m *model) draw(rng *rand.Rand) Step {
	type choice struct {
		w    int
		opts []Step
	}
	var kinds []choice
	offer := func(w int, steps []Step) {
		var ok []Step
		for _, s := range steps {
			if m.allowed(s) {
				ok = append(ok, s)
			}
		}
		if len(ok) > 0 {
			kinds = append(kinds, choice{w, ok})
		}
	}
	each := func(k Kind, which func(n string) bool) []Step {
		var out []Step
		for _, n := range m.nodes {
			if which(n) {
				out = append(out, Step{Kind: k, Node: n})
			}
		}
		return out
	}
	all := func(string) bool { return true }
	offer(3, each(Kill, all))
	offer(4, each(Pause, all))
	offer(4, each(Resume, all))
	offer(3, each(Cut, all))
	var pairs []Step
	for i, a := range m.nodes {
		for _, b := range m.nodes[i+1:] {
			pairs = append(pairs, Step{Kind: CutLink, Node: a, Peer: b})
		}
	}
	offer(3, pairs)
	offer(3, append([]Step{{Kind: Heal}}, each(Heal, func(n string) bool {
		for l := range m.links {
			if l[0] == n || l[1] == n {
				return true
			}
		}
		return false
	})...))
	offer(3, each(Restart, func(n string) bool { return m.killed[n] }))
	offer(1, each(Restart, func(n string) bool { return !m.killed[n] }))
	total := 0
	for _, k := range kinds {
		total += k.w
	}
	r := rng.IntN(total)
	for _, k := range kinds {
		if r < k.w {
			return k.opts[rng.IntN(len(k.opts))]
		}
		r -= k.w
	}
	panic("unreachable: a draw beyond the total weight")
}

// wait draws how long the schedule waits after a step.
func wait(rng *rand.Rand) time.Duration {
	switch r := rng.IntN(100); {
	case r < 35:
		return shortWait(rng)
	case r < 80:
		return ms(1000 + rng.IntN(4000))
	default:
		return ms(5000 + rng.IntN(5000))
	}
}

func shortWait(rng *rand.Rand) time.Duration { return ms(200 + rng.IntN(700)) }

// ms rounds to 10 ms, so that schedules print short.
func ms(v int) time.Duration { return time.Duration(v/10*10) * time.Millisecond }
