package master

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// EventConsole is the kind of event that records a console session attached to a
// guest, and its end, naming the token that attached.
const EventConsole = "console"

// SetNodeTLS makes the master open consoles on nodes over TLS with tlsFor's
// configuration for a node: its certificate checked for the node's name, and this
// node's own shown as the client's (cluster.Credentials.PeerAPIClientTLS), which is
// what a node lets open its consoles. Without it (a dev cluster, whose nodes are
// libvirt's test driver in one process) there are no consoles.
func (m *Master) SetNodeTLS(tlsFor func(node string) *tls.Config) { m.nodeTLS = tlsFor }

// consoleTarget is the node that runs guest name and the address of its API, or why
// the guest's console cannot be opened: ErrNotFound, or ErrConflict naming its state.
func (m *Master) consoleTarget(name string) (node, addr string, err error) {
	g, err := m.Guest(name)
	if err != nil {
		return "", "", err
	}
	if g.State != api.GuestRunning {
		return "", "", fmt.Errorf("guest %s is %s, not running: its console opens once it runs (vmctl vm start %s): %w", name, g.State, name, ErrConflict)
	}
	n, ok := m.st.Node(g.Node)
	if !ok || n.Address == "" {
		return "", "", fmt.Errorf("node %s, which runs guest %s, has not reported its address", g.Node, name)
	}
	return g.Node, n.Address, nil
}

// recordConsole keeps a console attach or detach as an event naming its token.
func (m *Master) recordConsole(token, node, guest, detail string) error {
	e := store.EventRecord{Time: time.Now().UTC(), Kind: EventConsole, Node: node, Guest: guest, Detail: detail, Token: token}
	m.log.Info("event", "kind", EventConsole, "node", node, "guest", guest, "token", token, "detail", detail)
	_, err := m.st.Apply(store.Command{Op: store.OpEvent, Event: &e})
	return err
}

// console relays a console session (api.ConsolePath) between the client and the
// node that runs the guest, which it asks for the guest's console over the cluster's
// mutual TLS. The attach is recorded as an event naming the token before the client
// is answered 101: a session nobody can see in the events is not opened.
func (h *handler) console(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !api.WantsConsole(r) {
		writeErr(w, http.StatusBadRequest, "a console is a session: ask with Connection: Upgrade and Upgrade: "+api.ConsoleProtocol+" (vmctl vm console "+name+")", "")
		return
	}
	node, addr, err := h.m.consoleTarget(name)
	if err != nil {
		fail(w, err)
		return
	}
	if h.m.nodeTLS == nil {
		writeErr(w, http.StatusNotImplemented, "this cluster's nodes have no consoles: a dev cluster runs its guests on libvirt's test driver", "")
		return
	}
	nconn, _, err := api.DialConsole(r.Context(), "https://"+addr+api.NodeConsolePath(name), nil, h.m.nodeTLS(node))
	if err != nil {
		// Not 502: a client takes that as "no master here" and asks the next
		// management node, which would only forward to this master again.
		var se *api.StatusError
		switch {
		case errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code == http.StatusConflict):
			// The node no longer runs it (it stopped, or moved, since it last reported).
			writeErr(w, http.StatusConflict, fmt.Sprintf("guest %s: %s", name, se.Msg), "")
		case errors.As(err, &se) && se.Code == http.StatusNotImplemented:
			writeErr(w, http.StatusNotImplemented, se.Msg, "")
		case errors.As(err, &se) && (se.Code == http.StatusForbidden || se.Code == http.StatusServiceUnavailable):
			// Its lease is held by another master for a moment, or its agent stops.
			writeErr(w, http.StatusServiceUnavailable, fmt.Sprintf("node %s refused the console of guest %s for now: %s", node, name, se.Msg), "")
		case errors.As(err, &se):
			writeErr(w, http.StatusInternalServerError, fmt.Sprintf("node %s refused the console of guest %s: %s", node, name, se.Msg), "")
		default:
			writeErr(w, http.StatusInternalServerError, fmt.Sprintf("node %s, which runs guest %s, did not answer for its console: %v", node, name, err), "")
		}
		return
	}
	c := callerOf(r)
	if err := h.m.recordConsole(c.token, node, name, "console attached on node "+node); err != nil {
		nconn.Close()
		fail(w, fmt.Errorf("the attach could not be recorded, so the console stays closed: %w", err))
		return
	}
	w.Header().Set(api.HeaderNode, node)
	w.Header().Set(api.HeaderMaster, h.node)
	conn, err := api.AcceptConsole(w)
	if err != nil {
		nconn.Close()
		h.m.recordConsole(c.token, node, name, "console closed at once: "+err.Error())
		writeErr(w, http.StatusInternalServerError, err.Error(), "")
		return
	}
	if sw, ok := w.(*statusWriter); ok {
		sw.code = http.StatusSwitchingProtocols // written on the connection, past route's writer
	}
	start := time.Now()
	err = api.Relay(r.Context(), conn, nconn)
	detail := fmt.Sprintf("console detached after %s", time.Since(start).Round(time.Second))
	if err != nil {
		detail += ": " + err.Error()
	}
	if rerr := h.m.recordConsole(c.token, node, name, detail); rerr != nil {
		h.m.log.Warn("record a console's end", "guest", name, "err", rerr)
	}
}
