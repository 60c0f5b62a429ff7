package main

import (
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/cmdline"
)

func labRun(args ...string) error {
	app := newApp(io.Discard)
	return app.Run(cmdline.Interspersed(app, append([]string{"vmctl-lab"}, args...)))
}

// TestCommandsActOnTheLabDir: every command that reads a lab reads the one DVM_LAB_DIR
// names (DIR/env sets it), or --dir wherever it is written; here a directory without a
// lab, which each command names in its refusal.
func TestCommandsActOnTheLabDir(t *testing.T) {
	fromEnv, fromFlag := t.TempDir(), t.TempDir()
	t.Setenv("DVM_LAB_DIR", fromEnv)
	for _, args := range [][]string{
		{"status"}, {"status", "-o", "json"}, {"down"}, {"kill", "n2"}, {"cut", "n2", "--from", "n1"}, {"heal"},
		{"pause", "n2"}, {"resume", "n2"}, {"restart", "n2"}, {"faults", "run", "--seed", "7"},
	} {
		if err := labRun(args...); err == nil || !strings.Contains(err.Error(), fromEnv+" has no lab.json") {
			t.Errorf("DVM_LAB_DIR=%s vmctl lab %s: %v", fromEnv, strings.Join(args, " "), err)
		}
		withFlag := append(append([]string(nil), args...), "--dir", fromFlag)
		if err := labRun(withFlag...); err == nil || !strings.Contains(err.Error(), fromFlag+" has no lab.json") {
			t.Errorf("vmctl lab %s: %v", strings.Join(withFlag, " "), err)
		}
	}
}

// TestBadArgumentsChangeNothing: wrong arguments are refused before any lab is read
// (the lab directory does not even exist) or brought up.
func TestBadArgumentsChangeNothing(t *testing.T) {
	t.Setenv("DVM_LAB_DIR", filepath.Join(t.TempDir(), "none"))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"up", "n1"}, "vmctl lab up takes no arguments"},
		{[]string{"kill"}, "usage: vmctl lab kill NODE"},
		{[]string{"pause", "n1", "n2"}, "usage: vmctl lab pause NODE"},
		{[]string{"cut", "--from", "n1"}, "usage: vmctl lab cut NODE"},
		{[]string{"heal", "n1", "n2"}, "usage: vmctl lab heal [NODE]"},
		{[]string{"status", "extra"}, "vmctl lab status takes no arguments"},
		{[]string{"status", "-o", "yaml"}, `--output "yaml": use table or json`},
		{[]string{"faults", "plan", "--nodes", "2"}, "needs a lab of 3 nodes at least"},
		{[]string{"faults", "plan", "--steps", "0"}, "--steps 0"},
		{[]string{"faults", "run", "extra"}, "takes no arguments"},
	} {
		if err := labRun(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("vmctl lab %s: %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
