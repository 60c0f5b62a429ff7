package e2e

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/writeload"
)

// TestWriteThroughput: creates of stopped guests (no QEMU is started for them) as fast
// as DVM_WRITES_CLIENTS concurrent clients (default 64) can make them, DVM_WRITES_COUNT
// in all (default 10 000), over the HTTPS API of a 3-node lab (three voters) with its
// token: creates/s and latency. Every create counted is acknowledged, so on every
// voter. A measurement (scripts/bench-writes runs it): no goal asserted.
func TestWriteThroughput(t *testing.T) {
	if os.Getenv("DVM_WRITES") != "1" {
		t.Skip("a measurement: scripts/bench-writes runs it (DVM_WRITES=1)")
	}
	clients, count, err := writeload.FromEnv(64, 10000)
	if err != nil {
		t.Fatal(err)
	}
	c := upCluster(t, 3)
	st := c.waitStatus(t, "a master and two backups", 90*time.Second, nil, fullGroup)
	c.settled(t, st)
	node, err := c.lab.Node(st.Master)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.lab.Token()
	if err != nil {
		t.Fatal(err)
	}
	// The master's own API: a write sent to another node would be forwarded to it.
	cl, err := api.NewClient(node.AgentURL, tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.TrustCA(c.lab.CAFile()); err != nil {
		t.Fatal(err)
	}
	res, err := writeload.Run(context.Background(), cl, writeload.Options{Clients: clients, Count: count, Prefix: "w",
		Guest: api.CreateGuest{OS: "linux", Image: "lab", CPUs: 1, MemoryBytes: 64 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Failed) > 0 {
		t.Errorf("creates failed: %s", res)
	}
	t.Logf("FIGURE writes through a 3-voter lab (master %s), %d clients: %s", st.Master, clients, res)
}
