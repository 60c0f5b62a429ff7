package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
)

// consoles are the console sessions open on this node, one per guest at most: a new
// attach takes the console over (hypervisor.OpenConsole forces it) and the session it
// replaced is told so before it ends.
type consoles struct {
	mu      sync.Mutex
	open    map[string]*consoleSession
	stopped bool // Run ended: no new session, and every open one was closed
	wg      sync.WaitGroup
}

type consoleSession struct {
	con       *hypervisor.Console
	conn      io.ReadWriteCloser // the master's connection
	takenOver atomic.Bool
}

// takeOverNotice is what a session that another attach took over sees last.
const takeOverNotice = "\r\n[dvm: another session attached to this console; this one is detached]\r\n"

// ConsoleHandler serves api.NodeConsolePath on the node's API listener: the serial
// console of a guest this node runs, as a console session (api.AcceptConsole). Only
// the master holding this node's lease may open one, shown by its node certificate,
// which the listener verified against the cluster's CA (the API listener asks peers
// that name this node for theirs: cluster.Credentials.APIServerTLS). Operators go
// through the master's API, which checks their token and records who attached.
func (a *Agent) ConsoleHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(api.NodeConsolePattern, a.serveConsole)
	return mux
}

func (a *Agent) serveConsole(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		consoleErr(w, http.StatusUnauthorized, "a node's consoles open to the master's node certificate alone: attach through the API (vmctl vm console "+name+")")
		return
	}
	peer := r.TLS.VerifiedChains[0][0].Subject.CommonName
	if a.cfg.Lease == nil {
		consoleErr(w, http.StatusForbidden, "node "+a.cfg.Name+" has no role machine to say which master holds its lease")
		return
	}
	if holder, _, live := a.cfg.Lease(); !live || holder != peer {
		consoleErr(w, http.StatusForbidden, fmt.Sprintf("node %s is not the master holding node %s's lease (held by %q, live %v): only it opens consoles here", peer, a.cfg.Name, holder, live))
		return
	}
	if !api.WantsConsole(r) {
		consoleErr(w, http.StatusBadRequest, "a console is a session: ask with Connection: Upgrade and Upgrade: "+api.ConsoleProtocol)
		return
	}
	s, err := a.openConsole(name)
	if err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, hypervisor.ErrNotFound):
			code = http.StatusNotFound
		case errors.Is(err, hypervisor.ErrNotRunning):
			code = http.StatusConflict
		case errors.Is(err, hypervisor.ErrNoConsole):
			code = http.StatusNotImplemented
		case errors.Is(err, errConsolesStopped):
			code = http.StatusServiceUnavailable
		}
		consoleErr(w, code, fmt.Sprintf("node %s: %v", a.cfg.Name, err))
		return
	}
	w.Header().Set(api.HeaderNode, a.cfg.Name)
	conn, err := api.AcceptConsole(w)
	if err != nil {
		a.closeConsole(name, s)
		consoleErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	a.cons.mu.Lock()
	stopped := a.cons.stopped
	s.conn = conn
	a.cons.mu.Unlock()
	if stopped {
		a.closeConsole(name, s)
		return
	}
	a.cfg.Log.Info("console attached", "guest", name, "master", peer)
	err = api.Relay(context.Background(), conn, &sessionReader{s: s})
	a.closeConsole(name, s)
	a.cfg.Log.Info("console detached", "guest", name, "taken_over", s.takenOver.Load(), "err", err)
}

var errConsolesStopped = errors.New("the agent is stopping")

// openConsole opens name's console as the guest's one session, taking it over from
// the session open before, if any.
func (a *Agent) openConsole(name string) (*consoleSession, error) {
	a.cons.mu.Lock()
	if a.cons.stopped {
		a.cons.mu.Unlock()
		return nil, errConsolesStopped
	}
	old := a.cons.open[name]
	if old != nil {
		// Marked before libvirt ends its stream, so it tells its master why.
		old.takenOver.Store(true)
	}
	a.cons.wg.Add(1)
	a.cons.mu.Unlock()
	con, err := a.cfg.Node.OpenConsole(name)
	if err != nil {
		if old != nil {
			old.takenOver.Store(false)
		}
		a.cons.wg.Done()
		return nil, err
	}
	s := &consoleSession{con: con}
	a.cons.mu.Lock()
	if a.cons.open == nil {
		a.cons.open = map[string]*consoleSession{}
	}
	a.cons.open[name] = s
	a.cons.mu.Unlock()
	return s, nil
}

// closeConsole ends a session and forgets it.
func (a *Agent) closeConsole(name string, s *consoleSession) {
	if s.conn != nil {
		s.conn.Close()
	}
	s.con.Close()
	a.cons.mu.Lock()
	if a.cons.open[name] == s {
		delete(a.cons.open, name)
	}
	a.cons.mu.Unlock()
	a.cons.wg.Done()
}

// consoleLoop closes every console session when ctx ends and waits for them: they
// call libvirt, and Run's caller closes the libvirt connection after Run.
func (a *Agent) consoleLoop(ctx context.Context) {
	<-ctx.Done()
	a.cons.mu.Lock()
	a.cons.stopped = true
	for _, s := range a.cons.open {
		if s.conn != nil {
			s.conn.Close()
		}
		s.con.Close()
	}
	a.cons.mu.Unlock()
	a.cons.wg.Wait()
}

// sessionReader reads the guest's console and ends with takeOverNotice when another
// session took it over.
type sessionReader struct {
	s       *consoleSession
	noticed bool
}

func (r *sessionReader) Read(p []byte) (int, error) {
	n, err := r.s.con.Read(p)
	if err != nil && n == 0 && r.s.takenOver.Load() && !r.noticed {
		r.noticed = true
		return copy(p, takeOverNotice), nil
	}
	return n, err
}

func (r *sessionReader) Write(p []byte) (int, error) { return r.s.con.Write(p) }
func (r *sessionReader) Close() error                { return r.s.con.Close() }

func consoleErr(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(api.Error{Error: msg})
}
