package peerlab

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/lab/labtest"
)

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestPeerLab brings a peer lab up, runs a guest under Pacemaker, kills its host and
// waits until Pacemaker has restarted it on another. It brings up real hosts, so it
// runs only with DVM_PEERLAB=1 (scripts/bench-recovery runs the bench that uses it).
func TestPeerLab(t *testing.T) {
	if os.Getenv("DVM_PEERLAB") != "1" {
		t.Skip("set DVM_PEERLAB=1 to bring up a peer lab (Pacemaker) on this machine")
	}
	labtest.Require(t)
	labtest.Lock(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	one, zero := 1000, 0
	l, err := Up(ctx, Options{Dir: t.TempDir(), Corosync: Corosync{TokenMS: one, TokenCoefficient: &zero}, Log: logWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(context.Background()); err != nil {
			t.Error(err)
		}
	})
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	victim := "p2"
	if st.DC == victim {
		victim = "p3"
	}
	if err := l.AddGuest(ctx, "peer1", victim, 1, 96<<20); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := l.Kill(ctx, victim); err != nil {
		t.Fatal(err)
	}
	for {
		st, err := l.Status(ctx)
		if err == nil && st.Resources["peer1"] != "" && st.Resources["peer1"] != victim {
			t.Logf("peer1 started on %s %.2f s after %s was killed (crm_mon's view)", st.Resources["peer1"], time.Since(killed).Seconds(), victim)
			break
		}
		if time.Since(killed) > 60*time.Second {
			t.Fatalf("peer1 not restarted within 60 s: %+v %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := l.Restart(ctx, victim); err != nil {
		t.Fatal(err)
	}
}
