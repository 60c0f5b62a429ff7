// Package units parses and prints the byte sizes operators write: "2GiB", "512MiB",
// "20G". One parser for the CLI, the API and config files, so a size means the same
// everywhere.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var suffixes = []struct {
	name string
	mult int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"TB", 1000 * 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseBytes reads a size such as "2GiB", "1.5G" or "1048576". Binary suffixes (K, M, G,
// T, with or without "iB") are powers of 1024; "KB", "MB", "GB", "TB" are powers of 1000,
// as in IEC usage. A bare number is bytes.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty size: write a size such as 512MiB or 2GiB")
	}
	mult := int64(1)
	num := t
	for _, sfx := range suffixes {
		if strings.HasSuffix(strings.ToUpper(t), strings.ToUpper(sfx.name)) {
			// "B" alone must not swallow the "B" of "KiB"; the table lists longer first.
			num = strings.TrimSpace(t[:len(t)-len(sfx.name)])
			mult = sfx.mult
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("size %q is not a number with a unit: write a size such as 512MiB or 2GiB", s)
	}
	if f < 0 {
		return 0, fmt.Errorf("size %q is negative", s)
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
