package master

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/metrics"
	"github.com/dvmproject/dvm/internal/version"
)

// TestHaltedReplicaSaysSo: a master whose replica met a log entry it does not know
// says so in its health (status halted, the message naming the op, index and writer's
// version), in its metrics (dvm_replica_halted 1) and to every write (503 with the
// same message), and writes nothing.
func TestHaltedReplicaSaysSo(t *testing.T) {
	m, _ := newTestMaster(t)
	reg := metrics.New()
	reg.MustRegister(m.Collector())
	srv := httptest.NewServer(Handler(m, "m1", "tok", reg))
	t.Cleanup(srv.Close)
	c, err := api.NewClient(srv.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	halted := func() string {
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "dvm_replica_halted ") {
				return strings.TrimPrefix(l, "dvm_replica_halted ")
			}
		}
		return "absent"
	}
	var h api.Health
	if err := c.Do(ctx, "GET", "/v1/health", nil, &h); err != nil || h.Status != api.HealthOK || h.Version != version.Version || halted() != "0" {
		t.Fatalf("before: health %+v %v, dvm_replica_halted %s", h, err, halted())
	}
	f := m.st.Raft().Apply([]byte(`[{"op":"put_volume","v":"7.0.0","name":"v1"}]`), 5*time.Second)
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, "GET", "/v1/health", nil, &h); err != nil || h.Status != api.HealthHalted {
		t.Fatalf("after: health %+v %v", h, err)
	}
	for _, want := range []string{`op "put_volume"`, "written by dvmd 7.0.0", "upgrade this node's dvmd to 7.0.0"} {
		if !strings.Contains(h.Error, want) {
			t.Errorf("health error %q lacks %q", h.Error, want)
		}
	}
	if got := halted(); got != "1" {
		t.Fatalf("dvm_replica_halted %s, want 1", got)
	}
	before := m.st.Index()
	// A 503 sends a client on to the next management node (one may not have halted);
	// with none, it gives up with the last answer.
	c.RetryFor = 0
	err = c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "web", CPUs: 1, MemoryBytes: 1 << 30}, nil)
	if err == nil || !strings.Contains(err.Error(), `op \"put_volume\"`) {
		t.Fatalf("create on a halted master: %v", err)
	}
	if m.st.Index() != before {
		t.Fatal("a halted master wrote")
	}
}
