package store

import (
	"testing"
	"time"
)

// TestTokensSurviveSnapshotAndReopen: API tokens are kept by name and found by the hash
// of their secret; a token put again under its name (revoked, or made anew) no longer
// answers to its old hash; all of it survives a snapshot and a restart.
func TestTokensSurviveSnapshotAndReopen(t *testing.T) {
	dir := t.TempDir()
	s := single(t, dir)
	now := time.Now().UTC().Truncate(time.Second)
	ops := &TokenRecord{Name: "ops", Scope: "operator", Hash: "aa", CreatedAt: now}
	ci := &TokenRecord{Name: "ci", Scope: "read", Hash: "bb", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if _, err := s.Apply(Command{Op: OpPutToken, Token: ops}, Command{Op: OpPutToken, Token: ci}); err != nil {
		t.Fatal(err)
	}
	renewed := *ops
	renewed.Hash = "cc"
	revoked := *ci
	revoked.RevokedAt = now
	if _, err := s.Apply(Command{Op: OpPutToken, Token: &renewed}, Command{Op: OpPutToken, Token: &revoked}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(Command{Op: OpPutToken, Token: &TokenRecord{Name: "x"}}); err == nil {
		t.Fatal("a token without a hash was accepted")
	}
	check := func(s *Store, when string) {
		t.Helper()
		if _, ok := s.TokenByHash("aa"); ok {
			t.Errorf("%s: the old secret of ops still answers", when)
		}
		if tok, ok := s.TokenByHash("cc"); !ok || tok.Name != "ops" || tok.Scope != "operator" {
			t.Errorf("%s: ops by its new hash: %+v %v", when, tok, ok)
		}
		if tok, ok := s.Token("ci"); !ok || tok.RevokedAt.IsZero() || !tok.ExpiresAt.Equal(now.Add(time.Hour)) {
			t.Errorf("%s: ci: %+v %v", when, tok, ok)
		}
		if all := s.Tokens(); len(all) != 2 || all[0].Name != "ci" || all[1].Name != "ops" {
			t.Errorf("%s: tokens %+v", when, all)
		}
	}
	check(s, "applied")
	if err := s.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = single(t, dir)
	defer s.Close()
	waitTrue(t, "state restored", func() bool { _, ok := s.Token("ops"); return ok })
	check(s, "after a snapshot and a restart")
}
