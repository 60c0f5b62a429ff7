package api

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/version"
)

// A console session is an HTTP/1.1 Upgrade, as Docker's attach is: the client asks
// GET /v1/guests/NAME/console with "Connection: Upgrade" and "Upgrade: dvm-console",
// the answer is 101 Switching Protocols, and from then on the connection carries the
// guest's serial console as raw bytes both ways until either side closes it. Any
// other answer is an ordinary JSON error (401, 403, 404, 409, ...). The master relays
// a session to the node that runs the guest, which it asks the same way at
// NodeConsolePath over the cluster's mutual TLS.
const (
	// ConsoleProtocol is the Upgrade token of a console session.
	ConsoleProtocol = "dvm-console"
	// ConsoleDetach is the byte that ends a session at the client: ^], as telnet and
	// virsh console have it. vmctl never sends it to the guest.
	ConsoleDetach = 0x1d
	// HeaderNode names the node whose guest's console a session is attached to.
	HeaderNode = "Dvm-Node"
)

// ConsolePath is the API path of guest's console.
func ConsolePath(guest string) string { return "/v1/guests/" + url.PathEscape(guest) + "/console" }

// NodeConsolePath is where a node serves the console of a guest it runs, on its API
// listener, to the master alone (its node certificate, over mutual TLS).
func NodeConsolePath(guest string) string {
	return "/v1/node/guests/" + url.PathEscape(guest) + "/console"
}

// NodeConsolePattern is NodeConsolePath as an http.ServeMux pattern.
const NodeConsolePattern = "GET /v1/node/guests/{name}/console"

// WantsConsole says whether r asks to be upgraded to a console session.
func WantsConsole(r *http.Request) bool {
	return headerHas(r.Header, "Connection", "upgrade") && headerHas(r.Header, "Upgrade", ConsoleProtocol)
}

func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

// AcceptConsole answers a console request with 101 Switching Protocols (with the
// headers already set on w, such as HeaderNode) and returns the connection, whose
// reads give what the client sends. The caller closes it. It takes the connection
// over before it answers: when it cannot (a ResponseWriter that hides it), nothing
// is written yet and the caller answers with the error, instead of a 101 after which
// the client would wait for ever.
func AcceptConsole(w http.ResponseWriter) (io.ReadWriteCloser, error) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, fmt.Errorf("take the connection over for the console: %w", err)
	}
	// The server's read and write deadlines, if any, were for a request, not a session.
	conn.SetDeadline(time.Time{})
	h := w.Header().Clone()
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", ConsoleProtocol)
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	h.Write(brw)
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		conn.Close()
		return nil, err
	}
	return &hijacked{Conn: conn, r: brw.Reader}, nil
}

// hijacked reads first what the server had buffered past the request.
type hijacked struct {
	net.Conn
	r *bufio.Reader
}

func (h *hijacked) Read(p []byte) (int, error) { return h.r.Read(p) }

// DialConsole asks url (a node's or the API's console path, in full) for a console
// session, with header (the token, for the API), over TLS with cfg when url is https.
// It returns the session and the answer's headers, or the API's error answer as a
// *StatusError.
func DialConsole(ctx context.Context, u string, header http.Header, cfg *tls.Config) (io.ReadWriteCloser, http.Header, error) {
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     cfg,
		TLSHandshakeTimeout: 10 * time.Second,
		// An Upgrade is HTTP/1.1's: HTTP/2 has none.
		ForceAttemptHTTP2: false,
		TLSNextProto:      map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", ConsoleProtocol)
	req.Header.Set(HeaderVersion, version.Version)
	// No client timeout: it would end the session, which lasts as long as it is used.
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		rwc, ok := resp.Body.(io.ReadWriteCloser)
		if !ok || !headerHas(resp.Header, "Upgrade", ConsoleProtocol) {
			resp.Body.Close()
			// An answer all the same: the search for a node that answers ends here.
			return nil, nil, &StatusError{Code: resp.StatusCode, Msg: fmt.Sprintf("%s switched to %q, not to a console session: is it a dvm API?", u, resp.Header.Get("Upgrade"))}
		}
		return rwc, resp.Header, nil
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, nil, err
	}
	return nil, resp.Header, statusError(http.MethodGet, req.URL.Path, resp, data)
}

// Console opens guest's console session through the first listed management node
// that answers and has a master (a node without one answers 502 or 503, and the
// next is asked, and while none answers it tries again for RetryFor, as Do does),
// and returns it with the node it is attached on. The session ends when either side
// closes it.
func (c *Client) Console(ctx context.Context, guest string) (io.ReadWriteCloser, string, error) {
	var rwc io.ReadWriteCloser
	var node string
	err := c.retry(ctx, func() error {
		var err error
		rwc, node, err = c.console(ctx, guest)
		return err
	})
	return rwc, node, err
}

func (c *Client) console(ctx context.Context, guest string) (io.ReadWriteCloser, string, error) {
	var cfg *tls.Config
	if tr, ok := c.HTTP.Transport.(*http.Transport); ok && tr.TLSClientConfig != nil {
		cfg = tr.TLSClientConfig.Clone()
	}
	header := http.Header{}
	if c.Token != "" {
		header.Set("Authorization", "Bearer "+c.Token)
	}
	var lastErr, tlsErr error
	addrs, reached := c.addrs()
	answered := false
	for i, addr := range addrs {
		if i >= reached && answered {
			break // as in send
		}
		rwc, h, err := DialConsole(ctx, addr+ConsolePath(guest), header, cfg)
		if err == nil {
			c.last.Store(addr)
			return rwc, h.Get(HeaderNode), nil
		}
		var se *StatusError
		if errors.As(err, &se) {
			if se.Code == http.StatusServiceUnavailable || se.Code == http.StatusBadGateway {
				lastErr = fmt.Errorf("%s: %s", addr, se.Msg)
				answered = true
				continue
			}
			c.last.Store(addr)
			return nil, "", err
		}
		if terr := tlsProblem(addr, err); terr != nil {
			tlsErr = terr
		}
		lastErr = err
		if ctx.Err() != nil {
			return nil, "", err
		}
	}
	if tlsErr != nil {
		return nil, "", tlsErr
	}
	return nil, "", &NoAnswerError{Addrs: addrs, Last: lastErr}
}

// Relay copies a and b into each other until either side ends or ctx does, then
// closes both. It returns what ended it first: nil for an ordinary end (EOF, or the
// other side closed).
func Relay(ctx context.Context, a, b io.ReadWriteCloser) error {
	errc := make(chan error, 2)
	go func() { _, err := io.Copy(a, b); errc <- err }()
	go func() { _, err := io.Copy(b, a); errc <- err }()
	var err error
	ended := 0
	select {
	case err = <-errc:
		ended++
	case <-ctx.Done():
	}
	a.Close()
	b.Close()
	for ; ended < 2; ended++ {
		<-errc
	}
	if err != nil && (errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)) {
		err = nil
	}
	return err
}
