package peerlab

import (
	"context"
	"fmt"
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
	// DVM_PEERLAB_DIR keeps the lab's files (logs) after the test; else a temporary
	// directory. DVM_PEERLAB_TOKEN is the token timeout in ms (1000).
	dir := os.Getenv("DVM_PEERLAB_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	token, zero := 1000, 0
	if s := os.Getenv("DVM_PEERLAB_TOKEN"); s != "" {
		fmt.Sscan(s, &token)
	}
	l, err := Up(ctx, Options{Dir: dir, Corosync: Corosync{TokenMS: token, TokenCoefficient: &zero}, Log: logWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(context.Background()); err != nil {
			t.Error(err)
		}
	})
	// DVM_PEERLAB_RUNS kills (1): the guest moved back to the victim between them.
	runs := 1
	if s := os.Getenv("DVM_PEERLAB_RUNS"); s != "" {
		fmt.Sscan(s, &runs)
	}
	for run := 0; run < runs; run++ {
		st, err := l.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		victim := "p2"
		if st.DC == victim {
			victim = "p3"
		}
		if run == 0 {
			err = l.AddGuest(ctx, "peer1", victim, 1, 96<<20)
		} else {
			err = l.MoveGuest(ctx, "peer1", victim, false)
		}
		if err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		if err := l.Kill(ctx, victim); err != nil {
			t.Fatal(err)
		}
		for {
			st, err := l.Status(ctx)
			if err == nil && st.Resources["peer1"] != "" && st.Resources["peer1"] != victim {
				t.Logf("peer1 started on %s %.2f s after %s was killed at %s (crm_mon's view)", st.Resources["peer1"], time.Since(killed).Seconds(), victim, killed.Format("15:04:05.000"))
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
}
