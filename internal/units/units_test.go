package units

import (
	"strings"
	"testing"
)

func TestParseBytes(t *testing.T) {
	good := map[string]int64{
		"2GiB": 2 << 30, "2GB": 2 << 30, "2G": 2 << 30, "2gib": 2 << 30, "2gb": 2 << 30, "2g": 2 << 30,
		"512MiB": 512 << 20, "512MB": 512 << 20, "512M": 512 << 20, "512m": 512 << 20,
		"4KiB": 4096, "4KB": 4096, "4k": 4096, "1TiB": 1 << 40, "1TB": 1 << 40, "1T": 1 << 40,
		"20G": 20 << 30, "1.5G": 3 << 29, ".5G": 1 << 29, "1048576": 1 << 20, " 8 MiB ": 8 << 20, "100B": 100, "100": 100,
	}
	for in, want := range good {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	// Each refusal says what was wrong and, where it can, which units there are.
	for in, want := range map[string]string{
		"":            "empty size",
		"GiB":         "not a number and a unit",
		"-1GiB":       "negative",
		"two":         "not a number and a unit",
		"1XB":         `unknown unit "XB": K, M, G and T`,
		"2Gi":         `unknown unit "Gi"`,
		"1PB":         `unknown unit "PB"`,
		"NaN":         "not a number and a unit",
		"1e3":         "not a number and a unit",
		"0x10":        "not a number and a unit",
		"1e30GiB":     "not a number and a unit",
		"1.G":         "not a number and a unit",
		"9000000000T": "too large",
	} {
		if _, err := ParseBytes(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseBytes(%q): %v, want an error saying %q", in, err, want)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{2 << 30: "2GiB", 128 << 20: "128MiB", 3 << 29: "1.5GiB", 512: "512B", 1 << 40: "1TiB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
		if back, err := ParseBytes(FormatBytes(n)); err != nil || back != n {
			t.Errorf("ParseBytes(FormatBytes(%d)) = %d, %v", n, back, err)
		}
	}
}
