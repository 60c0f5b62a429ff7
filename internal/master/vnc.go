package master

import (
	"crypto/rand"
	"fmt"
	"math/big"
	"net/http"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// A guest created with a VNC display (vm create --vnc) gets a password the master
// makes, kept in the replicated state so that the display keeps it wherever the
// guest runs. It is shown only to operators, by GET /v1/guests/NAME/vnc (vmctl vm vnc,
// vmctl vm show): never in a guest's ordinary answer, a list, an event or a log.

// vncAlphabet leaves out characters read alike (0 and O, 1, l and I).
const vncAlphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"

// newVNCPassword is a random password as long as VNC authentication reads: 8
// characters, about 46 bits.
func newVNCPassword() string {
	b := make([]byte, 8)
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(vncAlphabet))))
		if err != nil {
			panic(err)
		}
		b[i] = vncAlphabet[n.Int64()]
	}
	return string(b)
}

// vncDisplay is where guest g's VNC display listens, as its node last reported:
// "" while it does not run there or the node has not said.
func (m *Master) vncDisplay(g store.GuestRecord) string {
	if g.Node == "" {
		return ""
	}
	return m.observedOn(g.Node, g.Name).VNC
}

// GuestVNC says how to reach a guest's VNC display: where it listens, and its
// password.
func (m *Master) GuestVNC(name string) (api.VNC, error) {
	g, ok := m.st.Guest(name)
	switch {
	case !ok:
		return api.VNC{}, fmt.Errorf("guest %q %w", name, ErrNotFound)
	case g.VNCPassword == "":
		return api.VNC{}, fmt.Errorf("guest %q has no VNC display: %w; it has one when created with --vnc; its serial console is vmctl vm console %s", name, ErrConflict, name)
	}
	return api.VNC{Guest: name, Node: g.Node, Display: m.vncDisplay(g), Password: g.VNCPassword}, nil
}

// vnc answers GET /v1/guests/NAME/vnc. The password opens a console, so, as a
// console attach is, it is given only once its reading is an event naming the token.
func (h *handler) vnc(w http.ResponseWriter, r *http.Request) {
	v, err := h.m.GuestVNC(r.PathValue("name"))
	if err == nil {
		err = h.m.recordConsole(callerOf(r).token, v.Node, v.Guest, "VNC display's password read")
	}
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}
