// Package units parses and prints the byte sizes operators write: "2G", "2GB", "2GiB",
// "512M". One parser for the CLI, the API and config files, so a size means the same
// everywhere.
//
// Every unit is a power of 1024, whichever way it is written, in any case: K, KB and
// KiB are 1024 bytes; M, MB and MiB 1024²; G, GB and GiB 1024³; T, TB and TiB 1024⁴.
// dvm's sizes are guests' memory and disks, which QEMU (-m 2G), qemu-img and every RAM
// module count in powers of 1024: an operator who writes --memory 2GB means 2 GiB (a
// decimal 2 GB, 2 000 000 000 bytes, is not even a whole number of MiB). libvirt's XML
// alone reads GB as 10⁹; dvm writes its domains in KiB.
package units

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// Help says which units ParseBytes reads, for flag usage and error messages.
const Help = "K, M, G and T (also written KB or KiB, MB or MiB, ...) are powers of 1024; a bare number is bytes"

// multipliers maps a unit, upper-cased, to its size in bytes.
var multipliers = map[string]int64{"": 1, "B": 1}

func init() {
	for i, p := range []string{"K", "M", "G", "T"} {
		m := int64(1) << (10 * (i + 1))
		for _, u := range []string{p, p + "B", p + "IB"} {
			multipliers[u] = m
		}
	}
}

var sizeRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([A-Za-z]*)$`)

// ParseBytes reads a size such as "2G", "2GB", "2GiB", "1.5G", "512m" or "1048576"
// (see the package comment for the units). A fraction of a byte is dropped.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty size: write a number and a unit, such as 512M or 2G: %s", Help)
	}
	if strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("size %q is negative", s)
	}
	m := sizeRE.FindStringSubmatch(t)
	if m == nil {
		return 0, fmt.Errorf("size %q is not a number and a unit: write one such as 512M or 2G: %s", s, Help)
	}
	mult, ok := multipliers[strings.ToUpper(m[2])]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q: %s", s, m[2], Help)
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("size %q is not a number and a unit: write one such as 512M or 2G: %s", s, Help)
	}
	v := f * float64(mult)
	if v > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(v), nil
}

// FormatBytes prints a size in the largest binary unit that keeps it readable.
func FormatBytes(n int64) string {
	switch {
	case n >= 1<<40 && n%(1<<40) == 0:
		return fmt.Sprintf("%dTiB", n>>40)
	case n >= 1<<30:
		if n%(1<<30) == 0 {
			return fmt.Sprintf("%dGiB", n>>30)
		}
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		if n%(1<<20) == 0 {
			return fmt.Sprintf("%dMiB", n>>20)
		}
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
