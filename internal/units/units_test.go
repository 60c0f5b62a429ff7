package units

import "testing"

func TestParseBytes(t *testing.T) {
	good := map[string]int64{
		"2GiB": 2 << 30, "512MiB": 512 << 20, "20G": 20 << 30, "1.5G": 3 << 29,
		"1048576": 1 << 20, "4KiB": 4096, "1GB": 1e9, " 8 MiB ": 8 << 20, "100B": 100,
		"2gib": 2 << 30,
	}
	for in, want := range good {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "-1GiB", "two", "1XB", "NaN", "1e30GiB"} {
		if _, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) accepted a bad size", in)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{2 << 30: "2GiB", 128 << 20: "128MiB", 3 << 29: "1.5GiB", 512: "512B", 1 << 40: "1TiB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
