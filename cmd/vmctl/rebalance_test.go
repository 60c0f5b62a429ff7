package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
)

// vmctl cluster rebalance against an API that answers as dvm's does (the master's side is
// tested in internal/master, the whole on real nodes in internal/e2e): --dry-run only
// reads the plan; a run prints each move as it ends and exits as documented.
func TestClusterRebalance(t *testing.T) {
	plan := api.RebalancePlan{
		Moves: []api.RebalanceMove{
			{Guest: "g1", From: "n1", To: "n3", CPUs: 1, MemoryBytes: 2 << 30},
			{Guest: "g2", From: "n1", To: "n2", CPUs: 2, MemoryBytes: 4 << 30},
		},
		Before:  api.Imbalance{Hot: "n1", HotShare: 0.5, Cold: "n3", Spread: 0.5},
		After:   api.Imbalance{Hot: "n1", HotShare: 0.25, Cold: "n3", ColdShare: 0.1, Spread: 0.15},
		Staying: map[string]int{"not running": 1, "twin": 2},
	}
	moved := func(g, from, to string) api.RebalanceProgress {
		return api.RebalanceProgress{Guest: g, From: from, To: to, MoveOutcome: api.MoveOutcome{Status: "moved", TotalSeconds: 1.5, DowntimeSeconds: 0.02}}
	}
	failed := api.RebalanceProgress{Guest: "g2", From: "n1", To: "n2", MoveOutcome: api.MoveOutcome{Status: "failed", Error: "migrate guest \"g2\" from n1 to n2: destination refused"}}
	after := api.Imbalance{Hot: "n1", HotShare: 0.35, Cold: "n3", ColdShare: 0.1, Spread: 0.25}
	summary := func(m, f int) api.RebalanceProgress {
		return api.RebalanceProgress{After: &after, MoveOutcome: api.MoveOutcome{Done: true, Moved: m, Failed: f, TotalSeconds: 3}}
	}
	var lines []any // what POST streams, or an api.Error to refuse with 409
	var seen []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Method+" "+r.URL.Path)
		switch {
		case r.Method == "GET" && r.URL.Path == "/v1/cluster/rebalance":
			json.NewEncoder(w).Encode(plan)
		case r.Method == "POST" && r.URL.Path == "/v1/cluster/rebalance":
			if e, ok := lines[0].(api.Error); ok {
				w.WriteHeader(http.StatusConflict)
				json.NewEncoder(w).Encode(e)
				return
			}
			w.Header().Set("Content-Type", "application/x-ndjson")
			for _, l := range lines {
				json.NewEncoder(w).Encode(l)
			}
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	ca := serveTLS(t, srv)
	g := []string{"--addr", srv.URL, "--token", "tok", "--ca", ca}

	out, err := vmctl(append([]string{"cluster", "rebalance", "--dry-run"}, g...)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"spread 50% (n1 most used at 50%, n3 least at 0%); after these 2 moves, 15%; staying: 1 not running, 2 twin",
		"GUEST  FROM  TO  CPUS  MEMORY\ng1     n1    n3  1     2GiB\ng2     n1    n2  2     4GiB\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("--dry-run printed\n%s\nwant %q", out, want)
		}
	}
	out, err = vmctl(append([]string{"cluster", "rebalance", "--dry-run", "-o", "json"}, g...)...)
	var got api.RebalancePlan
	if err != nil || json.Unmarshal([]byte(out), &got) != nil || len(got.Moves) != 2 {
		t.Fatalf("-o json --dry-run: %v\n%s", err, out)
	}
	if strings.Join(seen, ",") != "GET /v1/cluster/rebalance,GET /v1/cluster/rebalance" {
		t.Fatalf("--dry-run asked %v: it must only read the plan", seen)
	}

	for _, tc := range []struct {
		name  string
		lines []any
		code  int
		want  []string
	}{
		{"all moved", []any{api.RebalanceProgress{Plan: &plan}, moved("g1", "n1", "n3"), moved("g2", "n1", "n2"), summary(2, 0)}, 0, []string{
			"spread 50% (n1 most used at 50%, n3 least at 0%): 2 moves planned, to 15%; staying: 1 not running, 2 twin\n",
			"guest g1 n1 -> n3: migrated in 1.50s, downtime 20ms\nguest g2 n1 -> n2: migrated in 1.50s, downtime 20ms\n",
			"rebalanced in 3.0s: 2 moved, 0 not moved; spread 25% (n1 most used at 35%, n3 least at 10%)\n"}},
		{"one failed", []any{api.RebalanceProgress{Plan: &plan}, moved("g1", "n1", "n3"), failed, summary(1, 1)}, 2, []string{
			"guest g2: not moved to n2: migrate guest \"g2\" from n1 to n2: destination refused\n",
			"rebalanced in 3.0s: 1 moved, 1 not moved"}},
		{"nothing to move", []any{api.RebalanceProgress{Plan: &api.RebalancePlan{Before: api.Imbalance{Hot: "n2", HotShare: 0.1, Cold: "n1", Spread: 0.1}}}, summary(0, 0)}, 0, []string{
			"nothing to move: spread 10% (n2 most used at 10%, n1 least at 0%), and no move narrows it\n"}},
		{"not acknowledged", []any{api.RebalanceProgress{Plan: &plan}, moved("g1", "n1", "n3"), api.RebalanceProgress{Unacknowledged: true,
			MoveOutcome: api.MoveOutcome{Done: true, Moved: 1, Error: "the change is applied but not yet on enough management nodes"}}}, 3, []string{"guest g1 n1 -> n3"}},
		{"no summary", []any{api.RebalanceProgress{Plan: &plan}, moved("g1", "n1", "n3")}, 1, []string{"guest g1 n1 -> n3"}},
		{"refused", []any{api.Error{Error: "a rebalance is running now (see vmctl events): conflict"}}, 1, nil},
	} {
		lines = tc.lines
		out, err := vmctl(append([]string{"cluster", "rebalance"}, g...)...)
		if code := 0; err != nil {
			code = exitCode(err)
			if code != tc.code {
				t.Errorf("%s: exit %d (%v), want %d", tc.name, code, err, tc.code)
			}
		} else if tc.code != 0 {
			t.Errorf("%s: exit 0, want %d\n%s", tc.name, tc.code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: printed\n%s\nwant %q", tc.name, out, w)
			}
		}
		switch tc.name {
		case "no summary":
			if err == nil || !strings.Contains(err.Error(), "ended without a summary") {
				t.Errorf("no summary: %v", err)
			}
		case "refused":
			if err == nil || !strings.Contains(err.Error(), "a rebalance is running now") {
				t.Errorf("refused: %v", err)
			}
		}
	}

	before := len(seen)
	if _, err := vmctl(append([]string{"cluster", "rebalance", "n1"}, g...)...); err == nil || !strings.Contains(err.Error(), "takes no arguments") {
		t.Errorf("rebalance n1: %v", err)
	}
	if len(seen) != before {
		t.Errorf("a refused command reached the API: %v", seen[before:])
	}
}
