package faults

import (
	"reflect"
	"testing"
	"time"
)

// TestPlanReplays: a seed gives the same schedule every time, and this exact one: a
// change of Plan changes what every recorded seed replays, so it must show here.
func TestPlanReplays(t *testing.T) {
	a, b := Plan(7, 5, 12), Plan(7, 5, 12)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("seed 7 planned twice differs:\n%s\n%s", a, b)
	}
	if reflect.DeepEqual(Plan(7, 5, 12).Steps, Plan(8, 5, 12).Steps) {
		t.Fatal("seeds 7 and 8 give the same steps")
	}
	got := Plan(1, 5, 8).String()
	want := `seed 1, 8 steps over 5 nodes:
   1. cut n4, wait 1.62s
   2. cut n3, wait 3.05s
   3. kill n3, wait 1.62s
   4. kill n4, wait 3.86s
   5. heal n1, wait 630ms
   6. restart n4, wait 270ms
   7. restart n3, wait 610ms
   8. restart n1, wait 4.07s
  finale: heal
`
	if got != want {
		t.Errorf("seed 1 plans:\n%s\nwant:\n%s", got, want)
	}
}

// TestPlanSteps replays many schedules on an independent account of the lab and
// checks that every step makes sense where it comes, that fewer than half the nodes
// are ever down, that the finale undoes every fault, and that every kind of step is
// drawn.
func TestPlanSteps(t *testing.T) {
	kinds := map[Kind]int{}
	short := 0
	for seed := uint64(0); seed < 500; seed++ {
		s := Plan(seed, 5, 15)
		if len(s.Steps) != 15 {
			t.Fatalf("seed %d: %d steps, want 15", seed, len(s.Steps))
		}
		killed, paused := map[string]bool{}, map[string]bool{}
		cut := map[string]map[string]bool{}
		for _, n := range []string{"n1", "n2", "n3", "n4", "n5"} {
			cut[n] = map[string]bool{}
		}
		down := func() int {
			d := 0
			for n := range cut {
				if killed[n] || paused[n] || len(cut[n]) == 4 {
					d++
				}
			}
			return d
		}
		check := func(i int, st Step) {
			kinds[st.Kind]++
			if st.Wait < 0 || st.Wait > 10*time.Second {
				t.Errorf("seed %d step %d (%s): wait out of range", seed, i, st)
			}
			switch st.Kind {
			case Kill:
				if killed[st.Node] {
					t.Errorf("seed %d step %d: kill of killed %s", seed, i, st.Node)
				}
				killed[st.Node], paused[st.Node] = true, false
			case Pause:
				if killed[st.Node] || paused[st.Node] {
					t.Errorf("seed %d step %d: pause of %s, killed %v paused %v", seed, i, st.Node, killed[st.Node], paused[st.Node])
				}
				paused[st.Node] = true
			case Resume:
				if !paused[st.Node] {
					t.Errorf("seed %d step %d: resume of %s, not paused", seed, i, st.Node)
				}
				paused[st.Node] = false
			case Cut:
				for o := range cut {
					if o != st.Node {
						cut[st.Node][o], cut[o][st.Node] = true, true
					}
				}
			case CutLink:
				if st.Node == st.Peer || st.Peer == "" {
					t.Errorf("seed %d step %d: %s", seed, i, st)
				}
				cut[st.Node][st.Peer], cut[st.Peer][st.Node] = true, true
			case Heal:
				for a := range cut {
					for b := range cut[a] {
						if st.Node == "" || a == st.Node || b == st.Node {
							delete(cut[a], b)
						}
					}
				}
			case Restart:
				killed[st.Node], paused[st.Node] = false, false
			default:
				t.Errorf("seed %d step %d: unknown kind %q", seed, i, st.Kind)
			}
		}
		for i, st := range s.Steps {
			before := down()
			check(i+1, st)
			if d := down(); d > 2 && d > before {
				t.Errorf("seed %d step %d (%s): %d of 5 nodes down", seed, i+1, st, d)
			}
			if st.Kind == Resume && i > 0 && s.Steps[i-1].Kind == Pause && s.Steps[i-1].Node == st.Node && s.Steps[i-1].Wait < time.Second {
				short++
			}
		}
		for _, st := range s.Finale {
			check(0, st)
		}
		for n := range cut {
			if killed[n] || paused[n] || len(cut[n]) > 0 {
				t.Errorf("seed %d: after the finale %s is killed %v, paused %v, cut from %v", seed, n, killed[n], paused[n], cut[n])
			}
		}
	}
	for _, k := range []Kind{Kill, Pause, Resume, Cut, CutLink, Heal, Restart} {
		if kinds[k] == 0 {
			t.Errorf("no %s step in 500 schedules: %v", k, kinds)
		}
	}
	if short == 0 {
		t.Error("no pause resumed within a second in 500 schedules")
	}
	t.Logf("steps drawn in 500 schedules: %v; pauses under a second: %d", kinds, short)
}
