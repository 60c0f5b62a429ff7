package opscheck

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// eventKindSources are where the code names the kinds of events it records, and who
// writes them (the glossary's "written by" column): the master's Record calls (made
// anywhere: the daemon passes the runner's events on to it), the events it writes with
// a change (eventCommand), its drain kinds and write events; the roles runner's own
// events, and the kinds of the role machine's Notify actions, which the runner records.
var eventKindSources = []struct {
	glob   string // relative to the top; "..." is every directory
	re     *regexp.Regexp
	writer string
}{
	{".../*.go", regexp.MustCompile(`\.Record\("([a-z-]+)"`), "master"},
	{"internal/master/*.go", regexp.MustCompile(`\.eventCommand\("([a-z-]+)"`), "master"},
	{"internal/master/drain.go", regexp.MustCompile(`kind :?= "([a-z-]+)"`), "master"},
	{"internal/master/*.go", regexp.MustCompile(`EventWrite = "([a-z-]+)"`), "master"},
	{"internal/master/*.go", regexp.MustCompile(`EventConsole = "([a-z-]+)"`), "master"},
	{"internal/roles/*.go", regexp.MustCompile(`r\.event\("([a-z-]+)"`), "role machine"},
	{"failover/*.go", regexp.MustCompile(`Notify\{[^}]*Kind: "([a-z-]+)"`), "role machine"},
}

// codeFiles lists the non-test Go files a source's glob names.
func codeFiles(t *testing.T, glob string) []string {
	t.Helper()
	var files []string
	if rest, ok := strings.CutPrefix(glob, ".../"); ok {
		err := filepath.WalkDir(root(t), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") && p != root(t) {
				return filepath.SkipDir
			}
			if ok, _ := filepath.Match(rest, d.Name()); ok && !d.IsDir() {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	} else {
		var err error
		if files, err = filepath.Glob(filepath.Join(root(t), glob)); err != nil {
			t.Fatal(err)
		}
	}
	return slices.DeleteFunc(files, func(f string) bool { return strings.HasSuffix(f, "_test.go") })
}

// eventKinds are the kinds the code records, each with its writer and a file that
// records it.
func eventKinds(t *testing.T) map[string][2]string {
	t.Helper()
	code := map[string][2]string{}
	for _, src := range eventKindSources {
		files := codeFiles(t, src.glob)
		if len(files) == 0 {
			t.Fatalf("%s: no files: update this test to where events are recorded", src.glob)
		}
		found := false
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range src.re.FindAllStringSubmatch(string(b), -1) {
				code[m[1]], found = [2]string{src.writer, filepath.Base(f)}, true
			}
		}
		if !found {
			t.Errorf("%s names no event kind matching %s: update this test to where events are recorded", src.glob, src.re)
		}
	}
	return code
}

// kindRow is one row of the glossary's table of event kinds.
type kindRow struct {
	kinds  []string // first column
	writer string   // "written by"
	traces []string // the trace lines' words, in backquotes
}

var backquoted = regexp.MustCompile("`([^`]+)`")

func glossaryKindRows(t *testing.T) []kindRow {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), "docs", "glossary.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(b), "## Event kinds")
	if !ok {
		t.Fatal("docs/glossary.md has no section ## Event kinds")
	}
	var rows []kindRow
	for _, line := range strings.Split(table, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(line), "|"), "|"), "|")
		if len(cells) != 4 {
			t.Fatalf("docs/glossary.md, event kinds: want 4 columns (kind, what, written by, trace line), have %d: %s", len(cells), line)
		}
		var r kindRow
		for _, m := range backquoted.FindAllStringSubmatch(cells[0], -1) {
			r.kinds = append(r.kinds, m[1])
		}
		r.writer = strings.TrimSpace(strings.Split(cells[2], "(")[0])
		for _, m := range backquoted.FindAllStringSubmatch(cells[3], -1) {
			r.traces = append(r.traces, m[1])
		}
		rows = append(rows, r)
	}
	if len(rows) < 10 {
		t.Fatalf("docs/glossary.md: found only %d rows of event kinds: the test no longer reads the table", len(rows))
	}
	return rows
}

// TestGlossaryNamesEveryEventKind: the glossary's table of event kinds lists every
// kind the code records, and no other, each with the part that writes it.
func TestGlossaryNamesEveryEventKind(t *testing.T) {
	code := eventKinds(t)
	docs := map[string]string{} // kind -> writer in the glossary
	for _, r := range glossaryKindRows(t) {
		for _, k := range r.kinds {
			docs[k] = r.writer
		}
	}
	for kind, c := range code {
		w, ok := docs[kind]
		switch {
		case !ok:
			t.Errorf("event kind %q (%s) is not in docs/glossary.md's table of event kinds", kind, c[1])
		case w != c[0]:
			t.Errorf("docs/glossary.md: event kind %q is written by the %s (%s), not the %s", kind, c[0], c[1], w)
		}
	}
	for kind := range docs {
		if _, ok := code[kind]; !ok {
			t.Errorf("docs/glossary.md lists event kind %q, which no code records", kind)
		}
	}
}

// traceLine is a line of a role machine trace: "  5.2s n2: declare-lost n1 (...)".
var traceLine = regexp.MustCompile(`(?m)^ *[0-9.]+s [a-z0-9]+: (.*)$`)

// TestGlossaryTraceWords: events and traces share their words. Every trace word the
// glossary gives is one the role machine's traces (failover/testdata) print, and an
// event the role machine writes is named by its trace word: an action's (promote) or
// what the machine tells (notify on-hold).
func TestGlossaryTraceWords(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(root(t), "failover", "testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("failover/testdata: no traces (%v)", err)
	}
	var lines []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range traceLine.FindAllStringSubmatch(string(b), -1) {
			lines = append(lines, m[1])
		}
	}
	// word is how a trace line begins for a trace cell: "notify KIND" for what the
	// machine tells, else the action's first word ("role A -> B" is "role").
	word := func(cell string) string {
		f := strings.Fields(cell)
		if len(f) > 1 && f[0] == "notify" {
			return f[0] + " " + f[1] + " "
		}
		return f[0] + " "
	}
	for _, r := range glossaryKindRows(t) {
		for _, cell := range r.traces {
			w := word(cell)
			if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, w) }) {
				t.Errorf("docs/glossary.md: event %v has trace line %q, which no trace in failover/testdata prints", r.kinds, cell)
			}
		}
		if r.writer != "role machine" {
			continue
		}
		for _, k := range r.kinds {
			if !slices.ContainsFunc(r.traces, func(c string) bool { w := word(c); return w == k+" " || w == "notify "+k+" " }) {
				t.Errorf("docs/glossary.md: event %q of the role machine has no trace line of its name (%q or %q): %v", k, k, "notify "+k, r.traces)
			}
		}
	}
}

// TestGlossaryMetricsExist: a metric the glossary names is one dvmd exports by that
// name (a string literal in its code), so a renamed metric cannot leave the glossary
// behind.
func TestGlossaryMetricsExist(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root(t), "docs", "glossary.md"))
	if err != nil {
		t.Fatal(err)
	}
	var src strings.Builder
	for _, f := range codeFiles(t, ".../*.go") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src.Write(b)
	}
	names := regexp.MustCompile(`dvm_[a-z_]+`).FindAllString(string(b), -1)
	if len(names) == 0 {
		t.Fatal("docs/glossary.md names no dvm_ metric: the test no longer reads it")
	}
	for _, n := range names {
		if !strings.Contains(src.String(), `"`+n+`"`) {
			t.Errorf("docs/glossary.md names metric %s, which no code exports", n)
		}
	}
}
