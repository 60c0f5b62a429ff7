package depcheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/dvmproject/dvm"

// pkg is what `go list -json` says of a package.
type pkg struct {
	ImportPath string
	Standard   bool
	Imports    []string // direct
	Deps       []string // transitive
	CgoFiles   []string
}

// list is every package of the module and everything they import, with cgo on (as
// dvmd and vmctl-lab are built), so that a dependency's cgo files show.
func list(t *testing.T) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-deps", "-json", module+"/...")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs[p.ImportPath] = p
	}
	return pkgs
}

func ours(path string) bool { return path == module || strings.HasPrefix(path, module+"/") }

func short(path string) string { return strings.TrimPrefix(path, module+"/") }

// under reports whether path is dir or below it (dir relative to the module).
func under(path, dir string) bool {
	p := short(path)
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// matching lists our packages for which match holds, failing when there is none: a
// rule about packages that were renamed away would otherwise pass unnoticed.
func matching(t *testing.T, pkgs map[string]pkg, rule string, match func(string) bool) []pkg {
	t.Helper()
	var out []pkg
	for path, p := range pkgs {
		if ours(path) && match(path) {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		t.Fatalf("rule %q matches no package of the module: update it to the tree", rule)
	}
	slices.SortFunc(out, func(a, b pkg) int { return strings.Compare(a.ImportPath, b.ImportPath) })
	return out
}

// Modules that need cgo or that only servers need; vmctl and the API client must link
// none of them.
var serverOnly = []string{
	"libvirt.org/go/libvirt",
	"github.com/hashicorp/raft",
	"github.com/hashicorp/raft-boltdb",
	"github.com/hashicorp/memberlist",
	"go.etcd.io/bbolt",
	"github.com/digitalocean/go-qemu",
	"github.com/vishvananda/netlink",
}

func isServerOnly(path string) bool {
	for _, m := range serverOnly {
		if path == m || strings.HasPrefix(path, m+"/") {
			return true
		}
	}
	return false
}

func TestImportRules(t *testing.T) {
	pkgs := list(t)

	// vmctl: none of the server-only modules, no package with cgo outside the standard
	// library (whose cgo, in net and os/user, has pure-Go fallbacks), and of dvm only
	// the API client and what it shares with the CLI.
	// internal/snapshot is the snapshot file's format (vmctl checks a file before it
	// sends or keeps it) and internal/atomicfile writes a file whole: neither reaches
	// the cluster.
	vmctlMay := []string{"internal/api", "internal/units", "internal/cmdline", "internal/version", "hypervisor/profile",
		"internal/snapshot", "internal/atomicfile"}
	for _, p := range matching(t, pkgs, "vmctl", func(path string) bool { return short(path) == "cmd/vmctl" }) {
		for _, d := range p.Deps {
			switch dep := pkgs[d]; {
			case isServerOnly(d):
				t.Errorf("cmd/vmctl links %s: vmctl must build without cgo and link no server module", d)
			case !dep.Standard && len(dep.CgoFiles) > 0:
				t.Errorf("cmd/vmctl links %s, which uses cgo (%s)", d, strings.Join(dep.CgoFiles, ", "))
			case ours(d) && !slices.Contains(vmctlMay, short(d)):
				t.Errorf("cmd/vmctl imports %s: vmctl reaches the cluster only through internal/api (it may import %s)", short(d), strings.Join(vmctlMay, ", "))
			}
		}
	}

	// The API client, which vmctl and every agent use: no server module, no cgo.
	for _, p := range matching(t, pkgs, "api", func(path string) bool { return short(path) == "internal/api" }) {
		for _, d := range p.Deps {
			if isServerOnly(d) || !pkgs[d].Standard && len(pkgs[d].CgoFiles) > 0 {
				t.Errorf("internal/api links %s: the API client stays free of cgo and server modules", d)
			}
		}
	}

	// scheduler/ and failover/: pure policy. The standard library only, and nothing of
	// it that does I/O; time is fed to them, never read.
	noIO := []string{"os", "os/exec", "os/signal", "net", "net/http", "syscall", "io/fs", "path/filepath"}
	pure := func(path string) bool {
		return under(path, "scheduler") || under(path, "failover")
	}
	for _, p := range matching(t, pkgs, "scheduler and failover", pure) {
		for _, d := range p.Deps {
			if !pkgs[d].Standard && !(ours(d) && pure(d)) {
				t.Errorf("%s depends on %s: scheduler/ and failover/ import the standard library only", short(p.ImportPath), short(d))
			}
		}
		for _, i := range p.Imports {
			if slices.Contains(noIO, i) {
				t.Errorf("%s imports %s: scheduler/ and failover/ do no I/O", short(p.ImportPath), i)
			}
		}
	}

	// hypervisor/ and netplane/: mechanism. No HTTP, and no other dvm package (none of
	// the policy of scheduler/ and failover/, none of the state).
	mech := func(path string) bool { return under(path, "hypervisor") || under(path, "netplane") }
	for _, p := range matching(t, pkgs, "hypervisor and netplane", mech) {
		for _, d := range p.Deps {
			if d == "net/http" {
				t.Errorf("%s depends on net/http: hypervisor/ and netplane/ know no HTTP", short(p.ImportPath))
			}
			if ours(d) && !mech(d) {
				t.Errorf("%s imports %s: hypervisor/ and netplane/ import no other dvm package", short(p.ImportPath), short(d))
			}
		}
	}

	// The lab is a test rig: vmctl-lab, the lab's own packages, the peer lab built on
	// its hosts and the end-to-end tests use it, and nothing that ships to hosts
	// (tests elsewhere may borrow its guest image).
	labUsers := func(path string) bool {
		return short(path) == "cmd/vmctl-lab" || under(path, "internal/lab") || under(path, "internal/peerlab") || under(path, "internal/e2e")
	}
	matching(t, pkgs, "the lab", func(path string) bool { return under(path, "internal/lab") })
	for path, p := range pkgs {
		if !ours(path) || labUsers(path) {
			continue
		}
		for _, i := range p.Imports {
			if ours(i) && under(i, "internal/lab") {
				t.Errorf("%s imports %s: only cmd/vmctl-lab, internal/lab, internal/peerlab and internal/e2e use the lab", short(path), short(i))
			}
		}
	}
}
