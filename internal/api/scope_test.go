package api

import (
	"strings"
	"testing"
	"time"
)

func TestScopeAllows(t *testing.T) {
	need := []string{ScopeRead, ScopeOperator, ScopeAdmin, ScopeJoin}
	want := map[string][]bool{
		ScopeRead:     {true, false, false, false},
		ScopeOperator: {true, true, false, false},
		ScopeAdmin:    {true, true, true, true},
		ScopeJoin:     {false, false, false, true},
		"":            {false, false, false, false},
		"root":        {false, false, false, false},
	}
	for have, row := range want {
		for i, n := range need {
			if got := ScopeAllows(have, n); got != row[i] {
				t.Errorf("ScopeAllows(%q, %q) = %v", have, n, got)
			}
		}
	}
}

func TestCreateTokenNormalize(t *testing.T) {
	for _, tc := range []struct {
		req   CreateToken
		ttl   time.Duration
		field string
	}{
		{CreateToken{Name: "ci", Scope: "read"}, 0, ""},
		{CreateToken{Name: "ci", Scope: "operator", TTL: "12h"}, 12 * time.Hour, ""},
		{CreateToken{Name: "ci", Scope: "admin", TTL: "30d"}, 30 * 24 * time.Hour, ""},
		{CreateToken{Name: "rack4", Scope: "join"}, DefaultJoinTTL, ""},
		{CreateToken{Name: "rack4", Scope: "join", TTL: "2h"}, 2 * time.Hour, ""},
		{CreateToken{Name: "CI", Scope: "read"}, 0, "name"},
		{CreateToken{Name: "", Scope: "read"}, 0, "name"},
		{CreateToken{Name: "ci", Scope: "root"}, 0, "scope"},
		{CreateToken{Name: "ci"}, 0, "scope"},
		{CreateToken{Name: "ci", Scope: "read", TTL: "soon"}, 0, "ttl"},
		{CreateToken{Name: "ci", Scope: "read", TTL: "-1h"}, 0, "ttl"},
		{CreateToken{Name: "ci", Scope: "read", TTL: "10s"}, 0, "ttl"},
		{CreateToken{Name: "ci", Scope: "read", TTL: "4000d"}, 0, "ttl"},
		{CreateToken{Name: "ci", Scope: "read", TTL: "1.5d"}, 0, "ttl"},
	} {
		ttl, fe := tc.req.Normalize()
		switch {
		case tc.field == "" && fe != nil:
			t.Errorf("%+v: %v", tc.req, fe)
		case tc.field != "" && (fe == nil || fe.Field != tc.field || fe.Msg == ""):
			t.Errorf("%+v: %v, want an error in %s", tc.req, fe, tc.field)
		case tc.field == "" && ttl != tc.ttl:
			t.Errorf("%+v: ttl %v, want %v", tc.req, ttl, tc.ttl)
		}
	}
}

func TestJoinTokenRoundTrip(t *testing.T) {
	secret, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	j := JoinToken{Secret: secret, Masters: []string{"https://10.0.0.11:7460", "https://[fd00::12]:7460"}}
	j.CA[0], j.CA[31] = 1, 2
	got, err := ParseJoinToken(" " + j.String() + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if got.Secret != j.Secret || got.CA != j.CA || strings.Join(got.Masters, " ") != strings.Join(j.Masters, " ") {
		t.Fatalf("round trip: %+v, want %+v", got, j)
	}
	s := j.String()
	for _, bad := range []string{"", secret, "dvmjoin1.", "dvmjoin1.abc", s[:40] + s[41:], s[:len(s)-3],
		JoinToken{Secret: secret, Masters: []string{"http://10.0.0.11:7460"}}.String()} {
		if _, err := ParseJoinToken(bad); err == nil {
			t.Errorf("ParseJoinToken(%q) accepted", bad)
		}
	}
}
