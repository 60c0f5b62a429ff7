package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/cmdline"
)

// TestMain lets the test binary run as vmctl, so the completion script is tried against
// the real program by a real bash.
func TestMain(m *testing.M) {
	if os.Getenv("VMCTL_TEST_AS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestCompletionScripts(t *testing.T) {
	for sh, want := range map[string]string{"bash": "complete -o bashdefault", "zsh": "compdef _vmctl_zsh_autocomplete vmctl"} {
		var out bytes.Buffer
		if err := newApp(&out).Run([]string{"vmctl", "completion", sh}); err != nil {
			t.Fatalf("completion %s: %v", sh, err)
		}
		if !strings.Contains(out.String(), want) || !strings.Contains(out.String(), cmdline.CompletionFlag) {
			t.Errorf("completion %s lacks %q:\n%s", sh, want, out.String())
		}
	}
	for _, bad := range [][]string{{"vmctl", "completion"}, {"vmctl", "completion", "fish"}} {
		if err := newApp(&bytes.Buffer{}).Run(bad); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}

// TestCompletionInBash sources the bash script and completes partial command lines with
// the real vmctl.
func TestCompletionInBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	wrapper := "#!/bin/sh\nVMCTL_TEST_AS_MAIN=1 exec " + self + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(bin, "vmctl"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	// vmctl lab's words are vmctl-lab's: this one offers two, when asked as completion.
	plugin := "#!/bin/sh\nfor a; do last=$a; done\n[ \"$last\" = " + cmdline.CompletionFlag + " ] && printf 'up\\nkill\\n'\n"
	if err := os.WriteFile(filepath.Join(bin, labPlugin), []byte(plugin), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ words, want string }{
		{"vmctl vm mi", "migrate"},
		{"vmctl ne", "net"},
		{"vmctl vm create --cp", "--cpus"},
		// A guest name before the cursor: vmctl lists words and does not act.
		{"vmctl vm delete web he", "help"},
		{"vmctl lab ki", "kill"},
	} {
		script := `source <(vmctl completion bash)
COMP_WORDS=(` + tc.words + `); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_vmctl_bash_autocomplete; echo "${COMPREPLY[@]}"`
		cmd := exec.Command(bash, "-c", script)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "DVM_TOKEN=", "DVM_ADDR=http://127.0.0.1:9")
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != tc.want {
			t.Errorf("complete %q: got %q (%v), want %q", tc.words, out, err, tc.want)
		}
	}
}
