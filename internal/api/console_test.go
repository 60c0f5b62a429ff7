package api

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestWantsConsole(t *testing.T) {
	for _, c := range []struct {
		conn, upgrade string
		want          bool
	}{
		{"Upgrade", "dvm-console", true},
		{"keep-alive, upgrade", "DVM-Console", true},
		{"Upgrade", "websocket", false},
		{"", "dvm-console", false},
		{"Upgrade", "", false},
	} {
		r := httptest.NewRequest("GET", ConsolePath("web"), nil)
		if c.conn != "" {
			r.Header.Set("Connection", c.conn)
		}
		if c.upgrade != "" {
			r.Header.Set("Upgrade", c.upgrade)
		}
		if got := WantsConsole(r); got != c.want {
			t.Errorf("Connection %q, Upgrade %q: %v, want %v", c.conn, c.upgrade, got, c.want)
		}
	}
	if p := ConsolePath("a b/c"); p != "/v1/guests/a%20b%2Fc/console" {
		t.Errorf("ConsolePath escapes to %q", p)
	}
}

// TestClientConsole: the client passes over a management node without a master (503)
// to the next, gets the session there with the node it is on, and carries bytes both
// ways; an error answer ends the search with its status; a server that switches to
// another protocol is refused.
func TestClientConsole(t *testing.T) {
	noMaster := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `{"error":"no master is elected right now"}`)
	}))
	defer noMaster.Close()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("Authorization") != "Bearer s3cret":
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"unknown token"}`)
		case r.URL.Path == ConsolePath("other"):
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", "websocket")
			w.WriteHeader(http.StatusSwitchingProtocols)
		case r.URL.Path != ConsolePath("web") || !WantsConsole(r):
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":"guest \"`+r.URL.Path+`\" not found"}`)
		default:
			w.Header().Set(HeaderNode, "n2")
			conn, err := AcceptConsole(w)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			io.Copy(conn, io.LimitReader(conn, 5)) // echo five bytes, then end the session
		}
	}))
	defer api.Close()
	c, err := NewClient(noMaster.URL+","+api.URL, "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	c.Discover = func() []string { return c.Addrs } // keep the listed order: no connection race
	ctx := context.Background()
	conn, node, err := c.Console(ctx, "web")
	if err != nil || node != "n2" {
		t.Fatalf("Console: node %q, %v", node, err)
	}
	io.WriteString(conn, "hello")
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "hello" {
		t.Fatalf("echoed %q, %v", got, err)
	}
	conn.Close()

	c.RetryFor = 0
	if _, _, err := c.Console(ctx, "nope"); statusCode(err) != http.StatusNotFound || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("unknown guest: %v", err)
	}
	if _, _, err := c.Console(ctx, "other"); err == nil || !strings.Contains(err.Error(), "not to a console session") {
		t.Fatalf("another protocol: %v", err)
	}
	c.Token = "wrong"
	if _, _, err := c.Console(ctx, "web"); statusCode(err) != http.StatusUnauthorized {
		t.Fatalf("wrong token: %v", err)
	}
}

func statusCode(err error) int {
	if se, ok := err.(*StatusError); ok {
		return se.Code
	}
	return 0
}

// TestRelayEndsBothSides: when one side ends, Relay closes the other and returns;
// and it returns when ctx ends, with both closed.
func TestRelayEndsBothSides(t *testing.T) {
	a1, a2 := net.Pipe()
	b1, b2 := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- Relay(context.Background(), a1, b1) }()
	go io.WriteString(a2, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(b2, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("relayed %q, %v", buf, err)
	}
	a2.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("an ordinary end: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Relay did not return when one side ended")
	}
	if _, err := b2.Write([]byte("x")); err == nil {
		t.Fatal("the other side is still open")
	}

	c1, c2 := net.Pipe()
	d1, d2 := net.Pipe()
	defer c2.Close()
	defer d2.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- Relay(ctx, c1, d1) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Relay did not return when ctx ended")
	}
	if _, err := c2.Write([]byte("x")); err == nil {
		t.Fatal("a side is still open after ctx ended")
	}
}
