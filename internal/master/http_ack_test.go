package master

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/metrics"
)

// TestWriteAnswersNameMasterAndTerm: a write's answer says which master gave it and
// the raft generation and term it wrote in (what vmctl lab faults checks two masters
// against); so does a read's.
func TestWriteAnswersNameMasterAndTerm(t *testing.T) {
	m, _ := newTestMaster(t)
	srv := httptest.NewServer(Handler(m, "m1", "tok", metrics.New()))
	t.Cleanup(srv.Close)
	do := func(method, path, body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, bytes.NewBufferString(body))
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := do("POST", "/v1/guests", `{"name":"g1","cpus":1,"memory_bytes":134217728,"start":false}`)
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusAccepted {
		t.Fatalf("create: %s", resp.Status)
	}
	term := strconv.FormatUint(m.Store().Raft().CurrentTerm(), 10)
	if got := resp.Header.Get(api.HeaderMaster); got != "m1" {
		t.Errorf("%s: %q, want m1", api.HeaderMaster, got)
	}
	if got := resp.Header.Get(api.HeaderGeneration); got != "1" {
		t.Errorf("%s: %q, want 1 (a bootstrapped cluster)", api.HeaderGeneration, got)
	}
	if got := resp.Header.Get(api.HeaderTerm); got != term || got == "0" {
		t.Errorf("%s: %q, want raft's term %s", api.HeaderTerm, got, term)
	}
	// A refused write is still the master's answer, and says so.
	if resp := do("POST", "/v1/guests", `{"name":"g1","cpus":1,"memory_bytes":134217728}`); resp.StatusCode != http.StatusConflict || resp.Header.Get(api.HeaderMaster) != "m1" {
		t.Errorf("second create of g1: %s, %s %q", resp.Status, api.HeaderMaster, resp.Header.Get(api.HeaderMaster))
	}
	if resp := do("GET", "/v1/guests", ""); resp.Header.Get(api.HeaderMaster) != "m1" || resp.Header.Get(api.HeaderTerm) != term {
		t.Errorf("a read's answer does not say which master gave it in which term: %v", resp.Header)
	}
}
