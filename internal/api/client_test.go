package api

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// closedAddr is the URL of a loopback port nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "http://" + ln.Addr().String()
	ln.Close()
	return addr
}

func TestClientUsesTheNodeThatAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, `{"error":"token"}`, http.StatusUnauthorized)
			return
		}
		w.Write([]byte(`{"generation":7}`))
	}))
	defer srv.Close()
	dead := closedAddr(t)

	if got := raceConnect([]string{dead, srv.URL}, 0); len(got) != 2 || got[0] != srv.URL || got[1] != dead {
		t.Fatalf("raceConnect(dead, live) = %v, want the live node first, the dead one kept last", got)
	}

	c, err := NewClient(dead+","+srv.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	var st ClusterStatus
	if err := c.Do(context.Background(), "GET", "/v1/cluster", nil, &st); err != nil || st.Generation != 7 {
		t.Fatalf("Do through a dead and a live node: %+v, %v", st, err)
	}
	// The node that answered goes first from now on, without a new race.
	if got := c.addrs(); got[0] != srv.URL {
		t.Fatalf("after an answer from %s, addresses are %v", srv.URL, got)
	}
}
