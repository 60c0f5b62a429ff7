package config

import (
	"bytes"
	"reflect"
	"regexp"
	"strconv"
	"testing"
)

var (
	lineRef    = regexp.MustCompile(`^line (\d+): `)
	lineNumber = regexp.MustCompile(`(^line |already set on line )(\d+)`) // where Parse names lines
)

// FuzzParse feeds arbitrary files to the config parser. It must never panic; an error
// names the line it is about (within the file) or, for what no single key decides, the
// rule; a config it accepts holds what the daemon relies on and validates again as it
// is; a comment line in front changes nothing but the line numbers.
func FuzzParse(f *testing.F) {
	f.Add([]byte("name = n1\nmaster = http://10.0.0.1:7460\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Parse(bytes.NewReader(data))
		n2, err2 := Parse(bytes.NewReader(append([]byte("# a comment\n"), data...)))
		if err != nil {
			if m := lineRef.FindStringSubmatch(err.Error()); m != nil {
				line, _ := strconv.Atoi(m[1])
				if lines := bytes.Count(data, []byte("\n")) + 1; line < 1 || line > lines {
					t.Fatalf("error names line %d of a %d-line file: %v", line, lines, err)
				}
			}
			shifted := lineNumber.ReplaceAllStringFunc(err.Error(), func(s string) string {
				m := lineNumber.FindStringSubmatch(s)
				n, _ := strconv.Atoi(m[2])
				return m[1] + strconv.Itoa(n+1)
			})
			if err2 == nil || err2.Error() != shifted {
				t.Fatalf("a comment line in front: %v, then %v", err, err2)
			}
			return
		}
		if err2 != nil || !reflect.DeepEqual(n, n2) {
			t.Fatalf("a comment line in front changed the config: %+v, %v", n2, err2)
		}
		switch {
		case n.Name == "" || (!n.Management && n.Master == ""):
			t.Fatalf("accepted without name or master: %+v", n)
		case n.Timing.Validate() != nil:
			t.Fatalf("accepted timing that does not validate: %+v: %v", n.Timing, n.Timing.Validate())
		case n.RaftListen == "" || n.AgentListen == "" || n.GossipListen == "" || n.TokenFile == "" || n.Advertise == "":
			t.Fatalf("accepted without the derived addresses: %+v", n)
		case n.ShutdownTimeout <= 0 || n.NodeTimeout <= 0 || n.Timing.ConfirmTimeout <= 0:
			t.Fatalf("accepted a timeout that is not positive: %+v", n)
		}
		if err := n.Share.Validate(); err != nil {
			t.Fatalf("accepted share %+v: %v", n.Share, err)
		}
		again := n
		if err := again.Validate(); err != nil || !reflect.DeepEqual(again, n) {
			t.Fatalf("an accepted config does not validate again as it is: %v\n%+v\n%+v", err, n, again)
		}
	})
}
