package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEpochSurvivesReopenAndRefusesGarbage(t *testing.T) {
	dir := t.TempDir()
	e, err := OpenEpoch(dir)
	if err != nil || e.Get() != 0 {
		t.Fatalf("fresh epoch: %d, %v", e.Get(), err)
	}
	if err := e.Set(3); err != nil {
		t.Fatal(err)
	}
	again, err := OpenEpoch(dir)
	if err != nil || again.Get() != 3 {
		t.Fatalf("reopened epoch: %d, %v; want 3", again.Get(), err)
	}
	if err := os.WriteFile(filepath.Join(dir, "epoch"), []byte("three\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenEpoch(dir); err == nil || !strings.Contains(err.Error(), "not a generation number") {
		t.Fatalf("garbage epoch file: %v", err)
	}
	var none *Epoch
	if none.Get() != 0 || none.Set(1) != nil {
		t.Fatal("a store without an epoch keeps none")
	}
}
