package main

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
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
	switch r.URL.Path {
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
	case "/v1/networks/blue":
		v = api.Network{Name: "blue", VNI: 42, CIDR: "192.168.42.0/24"}
	case "/v1/cluster":
		v = api.ClusterStatus{Generation: 1, Master: "n1", Acting: true}
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
		"cluster": {{"cluster", "status"}},
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
