package api

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestAssignedGuestTwinWireName: the twin flag of an assignment keeps its first wire
// name, standby, which agents of an earlier release read while a rolling upgrade mixes
// releases; the Go field says twin, the glossary's word.
func TestAssignedGuestTwinWireName(t *testing.T) {
	b, err := json.Marshal(AssignedGuest{Name: "db", Twin: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"standby":true`) {
		t.Fatalf("an assigned twin is %s: want \"standby\":true, the name earlier agents read", b)
	}
	var g AssignedGuest
	if err := json.Unmarshal([]byte(`{"name":"db","standby":true}`), &g); err != nil || !g.Twin {
		t.Fatalf(`{"standby":true} read as %+v (%v): want Twin`, g, err)
	}
}
