package hypervisor

import (
	"fmt"
	"math"
)

// Capacity is an amount of CPU and memory.
type Capacity struct {
	CPUs        int
	MemoryBytes int64
}

// Share is how much of a host a node gives to the pool: what it keeps for the host
// itself (its own daemons, page cache, QEMU overhead), and how far the rest may be
// overcommitted. CPU is commonly overcommitted (4x); memory rarely (1.0 to 1.5x).
type Share struct {
	ReservedCPUs        int
	ReservedMemoryBytes int64
	CPUOvercommit       float64 // 1.0 = none; 0 is read as 1.0
	MemoryOvercommit    float64 // 1.0 = none; 0 is read as 1.0
}

// Validate reports a share that makes no sense on its own.
func (s Share) Validate() error {
	if s.ReservedCPUs < 0 {
		return fmt.Errorf("reserved_cpus must not be negative, not %d", s.ReservedCPUs)
	}
	if s.ReservedMemoryBytes < 0 {
		return fmt.Errorf("reserved_memory must not be negative")
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{"cpu_overcommit", s.CPUOvercommit}, {"memory_overcommit", s.MemoryOvercommit}} {
		if r.v != 0 && (r.v < 1 || r.v > 64 || math.IsNaN(r.v)) {
			return fmt.Errorf("%s must be between 1 and 64, not %g", r.name, r.v)
		}
	}
	return nil
}

// PoolShare is what a host of the given capacity offers to guests under this share:
// (host - reservation) x overcommit. A reservation that leaves nothing is an error, so a
// misconfigured node refuses to start instead of joining with zero capacity.
func (s Share) PoolShare(host Capacity) (Capacity, error) {
	if err := s.Validate(); err != nil {
		return Capacity{}, err
	}
	cpus := host.CPUs - s.ReservedCPUs
	mem := host.MemoryBytes - s.ReservedMemoryBytes
	if cpus <= 0 {
		return Capacity{}, fmt.Errorf("reserved_cpus %d leaves nothing of the host's %d cpus: lower reserved_cpus", s.ReservedCPUs, host.CPUs)
	}
	if mem <= 0 {
		return Capacity{}, fmt.Errorf("reserved_memory %d bytes leaves nothing of the host's %d bytes: lower reserved_memory", s.ReservedMemoryBytes, host.MemoryBytes)
	}
	return Capacity{
		CPUs:        int(math.Floor(float64(cpus) * ratio(s.CPUOvercommit))),
		MemoryBytes: int64(math.Floor(float64(mem) * ratio(s.MemoryOvercommit))),
	}, nil
}

func ratio(r float64) float64 {
	if r == 0 {
		return 1
	}
	return r
}
