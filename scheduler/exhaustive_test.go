package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
)

// exhaustive is the reference the indexed scheduler is measured and checked against: it
// applies the same filters and the same twin rules, and looks at every node for every
// guest, keeping the best fit (least free memory left, then least free CPU, then lowest
// node index) or, for Spread, the most free. Only the static filters (state, accelerator,
// profile, labels) are computed once per distinct requirement, as a plain slice of bools.
type exhaustive struct {
	nodes          []Node
	opts           Options
	freeCPU        []int32
	freeMem        []int64
	guests         []int32 // guests per node (primary or twin)
	static         map[string][]bool
	failureDomains [][]int32 // per node, per level; -1 unlabelled
}

func newExhaustive(nodes []Node, opts Options) *exhaustive {
	e := &exhaustive{nodes: nodes, opts: opts, static: map[string][]bool{},
		freeCPU: make([]int32, len(nodes)), freeMem: make([]int64, len(nodes)),
		guests: make([]int32, len(nodes)), failureDomains: make([][]int32, len(nodes))}
	ids := map[string]int32{}
	for i, n := range nodes {
		e.freeCPU[i] = int32(n.CPUs - n.AllocatedCPUs)
		e.freeMem[i] = n.MemoryBytes - n.AllocatedMemoryBytes
		fd := opts.FailureDomains
		e.failureDomains[i] = make([]int32, len(fd))
		for lv := range fd {
			if _, ok := n.Labels[fd[lv]]; !ok {
				e.failureDomains[i][lv] = -1
				continue
			}
			var path []string
			for _, k := range fd[lv:] {
				path = append(path, n.Labels[k])
			}
			key := fmt.Sprint(lv, path)
			if _, ok := ids[key]; !ok {
				ids[key] = int32(len(ids))
			}
			e.failureDomains[i][lv] = ids[key]
		}
	}
	return e
}

func (e *exhaustive) eligible(g *Guest) []bool {
	keys := make([]string, 0, len(g.Constraints))
	for k, v := range g.Constraints {
		keys = append(keys, k+"="+v)
	}
	slices.Sort(keys)
	key := g.Accelerator + "|" + g.OS + "|" + strings.Join(keys, ",")
	if el, ok := e.static[key]; ok {
		return el
	}
	el := make([]bool, len(e.nodes))
	for i, n := range e.nodes {
		ok := n.Schedulable && !n.Draining
		ok = ok && (g.Accelerator == "" || n.Accelerator == g.Accelerator)
		ok = ok && (g.OS == "" || len(n.Profiles) == 0 || slices.Contains(n.Profiles, g.OS))
		for k, v := range g.Constraints {
			if got, has := n.Labels[k]; !has || got != v {
				ok = false
			}
		}
		el[i] = ok
	}
	e.static[key] = el
	return el
}

// best scans every node; p >= 0 asks for a twin of p separated at level (-1: other node).
func (e *exhaustive) best(el []bool, cpu int32, mem int64, pack bool, p int32, level int) int32 {
	best := int32(-1)
	fc, fm := e.freeCPU, e.freeMem
	for i := range el {
		if !el[i] || fc[i] < cpu || fm[i] < mem {
			continue
		}
		if p >= 0 {
			if int32(i) == p {
				continue
			}
			if level >= 0 {
				a, b := e.failureDomains[i][level], e.failureDomains[p][level]
				if a < 0 || a == b {
					continue
				}
			}
		}
		if best < 0 {
			best = int32(i)
			continue
		}
		if pack {
			if fm[i] < fm[best] || (fm[i] == fm[best] && fc[i] < fc[best]) {
				best = int32(i)
			}
		} else if fm[i] > fm[best] || (fm[i] == fm[best] && fc[i] > fc[best]) {
			best = int32(i)
		}
	}
	return best
}

// place places g and returns its nodes (-1 when it does not fit).
func (e *exhaustive) place(g Guest) (int32, int32) {
	strat := g.Strategy
	if strat == "" {
		strat = e.opts.Strategy
	}
	pack := strat == Pack
	el := e.eligible(&g)
	cpu, mem := int32(g.CPUs), g.MemoryBytes
	p := e.best(el, cpu, mem, pack, -1, -1)
	if p < 0 {
		return -1, -1
	}
	t := int32(-1)
	if g.Failover == FailoverTwin {
		labelled := false
		for lv := len(e.failureDomains[p]) - 1; lv >= 0 && t < 0; lv-- {
			if e.failureDomains[p][lv] < 0 {
				continue
			}
			labelled = true
			t = e.best(el, cpu, mem, pack, p, lv)
		}
		if !labelled {
			t = e.best(el, cpu, mem, pack, p, -1)
		}
		if t < 0 {
			return -1, -1
		}
	}
	for _, n := range []int32{p, t} {
		if n >= 0 {
			e.freeCPU[n] -= cpu
			e.freeMem[n] -= mem
			e.guests[n]++
		}
	}
	return p, t
}

func (e *exhaustive) nodesUsed() int {
	used := 0
	for _, c := range e.guests {
		if c > 0 {
			used++
		}
	}
	return used
}

func (s *Scheduler) nodesUsed() int {
	used := 0
	for i := range s.nodes {
		if s.nodes[i].count > 0 {
			used++
		}
	}
	return used
}

const gibibyte = int64(1) << 30

// benchNodes builds n nodes from a fixed seed: racks of 40 nodes, three zones, 30% of
// racks with SSDs, three machine sizes (pool share after host reservation and 4:1 CPU
// overcommit), 3% TCG-only, 10% limited OS profiles, 1% cordoned, 1% draining.
func benchNodes(n int, seed uint64) []Node {
	rng := rand.New(rand.NewPCG(seed, 1))
	nodes := make([]Node, n)
	for i := range nodes {
		rack := i / 40
		disk := "hdd"
		if rack%10 < 3 {
			disk = "ssd"
		}
		var cores int
		var mem int64
		switch x := rng.IntN(10); {
		case x < 5:
			cores, mem = 64, 512*gibibyte
		case x < 8:
			cores, mem = 32, 256*gibibyte
		default:
			cores, mem = 128, 1024*gibibyte
		}
		nd := Node{
			Name:        fmt.Sprintf("node-%06d", i),
			CPUs:        (cores - 2) * 4,
			MemoryBytes: (mem - 8*gibibyte) / 100 * 95,
			Schedulable: true,
			Accelerator: "kvm",
			Labels:      map[string]string{"rack": fmt.Sprintf("r%d", rack), "zone": fmt.Sprintf("z%d", rack%3), "disk": disk},
		}
		if rng.IntN(100) < 3 {
			nd.Accelerator = "tcg"
		}
		if rng.IntN(10) == 0 {
			nd.Profiles = []string{"linux", "freebsd", "openbsd"}
		}
		switch rng.IntN(100) {
		case 0:
			nd.Schedulable = false
		case 1:
			nd.Draining = true
		}
		nodes[i] = nd
	}
	return nodes
}

// benchGuests draws n guests from a fixed seed: 1 to 16 CPUs (mostly small), 0.5 to 4
// GiB per CPU, five OSes, 5% twins, 35% restart, 8% pinned to a zone, 5% needing SSD
// nodes, 60% requiring KVM.
func benchGuests(n int, seed uint64) []Guest {
	rng := rand.New(rand.NewPCG(seed, 2))
	oses := []string{"dragonfly", "dragonfly", "dragonfly", "dragonfly", "freebsd", "freebsd", "linux", "linux", "openbsd", "netbsd"}
	guests := make([]Guest, n)
	for i := range guests {
		var cpus int
		switch x := rng.IntN(100); {
		case x < 50:
			cpus = 1
		case x < 80:
			cpus = 2
		case x < 94:
			cpus = 4
		case x < 99:
			cpus = 8
		default:
			cpus = 16
		}
		var perCPU int64
		switch x := rng.IntN(10); {
		case x < 3:
			perCPU = gibibyte / 2
		case x < 6:
			perCPU = gibibyte
		case x < 9:
			perCPU = 2 * gibibyte
		default:
			perCPU = 4 * gibibyte
		}
		g := Guest{
			Name:        fmt.Sprintf("guest-%06d", i),
			OS:          oses[rng.IntN(len(oses))],
			CPUs:        cpus,
			MemoryBytes: int64(cpus) * perCPU,
			Failover:    FailoverNone,
		}
		switch x := rng.IntN(100); {
		case x < 5:
			g.Failover = FailoverTwin
		case x < 40:
			g.Failover = FailoverRestart
		}
		switch x := rng.IntN(100); {
		case x < 8:
			g.Constraints = map[string]string{"zone": fmt.Sprintf("z%d", rng.IntN(3))}
		case x < 13:
			g.Constraints = map[string]string{"disk": "ssd"}
		}
		if rng.IntN(10) < 6 {
			g.Accelerator = "kvm"
		}
		guests[i] = g
	}
	return guests
}
