package roles

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/failover"
)

// TestOneEventPerHappening: where the role machine both acts and tells (a node held,
// given up, a solitary node shutting its management down), the event is the telling
// alone; a node declared lost is the master's event (it recovers the guests); asking
// for witness votes and becoming semi-master are two happenings with two kinds.
func TestOneEventPerHappening(t *testing.T) {
	var got []string
	r := &Runner{cfg: Config{Self: "n1", Hooks: Hooks{Event: func(kind, node, _ string) {
		got = append(got, kind+" "+node)
	}}}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	r.carryOut([]failover.Action{
		failover.Hold{Node: "n5", Why: "no health report"}, failover.Notify{Node: "n5", Kind: "on-hold"},
		failover.GiveUp{Node: "n6"}, failover.Notify{Node: "n6", Kind: "gave-up"},
		failover.SolitudeShutdown{Node: "n1"}, failover.Notify{Node: "n1", Kind: "solitude"},
		failover.DeclareLost{Node: "n2", Why: "no path to it"},
		failover.Notify{Node: "n1", Kind: "semi-master"}, failover.RequestVotes{Generation: 2},
	})
	want := "on-hold n5, gave-up n6, solitude n1, semi-master n1, request-votes n1"
	if strings.Join(got, ", ") != want {
		t.Fatalf("events %q, want %q", strings.Join(got, ", "), want)
	}
}
