package roles

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPowerFenceAgent runs real agents (shell scripts) the way the master does: the
// options on standard input in fence-agents' form, the node's own options file after
// them, and only exit status 0 taken as done.
func TestPowerFenceAgent(t *testing.T) {
	dir := t.TempDir()
	got := filepath.Join(dir, "stdin")
	agent := filepath.Join(dir, "fence_test")
	if err := os.WriteFile(agent, []byte("#!/bin/sh\ncat > "+got+"\ngrep -q '^plug=n2$' "+got+" || { echo 'no such plug' >&2; exit 1; }\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	opts := filepath.Join(dir, "opts")
	if err := os.Mkdir(opts, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(opts, "n2"), []byte("ip=10.0.0.102\nusername=admin"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := PowerFenceAgent{Agent: agent, Action: "reboot", OptionsDir: opts}
	if err := p.Run(context.Background(), "n2"); err != nil {
		t.Fatalf("agent that succeeds: %v", err)
	}
	b, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	if want := "action=reboot\nplug=n2\nnodename=n2\nip=10.0.0.102\nusername=admin\n"; string(b) != want {
		t.Fatalf("agent's standard input:\n%s\nwant:\n%s", b, want)
	}
	// No options file for n3: the agent gets the three lines, and fails.
	err = p.Run(context.Background(), "n3")
	if err == nil || !strings.Contains(err.Error(), "no such plug") || !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("agent that fails: %v, want its exit status and output", err)
	}
	if err := p.Run(context.Background(), "../n2"); err == nil {
		t.Fatal("a node name with a path in it was passed to the agent")
	}
}
