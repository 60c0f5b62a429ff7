package main

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/snapshot"
)

// tlsAPI serves handler over TLS and returns vmctl's flags that reach it.
func tlsAPI(t *testing.T, handler http.HandlerFunc) []string {
	t.Helper()
	srv := httptest.NewTLSServer(handler)
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"DVM_ADDR", "DVM_TOKEN", "DVM_CA"} {
		t.Setenv(v, "")
	}
	return []string{"--addr", srv.URL, "--token", "tok", "--ca", ca}
}

// snapshotAPI serves file as GET /v1/cluster/snapshot and records the bodies PUT to
// it.
func snapshotAPI(t *testing.T, file []byte) (g []string, put *[][]byte) {
	t.Helper()
	var got [][]byte
	g = tlsAPI(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "GET" && r.URL.Path == "/v1/cluster/snapshot":
			w.Write(file)
		case r.Method == "PUT" && r.URL.Path == "/v1/cluster/snapshot":
			b, _ := io.ReadAll(r.Body)
			got = append(got, b)
			json.NewEncoder(w).Encode(api.SnapshotRestored{SnapshotIndex: 12, Guests: 2, Adoption: api.Adoption{Adopting: true, Awaiting: []string{"n1", "n2"}}})
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	})
	return g, &got
}

func snapshotBytes(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	state := []byte(`{"format":1,"version":"0.1.0","index":12,"nodes":[],"guests":[],"networks":[],"events":[],"meta":{"generation":1}}`)
	if _, err := snapshot.Write(&buf, snapshot.Header{Version: "0.1.0", Index: 12, Term: 2, Master: "n1", TakenAt: time.Now()}, state); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestSnapshotSave: save writes the master's file whole, mode 0600, only once its
// checksum holds; a damaged answer writes nothing and leaves an older file alone.
func TestSnapshotSave(t *testing.T) {
	good := snapshotBytes(t)
	g, _ := snapshotAPI(t, good)
	path := filepath.Join(t.TempDir(), "c.snap")
	out, err := vmctl(append(g, "cluster", "snapshot", "save", path)...)
	if err != nil || !strings.Contains(out, "snapshot of index 12 (term 2") || !strings.Contains(out, "written to "+path) {
		t.Fatalf("save: %q %v", out, err)
	}
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, good) {
		t.Fatalf("saved file differs: %v", err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("saved file mode %v", st.Mode())
	}
	damaged := bytes.Clone(good)
	damaged[len(damaged)-3] ^= 1
	g2, _ := snapshotAPI(t, damaged)
	if _, err := vmctl(append(g2, "cluster", "snapshot", "save", path)...); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("save of a damaged answer: %v", err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, good) {
		t.Fatal("a damaged answer replaced the saved file")
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("files left behind: %v", entries)
	}
}

// TestSnapshotRestore: restore sends the file as it is and says what follows; a
// damaged or truncated file is refused before anything is sent.
func TestSnapshotRestore(t *testing.T) {
	good := snapshotBytes(t)
	g, put := snapshotAPI(t, good)
	dir := t.TempDir()
	path := filepath.Join(dir, "c.snap")
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := vmctl(append(g, "cluster", "snapshot", "restore", path)...)
	if err != nil || len(*put) != 1 || !bytes.Equal((*put)[0], good) || !strings.Contains(out, "waiting for n1, n2 to report") ||
		!strings.Contains(out, "the snapshot's tokens are in force now") {
		t.Fatalf("restore: %q %v (sent %d)", out, err, len(*put))
	}
	for what, b := range map[string][]byte{"truncated": good[:len(good)-5], "damaged": append(bytes.Clone(good[:len(good)-1]), 'x')} {
		bad := filepath.Join(dir, what)
		os.WriteFile(bad, b, 0o600)
		_, err := vmctl(append(g, "cluster", "snapshot", "restore", bad)...)
		if err == nil || !strings.Contains(err.Error(), "nothing was changed") || len(*put) != 1 {
			t.Fatalf("restore of a %s file: %v (sent %d)", what, err, len(*put))
		}
	}
	out, err = vmctl("cluster", "snapshot", "inspect", path)
	if err != nil || !strings.Contains(out, "0 guests, 0 nodes") {
		t.Fatalf("inspect: %q %v", out, err)
	}
	if _, err := vmctl(append(g, "cluster", "snapshot", "restore", path, "--adopt-timeout", "0s")...); err == nil || len(*put) != 1 {
		t.Fatalf("restore with --adopt-timeout 0s: %v", err)
	}
}
