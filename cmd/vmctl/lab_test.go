package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeLab writes a vmctl-lab into dir that prints its arguments and DVM_LAB_DIR, and
// exits with the status its last argument names after "exit=".
func fakeLab(t *testing.T, dir, tag string) {
	t.Helper()
	script := "#!/bin/sh\necho " + tag + " \"$@\" dir=$DVM_LAB_DIR\n" +
		"for a; do last=$a; done\ncase $last in exit=*) exit ${last#exit=};; esac\n"
	if err := os.WriteFile(filepath.Join(dir, labPlugin), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestLabRunsThePlugin runs this test binary as vmctl: `vmctl lab ARGS` runs vmctl-lab
// ARGS in its place, with its output and exit status, and says how to build it when it
// is missing.
func TestLabRunsThePlugin(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	fakeLab(t, bin, "plugin")
	run := func(path string, args ...string) (string, int) {
		cmd := exec.Command(self, args...)
		cmd.Env = append(os.Environ(), "VMCTL_TEST_AS_MAIN=1", "PATH="+path, "DVM_LAB_DIR=/srv/lab")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	for _, tc := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"lab", "kill", "n2", "--dir", "/x"}, "plugin kill n2 --dir /x dir=/srv/lab\n", 0},
		{[]string{"lab", "kill", "n2"}, "plugin kill n2 dir=/srv/lab\n", 0},
		// Flags after lab are the lab's, -o included; vmctl's -o before lab is passed on.
		{[]string{"lab", "status", "-o", "json"}, "plugin status -o json dir=/srv/lab\n", 0},
		{[]string{"-o", "json", "lab", "status"}, "plugin status --output json dir=/srv/lab\n", 0},
		{[]string{"lab", "--help"}, "plugin --help dir=/srv/lab\n", 0},
		{[]string{"lab", "faults", "run", "exit=1"}, "plugin faults run exit=1 dir=/srv/lab\n", 1},
		{[]string{"lab", "up", "exit=7"}, "plugin up exit=7 dir=/srv/lab\n", 7},
	} {
		out, code := run(bin, tc.args...)
		if out != tc.want || code != tc.code {
			t.Errorf("vmctl %s: %q, exit %d; want %q, exit %d", strings.Join(tc.args, " "), out, code, tc.want, tc.code)
		}
	}
	out, code := run(t.TempDir(), "lab", "up")
	if code != 1 || !strings.Contains(out, "go build -o") || !strings.Contains(out, "./cmd/vmctl-lab") {
		t.Errorf("without vmctl-lab: exit %d:\n%s\nwant exit 1 and how to build it", code, out)
	}
}

// TestLookPlugin: the vmctl-lab next to vmctl comes before one on PATH, so that a
// build's bin/vmctl runs the lab of the same build.
func TestLookPlugin(t *testing.T) {
	next, onPath := t.TempDir(), t.TempDir()
	fakeLab(t, onPath, "path")
	t.Setenv("PATH", onPath)
	if got, err := lookPlugin(labPlugin, next); err != nil || got != filepath.Join(onPath, labPlugin) {
		t.Errorf("only on PATH: %q, %v", got, err)
	}
	fakeLab(t, next, "next")
	if got, err := lookPlugin(labPlugin, next); err != nil || got != filepath.Join(next, labPlugin) {
		t.Errorf("next to vmctl and on PATH: %q, %v", got, err)
	}
	if err := os.Chmod(filepath.Join(next, labPlugin), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := lookPlugin(labPlugin, next); err != nil || got != filepath.Join(onPath, labPlugin) {
		t.Errorf("a file next to vmctl that is not executable: %q, %v", got, err)
	}
}
