package scheduler_test

import (
	"errors"
	"fmt"

	"github.com/dvmproject/dvm/scheduler"
)

const gib = int64(1) << 30

// A twin lands in another zone than its primary; a guest too big for every node is
// refused with reasons, the same ones `vmctl vm why` prints.
func Example() {
	nodes := []scheduler.Node{
		{Name: "n1", CPUs: 32, MemoryBytes: 128 * gib, Schedulable: true, Accelerator: "kvm", Labels: map[string]string{"rack": "r1", "zone": "a"}},
		{Name: "n2", CPUs: 32, MemoryBytes: 128 * gib, Schedulable: true, Accelerator: "kvm", Labels: map[string]string{"rack": "r2", "zone": "a"}},
		{Name: "n3", CPUs: 32, MemoryBytes: 64 * gib, Schedulable: true, Accelerator: "kvm", Labels: map[string]string{"rack": "r3", "zone": "b"}},
		{Name: "n4", CPUs: 32, MemoryBytes: 256 * gib, Schedulable: true, Draining: true, Accelerator: "kvm"},
	}
	s := scheduler.New(nodes, nil, scheduler.Options{Strategy: scheduler.Spread, FailureDomains: []string{"rack", "zone"}})

	p, err := s.Place(scheduler.Guest{Name: "db", OS: "dragonfly", CPUs: 4, MemoryBytes: 16 * gib, Failover: scheduler.FailoverTwin})
	fmt.Println(p.Node, p.TwinNode, err)

	_, err = s.Place(scheduler.Guest{Name: "huge", OS: "dragonfly", CPUs: 8, MemoryBytes: 200 * gib})
	var u *scheduler.Unplaceable
	fmt.Println(errors.As(err, &u), err)

	fmt.Println(s.Explain(scheduler.Guest{Name: "huge", OS: "dragonfly", CPUs: 8, MemoryBytes: 200 * gib}).Summary())
	// Output:
	// n1 n3 <nil>
	// true guest "huge" not placeable: 3 nodes: not enough memory; 1 node: draining
	// 3 nodes: not enough memory; 1 node: draining
}
