package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dvmproject/dvm/internal/version"
)

// Client talks to a dvm API. Addrs may name several management nodes; each request
// goes to the first that answers, so clients survive a master change.
type Client struct {
	Addrs []string
	Token string
	HTTP  *http.Client
	// RetryFor is how long a request is tried again while no listed node answers or
	// none has a master (an election, a master being replaced): such gaps last seconds.
	RetryFor time.Duration
	// Discover, when set, gives the addresses to try now (the management nodes that
	// membership knows); Addrs is the fallback when it gives none.
	Discover func() []string
	// ReadTimeout bounds a read from one node (0: DefaultReadTimeout): see
	// DefaultReadTimeout.
	ReadTimeout time.Duration

	last atomic.Value // string: the address that answered last
	tls  bool
}

// addrs is the order in which one round of a request tries the management nodes.
// The first reached of them accepted a TCP connection just now (all of them when no
// race was run); the rest did not, and a round in which a node answered that it has
// no master skips them (see send).
func (c *Client) addrs() (addrs []string, reached int) {
	addrs = c.Addrs
	if c.Discover != nil {
		if a := c.Discover(); len(a) > 0 {
			addrs = a
		}
	}
	if last, _ := c.last.Load().(string); last != "" && slices.Contains(addrs, last) {
		// The node that answered last goes first: no connection race per request.
		out := []string{last}
		for _, a := range addrs {
			if a != last {
				out = append(out, a)
			}
		}
		return out, len(out)
	}
	if c.tls {
		// Agents (mutual TLS) are long-lived and keep to the node that answered last;
		// a bare connection race would only fill the listeners' logs with aborted
		// handshakes.
		return addrs, len(addrs)
	}
	return raceConnect(addrs, time.Second)
}

// raceGrace is how long, past the first connection, the race waits for the other
// nodes' connections: live nodes on one network connect within milliseconds of each
// other, and a dead one does not connect at all.
const raceGrace = 25 * time.Millisecond

// raceConnect orders addrs by a race of TCP connections to all of them: first the
// address that connected first, then the others that connected within raceGrace (or
// twice the first one's time) of it, in their listed order, and last those that did
// not, in their listed order. reached is how many connected (all of them, listed as
// given, when none connected within timeout). A management node that died does not
// answer at all: tried in listed order, it would cost a whole connect timeout per
// round of a request that waits for a new master.
func raceConnect(addrs []string, timeout time.Duration) (out []string, reached int) {
	if len(addrs) < 2 {
		return addrs, len(addrs)
	}
	type result struct {
		i  int
		ok bool
	}
	ch := make(chan result, len(addrs))
	start := time.Now()
	for i, a := range addrs {
		go func() {
			u, err := url.Parse(a)
			if err != nil {
				ch <- result{i, false}
				return
			}
			host := u.Host
			if u.Port() == "" {
				port := "80"
				if u.Scheme == "https" {
					port = "443"
				}
				host = net.JoinHostPort(u.Hostname(), port)
			}
			conn, err := net.DialTimeout("tcp", host, timeout)
			if err == nil {
				conn.Close()
			}
			ch <- result{i, err == nil}
		}()
	}
	winner := -1
	ok := make([]bool, len(addrs))
	deadline := time.After(timeout + 100*time.Millisecond)
wait:
	for range addrs {
		select {
		case r := <-ch:
			if !r.ok {
				continue
			}
			ok[r.i] = true
			if winner < 0 {
				winner = r.i
				d := time.Since(start)
				deadline = time.After(max(raceGrace, d))
			}
		case <-deadline:
			break wait
		}
	}
	if winner < 0 {
		return addrs, len(addrs)
	}
	out = []string{addrs[winner]}
	for i, a := range addrs {
		if i != winner && ok[i] {
			out = append(out, a)
		}
	}
	reached = len(out)
	for i, a := range addrs {
		if !ok[i] {
			out = append(out, a)
		}
	}
	return out, reached
}

// NewClient reads a comma-separated address list ("https://a:7460,https://b:7460").
func NewClient(addrs, token string) (*Client, error) {
	// A management node that died does not answer at all: a short connect timeout lets
	// the client move on to the next one quickly. Answers themselves may take long (a
	// drain, a migration).
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}).DialContext
	c := &Client{Token: token, HTTP: &http.Client{Timeout: 10 * time.Minute, Transport: tr}, RetryFor: 20 * time.Second}
	for _, a := range strings.Split(addrs, ",") {
		a = strings.TrimRight(strings.TrimSpace(a), "/")
		if a == "" {
			continue
		}
		u, err := url.Parse(a)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("address %q is not a URL such as https://127.0.0.1:7460", a)
		}
		c.Addrs = append(c.Addrs, a)
	}
	if len(c.Addrs) == 0 {
		return nil, errors.New("no API address: set DVM_ADDR or --addr (for a dev cluster: set -a; . DATA_DIR/env)")
	}
	return c, nil
}

// StatusError is an error answer of the API.
type StatusError struct {
	Code  int
	Msg   string
	Field string
}

func (e *StatusError) Error() string { return e.Msg }

// Do sends a request with a JSON body (nil for none) and decodes the JSON answer into
// out (nil to ignore it). A body of []byte is sent as it is (a snapshot file), and an
// out of *[]byte gets the answer as it is. A connection failure moves on to the next
// address; an answer, even an error, ends the search. While no listed node answers, or
// none has a master, it tries again for RetryFor.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	return c.retry(ctx, func() error {
		return c.send(ctx, method, path, body, func(resp *http.Response) error { return decodeBody(resp, out) })
	})
}

// Watch reads path (a GET) as a blocking query and decodes its answer into out. Given
// the index of an answer it has (HeaderIndex), it is answered once the answer differs,
// or after wait; given "", at once. It returns the new answer's index: "" from a
// server that does not block on path.
func (c *Client) Watch(ctx context.Context, path, index string, wait time.Duration, out any) (string, error) {
	if index != "" {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		path += sep + url.Values{"index": {index}, "wait": {wait.String()}}.Encode()
	}
	var got string
	err := c.retry(ctx, func() error {
		return c.send(ctx, http.MethodGet, path, nil, func(resp *http.Response) error {
			got = resp.Header.Get(HeaderIndex)
			return decodeBody(resp, out)
		})
	})
	return got, err
}

// retryInterval is how long retry waits between rounds: short, because the
// round that waits for a new master (elected in about a second) ends when the
// master answers, and each round costs a node one refused request.
const retryInterval = 100 * time.Millisecond

// retry calls send again while it ends with a *NoAnswerError, for RetryFor.
func (c *Client) retry(ctx context.Context, send func() error) error {
	deadline := time.Now().Add(c.RetryFor)
	for {
		err := send()
		var unanswered *NoAnswerError
		if !errors.As(err, &unanswered) || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(retryInterval):
		}
	}
}

// decodeBody reads a JSON answer into out (nil to ignore it).
func decodeBody(resp *http.Response, out any) error {
	limit := int64(64 << 20)
	if _, ok := out.(*[]byte); ok {
		limit = 2 << 30 // a snapshot file; its reader checks its length
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return err
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = data
		return nil
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

// DefaultReadTimeout bounds a read from one node: a node that is stopped (SIGSTOP,
// a hung host) still accepts connections from its kernel and then never answers. A
// read is safe to ask of the next node; a write is not (it may be applied), so
// writes get no such bound.
const DefaultReadTimeout = 10 * time.Second

// readTimeout is how long a GET may take at one node: the read timeout past the wait
// of a blocking query.
func readTimeout(method, path string, base time.Duration) (time.Duration, bool) {
	if method != http.MethodGet {
		return 0, false
	}
	d := base
	if d <= 0 {
		d = DefaultReadTimeout
	}
	if u, err := url.Parse(path); err == nil {
		if w, err := time.ParseDuration(u.Query().Get("wait")); err == nil && w > 0 {
			d += w
		}
	}
	return d, true
}

// NoAnswerError: no listed management node answered, or none had a master.
type NoAnswerError struct {
	Addrs []string
	Last  error
}

func (e *NoAnswerError) Error() string {
	return fmt.Sprintf("no dvm API answered at %s: %v", strings.Join(e.Addrs, ", "), e.Last)
}

func (e *NoAnswerError) Unwrap() error { return e.Last }

// send sends one request to the listed management nodes in turn until one answers
// that has a master, and hands its answer to answer; an error status is a
// *StatusError instead. A node that cannot be reached, or has no master to forward to
// now (502, 503), is passed over; a GET is given at most the read timeout past its
// wait at each node. When no node answers it is a *NoAnswerError, or the TLS failure
// that kept one from answering.
func (c *Client) send(ctx context.Context, method, path string, body any, answer func(*http.Response) error) error {
	var payload []byte
	contentType := "application/json"
	hc := c.HTTP
	up, _ := body.(*upload)
	if raw, ok := body.([]byte); ok {
		payload, contentType = raw, "application/octet-stream"
	} else if up != nil {
		// An upload takes as long as its bytes do: no bound on the whole exchange.
		contentType = "application/octet-stream"
		unbounded := *c.HTTP
		unbounded.Timeout = 0
		hc = &unbounded
	} else if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return err
		}
	}
	var lastErr, tlsErr error
	addrs, reached := c.addrs()
	answered := false
	for i, addr := range addrs {
		if i >= reached && answered {
			// A node answered that there is no master now, and the nodes left did not
			// connect in this round's race: the next round, a moment from now, races
			// them again rather than wait out a dead node's connect timeout here.
			break
		}
		done, err := func() (bool, error) {
			actx, cancel := context.WithCancel(ctx)
			if d, ok := readTimeout(method, path, c.ReadTimeout); ok {
				actx, cancel = context.WithTimeout(ctx, d)
			}
			defer cancel()
			var rd io.Reader = bytes.NewReader(payload)
			if up != nil {
				// From the start again at each node: one that failed may have read some.
				if _, err := up.r.Seek(0, io.SeekStart); err != nil {
					return true, err
				}
				rd = up.r
			}
			req, err := http.NewRequestWithContext(actx, method, addr+path, rd)
			if err != nil {
				return true, err
			}
			if up != nil {
				req.ContentLength = up.size
				// The server answers a refusal (a bad name, a name taken, a token too
				// small) before any byte of the body is sent.
				req.Header.Set("Expect", "100-continue")
			}
			c.authorize(req)
			if body != nil {
				req.Header.Set("Content-Type", contentType)
			}
			req.Header.Set(HeaderVersion, version.Version)
			resp, err := hc.Do(req)
			if err != nil {
				if terr := tlsProblem(addr, err); terr != nil {
					tlsErr = terr
				}
				lastErr = err
				c.last.CompareAndSwap(addr, "")
				return ctx.Err() != nil, err
			}
			defer resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusBadGateway {
				// This management node has no master to forward to right now (an
				// election, a partition): another listed node may.
				data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
				lastErr = fmt.Errorf("%s: %s", addr, strings.TrimSpace(string(data)))
				answered = true
				return false, nil
			}
			if resp.StatusCode >= 300 {
				data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
				if err != nil {
					return true, err
				}
				if plainToTLS(resp.StatusCode, data) {
					return true, plainToTLSError(addr)
				}
				c.last.Store(addr)
				return true, statusError(method, path, resp, data)
			}
			c.last.Store(addr)
			return true, answer(resp)
		}()
		if done {
			return err
		}
	}
	if tlsErr != nil {
		return tlsErr // no retry: it would fail the same way
	}
	return &NoAnswerError{Addrs: addrs, Last: lastErr}
}

// Stream sends a request and calls line for every line of a newline-delimited JSON
// answer as it arrives (drain progress). Like Do, it moves on to the next address
// when a node does not answer or has no master now; it does not try again.
func (c *Client) Stream(ctx context.Context, method, path string, body any, line func([]byte) error) error {
	return c.send(ctx, method, path, body, func(resp *http.Response) error {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if err := line(sc.Bytes()); err != nil {
				return err
			}
		}
		return sc.Err()
	})
}

// UseTLS makes the client speak TLS with cfg (the cluster's mutual TLS for agents).
func (c *Client) UseTLS(cfg *tls.Config) {
	if tr, ok := c.HTTP.Transport.(*http.Transport); ok {
		tr.TLSClientConfig = cfg
	}
	c.tls = true
}

// authorize sets the bearer token; a client without one (an agent, which its node
// certificate authenticates) sends none.
func (c *Client) authorize(req *http.Request) {
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
}

// TrustCA makes the client check the API's certificate against the CA certificates in
// a PEM file (the cluster's ca.crt, or the CA of an operator-supplied certificate)
// instead of the system's roots.
func (c *Client) TrustCA(file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return fmt.Errorf("CA file %s holds no PEM certificate: give the cluster's ca.crt (or the CA of the API's certificate)", file)
	}
	tr, ok := c.HTTP.Transport.(*http.Transport)
	if !ok {
		return errors.New("the client's transport is not an *http.Transport: set its TLS configuration yourself")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if tr.TLSClientConfig != nil {
		cfg = tr.TLSClientConfig.Clone()
	}
	cfg.RootCAs = pool
	tr.TLSClientConfig = cfg
	return nil
}

// RequireTLS refuses addresses of plain HTTP, over which the token would travel in the
// clear: dvm's API speaks TLS.
func (c *Client) RequireTLS() error {
	for _, a := range c.Addrs {
		if rest, ok := strings.CutPrefix(a, "http://"); ok {
			return fmt.Errorf("address %s is plain HTTP, which would send the token in the clear: dvm's API speaks TLS, use https://%s", a, rest)
		}
	}
	return nil
}

// tlsProblem turns a failed request whose TLS could not be agreed into an error that
// says what to do, or returns nil for other failures. The other listed nodes are still
// tried, but when none answers the request ends with this error at once: trying again
// would fail the same way.
func tlsProblem(addr string, err error) error {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		issuer := ""
		if unknown.Cert != nil {
			issuer = fmt.Sprintf(" (%q)", unknown.Cert.Issuer.CommonName)
		}
		return fmt.Errorf("%s: the API's certificate is signed by a CA this client does not trust%s: give the cluster's CA with --ca or DVM_CA "+
			"(a node's credentials_dir/ca.crt; dvmd dev and vmctl lab up name it in their env file)", addr, issuer)
	case errors.As(err, &host):
		return fmt.Errorf("%s: %w: use an address the certificate names, or issue the node a certificate that names this one (dvmd cluster issue --ip)", addr, host)
	case errors.As(err, &invalid):
		return fmt.Errorf("%s: the API's certificate is not valid: %w", addr, invalid)
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("%s does not speak TLS: is it a dvm API? (dvm's API listens with TLS on its listen address, port 7460 by default)", addr)
	}
	return nil
}

// plainToTLS recognises Go's answer to plain HTTP sent to a TLS listener.
func plainToTLS(code int, body []byte) bool {
	return code == http.StatusBadRequest && bytes.Contains(body, []byte("HTTP request to an HTTPS server"))
}

func plainToTLSError(addr string) error {
	return fmt.Errorf("%s speaks TLS: use https://%s (and give the cluster's CA with --ca or DVM_CA)", addr, strings.TrimPrefix(addr, "http://"))
}

// statusError is an error answer. When an older dvmd refuses what it does not know (a
// field, an endpoint, a method), the error says so: the request may be one it does
// not understand yet.
func statusError(method, path string, resp *http.Response, data []byte) *StatusError {
	var e Error
	if json.Unmarshal(data, &e) != nil || e.Error == "" {
		e.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
	}
	unknown := resp.StatusCode == http.StatusMethodNotAllowed ||
		(resp.StatusCode == http.StatusBadRequest && strings.Contains(e.Error, "unknown field")) ||
		(resp.StatusCode == http.StatusNotFound && strings.HasPrefix(e.Error, "no such endpoint"))
	if theirs := version.Or(resp.Header.Get(HeaderVersion)); unknown && version.Compare(theirs, version.Version) < 0 {
		e.Error += fmt.Sprintf(" (the dvmd that answered runs %s, older than this client's %s: it may not know this request yet; upgrade the cluster, or use a client of %s)",
			theirs, version.Version, theirs)
	}
	return &StatusError{Code: resp.StatusCode, Msg: e.Error, Field: e.Field}
}
