package opscheck

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/failover"
)

// TestOperatorGuideNamesEveryConfigKey: every key dvmd's config parser accepts
// (internal/config, the `case "key":` of Node.set) is in the operator guide's reference.
func TestOperatorGuideNamesEveryConfigKey(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(root(t), "internal", "config", "config.go"))
	if err != nil {
		t.Fatal(err)
	}
	body := string(src)
	start := strings.Index(body, "func (n *Node) set(")
	if start < 0 {
		t.Fatal("internal/config/config.go: no func (n *Node) set: update this test to where the keys are parsed")
	}
	body = body[start:]
	if end := strings.Index(body, "\n}\n"); end > 0 {
		body = body[:end]
	}
	keys := regexp.MustCompile(`case ((?:"[a-z_]+",? ?)+):`).FindAllStringSubmatch(body, -1)
	guide, err := os.ReadFile(filepath.Join(root(t), "docs", "operator-guide.md"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range keys {
		for _, k := range regexp.MustCompile(`"([a-z_]+)"`).FindAllStringSubmatch(m[1], -1) {
			n++
			if !strings.Contains(string(guide), "`"+k[1]+"`") {
				t.Errorf("config key %s is not in docs/operator-guide.md's config reference", k[1])
			}
		}
	}
	// The timing keys are parsed from failover.Timing, which names them.
	for k := range (&failover.Timing{}).Keys() {
		n++
		if !strings.Contains(string(guide), "`"+k+"`") {
			t.Errorf("config key %s is not in docs/operator-guide.md's config reference", k)
		}
	}
	if n < 20 {
		t.Fatalf("found only %d config keys in internal/config/config.go: the test no longer reads them", n)
	}
}
