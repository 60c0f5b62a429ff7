package faults

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/dvmproject/dvm/internal/api"
)

// epoch is the raft generation and term a master answered in; the zero epoch is
// unknown (the answer had no stable term).
type epoch struct{ gen, term uint64 }

func (e epoch) known() bool { return e.term != 0 }

func (e epoch) less(o epoch) bool {
	return e.gen < o.gen || e.gen == o.gen && e.term < o.term
}

func (e epoch) String() string { return fmt.Sprintf("generation %d term %d", e.gen, e.term) }

// answer is one request to the API and what came back.
type answer struct {
	addr       string
	start, end time.Time
	code       int // 0: no answer (connection refused, timed out)
	master     string
	epoch      epoch
	body       []byte
	err        error
}

// client asks the management nodes of the lab, as vmctl does: the node that answered
// last first, then the others; a node with no master to forward to (502, 503) or no
// answer at all sends it on to the next.
type client struct {
	addrs   []string
	token   string
	http    *http.Client
	timeout time.Duration

	mu   sync.Mutex
	last int
}

func newClient(addrs []string, token string, tlsConfig *tls.Config, timeout time.Duration) *client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConfig
	// A paused master keeps its connections open and answers nothing: no connection
	// is kept between requests, so a request never waits on one to a node that died.
	tr.DisableKeepAlives = true
	return &client{addrs: addrs, token: token, http: &http.Client{Transport: tr}, timeout: timeout}
}

// do sends the request to each node in turn until one answers with neither 502 nor
// 503, and returns that answer (or the last one).
func (c *client) do(ctx context.Context, method, path string, body any) answer {
	c.mu.Lock()
	first := c.last
	c.mu.Unlock()
	var a answer
	for i := range c.addrs {
		k := (first + i) % len(c.addrs)
		a = c.one(ctx, c.addrs[k], method, path, body)
		if a.code != 0 && a.code != http.StatusBadGateway && a.code != http.StatusServiceUnavailable {
			c.mu.Lock()
			c.last = k
			c.mu.Unlock()
			return a
		}
		if ctx.Err() != nil {
			return a
		}
	}
	return a
}

func (c *client) one(ctx context.Context, addr, method, path string, body any) answer {
	a := answer{addr: addr, start: time.Now()}
	var payload io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			a.err = err
			return a
		}
		payload = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, addr+path, payload)
	if err != nil {
		a.err = err
		return a
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		a.end, a.err = time.Now(), err
		return a
	}
	a.body, a.err = io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	resp.Body.Close()
	a.end = time.Now()
	a.code = resp.StatusCode
	a.master = resp.Header.Get(api.HeaderMaster)
	a.epoch.gen, _ = strconv.ParseUint(resp.Header.Get(api.HeaderGeneration), 10, 64)
	a.epoch.term, _ = strconv.ParseUint(resp.Header.Get(api.HeaderTerm), 10, 64)
	return a
}
