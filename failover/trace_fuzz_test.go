package failover_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzParseTrace feeds arbitrary bytes to the trace parser, through a file as the trace
// tests read them. It must never panic; an error names the file and line; and parsing
// must lose nothing, since -rewrite writes the blocks back: every line of the file is
// in a block's comments, command, input, ---- line or expected output, in order, or is
// the blank line that ends a block, or is in the tail. The scenario traces in testdata
// are seeds, besides testdata/fuzz.
func FuzzParseTrace(f *testing.F) {
	traces, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(traces) == 0 {
		f.Fatalf("no traces in testdata: %v", err)
	}
	for _, path := range traces {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "trace.txt")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		blocks, tail, err := parseTrace(path)
		if err != nil {
			if !strings.HasPrefix(err.Error(), path+":") {
				t.Fatalf("error without the file and line: %v", err)
			}
			return
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		var rebuilt []string
		for _, b := range blocks {
			if strings.TrimSpace(b.cmd) == "" || strings.HasPrefix(b.cmd, "#") {
				t.Fatalf("line %d: command %q is blank or a comment", b.line, b.cmd)
			}
			rebuilt = append(rebuilt, b.pre...)
			if b.line != len(rebuilt)+1 {
				t.Fatalf("command %q said to be on line %d, is on line %d", b.cmd, b.line, len(rebuilt)+1)
			}
			rebuilt = append(append(append(rebuilt, b.cmd), b.input...), "----")
			rebuilt = append(rebuilt, b.expected...)
			if len(rebuilt) < len(lines) {
				rebuilt = append(rebuilt, "") // the blank line that ends the block
			}
		}
		rebuilt = append(rebuilt, tail...)
		if !slices.Equal(rebuilt, lines) {
			t.Fatalf("parsing lost or changed lines:\n%q\n%q", lines, rebuilt)
		}
	})
}
