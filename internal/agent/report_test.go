package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
)

// TestReportLeavesAPausedMaster: a master paused whole accepts the report's connection
// and never answers. Once gossip no longer lists it, the next report reaches its
// successor: the hung one is given up after ReportTimeout, not after the HTTP
// client's ten minutes.
func TestReportLeavesAPausedMaster(t *testing.T) {
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	var accepted atomic.Int32
	go func() {
		for {
			conn, err := hung.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			defer conn.Close() // held open, never answered
		}
	}()
	var reports atomic.Int32
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == "/v1/nodes/n1/status" {
			reports.Add(1)
		}
	}))
	defer live.Close()
	client, err := api.NewClient("http://"+hung.Addr().String(), "")
	if err != nil {
		t.Fatal(err)
	}
	var paused atomic.Bool // gossip has given the paused master up
	client.Discover = func() []string {
		if paused.Load() {
			return []string{live.URL}
		}
		return []string{"http://" + hung.Addr().String()}
	}

	uri, err := hypervisor.TestDriverURI(t.TempDir(), "n1", hypervisor.Capacity{CPUs: 4, MemoryBytes: 8 << 30})
	if err != nil {
		t.Fatal(err)
	}
	node, err := hypervisor.Open(hypervisor.Options{URI: uri, Accelerator: "auto"})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	a, err := New(Config{Name: "n1", Node: node, Client: client, ReportInterval: 20 * time.Millisecond, ReportTimeout: 200 * time.Millisecond,
		Net: NetConfig{Disabled: true}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.reportLoop(ctx) }()
	defer func() { cancel(); <-done }()

	deadline := time.Now().Add(10 * time.Second)
	for accepted.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if accepted.Load() == 0 {
		t.Fatal("the report never reached the paused master")
	}
	paused.Store(true)
	for reports.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if reports.Load() == 0 {
		t.Fatal("no report reached the new master within 10 s: the report to the paused one still hangs")
	}
}
