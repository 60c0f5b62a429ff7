package version

import "testing"

func TestCompare(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"0.1.0", "0.1.0", 0},
		{"0.1.0-dev", "0.1.0", 0}, // a development build has its release's features
		{"0.1.0", "0.2.0", -1},
		{"0.10.0", "0.9.3", 1}, // numbers, not strings
		{"1.0.0", "0.99.99", 1},
		{"v0.2.1", "0.2.0", 1},
		{"0.2.0+abc", "0.2.0", 0},
		{Unknown, "0.0.1", -1},
		{"", "0.0.0", -1},
		{"0.0.0", "garbage", 1},
		{Unknown, "", 0},
	} {
		if got := Compare(c.a, c.b); got != c.want {
			t.Errorf("Compare(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := Compare(c.b, c.a); got != -c.want {
			t.Errorf("Compare(%q, %q) = %d, want %d", c.b, c.a, got, -c.want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, s := range []string{"", "1", "1.2", "1.2.3.4", "1.x.3", "01.2.3", "-1.2.3", "1..3"} {
		if v, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) = %v, want an error", s, v)
		}
	}
	if v, err := Parse("0.3.1-rc1"); err != nil || v.String() != "0.3.1-rc1" {
		t.Errorf("Parse(0.3.1-rc1) = %v, %v", v, err)
	}
}

func TestNextStep(t *testing.T) {
	for _, c := range []struct {
		from, to string
		ok       bool
	}{
		{"0.1.0", "0.1.3", true},
		{"0.1.0", "0.2.0", true},
		{"0.1.0-dev", "0.2.0", true},
		{"0.1.0", "0.3.0", false}, // skips 0.2
		{"0.9.0", "1.0.2", true},
		{"0.9.0", "1.1.0", false},  // skips 1.0
		{"0.9.0", "2.0.0", false},  // skips 1
		{"0.2.0", "0.1.0", false},  // a downgrade
		{Unknown, "0.2.0", false},  // from before versions
		{"0.2.0", "latest", false}, // not a version
	} {
		why := NextStep(c.from, c.to)
		if (why == "") != c.ok {
			t.Errorf("NextStep(%s, %s) = %q, want ok=%v", c.from, c.to, why, c.ok)
		}
	}
}
