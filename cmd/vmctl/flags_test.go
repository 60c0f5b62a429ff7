package main

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
)

// answerRead answers the fake API's reads of nodes, guests, networks and the cluster
// as dvm's API does, and a guest's create with the guest as asked for; false for a
// request it does not know.
func answerRead(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodPost && r.URL.Path == "/v1/guests" {
		var req api.CreateGuest
		if json.NewDecoder(r.Body).Decode(&req) != nil {
			return false
		}
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(api.Guest{Name: req.Name, State: api.GuestStarting, MemoryBytes: req.MemoryBytes, DiskBytes: req.DiskBytes})
		return true
	}
	if r.Method != http.MethodGet {
		return false
	}
	var v any
	index := r.URL.Query().Get("index")
	switch r.URL.Path {
	case "/v1/guests/slow":
		// A blocking query's answer: running once asked with the index of starting.
		v = api.Guest{Name: "slow", State: api.GuestStarting, Node: "n1"}
		w.Header().Set(api.HeaderIndex, "1")
		if index == "1" {
			v = api.Guest{Name: "slow", State: api.GuestRunning, Node: "n1"}
			w.Header().Set(api.HeaderIndex, "2")
		}
	case "/v1/guests/going":
		w.Header().Set(api.HeaderIndex, "1")
		v = api.Guest{Name: "going", State: api.GuestDeleting, Node: "n1"}
		if index == "1" {
			w.WriteHeader(http.StatusNotFound)
			v = api.Error{Error: `guest "going" not found`}
		}
	case "/v1/guests/old":
		// A master that does not block: no index, running at the third ask.
		v = api.Guest{Name: "old", State: api.GuestStarting, Node: "n1"}
		if oldAsks.Add(1) >= 3 {
			v = api.Guest{Name: "old", State: api.GuestRunning, Node: "n1"}
		}
	case "/v1/nodes":
		v = []api.Node{{Name: "n1", State: api.NodeReady}}
	case "/v1/guests":
		v = []api.Guest{{Name: "web", State: api.GuestRunning, Node: "n1"}}
	case "/v1/guests/web":
		v = api.Guest{Name: "web", State: api.GuestRunning, Node: "n1"}
	case "/v1/guests/web/why":
		v = api.Why{Guest: "web", State: api.GuestRunning, Node: "n1", Summary: "1 node: fits"}
	case "/v1/networks":
		v = []api.Network{{Name: "blue", VNI: 42, CIDR: "192.168.42.0/24"}}
	case "/v1/images":
		v = []api.Image{{Name: "deb", Format: api.ImageQCOW2, State: api.ImageReady}}
	case "/v1/images/deb":
		v = api.Image{Name: "deb", Format: api.ImageQCOW2, State: api.ImageReady}
	case "/v1/networks/blue":
		v = api.Network{Name: "blue", VNI: 42, CIDR: "192.168.42.0/24"}
	case "/v1/cluster":
		v = api.ClusterStatus{Generation: 1, Master: "n1", Acting: true}
	case "/v1/cluster/rebalance":
		v = api.RebalancePlan{Moves: []api.RebalanceMove{}, Before: api.Imbalance{Hot: "n1", Cold: "n1"}}
	default:
		return false
	}
	json.NewEncoder(w).Encode(v)
	return true
}

// TestGlobalFlagsAnywhere: --addr, --token, --ca and -o work wherever they are written
// on the line, for a command of every group that talks to the API. A group added
// without a case here fails the test.
func TestGlobalFlagsAnywhere(t *testing.T) {
	srv, ca, seen := fakeAPI(t)
	groups := map[string][][]string{
		"node":    {{"node", "ls"}},
		"vm":      {{"vm", "ls"}, {"vm", "show", "web"}, {"vm", "why", "web"}},
		"net":     {{"net", "ls"}, {"net", "show", "blue"}},
		"image":   {{"image", "ls"}, {"image", "show", "deb"}},
		"cluster": {{"cluster", "status"}, {"cluster", "rebalance", "--dry-run"}},
		"events":  {{"events"}},
		"token":   {{"token", "ls"}},
	}
	// Groups that never talk to the API: lab runs vmctl-lab (TestLabRunsThePlugin).
	apart := []string{"lab", "completion", "version"}
	for _, c := range newApp(io.Discard).Commands {
		if _, ok := groups[c.Name]; !ok && !slices.Contains(apart, c.Name) {
			t.Errorf("command group %s has no case here: add one of its commands", c.Name)
		}
	}
	for group, cmds := range groups {
		for _, cmd := range cmds {
			noun, rest := cmd[:1], cmd[1:]
			for _, args := range [][]string{
				append([]string{"--addr", srv.URL, "--token", "tok", "--ca", ca, "-o", "json"}, cmd...),
				join(noun, []string{"--addr", srv.URL, "--token", "tok", "--ca", ca, "-o", "json"}, rest),
				join(cmd, []string{"--addr", srv.URL, "--token=tok", "--ca", ca, "--output=json"}),
				join(noun, []string{"-o", "json"}, rest, []string{"--addr", srv.URL}, []string{"--token", "tok", "--ca", ca}),
			} {
				before := len(*seen)
				out, err := vmctl(args...)
				if err != nil {
					t.Errorf("%s: vmctl %s: %v", group, strings.Join(args, " "), err)
					continue
				}
				dec := json.NewDecoder(strings.NewReader(out))
				var v any
				if err := dec.Decode(&v); err != nil || dec.More() && dec.Decode(&v) != nil {
					t.Errorf("%s: vmctl %s: not JSON (%v):\n%s", group, strings.Join(args, " "), err, out)
				}
				if len(*seen) == before || !strings.HasSuffix((*seen)[len(*seen)-1], " Bearer tok") {
					t.Errorf("%s: vmctl %s: the API saw %q", group, strings.Join(args, " "), (*seen)[before:])
				}
			}
		}
	}
}

func join(parts ...[]string) []string { return slices.Concat(parts...) }

// TestSizes: --memory and --disk read 2G, 2GB and 2GiB alike, as powers of 1024, and a
// size vmctl cannot read is refused with the flag and the units named, before any
// request.
func TestSizes(t *testing.T) {
	srv, ca, seen := fakeAPI(t)
	g := []string{"--addr", srv.URL, "--token", "tok", "--ca", ca, "-o", "json"}
	for _, size := range []string{"2G", "2GB", "2GiB", "2g", "2048M", "2048MiB"} {
		out, err := vmctl(join([]string{"vm", "create", "web", "--no-wait", "--memory", size, "--disk", size}, g)...)
		var got api.Guest
		if err != nil || json.Unmarshal([]byte(out), &got) != nil || got.MemoryBytes != 2<<30 || got.DiskBytes != 2<<30 {
			t.Errorf("--memory %s --disk %s: %v, %+v", size, size, err, got)
		}
	}
	before := len(*seen)
	for _, tc := range []struct{ flag, size, want string }{
		{"--memory", "2XB", `--memory: size "2XB": unknown unit "XB": K, M, G and T`},
		{"--memory", "lots", `--memory: size "lots" is not a number and a unit`},
		{"--memory", "1.3G", "--memory: 1395864371 bytes is not a whole number of MiB: give whole MiB, such as 1331MiB"},
		{"--disk", "-5G", `--disk: size "-5G" is negative`},
		{"--disk", "2Gi", `--disk: size "2Gi": unknown unit "Gi"`},
	} {
		_, err := vmctl(join([]string{"vm", "create", "web", tc.flag, tc.size}, g)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: %v, want %q", tc.flag, tc.size, err, tc.want)
		}
	}
	if len(*seen) != before {
		t.Errorf("a refused size reached the API: %v", (*seen)[before:])
	}
}

// oldAsks counts the reads of the guest "old" of the fake API.
var oldAsks atomic.Int32

// TestWaitsAskBlockingQueries: vm start and vm delete wait with blocking queries, given
// back the index of the last answer, so that each change is one request; against a
// master that answers without an index they ask once a second, not in a busy loop.
func TestWaitsAskBlockingQueries(t *testing.T) {
	srv, ca, seen := fakeAPI(t)
	g := []string{"--addr", srv.URL, "--token", "tok", "--ca", ca}
	count := func(from int, what string) int {
		n := 0
		for _, s := range (*seen)[from:] {
			if strings.HasPrefix(s, what+" ") {
				n++
			}
		}
		return n
	}
	from := len(*seen)
	if out, err := vmctl(join([]string{"vm", "start", "slow"}, g)...); err != nil || !strings.Contains(out, "slow  running") {
		t.Errorf("vm start slow: %v\n%s", err, out)
	}
	if n := count(from, "GET /v1/guests/slow"); n != 2 {
		t.Errorf("vm start slow read the guest %d times; want 2 (starting, then running)", n)
	}
	from = len(*seen)
	if out, err := vmctl(join([]string{"vm", "delete", "going"}, g)...); err != nil || !strings.Contains(out, "guest going deleted") {
		t.Errorf("vm delete going: %v\n%s", err, out)
	}
	if n := count(from, "GET /v1/guests/going"); n != 2 {
		t.Errorf("vm delete going read the guest %d times; want 2 (deleting, then 404)", n)
	}
	from = len(*seen)
	oldAsks.Store(0)
	if out, err := vmctl(join([]string{"vm", "start", "old"}, g)...); err != nil || !strings.Contains(out, "old   running") {
		t.Errorf("vm start old: %v\n%s", err, out)
	}
	if n := count(from, "GET /v1/guests/old"); n != 3 {
		t.Errorf("vm start old read the guest %d times; want 3, a second apart", n)
	}
	out, err := vmctl(join([]string{"vm", "start", "web", "--timeout", "300ms"}, g)...)
	if err != nil || !strings.Contains(out, "web   running") {
		t.Errorf("vm start web (running already): %v\n%s", err, out)
	}
}

// TestListAndShowTables: the lists and shows for people, one of each.
func TestListAndShowTables(t *testing.T) {
	srv, ca, _ := fakeAPI(t)
	g := []string{"--addr", srv.URL, "--token", "tok", "--ca", ca}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"node", "ls"}, "NAME  STATE  ACCEL  CPUS  MEMORY  GUESTS  LABELS\nn1    ready         0/0   0B/0B   0       \n"},
		{[]string{"vm", "ls"}, "NAME  STATE    NODE  OS  CPUS  MEMORY  FAILOVER\nweb   running  n1        0     0B      \n"},
		{[]string{"vm", "show", "web"}, "Name:     web\nState:    running\nNode:     n1\n"},
		{[]string{"vm", "why", "web"}, "guest web is running on n1\n1 node: fits\n"},
		{[]string{"net", "ls"}, "NAME  VNI  CIDR             MTU   GUESTS\nblue  42   192.168.42.0/24  auto  -\n"},
		{[]string{"net", "show", "blue"}, "NAME  VNI  CIDR             MTU   GUESTS\nblue  42   192.168.42.0/24  auto  -\n"},
		{[]string{"cluster", "status"}, "generation 1, master n1 (acting: true), voters \ncandidates, best first: -\n\nNODE  ROLE  LEASE LEFT  LOST AT\n"},
	} {
		out, err := vmctl(join(tc.args, g)...)
		if err != nil || !strings.HasPrefix(out, tc.want) {
			t.Errorf("vmctl %s: %v\n%q\nwant it to begin\n%q", strings.Join(tc.args, " "), err, out, tc.want)
		}
	}
}
