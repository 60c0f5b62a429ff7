package api

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClientTLS: a client checks the API's certificate against the CA it is given, and
// says what to do when it cannot: a CA it does not trust, plain HTTP to a TLS listener,
// TLS to a plain one, and (for vmctl) a plain-HTTP address at all. Each failure comes at
// once, not after the retries a node that does not answer gets.
func TestClientTLS(t *testing.T) {
	var seen []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Header.Get("Authorization"))
		w.Write([]byte(`{"generation":7}`))
	}))
	defer srv.Close()
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer plain.Close()
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	get := func(addr string, trust bool) error {
		t.Helper()
		c, err := NewClient(addr, "tok")
		if err != nil {
			t.Fatal(err)
		}
		if trust {
			if err := c.TrustCA(ca); err != nil {
				t.Fatal(err)
			}
		}
		var st ClusterStatus
		err = c.Do(ctx, "GET", "/v1/cluster", nil, &st)
		if err == nil && st.Generation != 7 {
			t.Fatalf("answer %+v", st)
		}
		return err
	}

	err := get(srv.URL, false)
	var unanswered *NoAnswerError
	if err == nil || errors.As(err, &unanswered) || !strings.Contains(err.Error(), "DVM_CA") {
		t.Fatalf("an unknown CA: %v; want an error at once that names DVM_CA", err)
	}
	if len(seen) != 0 {
		t.Fatal("the request reached the server over a connection the client did not trust")
	}
	if err := get(srv.URL, true); err != nil {
		t.Fatalf("with the server's CA: %v", err)
	}
	if len(seen) != 1 || seen[0] != "Bearer tok" {
		t.Fatalf("the server saw %q", seen)
	}
	seen = nil
	plainURL := "http://" + strings.TrimPrefix(srv.URL, "https://")
	if err := get(plainURL, true); err == nil || !strings.Contains(err.Error(), "speaks TLS: use "+srv.URL) {
		t.Fatalf("plain HTTP to a TLS listener: %v; want it told to use %s", err, srv.URL)
	}
	tlsURL := "https://" + strings.TrimPrefix(plain.URL, "http://")
	if err := get(tlsURL, true); err == nil || errors.As(err, &unanswered) || !strings.Contains(err.Error(), "does not speak TLS") {
		t.Fatalf("TLS to a plain listener: %v", err)
	}

	// A listed node whose TLS fails does not keep the client from the next one.
	both, _ := NewClient(tlsURL+","+srv.URL, "tok")
	both.TrustCA(ca)
	both.last.Store(tlsURL) // tried first
	if err := both.Do(ctx, "GET", "/v1/cluster", nil, nil); err != nil || both.last.Load() != srv.URL {
		t.Fatalf("a node speaking no TLS tried before a good one: %v", err)
	}

	c, _ := NewClient(srv.URL+","+plainURL, "tok")
	if err := c.RequireTLS(); err == nil || !strings.Contains(err.Error(), "use "+srv.URL) {
		t.Fatalf("RequireTLS with a plain-HTTP address: %v", err)
	}
	c, _ = NewClient(srv.URL, "tok")
	if err := c.RequireTLS(); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "empty.crt")
	os.WriteFile(empty, []byte("not a certificate\n"), 0o644)
	if err := c.TrustCA(empty); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Fatalf("a CA file without a certificate: %v", err)
	}
}

// TestClientWithoutTokenSendsNone: an agent, which its node certificate authenticates,
// sends no Authorization header at all.
func TestClientWithoutTokenSendsNone(t *testing.T) {
	got := "unset"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, has := r.Header["Authorization"]
		got = map[bool]string{true: "sent", false: "none"}[has]
	}))
	defer srv.Close()
	c, _ := NewClient(srv.URL, "")
	if err := c.Do(context.Background(), "GET", "/", nil, nil); err != nil {
		t.Fatal(err)
	}
	if got != "none" {
		t.Fatalf("Authorization header: %s", got)
	}
}
