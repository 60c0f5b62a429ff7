package api

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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

	if got, reached := raceConnect([]string{dead, srv.URL}, 0); len(got) != 2 || got[0] != srv.URL || got[1] != dead || reached != 1 {
		t.Fatalf("raceConnect(dead, live) = %v, %d reached; want the live node first, the dead one kept last", got, reached)
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
	if got, _ := c.addrs(); got[0] != srv.URL {
		t.Fatalf("after an answer from %s, addresses are %v", srv.URL, got)
	}
}

// TestClientLeavesANodeThatNeverAnswersAReadFor: a stopped node's kernel accepts the
// connection and nothing answers; a read goes on to the next node after the read
// timeout, and a write is not sent twice.
func TestClientLeavesANodeThatNeverAnswersAReadFor(t *testing.T) {
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	go func() {
		for {
			conn, err := hung.Accept()
			if err != nil {
				return
			}
			defer conn.Close() // held open, never answered
		}
	}()
	writes := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			writes++
		}
		w.Write([]byte(`{"generation":7}`))
	}))
	defer srv.Close()
	c, err := NewClient("http://"+hung.Addr().String()+","+srv.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	c.ReadTimeout = 200 * time.Millisecond
	c.last.Store("http://" + hung.Addr().String()) // it answered before it stopped
	var st ClusterStatus
	if err := c.Do(context.Background(), "GET", "/v1/cluster?wait=100ms", nil, &st); err != nil || st.Generation != 7 {
		t.Fatalf("a read past a node that never answers: %+v, %v", st, err)
	}
	if d, ok := readTimeout("GET", "/v1/events?after=3&wait=30s", 0); !ok || d != DefaultReadTimeout+30*time.Second {
		t.Fatalf("a blocking read's bound: %v %v", d, ok)
	}
	if _, ok := readTimeout("POST", "/v1/guests", 0); ok {
		t.Fatal("a write got a read timeout: it could be applied twice")
	}
	if writes != 0 {
		t.Fatalf("%d writes", writes)
	}
}

// TestStreamMovesOnAsDoDoes: a stream (drain progress) passes over a node that cannot
// be reached or has no master, as Do does, and an error answer is a *StatusError.
func TestStreamMovesOnAsDoDoes(t *testing.T) {
	noMaster := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":"no master is elected right now"}`, http.StatusServiceUnavailable)
	}))
	defer noMaster.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/nodes/n2/drain" {
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":"node \"n9\" not found"}`))
			return
		}
		w.Write([]byte("{\"guest\":\"a\"}\n{\"guest\":\"b\"}\n"))
	}))
	defer srv.Close()
	c, err := NewClient(closedAddr(t)+","+noMaster.URL+","+srv.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	if err := c.Stream(context.Background(), "POST", "/v1/nodes/n2/drain", nil, func(b []byte) error {
		lines = append(lines, string(b))
		return nil
	}); err != nil || len(lines) != 2 || lines[1] != `{"guest":"b"}` {
		t.Fatalf("stream past a dead node and one without a master: %q, %v", lines, err)
	}
	err = c.Stream(context.Background(), "POST", "/v1/nodes/n9/drain", nil, func([]byte) error { return nil })
	if se, ok := err.(*StatusError); !ok || se.Code != http.StatusNotFound || se.Msg != `node "n9" not found` {
		t.Fatalf("an error answer: %#v", err)
	}
	none, err := NewClient(closedAddr(t)+","+noMaster.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	err = none.Stream(context.Background(), "POST", "/v1/nodes/n2/drain", nil, func([]byte) error { return nil })
	if _, ok := err.(*NoAnswerError); !ok {
		t.Fatalf("no node with a master: %#v, want a *NoAnswerError", err)
	}
}

// silentAddr is the URL of a loopback listener whose accept queue is full, so the
// kernel drops new connections' SYNs and a connect hangs as it does to a dead host.
func silentAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the queue (never accepted) until a connect no longer completes at once.
	for i := 0; i < 8; i++ {
		conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return "http://" + addr
		}
		t.Cleanup(func() { conn.Close() })
	}
	t.Fatalf("the accept queue of %s never filled", addr)
	return ""
}

// TestClientSkipsANodeThatDoesNotConnectWhileNoMaster: a dead management node (its
// connect hangs) listed before the live ones costs a round nothing once a live node
// has answered that there is no master now; the request waits for the master in
// rounds of its own, and succeeds as soon as there is one.
func TestClientSkipsANodeThatDoesNotConnectWhileNoMaster(t *testing.T) {
	silent := silentAddr(t)
	var answers atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if answers.Add(1) <= 3 {
			http.Error(w, `{"error":"no master is elected right now: retry in a moment"}`, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"generation":9}`))
	}))
	defer srv.Close()

	got, reached := raceConnect([]string{silent, srv.URL}, time.Second)
	if len(got) != 2 || got[0] != srv.URL || reached != 1 {
		t.Fatalf("raceConnect(silent, live) = %v, %d reached; want the live node alone reached", got, reached)
	}
	c, err := NewClient(silent+","+srv.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	tr := c.HTTP.Transport.(*http.Transport)
	dial := tr.DialContext
	var silentDials atomic.Int32
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if "http://"+addr == silent {
			silentDials.Add(1)
		}
		return dial(ctx, network, addr)
	}
	var st ClusterStatus
	if err := c.Do(context.Background(), "POST", "/v1/guests", map[string]string{"name": "g"}, &st); err != nil || st.Generation != 9 {
		t.Fatalf("Do: %+v, %v", st, err)
	}
	if n := answers.Load(); n != 4 {
		t.Fatalf("the live node was asked %d times, want 4 (3 refusals, then the answer)", n)
	}
	if n := silentDials.Load(); n != 0 {
		t.Fatalf("the request was sent to the node that does not connect %d times, want none", n)
	}
}
