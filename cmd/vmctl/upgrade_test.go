package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
)

// TestUpgradeCheckCommand: the nodes' versions in a table; exit 0 when ready, 2 with
// the reasons when not; --to is passed on.
func TestUpgradeCheckCommand(t *testing.T) {
	var asked []string
	check := api.UpgradeCheck{Ready: true, Reasons: []string{}, Oldest: "0.1.0", Newest: "0.2.0", Master: "n1", Acting: true,
		Voters: []string{"n1", "n2", "n3"}, Nodes: []api.UpgradeNode{{Name: "n1", Version: "0.2.0", State: "ready", Role: "master"},
			{Name: "n2", Version: "0.1.0", State: "ready", Role: "backup"}}}
	g := tlsAPI(t, func(w http.ResponseWriter, r *http.Request) {
		asked = append(asked, r.URL.RequestURI())
		json.NewEncoder(w).Encode(check)
	})
	out, err := vmctl(append(g, "node", "upgrade-check", "--to", "0.2.0")...)
	if err != nil || !strings.Contains(out, "n2    0.1.0    ready  backup") || !strings.Contains(out, "ready: upgrade the next node") ||
		asked[0] != "/v1/cluster/upgrade-check?to=0.2.0" {
		t.Fatalf("ready: %q %v (asked %v)", out, err, asked)
	}
	check.Ready, check.Reasons = false, []string{"node n3 is lost: bring it back"}
	_, err = vmctl(append(g, "node", "upgrade-check")...)
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "node n3 is lost") {
		t.Fatalf("not ready: %v (exit %d)", err, exitCode(err))
	}
}
