package master

import (
	"fmt"
	"math/rand"
	"sort"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// TestBooksAgreeWithSchedulerView: for any state the master can hold, the room the
// commit check counts on each node is the room the scheduler's view counts. Where
// they differed, the scheduler placed creates on a node the commit check then held
// full, again and again: a fault schedule (seed 15) left twins that had lost their
// twin with none placed ("new twin on none (no room)"); the scheduler skipped them,
// the commit check counted them, and no create was accepted after the last heal.
func TestBooksAgreeWithSchedulerView(t *testing.T) {
	m := &Master{}
	names := []string{"n1", "n2", "n3", "n4"}
	var nodes []store.NodeRecord
	for _, n := range names {
		nodes = append(nodes, store.NodeRecord{Name: n, CPUs: 64, MemoryBytes: 256 * gib})
	}
	policies := []string{api.FailoverNone, api.FailoverRestart, api.FailoverTwin}
	rng := rand.New(rand.NewSource(1))
	pick := func() string {
		if rng.Intn(4) == 0 {
			return ""
		}
		return names[rng.Intn(len(names))]
	}
	for round := 0; round < 500; round++ {
		var guests []store.GuestRecord
		for i := 0; i < 12; i++ {
			g := store.GuestRecord{Name: fmt.Sprintf("g%02d", i), CPUs: 1 + rng.Intn(4), MemoryBytes: int64(1+rng.Intn(4)) * gib,
				Failover: policies[rng.Intn(len(policies))], Node: pick(), Desired: store.DesiredRunning}
			if g.Failover == api.FailoverTwin {
				g.TwinNode = pick() // none (a twin lost, none placed), another node, or, wrongly, its own
			}
			if rng.Intn(5) == 0 {
				g.MigrateTo = pick()
			}
			if g.Node == "" {
				g.TwinNode, g.MigrateTo = "", ""
			}
			guests = append(guests, g)
		}
		sort.Slice(guests, func(i, j int) bool { return guests[i].Name < guests[j].Name })
		b := m.books(nodes, guests)
		s := m.schedulerView(nodes, guests)
		for _, n := range nodes {
			cpus, mem, err := s.Free(n.Name)
			if err != nil {
				t.Fatal(err)
			}
			usedCPU, usedMem := int64(n.CPUs)-int64(cpus), n.MemoryBytes-mem
			if usedCPU != b.used[n.Name].cpu || usedMem != b.used[n.Name].mem {
				t.Fatalf("round %d, node %s: the scheduler counts %d CPUs and %d GiB used, the commit check %d and %d GiB\nguests: %+v\nscheduler's problems: %v",
					round, n.Name, usedCPU, usedMem/gib, b.used[n.Name].cpu, b.used[n.Name].mem/gib, guests, s.Problems())
			}
		}
	}
}
