package scheduler

import (
	"fmt"
	"sort"
)

// journal applies tentative capacity changes while a plan is made and undoes them after,
// so computing a plan leaves the snapshot as it was.
type journal struct {
	s   *Scheduler
	ops []jop
}

type jop struct {
	n       int32
	cpu     int32
	mem     int64
	ha      bool
	exclude bool
}

func (j *journal) take(n int32, g *Guest, sign int32) { j.change(n, g, sign, haGuest(g)) }

// room changes only the room g holds on n, not the HA demand there: the room of a move
// in flight, which is not where the guest runs.
func (j *journal) room(n int32, g *Guest, sign int32) { j.change(n, g, sign, false) }

func (j *journal) change(n int32, g *Guest, sign int32, ha bool) {
	cpu, mem := sign*int32(g.CPUs), int64(sign)*g.MemoryBytes
	j.s.take(n, cpu, mem)
	if ha {
		j.s.nodes[n].haCPU += int64(cpu)
		j.s.nodes[n].haMem += mem
		j.s.haDirty = true
	}
	j.ops = append(j.ops, jop{n: n, cpu: cpu, mem: mem, ha: ha})
}

func (j *journal) exclude(n int32) {
	j.s.setExcluded(n, true)
	j.ops = append(j.ops, jop{n: n, exclude: true})
}

func (j *journal) undo() {
	for i := len(j.ops) - 1; i >= 0; i-- {
		o := j.ops[i]
		if o.exclude {
			j.s.setExcluded(o.n, false)
			continue
		}
		j.s.take(o.n, -o.cpu, -o.mem)
		if o.ha {
			j.s.nodes[o.n].haCPU -= int64(o.cpu)
			j.s.nodes[o.n].haMem -= o.mem
		}
	}
	j.s.haDirty = true
	j.ops = j.ops[:0]
}

// Evacuate plans where every guest of a node goes when it is drained: guests migrate
// live, twin guests whose primary is here are promoted (their twin becomes the primary)
// and get a new twin, twins kept here are rebuilt elsewhere. Filters, twin separation and
// the guests' strategies apply; guests with nowhere to go are listed with reasons, and a
// drain that leaves the HA reserve short is warned about. A guest already moving away
// keeps its move (listed as a migration to where it is going). The snapshot is not
// changed.
func (s *Scheduler) Evacuate(node string) Plan { return s.evacuate(node, false) }

// EvacuateLost plans the recovery of a lost node: restart guests restart elsewhere,
// twins are promoted and get new twins, guests with failover "none" are listed as Lost.
// A move away from the lost node cannot finish: the room it held is free for the plan.
// The HA reserve is what this spends, so it does not block anything here.
func (s *Scheduler) EvacuateLost(node string) Plan { return s.evacuate(node, true) }

func (s *Scheduler) evacuate(node string, lost bool) Plan {
	var plan Plan
	x, ok := s.byNode[node]
	if !ok {
		plan.Warnings = append(plan.Warnings, fmt.Sprintf("evacuate node %q: %v", node, ErrUnknownNode))
		return plan
	}
	j := &journal{s: s}
	defer j.undo()
	j.exclude(x)
	// Largest first: first-fit decreasing packs better and the hard cases fail early.
	ids := s.guestsOn(x)
	sort.Slice(ids, func(a, b int) bool {
		ga, gb := s.guest(ids[a]), s.guest(ids[b])
		if ga.mem != gb.mem {
			return ga.mem > gb.mem
		}
		if ga.cpus != gb.cpus {
			return ga.cpus > gb.cpus
		}
		return ga.name < gb.name
	})
	for _, id := range ids {
		pg := *s.guest(id)
		g := pg.guest()
		r := s.resolve(&g)
		strat := s.strategy(&g)
		cpu, mem := int32(g.CPUs), g.MemoryBytes
		j.take(x, &g, -1)
		if pg.dest >= 0 && pg.node == x {
			if !lost {
				// Already leaving, with its room held where it goes.
				plan.Moves = append(plan.Moves, Move{Guest: g.Name, Action: ActionMigrate, From: node, To: s.nodes[pg.dest].name})
				continue
			}
			j.room(pg.dest, &g, -1)
		}
		if pg.twin >= 0 {
			// Twin guest: the surviving copy becomes (or stays) the primary, and a new
			// twin is built away from it.
			primary := pg.node
			mv := Move{Guest: g.Name, Action: ActionNewTwin, From: node}
			if pg.node == x {
				primary = pg.twin
				mv.Action = ActionPromote
				mv.To = s.nodes[primary].name
			}
			t, level, warn := s.searchTwin(r, strat, cpu, mem, primary)
			if t >= 0 {
				j.take(t, &g, 1)
				mv.NewTwin = s.nodes[t].name
				if warn != "" {
					plan.Warnings = append(plan.Warnings, fmt.Sprintf("guest %q: %s", g.Name, warn))
				}
			} else {
				u := s.unplaceable(&g, r, primary, level)
				plan.Unplaced = append(plan.Unplaced, u)
				plan.Warnings = append(plan.Warnings, fmt.Sprintf("guest %q runs without a twin: %s", g.Name, Summary(u.Reasons)))
			}
			plan.Moves = append(plan.Moves, mv)
			continue
		}
		if lost && g.Failover != FailoverRestart && g.Failover != FailoverTwin {
			plan.Lost = append(plan.Lost, g.Name)
			continue
		}
		n := s.search(r, strat, cpu, mem, -1, -1)
		if n < 0 {
			plan.Unplaced = append(plan.Unplaced, s.unplaceable(&g, r, -1, -1))
			continue
		}
		j.take(n, &g, 1)
		action := ActionMigrate
		if lost {
			action = ActionRestart
		}
		plan.Moves = append(plan.Moves, Move{Guest: g.Name, Action: action, From: node, To: s.nodes[n].name})
	}
	if short := s.headroomShort(nil, -1, -1); short != "" {
		what := "after this drain"
		if lost {
			what = "after this loss"
		}
		plan.Warnings = append(plan.Warnings, what+", "+short)
	}
	return plan
}

// rebalanceGap: nodes whose dominant-resource use differs by less than this are even.
const rebalanceGap = 0.05

// use is a node's dominant share in use (the larger of CPU and memory), after adding cpu
// and mem.
func (n *nodeState) use(cpu int32, mem int64) float64 {
	if n.cpus <= 0 || n.mem <= 0 {
		return 1
	}
	c := float64(n.cpus-n.freeCPU+cpu) / float64(n.cpus)
	m := float64(n.mem-n.freeMem+mem) / float64(n.mem)
	return max(c, m)
}

// Rebalance plans at most maxMoves live migrations that even out load: each move takes a
// guest off the most used node (dominant share of CPU or memory) to the node Spread would
// choose for it, when that lowers the larger of the two nodes' shares; a node none of
// whose guests can go anywhere better is passed over. Twin guests stay (a move would have to
// carry the standby's room and copy along, which costs more than it evens out), so do guests already moving and those that must
// stay (Assignment.Stay); filters apply; each guest moves at most once. Each move costs
// one pass over the nodes plus an index search per guest of the hot node. The snapshot
// is not changed.
func (s *Scheduler) Rebalance(maxMoves int) Plan {
	var plan Plan
	j := &journal{s: s}
	defer j.undo()
	moved := map[int32]bool{}
	stuck := map[int32]bool{}
	for tries := 0; len(plan.Moves) < maxMoves && tries < 2*maxMoves+8; tries++ {
		hot, cold := int32(-1), int32(-1)
		var hotUse, coldUse float64
		for i := range s.nodes {
			ns := &s.nodes[i]
			if !ns.accepting() {
				continue
			}
			u := ns.use(0, 0)
			if !stuck[int32(i)] && (hot < 0 || u > hotUse) {
				hot, hotUse = int32(i), u
			}
			if cold < 0 || u < coldUse {
				cold, coldUse = int32(i), u
			}
		}
		if hot < 0 || hotUse-coldUse < rebalanceGap {
			break
		}
		hs := &s.nodes[hot]
		bestG, bestN, bestScore := int32(-1), int32(-1), hotUse
		s.setExcluded(hot, true)
		for _, id := range s.guestsOn(hot) {
			pg := s.guest(id)
			if pg.twin >= 0 || pg.node != hot || moved[id] || pg.dest >= 0 || pg.stay {
				continue
			}
			gv := pg.guest()
			g := &gv
			cpu, mem := int32(g.CPUs), g.MemoryBytes
			n := s.search(s.resolve(g), Spread, cpu, mem, -1, -1)
			if n < 0 {
				continue
			}
			score := max(hs.use(-cpu, -mem), s.nodes[n].use(cpu, mem))
			if score < bestScore-1e-9 || (bestG >= 0 && score < bestScore+1e-9 && g.MemoryBytes < s.guest(bestG).mem) {
				bestG, bestN, bestScore = id, n, score
			}
		}
		s.setExcluded(hot, false)
		if bestG < 0 {
			stuck[hot] = true
			continue
		}
		g := s.guest(bestG).guest()
		j.take(hot, &g, -1)
		j.take(bestN, &g, 1)
		moved[bestG] = true
		plan.Moves = append(plan.Moves, Move{Guest: g.Name, Action: ActionMigrate, From: hs.name, To: s.nodes[bestN].name})
	}
	return plan
}

// Imbalance is how unevenly the nodes that take guests are used: the most and the least
// used by dominant share (the larger of a node's CPU and memory shares in use, room held
// by moves in flight included). Rebalance narrows the spread between them.
type Imbalance struct {
	Hot, Cold           string
	HotShare, ColdShare float64
}

// Spread is the hot node's share less the cold node's: 0 when even.
func (i Imbalance) Spread() float64 { return i.HotShare - i.ColdShare }

// Imbalance measures the nodes that take guests; zero when none does. One pass over the
// nodes.
func (s *Scheduler) Imbalance() Imbalance {
	var out Imbalance
	for i := range s.nodes {
		ns := &s.nodes[i]
		if !ns.accepting() {
			continue
		}
		u := ns.use(0, 0)
		if out.Hot == "" || u > out.HotShare {
			out.Hot, out.HotShare = ns.name, u
		}
		if out.Cold == "" || u < out.ColdShare {
			out.Cold, out.ColdShare = ns.name, u
		}
	}
	return out
}
