package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// The guest-name table agrees with a Go map through growth and through deletions that
// shift entries back (including runs that wrap around the end of the table).
func TestGuestNamesAgainstMap(t *testing.T) {
	s := New(nil, nil, Options{})
	want := map[string]int32{}
	var live []string
	rng := rand.New(rand.NewPCG(5, 6))
	for step := 0; step < 200000; step++ {
		if len(live) > 0 && rng.IntN(5) < 2 {
			k := rng.IntN(len(live))
			name := live[k]
			s.dropGuest(want[name])
			delete(want, name)
			live[k] = live[len(live)-1]
			live = live[:len(live)-1]
		} else {
			name := fmt.Sprintf("g%d", rng.IntN(1<<20))
			if _, ok := want[name]; ok {
				continue
			}
			want[name] = s.addGuest(&Guest{Name: name, CPUs: 1, MemoryBytes: 1}, &guestSpec{}, -1, -1, -1)
			live = append(live, name)
		}
		if step%2000 == 0 || step == 199999 {
			if s.names.n != len(want) {
				t.Fatalf("step %d: %d names recorded, want %d", step, s.names.n, len(want))
			}
			for name, id := range want {
				if got, ok := s.findGuest(name); !ok || got != id {
					t.Fatalf("step %d: %q found as %d, %v; want %d", step, name, got, ok, id)
				}
			}
			for i := 0; i < 100; i++ {
				name := fmt.Sprintf("g%d", rng.IntN(1<<20))
				if _, ok := want[name]; !ok {
					if id, ok := s.findGuest(name); ok {
						t.Fatalf("step %d: %q found as %d, never recorded or released", step, name, id)
					}
				}
			}
		}
	}
}
