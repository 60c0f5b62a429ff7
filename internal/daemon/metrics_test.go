package daemon

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
)

// TestMetricsPassPromtool scrapes a dev cluster that has nodes, guests and API traffic,
// checks the series operators need are there, and has promtool lint the exposition.
func TestMetricsPassPromtool(t *testing.T) {
	d, c := startDev(t, t.TempDir(), 2)
	ctx := context.Background()
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "m1", CPUs: 2, MemoryBytes: 2 << 30}, nil); err != nil {
		t.Fatal(err)
	}
	c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "pending1", CPUs: 1, MemoryBytes: 1 << 40}, nil)
	waitFor(t, "m1 running", func() bool { return guest(t, c, "m1").State == api.GuestRunning })
	resp, err := httpsClient(t, d.CAFile).Get(d.Addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	for _, want := range []string{
		`dvm_node_cpus{node="n1"}`, `dvm_node_memory_bytes{node="n2"}`,
		`dvm_node_allocated_cpus{node=`, `dvm_node_allocated_memory_bytes{node=`,
		`dvm_guests{state="running"} 1`, `dvm_guests{state="pending"} 1`,
		`dvm_guest_info{domain="m1",failover="restart"`,
		`dvm_api_request_duration_seconds_bucket{code="201",method="POST",route="/v1/guests"`,
		`dvm_node_up{node="n1"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool not found: apt-get install prometheus")
		}
		t.Skip("promtool not found (apt-get install prometheus); CI runs this check")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
