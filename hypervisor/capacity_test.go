package hypervisor

import "testing"

func TestPoolShare(t *testing.T) {
	host := Capacity{CPUs: 32, MemoryBytes: 64 << 30}
	cases := []struct {
		name  string
		share Share
		want  Capacity
	}{
		{"nothing reserved", Share{}, host},
		{"reservation", Share{ReservedCPUs: 2, ReservedMemoryBytes: 4 << 30}, Capacity{30, 60 << 30}},
		{"overcommit", Share{ReservedCPUs: 2, ReservedMemoryBytes: 4 << 30, CPUOvercommit: 4, MemoryOvercommit: 1.5}, Capacity{120, 90 << 30}},
		{"fractional cpu overcommit rounds down", Share{ReservedCPUs: 31, CPUOvercommit: 1.5}, Capacity{1, 64 << 30}},
	}
	for _, c := range cases {
		got, err := c.share.PoolShare(host)
		if err != nil || got != c.want {
			t.Errorf("%s: PoolShare = %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
	bad := []Share{
		{ReservedCPUs: 32},
		{ReservedMemoryBytes: 64 << 30},
		{ReservedCPUs: -1},
		{ReservedMemoryBytes: -1},
		{CPUOvercommit: 0.5},
		{MemoryOvercommit: 100},
	}
	for _, s := range bad {
		if got, err := s.PoolShare(host); err == nil {
			t.Errorf("PoolShare(%+v) = %+v, want an error", s, got)
		}
	}
}
