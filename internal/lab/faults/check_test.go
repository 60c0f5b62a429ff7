package faults

import (
	"strings"
	"testing"
	"time"
)

// TestTwoMasters: what counts as two masters accepting writes at once, and what does
// not.
func TestTwoMasters(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	at := func(name, master string, gen, term uint64, from, to int) ack {
		return ack{name: name, answer: answer{master: master, epoch: epoch{gen, term},
			start: t0.Add(time.Duration(from) * time.Second), end: t0.Add(time.Duration(to) * time.Second)}}
	}
	cases := []struct {
		name string
		acks []ack
		want []string // substrings, one a violation
	}{
		{"one master, one term", []ack{at("a", "n1", 1, 2, 0, 1), at("b", "n1", 1, 2, 2, 3)}, nil},
		{"a new master in a newer term", []ack{at("a", "n1", 1, 2, 0, 1), at("b", "n3", 1, 4, 2, 3)}, nil},
		{"a new generation with a lower term", []ack{at("a", "n1", 1, 9, 0, 1), at("b", "n3", 2, 3, 2, 3)}, nil},
		// The old master answered within a request window that overlaps the new
		// master's: it may have committed before it was replaced.
		{"overlapping windows", []ack{at("a", "n3", 1, 4, 0, 5), at("b", "n1", 1, 2, 1, 6)}, nil},
		{"two masters in one term", []ack{at("a", "n1", 1, 2, 0, 1), at("b", "n3", 1, 2, 2, 3)}, []string{"n1 and n3 both acknowledged writes in generation 1 term 2"}},
		{"the old master after the new", []ack{at("a", "n3", 1, 4, 0, 1), at("b", "n1", 1, 2, 2, 3)}, []string{"n1 acknowledged b in generation 1 term 2 at 03:00:03.000 (sent 03:00:02.000), after n3 had acknowledged a in the newer generation 1 term 4"}},
		{"the old generation after the new", []ack{at("a", "n3", 2, 1, 0, 1), at("b", "n1", 1, 7, 2, 3)}, []string{"n1 acknowledged b in generation 1 term 7"}},
		{"no stable term", []ack{at("a", "n3", 0, 0, 0, 1), at("b", "n1", 1, 2, 2, 3)}, nil},
	}
	for _, c := range cases {
		got := twoMasters(c.acks)
		if len(got) != len(c.want) {
			t.Errorf("%s: %d violations %v, want %d", c.name, len(got), got, len(c.want))
			continue
		}
		for i, w := range c.want {
			if !strings.Contains(got[i].Detail, w) || got[i].Check != CheckTwoMasters {
				t.Errorf("%s: %v, want it to say %q", c.name, got[i], w)
			}
		}
	}
}
