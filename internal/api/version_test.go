package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/version"
)

// TestClientNamesAnOlderDvmd: every request names the client's version; an older
// dvmd's refusal of what it does not know (a field, an endpoint) comes back saying
// that it runs an older version; a refusal for any other reason, or from a dvmd as
// new as the client, comes back as it was.
func TestClientNamesAnOlderDvmd(t *testing.T) {
	answer := map[string]struct {
		code int
		ver  string
		body string
	}{
		"/field":    {http.StatusBadRequest, "0.0.1", `{"error":"unknown field","field":"colour"}`},
		"/endpoint": {http.StatusNotFound, "0.0.1", `{"error":"no such endpoint: GET /endpoint"}`},
		"/guest":    {http.StatusNotFound, "0.0.1", `{"error":"guest \"web\" not found"}`},
		"/same":     {http.StatusBadRequest, version.Version, `{"error":"unknown field","field":"colour"}`},
		"/unknown":  {http.StatusBadRequest, "", `{"error":"unknown field","field":"colour"}`},
	}
	var sent []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sent = append(sent, r.Header.Get(HeaderVersion))
		a := answer[r.URL.Path]
		if a.ver != "" {
			w.Header().Set(HeaderVersion, a.ver)
		}
		w.WriteHeader(a.code)
		w.Write([]byte(a.body))
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	for path, hinted := range map[string]bool{"/field": true, "/endpoint": true, "/guest": false, "/same": false, "/unknown": true} {
		err := c.Do(context.Background(), "GET", path, nil, nil)
		var se *StatusError
		if !errors.As(err, &se) || se.Code != answer[path].code {
			t.Fatalf("%s: %v", path, err)
		}
		if got := strings.Contains(se.Msg, "older than this client's "+version.Version); got != hinted {
			t.Errorf("%s: %q; hint %v, want %v", path, se.Msg, got, hinted)
		}
	}
	for _, v := range sent {
		if v != version.Version {
			t.Fatalf("requests named versions %v, want %s", sent, version.Version)
		}
	}
}
