package agent

import (
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/version"
)

// TestAssignmentFromANewerMasterIsRefused: an assignment with a field this agent does
// not know is refused, naming the field, the master and its version; one it knows is
// read.
func TestAssignmentFromANewerMasterIsRefused(t *testing.T) {
	var asg api.Assignment
	ok := `{"index":7,"guests":[{"name":"web","uuid":"u","os":"linux","cpus":1,"memory_bytes":1,"disk_bytes":0,"failover":"none","desired":"running"}],"master":"n1","version":"` + version.Version + `"}`
	if err := decodeAssignment([]byte(ok), &asg); err != nil || asg.Index != 7 || asg.Guests[0].Name != "web" {
		t.Fatalf("%+v %v", asg, err)
	}
	newer := `{"index":8,"guests":[{"name":"web","uuid":"u","os":"linux","cpus":1,"memory_bytes":1,"disk_bytes":0,"failover":"none","desired":"running","hold":true}],"master":"n2","version":"9.0.0"}`
	err := decodeAssignment([]byte(newer), &asg)
	for _, want := range []string{`field "hold"`, "master n2 (dvmd 9.0.0)", "upgraded to 9.0.0 or newer", "keeps its guests as they are"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %v lacks %q", err, want)
		}
	}
	if err := decodeAssignment([]byte(`{"index":`), &asg); err == nil || !strings.Contains(err.Error(), "cannot be read") {
		t.Errorf("a cut assignment: %v", err)
	}
}
