// Package version holds dvm's version, set at build time with
// -ldflags "-X github.com/dvmproject/dvm/internal/version.Version=…", and the one
// rule by which versions compare.
//
// Every part of dvm that two builds exchange carries the writer's version: the API
// (the Dvm-Version header), the replicated log's entries and snapshots, gossip
// metadata and the agents' reports. A reader that meets something it does not know
// names the version that wrote it, so an operator knows which node to upgrade.
package version

import (
	"fmt"
	"strconv"
	"strings"
)

// Version of this build: MAJOR.MINOR.PATCH, with an optional -PRERELEASE.
var Version = "0.5.0-dev"

// Unknown stands for the version of a build from before versions were carried: it
// sorts below every real version.
const Unknown = "unknown"

// V is a parsed version. Pre-release builds (0.2.0-dev) have the features of the
// release they lead to: versions are compared by MAJOR.MINOR.PATCH alone, so a
// development build of 0.2.0 takes part in a cluster as 0.2.0 does.
type V struct {
	Major, Minor, Patch int
	Pre                 string
}

// Parse reads MAJOR.MINOR.PATCH[-PRE] (a leading v is allowed).
func Parse(s string) (V, error) {
	t := strings.TrimPrefix(strings.TrimSpace(s), "v")
	core, pre, _ := strings.Cut(t, "-")
	if i := strings.IndexByte(core, '+'); i >= 0 { // build metadata counts for nothing
		core = core[:i]
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return V{}, fmt.Errorf("version %q is not MAJOR.MINOR.PATCH", s)
	}
	var n [3]int
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 || p == "" || (len(p) > 1 && p[0] == '0') {
			return V{}, fmt.Errorf("version %q is not MAJOR.MINOR.PATCH", s)
		}
		n[i] = v
	}
	return V{Major: n[0], Minor: n[1], Patch: n[2], Pre: pre}, nil
}

func (v V) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	return s
}

// Compare orders two versions by MAJOR.MINOR.PATCH: -1, 0 or +1. A version that does
// not parse (Unknown, "") sorts below every one that does, and equal to another such.
func Compare(a, b string) int {
	va, errA := Parse(a)
	vb, errB := Parse(b)
	switch {
	case errA != nil && errB != nil:
		return 0
	case errA != nil:
		return -1
	case errB != nil:
		return 1
	}
	for _, d := range [][2]int{{va.Major, vb.Major}, {va.Minor, vb.Minor}, {va.Patch, vb.Patch}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1
			}
			return 1
		}
	}
	return 0
}

// AtLeast says whether v is min or newer.
func AtLeast(v, min string) bool { return Compare(v, min) >= 0 }

// Or returns v, or Unknown for the empty version of a build that sent none.
func Or(v string) string {
	if v == "" {
		return Unknown
	}
	return v
}

// NextStep says whether nodes of version from and a node upgraded to to can run side
// by side: dvm supports one release of difference (N-1 and N), so an upgrade goes one
// minor release at a time (0.1 to 0.2, not to 0.3), and a major release is reached
// through its first minor (0.x to 1.0, then 1.1). Patch releases go anywhere within
// their minor. It returns "" when the step is supported, else why not.
func NextStep(from, to string) string {
	vf, errF := Parse(from)
	vt, errT := Parse(to)
	switch {
	case errT != nil:
		return fmt.Sprintf("version %q is not MAJOR.MINOR.PATCH", to)
	case errF != nil:
		return fmt.Sprintf("a node runs a dvmd of version %s, from before versions were carried: upgrade it to the first release that carries them before going further", Or(from))
	case Compare(to, from) < 0:
		return fmt.Sprintf("%s is older than %s: downgrades are not supported (a newer build may have written state an older one cannot read)", to, from)
	case vt.Major > vf.Major+1 || (vt.Major == vf.Major+1 && vt.Minor > 0):
		return fmt.Sprintf("%s to %s skips a release: upgrade every node to %d.0.x first", from, to, vf.Major+1)
	case vt.Major == vf.Major && vt.Minor > vf.Minor+1:
		return fmt.Sprintf("%s to %s skips a minor release: upgrade every node to %d.%d.x first", from, to, vf.Major, vf.Minor+1)
	}
	return ""
}
