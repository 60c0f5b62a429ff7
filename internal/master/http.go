package master

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/metrics"
	"github.com/dvmproject/dvm/internal/snapshot"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/internal/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MaxBody bounds every request body: the largest valid one is far smaller.
const MaxBody = 64 << 10

// Handler serves the API for a node. m is nil on a node that holds no management role:
// it still serves /metrics and /v1/health. token is the secret of this node's token
// file, taken as the admin token "bootstrap" until the cluster records it (see
// Master.Authenticate); "" for none.
func Handler(m *Master, nodeName, token string, reg *metrics.Registry) http.Handler {
	return handlerFor(m, nodeName, token, reg, true)
}

// AgentHandler serves the same API on the agents' mutual-TLS listener. There the
// agents' endpoints (status reports, assignments, migration results, joins) take the
// node certificate the listener verified, for the node it names; every other endpoint
// needs a token as on the API listener. It does not forward: a node that is not the
// master answers 503 and the agent asks the next management node, so agent traffic
// never leaves TLS.
func AgentHandler(m *Master, nodeName, token string, reg *metrics.Registry) http.Handler {
	return handlerFor(m, nodeName, token, reg, false)
}

func handlerFor(m *Master, nodeName, token string, reg *metrics.Registry, forward bool) http.Handler {
	mux := http.NewServeMux()
	h := &handler{m: m, node: nodeName, token: token, reg: reg, forward: forward, agents: !forward}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	role := "node"
	if m != nil {
		role = "master"
	}
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		// Always 200 while dvmd answers: the role machine's probes take an answer as
		// reach. What is wrong is in the body.
		writeJSON(w, http.StatusOK, health(m, nodeName, role))
	})
	if m != nil {
		h.route(mux, "GET /v1/nodes", h.listNodes)
		h.route(mux, "DELETE /v1/nodes/{name}", h.durable(h.removeNode))
		h.route(mux, "PUT /v1/nodes/{name}/status", h.nodeStatus)
		h.route(mux, "GET /v1/nodes/{name}/assignment", h.assignment)
		h.route(mux, "GET /v1/guests", h.listGuests)
		h.route(mux, "POST /v1/guests", h.durable(h.createGuest))
		h.route(mux, "GET /v1/guests/{name}", h.getGuest)
		h.route(mux, "GET /v1/guests/{name}/why", h.why)
		h.route(mux, "GET /v1/guests/{name}/console", h.console)
		h.route(mux, "GET /v1/guests/{name}/vnc", h.vnc)
		h.route(mux, "DELETE /v1/guests/{name}", h.durable(h.deleteGuest))
		h.route(mux, "POST /v1/guests/{name}/start", h.durable(h.desired(store.DesiredRunning)))
		h.route(mux, "POST /v1/guests/{name}/stop", h.durable(h.desired(store.DesiredStopped)))
		h.route(mux, "POST /v1/guests/{name}/migrate", h.durable(h.migrate))
		h.route(mux, "POST /v1/guests/{name}/eject", h.durable(h.ejectISO))
		h.route(mux, "POST /v1/guests/{name}/migration", h.migrationDone)
		h.route(mux, "POST /v1/cluster/join", h.join)
		h.route(mux, "POST /v1/cluster/credentials", h.joinHost)
		h.route(mux, "GET /v1/tokens", h.listTokens)
		h.route(mux, "POST /v1/tokens", h.createToken)
		h.route(mux, "DELETE /v1/tokens/{name}", h.durable(h.revokeToken))
		h.route(mux, "POST /v1/nodes/{name}/drain", h.drain(false))
		h.route(mux, "POST /v1/nodes/{name}/maintenance", h.drain(true))
		h.route(mux, "POST /v1/nodes/{name}/undrain", h.durable(h.undrain))
		// Answered by every management node from its own role machine, leader or not:
		// during a partition, each side tells what it sees.
		mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
			if _, ok := h.admit(w, r, api.ScopeRead); ok {
				writeJSON(w, http.StatusOK, h.m.ClusterStatus())
			}
		})
		h.route(mux, "GET /v1/cluster/upgrade-check", h.upgradeCheck)
		h.route(mux, "GET /v1/cluster/snapshot", h.saveSnapshot)
		h.route(mux, "PUT /v1/cluster/snapshot", h.durable(h.restoreSnapshot))
		h.route(mux, "GET /v1/cluster/rebalance", h.rebalancePlan)
		h.route(mux, "POST /v1/cluster/rebalance", h.rebalance)
		h.route(mux, "GET /v1/events", h.events)
		h.route(mux, "GET /v1/networks", h.listNetworks)
		h.route(mux, "POST /v1/networks", h.durable(h.createNetwork))
		h.route(mux, "GET /v1/networks/{name}", h.getNetwork)
		h.route(mux, "DELETE /v1/networks/{name}", h.durable(h.deleteNetwork))
		h.route(mux, "GET /v1/images", h.listImages)
		h.route(mux, "GET /v1/images/{name}", h.getImage)
		h.route(mux, "PUT /v1/images/{name}", h.durable(h.importImage))
		h.route(mux, "DELETE /v1/images/{name}", h.durable(h.deleteImage))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := h.admit(w, r, api.ScopeRead); ok {
			writeErr(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path), "")
		}
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(&versionWriter{ResponseWriter: w}, r)
	})
}

// versionWriter names this dvmd's version (Dvm-Version) on an answer that does not
// name one yet: a forwarded answer keeps the master's.
type versionWriter struct {
	http.ResponseWriter
	done bool
}

func (v *versionWriter) WriteHeader(code int) {
	if !v.done {
		v.done = true
		if v.Header().Get(api.HeaderVersion) == "" {
			v.Header().Set(api.HeaderVersion, version.Version)
		}
	}
	v.ResponseWriter.WriteHeader(code)
}

func (v *versionWriter) Write(p []byte) (int, error) {
	if !v.done {
		v.WriteHeader(http.StatusOK)
	}
	return v.ResponseWriter.Write(p)
}

// Flush lets streaming answers (drain progress) through.
func (v *versionWriter) Flush() {
	if f, ok := v.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (a console's Upgrade).
func (v *versionWriter) Unwrap() http.ResponseWriter { return v.ResponseWriter }

// health is a node's answer to GET /v1/health.
func health(m *Master, node, role string) api.Health {
	h := api.Health{Status: api.HealthOK, Node: node, Role: role, Version: version.Version}
	if m != nil {
		if err := m.st.Halted(); err != nil {
			h.Status, h.Error = api.HealthHalted, err.Error()
		}
	}
	return h
}

type handler struct {
	m       *Master
	node    string
	token   string
	reg     *metrics.Registry
	forward bool
	agents  bool // the agents' mutual-TLS listener
}

// scopeAgent is what the agents' endpoints need: on the agents' listener, the node
// certificate of the node the request is about; elsewhere an admin token.
const scopeAgent = "agent"

// agentRoutes are the agents' endpoints.
var agentRoutes = map[string]bool{
	"PUT /v1/nodes/{name}/status":      true,
	"GET /v1/nodes/{name}/assignment":  true,
	"POST /v1/guests/{name}/migration": true,
	"POST /v1/cluster/join":            true,
}

// scopeFor is the one rule of who may do what: the agents' endpoints need their node
// (scopeAgent), token management admin, a joining host's credentials a join token,
// other reads read, and every other write operator (guest, network and node work).
func scopeFor(method, path string) string {
	switch {
	case agentRoutes[method+" "+path]:
		return scopeAgent
	case path == "/v1/tokens" || strings.HasPrefix(path, "/v1/tokens/"):
		return api.ScopeAdmin
	case path == "/v1/cluster/snapshot":
		// A snapshot holds the tokens' hashes, and a restore replaces them.
		return api.ScopeAdmin
	case path == "/v1/cluster/credentials":
		return api.ScopeJoin
	case path == "/v1/guests/{name}/console", path == "/v1/guests/{name}/vnc":
		// A console types into the guest: guest work, though it is a GET; and a VNC
		// display's password opens one.
		return api.ScopeOperator
	case method == http.MethodGet:
		return api.ScopeRead
	}
	return api.ScopeOperator
}

// caller is who made a request: a token, or (on the agents' listener) a node by its
// certificate. Handlers may name what a write was about, for its event.
type caller struct {
	token, scope, node string
	guest, subject     string // the guest or node a write was about, when its path does not say
	detail             string // more for the write's event
	// recorded: the write's event went into the log entry of the write itself.
	recorded bool
}

type callerKey struct{}

// callerOf is the caller admit let in (nil outside route).
func callerOf(r *http.Request) *caller {
	c, _ := r.Context().Value(callerKey{}).(*caller)
	return c
}

// admit authenticates a request and checks that it may do what needs need; otherwise
// it answers 401 or 403 and returns false.
func (h *handler) admit(w http.ResponseWriter, r *http.Request, need string) (caller, bool) {
	if need == scopeAgent && h.agents && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		// The listener verified the chain against the cluster's CA: the name is the node's.
		node := r.TLS.VerifiedChains[0][0].Subject.CommonName
		if about := agentSubject(r); about != "" && about != node {
			writeErr(w, http.StatusForbidden, fmt.Sprintf("node %s's certificate cannot speak for node %s", node, about), "")
			return caller{}, false
		}
		return caller{node: node}, true
	}
	secret, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	var tok api.Token
	var err error
	switch {
	case h.m != nil:
		tok, err = h.m.Authenticate(secret, h.token)
	case secret == "":
		err = errNoToken
	case h.token != "" && subtle.ConstantTimeCompare([]byte(secret), []byte(h.token)) == 1:
		tok = api.Token{Name: api.BootstrapToken, Scope: api.ScopeAdmin} // a node without the state: only its own file
	default:
		err = errUnknownToken
	}
	if err != nil {
		writeErr(w, http.StatusUnauthorized, err.Error(), "")
		return caller{}, false
	}
	want := need
	if need == scopeAgent {
		want = api.ScopeAdmin
	}
	if !api.ScopeAllows(tok.Scope, want) {
		writeErr(w, http.StatusForbidden, fmt.Sprintf("token %q has scope %s, and %s %s needs %s: use a token of that scope (an admin makes one with vmctl token create NAME --scope %s)",
			tok.Name, tok.Scope, r.Method, r.URL.Path, want, want), "")
		return caller{}, false
	}
	return caller{token: tok.Name, scope: tok.Scope}, true
}

// agentSubject is the node an agents' endpoint is about, when its path says.
func agentSubject(r *http.Request) string {
	if strings.HasPrefix(r.URL.Path, "/v1/nodes/") {
		return r.PathValue("name")
	}
	return r.URL.Query().Get("node") // a migration's result: the node that carried it out
}

type statusWriter struct {
	http.ResponseWriter
	code int
	// header, when set, adds headers just before the status line goes out.
	header func(http.Header)
}

func (s *statusWriter) WriteHeader(c int) {
	s.code = c
	if s.header != nil {
		s.header(s.Header())
		s.header = nil
	}
	s.ResponseWriter.WriteHeader(c)
}

// Flush lets streaming answers (drain progress) reach the client line by line.
func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (a console's Upgrade).
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// route registers an endpoint behind the master check (forward or 503), the token
// and scope check (scopeFor), the body bound, the request duration metric and, for an
// operator's write that was done, its event naming the token.
func (h *handler) route(mux *http.ServeMux, pattern string, fn http.HandlerFunc) {
	method, path, _ := strings.Cut(pattern, " ")
	need := scopeFor(method, path)
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		defer func() {
			h.reg.APIRequestDuration.WithLabelValues(method, path, strconv.Itoa(sw.code)).Observe(time.Since(start).Seconds())
		}()
		if !h.m.IsLeader() {
			if !h.forward {
				writeErr(sw, http.StatusServiceUnavailable, "not the master: ask another management node", "")
				return
			}
			// The master decides who may: this node's replica may lack a token just made.
			h.m.forward(sw, r)
			return
		}
		c, ok := h.admit(sw, r, need)
		if !ok {
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), callerKey{}, &c))
		r.Body = http.MaxBytesReader(sw, r.Body, bodyLimit(method, path))
		sw.header = h.epochHeaders()
		fn(sw, r)
		// A 504 write was applied, only not acknowledged: it happened.
		if !c.recorded && need != scopeAgent && method != http.MethodGet && (sw.code < 300 || sw.code == http.StatusGatewayTimeout) {
			h.m.recordWrite(h.writeEvent(r, &c, sw.code))
		}
	})
}

// writeEvent is the event that keeps a write done through the API, naming its token.
func (h *handler) writeEvent(r *http.Request, c *caller, code int) store.EventRecord {
	guest, node := c.guest, c.subject
	switch {
	case strings.HasPrefix(r.URL.Path, "/v1/guests/"):
		guest = r.PathValue("name")
	case strings.HasPrefix(r.URL.Path, "/v1/nodes/"):
		node = r.PathValue("name")
	}
	detail := fmt.Sprintf("%s %s (%d)", r.Method, r.URL.Path, code)
	if c.detail != "" {
		detail += ": " + c.detail
	}
	return writeEvent(c.token, node, guest, detail)
}

// bodyLimit is the most a request body may hold: MaxBody, but a whole snapshot file
// for a restore and a whole image for an import.
func bodyLimit(method, path string) int64 {
	if method == http.MethodPut && path == "/v1/cluster/snapshot" {
		return snapshot.MaxBytes + 1<<20
	}
	if method == http.MethodPut && path == "/v1/images/{name}" {
		return api.MaxImageBytes
	}
	return MaxBody
}

// DurableTimeout bounds how long a client write waits to be on enough management
// nodes (see durable) before the client is told it is not acknowledged.
const DurableTimeout = 5 * time.Second

// durable answers a client's write only once the change is on as many management
// nodes as its acknowledgment needs (failover.DurableCopies), and the master still
// acts: raft's commit on a majority of the voters alone can be lost with the master
// and a backup. Until then the answer waits; if it cannot be had, the client gets a
// 504 that says the change is applied but may or may not survive.
func (h *handler) durable(fn http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec := &bufferedWriter{header: http.Header{}, code: http.StatusOK}
		fn(rec, r)
		if rec.code < 300 {
			ctx, cancel := context.WithTimeout(r.Context(), DurableTimeout)
			err := h.m.WaitDurable(ctx)
			cancel()
			if err != nil {
				fail(w, err)
				return
			}
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.code)
		w.Write(rec.body.Bytes())
	}
}

// bufferedWriter keeps an answer until it may be sent.
type bufferedWriter struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (b *bufferedWriter) Header() http.Header         { return b.header }
func (b *bufferedWriter) WriteHeader(code int)        { b.code = code }
func (b *bufferedWriter) Write(p []byte) (int, error) { return b.body.Write(p) }

// epochHeaders reads the generation and term when a request starts and returns what
// sets the headers when its answer goes out. Generation and term are given only when
// neither changed meanwhile and this node is still the leader: then a write committed
// by this request was committed in that term (a leader that loses its term fails its
// pending writes), so the headers never name a term the write was not made in.
func (h *handler) epochHeaders() func(http.Header) {
	gen, term, ok := h.m.writeEpoch()
	return func(hd http.Header) {
		hd.Set(api.HeaderMaster, h.node)
		g, t, still := h.m.writeEpoch()
		if ok && still && g == gen && t == term {
			hd.Set(api.HeaderGeneration, strconv.FormatUint(gen, 10))
			hd.Set(api.HeaderTerm, strconv.FormatUint(term, 10))
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, msg, field string) {
	writeJSON(w, code, api.Error{Error: msg, Field: field})
}

// fail maps an error to its status code.
func fail(w http.ResponseWriter, err error) {
	var fe *api.FieldError
	switch {
	case errors.As(err, &fe):
		writeErr(w, http.StatusBadRequest, fe.Error(), fe.Field)
	case errors.Is(err, ErrNotFound):
		writeErr(w, http.StatusNotFound, err.Error(), "")
	case errors.Is(err, ErrConflict):
		writeErr(w, http.StatusConflict, err.Error(), "")
	case errors.Is(err, store.ErrNotLeader):
		writeErr(w, http.StatusServiceUnavailable, "this node lost the master role meanwhile: retry", "")
	case errors.As(err, new(*RefusedError)):
		writeErr(w, http.StatusConflict, err.Error(), "")
	case errors.Is(err, store.ErrNotDurable):
		// Not 503: the change was applied, and a client that retried it on another
		// node would only be told it exists. 504 ends the request with the news.
		writeErr(w, http.StatusGatewayTimeout, err.Error()+"; it may or may not survive: look (vmctl vm show, vmctl net ls) before you retry", "")
	case errors.Is(err, ErrMasterChanged):
		// Not 503: what was started goes on; a retry would only be told it runs.
		writeErr(w, http.StatusGatewayTimeout, err.Error(), "")
	case errors.Is(err, ErrNotActing), errors.Is(err, store.ErrHalted):
		writeErr(w, http.StatusServiceUnavailable, err.Error(), "")
	case errors.Is(err, store.ErrTooOld), errors.Is(err, ErrAdopting):
		writeErr(w, http.StatusConflict, err.Error(), "")
	case errors.Is(err, ErrBadRequest):
		writeErr(w, http.StatusBadRequest, err.Error(), "")
	default:
		writeErr(w, http.StatusInternalServerError, err.Error(), "")
	}
}

// decode reads a JSON body strictly: unknown fields, trailing data and oversize bodies
// are refused with a message that says which.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		var ute *json.UnmarshalTypeError
		switch {
		case errors.As(err, &mbe):
			return &api.FieldError{Field: "body", Msg: fmt.Sprintf("larger than %d bytes", MaxBody)}
		case errors.As(err, &ute) && ute.Field == "":
			return &api.FieldError{Field: "body", Msg: fmt.Sprintf("must be a JSON object, not a JSON %s", ute.Value)}
		case errors.As(err, &ute):
			return &api.FieldError{Field: ute.Field, Msg: fmt.Sprintf("must be %s, not a JSON %s", jsonKind(ute.Type), ute.Value)}
		case errors.Is(err, io.EOF):
			return &api.FieldError{Field: "body", Msg: "empty: send a JSON object"}
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			// encoding/json quotes the name with %q.
			f, uerr := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
			if uerr != nil || f == "" {
				return &api.FieldError{Field: "body", Msg: fmt.Sprintf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))}
			}
			return &api.FieldError{Field: f, Msg: "unknown field"}
		}
		return &api.FieldError{Field: "body", Msg: "not valid JSON: " + err.Error()}
	}
	if dec.More() {
		return &api.FieldError{Field: "body", Msg: "trailing data after the JSON object"}
	}
	return nil
}

// jsonKind says what JSON a Go type is read from, for error messages.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return "an object"
}

// decodeNone accepts the body of a request that takes no parameters: nothing, {} or
// null. Anything else is refused as decode refuses it, so a client that thinks it can
// choose something (a drain's destination, say) learns that it cannot.
func decodeNone(r *http.Request) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return &api.FieldError{Field: "body", Msg: fmt.Sprintf("larger than %d bytes", MaxBody)}
		}
		return &api.FieldError{Field: "body", Msg: "could not be read: " + err.Error()}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return decode(r, &struct{}{})
}

func (h *handler) listNodes(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.m.Nodes())
}

func (h *handler) removeNode(w http.ResponseWriter, r *http.Request) {
	if err := h.m.RemoveNode(r.PathValue("name")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) nodeStatus(w http.ResponseWriter, r *http.Request) {
	var st api.NodeStatus
	if err := decode(r, &st); err != nil {
		fail(w, err)
		return
	}
	st.Version = r.Header.Get(api.HeaderVersion)
	if err := h.m.ReportStatus(r.PathValue("name"), st); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// blocking reads a blocking query's parameters: the whole number in param (index,
// after; 0 when absent) and wait, up to 5 minutes. On a bad one it answers 400 and
// returns false.
func blocking(w http.ResponseWriter, r *http.Request, param, what string) (uint64, time.Duration, bool) {
	q := r.URL.Query()
	var n uint64
	var wait time.Duration
	var err error
	if s := q.Get(param); param != "" && s != "" {
		if n, err = strconv.ParseUint(s, 10, 64); err != nil {
			writeErr(w, http.StatusBadRequest, param+" must be a whole number"+what, param)
			return 0, 0, false
		}
	}
	if s := q.Get("wait"); s != "" {
		if wait, err = time.ParseDuration(s); err != nil || wait < 0 || wait > 5*time.Minute {
			writeErr(w, http.StatusBadRequest, "wait must be a duration up to 5m, such as 30s", "wait")
			return 0, 0, false
		}
	}
	return n, wait, true
}

func (h *handler) assignment(w http.ResponseWriter, r *http.Request) {
	index, wait, ok := blocking(w, r, "index", "")
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, h.m.Assignment(r.Context(), r.PathValue("name"), index, wait))
}

func (h *handler) listGuests(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.m.Guests())
}

func (h *handler) createGuest(w http.ResponseWriter, r *http.Request) {
	var req api.CreateGuest
	if err := decode(r, &req); err != nil {
		fail(w, err)
		return
	}
	c := callerOf(r)
	c.guest = req.Name
	// The write's event goes into the create's own log entry: one round to the backups
	// for both. Its code is the one answered unless the wait for copies fails (504).
	g, err := h.m.createGuest(req, func(pending bool) store.EventRecord { return h.writeEvent(r, c, createdCode(pending)) })
	if err != nil {
		fail(w, err)
		return
	}
	c.recorded = true
	writeJSON(w, createdCode(g.State == api.GuestPending), g)
}

// createdCode answers a create: 201, or 202 for a guest recorded and pending, placed
// when room appears.
func createdCode(pending bool) int {
	if pending {
		return http.StatusAccepted
	}
	return http.StatusCreated
}

// getGuest answers at once, or, given the index of an answer (?index=VERSION&wait=D),
// once the guest differs from it (see WatchGuest).
func (h *handler) getGuest(w http.ResponseWriter, r *http.Request) {
	_, wait, ok := blocking(w, r, "", "")
	if !ok {
		return
	}
	g, version, err := h.m.WatchGuest(r.Context(), r.PathValue("name"), r.URL.Query().Get("index"), wait)
	if err != nil {
		fail(w, err)
		return
	}
	w.Header().Set(api.HeaderIndex, version)
	writeJSON(w, http.StatusOK, g)
}

func (h *handler) deleteGuest(w http.ResponseWriter, r *http.Request) {
	keep, err := boolParam(r, "keep_disks")
	if err != nil {
		fail(w, err)
		return
	}
	g, err := h.m.DeleteGuest(r.PathValue("name"), keep)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, g)
}

func (h *handler) desired(state string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		g, err := h.m.SetDesired(r.PathValue("name"), state)
		if err != nil {
			fail(w, err)
			return
		}
		writeJSON(w, http.StatusAccepted, g)
	}
}

func (h *handler) migrate(w http.ResponseWriter, r *http.Request) {
	var req api.MigrateRequest
	if err := decode(r, &req); err != nil {
		fail(w, err)
		return
	}
	if fe := api.ValidateName("node", req.Node); fe != nil {
		fail(w, fe)
		return
	}
	res, err := h.m.Migrate(r.Context(), r.PathValue("name"), req.Node)
	if res.From != "" {
		outcome := "ok"
		if !res.OK {
			outcome = "failed"
		} else {
			h.reg.MigrationDuration.Observe(res.TotalSeconds)
			h.reg.MigrationDowntime.Observe(res.DowntimeSeconds)
		}
		h.reg.Migrations.WithLabelValues(outcome).Inc()
	}
	if err != nil {
		if res.From != "" {
			// The migration ran and failed: a final answer (the guest stays where it
			// runs), not a gateway problem that a client should retry.
			writeJSON(w, http.StatusConflict, api.Error{Error: err.Error()})
			return
		}
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (h *handler) migrationDone(w http.ResponseWriter, r *http.Request) {
	var res api.Migration
	if err := decode(r, &res); err != nil {
		fail(w, err)
		return
	}
	node := r.URL.Query().Get("node")
	if err := h.m.MigrationDone(node, r.PathValue("name"), res); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) why(w http.ResponseWriter, r *http.Request) {
	why, err := h.m.Why(r.PathValue("name"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, why)
}

func (h *handler) join(w http.ResponseWriter, r *http.Request) {
	var req api.JoinRequest
	if err := decode(r, &req); err != nil {
		fail(w, err)
		return
	}
	if c := callerOf(r); c.node != "" && c.node != req.Name {
		writeErr(w, http.StatusForbidden, fmt.Sprintf("node %s's certificate cannot ask to take node %s in", c.node, req.Name), "name")
		return
	}
	if err := h.m.Join(req); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	after, wait, ok := blocking(w, r, "after", " (an event's seq)")
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, h.m.Events(r.Context(), after, wait))
}

// drain streams the drain's progress as newline-delimited JSON, a line per guest.
func (h *handler) drain(maintenance bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		node := r.PathValue("name")
		if fe := api.ValidateName("node", node); fe != nil {
			fail(w, fe)
			return
		}
		if err := decodeNone(r); err != nil {
			fail(w, err)
			return
		}
		if _, ok := h.m.st.Node(node); !ok {
			fail(w, fmt.Errorf("node %q %w", node, ErrNotFound))
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		enc := json.NewEncoder(w)
		flush := func() {
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
		}
		sum, err := h.m.Drain(r.Context(), node, maintenance, func(p api.DrainProgress) {
			enc.Encode(p)
			flush()
		})
		if err != nil {
			sum = api.DrainProgress{Node: node, MoveOutcome: api.MoveOutcome{Done: true, Status: "failed", Error: err.Error()}}
		}
		enc.Encode(sum)
		flush()
	}
}

func (h *handler) undrain(w http.ResponseWriter, r *http.Request) {
	if err := h.m.Undrain(r.PathValue("name")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) listTokens(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.m.Tokens())
}

func (h *handler) createToken(w http.ResponseWriter, r *http.Request) {
	var req api.CreateToken
	if err := decode(r, &req); err != nil {
		fail(w, err)
		return
	}
	c := callerOf(r)
	t, err := h.m.CreateToken(req, c.token, h.m.managementURLs(r.Host))
	if err != nil {
		fail(w, err)
		return
	}
	c.detail = fmt.Sprintf("token %s, scope %s", t.Name, t.Scope)
	ctx, cancel := context.WithTimeout(r.Context(), DurableTimeout)
	if err := h.m.WaitDurable(ctx); err != nil {
		t.Warning = err.Error() + ": if `vmctl token ls` lacks it once the cluster is whole again, make it again"
	}
	cancel()
	writeJSON(w, http.StatusCreated, t)
}

func (h *handler) revokeToken(w http.ResponseWriter, r *http.Request) {
	if err := h.m.RevokeToken(r.PathValue("name")); err != nil {
		fail(w, err)
		return
	}
	callerOf(r).detail = "token " + r.PathValue("name") + " revoked"
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) joinHost(w http.ResponseWriter, r *http.Request) {
	var req api.HostJoinRequest
	if err := decode(r, &req); err != nil {
		fail(w, err)
		return
	}
	creds, err := h.m.JoinHost(req)
	if err != nil {
		fail(w, err)
		return
	}
	c := callerOf(r)
	c.subject, c.detail = req.Name, "host "+req.Name+" given its credentials ("+strings.Join(req.IPs, ", ")+")"
	writeJSON(w, http.StatusOK, creds)
}

// saveSnapshot answers with a snapshot file of the replicated state.
func (h *handler) saveSnapshot(w http.ResponseWriter, r *http.Request) {
	var buf bytes.Buffer
	sh, err := h.m.SaveSnapshot(&buf)
	if err != nil {
		fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set(api.HeaderSnapshotIndex, strconv.FormatUint(sh.Index, 10))
	w.WriteHeader(http.StatusOK)
	w.Write(buf.Bytes())
}

// restoreSnapshot restores the state of a new management group from the snapshot
// file in the body (see Master.RestoreSnapshot).
func (h *handler) restoreSnapshot(w http.ResponseWriter, r *http.Request) {
	var timeout time.Duration
	if s := r.URL.Query().Get("adopt_timeout"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Second || d > 24*time.Hour {
			writeErr(w, http.StatusBadRequest, "adopt_timeout must be a duration from 1s to 24h, such as 5m", "adopt_timeout")
			return
		}
		timeout = d
	}
	res, err := h.m.RestoreSnapshot(r.Body, timeout)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = &api.FieldError{Field: "body", Msg: fmt.Sprintf("larger than %d bytes: not a snapshot file", mbe.Limit)}
		}
		fail(w, err)
		return
	}
	callerOf(r).detail = fmt.Sprintf("state restored from the snapshot taken at %s (index %d)", res.SnapshotTakenAt.Format(time.RFC3339), res.SnapshotIndex)
	writeJSON(w, http.StatusOK, res)
}

func (h *handler) upgradeCheck(w http.ResponseWriter, r *http.Request) {
	res, err := h.m.UpgradeCheck(r.URL.Query().Get("to"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
