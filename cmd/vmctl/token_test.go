package main

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cmdline"
)

// fakeAPI is an HTTPS server that records what reaches it and answers token requests
// as dvm's API does; ca is the file of its certificate's CA.
func fakeAPI(t *testing.T) (srv *httptest.Server, ca string, seen *[]string) {
	t.Helper()
	var got []string
	srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == "POST" && r.URL.Path == "/v1/tokens":
			var req api.CreateToken
			json.NewDecoder(r.Body).Decode(&req)
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(api.TokenCreated{Token: api.Token{Name: req.Name, Scope: req.Scope, State: api.TokenActive}, Secret: "s3cret"})
		case r.Method == "GET" && r.URL.Path == "/v1/tokens":
			json.NewEncoder(w).Encode([]api.Token{{Name: "bootstrap", Scope: "admin", State: "active", CreatedBy: "dvmd"}, {Name: "ci", Scope: "read", State: "revoked"}})
		case r.Method == "GET" && r.URL.Path == "/v1/events":
			json.NewEncoder(w).Encode([]api.Event{{Seq: 1, Kind: "write", Guest: "web", Detail: "POST /v1/guests/web/stop (202)", Token: "ops"}})
		default:
			if !answerRead(w, r) {
				w.WriteHeader(http.StatusNoContent)
			}
		}
	}))
	return srv, serveTLS(t, srv), &got
}

// serveTLS writes the CA file of srv, a started httptest TLS server, and closes srv when
// the test ends; vmctl's environment is emptied so that only the flags count.
func serveTLS(t *testing.T, srv *httptest.Server) (ca string) {
	t.Helper()
	t.Cleanup(srv.Close)
	ca = filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"DVM_ADDR", "DVM_TOKEN", "DVM_CA"} {
		t.Setenv(v, "")
	}
	return ca
}

func vmctl(args ...string) (string, error) {
	var out bytes.Buffer
	app := newApp(&out)
	err := app.Run(cmdline.Interspersed(app, append([]string{"vmctl"}, args...)))
	return out.String(), err
}

func TestTokenCommands(t *testing.T) {
	srv, ca, seen := fakeAPI(t)
	g := []string{"--addr", srv.URL, "--token", "tok", "--ca", ca}
	out, err := vmctl(append(g, "token", "create", "ci", "--scope", "read", "--ttl", "30d")...)
	if err != nil || !strings.Contains(out, "token ci made, scope read") || !strings.Contains(out, "export DVM_TOKEN=s3cret") {
		t.Fatalf("token create: %v\n%s", err, out)
	}
	out, err = vmctl(append(g, "token", "create", "rack4", "--scope", "join")...)
	if err != nil || !strings.Contains(out, "dvmd join s3cret") {
		t.Fatalf("join token create: %v\n%s", err, out)
	}
	out, err = vmctl(append(g, "token", "ls")...)
	if err != nil || !strings.Contains(out, "bootstrap  admin  active") || !strings.Contains(out, "ci         read   revoked") {
		t.Fatalf("token ls: %v\n%s", err, out)
	}
	if _, err := vmctl(append(g, "token", "revoke", "ci")...); err != nil {
		t.Fatal(err)
	}
	out, err = vmctl(append(g, "events")...)
	if err != nil || !strings.Contains(out, "guest web: POST /v1/guests/web/stop (202) (token ops)") {
		t.Fatalf("events: %v\n%s", err, out)
	}
	want := []string{"POST /v1/tokens Bearer tok", "POST /v1/tokens Bearer tok", "GET /v1/tokens Bearer tok", "DELETE /v1/tokens/ci Bearer tok", "GET /v1/events Bearer tok"}
	if strings.Join(*seen, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests:\n%s\nwant:\n%s", strings.Join(*seen, "\n"), strings.Join(want, "\n"))
	}
}

// TestTokenBadInputSendsNothing: a bad name, scope or lifetime is refused by vmctl with
// the flag named, before any request.
func TestTokenBadInputSendsNothing(t *testing.T) {
	srv, ca, seen := fakeAPI(t)
	g := []string{"--addr", srv.URL, "--token", "tok", "--ca", ca}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "create", "ci", "--scope", "root"}, `--scope: unknown scope "root"`},
		{[]string{"token", "create", "ci", "--scope", "read", "--ttl", "forever"}, "--ttl: "},
		{[]string{"token", "create", "ci", "--scope", "read", "--ttl", "0s"}, "--ttl: "},
		{[]string{"token", "create", "Bad_Name", "--scope", "read"}, "NAME: "},
		{[]string{"token", "create", "--scope", "read"}, "give exactly one name"},
		{[]string{"token", "create", "ci"}, `"scope" not set`},
		{[]string{"token", "revoke", "Bad_Name"}, "NAME: "},
	} {
		if _, err := vmctl(append(g, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("vmctl %s: %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	if len(*seen) != 0 {
		t.Fatalf("bad input reached the API: %v", *seen)
	}
}

// TestVmctlChecksTheAPI: vmctl sends no token over plain HTTP, and refuses an API whose
// certificate its CA does not vouch for, saying to set DVM_CA.
func TestVmctlChecksTheAPI(t *testing.T) {
	srv, ca, seen := fakeAPI(t)
	plain := "http://" + strings.TrimPrefix(srv.URL, "https://")
	if _, err := vmctl("--addr", plain, "--token", "tok", "token", "ls"); err == nil || !strings.Contains(err.Error(), "use "+srv.URL) {
		t.Errorf("plain HTTP: %v", err)
	}
	if _, err := vmctl("--addr", srv.URL, "--token", "tok", "token", "ls"); err == nil || !strings.Contains(err.Error(), "DVM_CA") {
		t.Errorf("an API certificate of an unknown CA: %v", err)
	}
	if len(*seen) != 0 {
		t.Fatalf("a request reached the API: %v", *seen)
	}
	if _, err := vmctl("--addr", srv.URL, "--token", "tok", "--ca", filepath.Join(t.TempDir(), "none.crt"), "token", "ls"); err == nil || !strings.Contains(err.Error(), "--ca (DVM_CA)") {
		t.Errorf("a CA file that is not there: %v", err)
	}
	t.Setenv("DVM_CA", ca)
	if _, err := vmctl("--addr", srv.URL, "--token", "tok", "token", "ls"); err != nil {
		t.Errorf("with DVM_CA: %v", err)
	}
}
