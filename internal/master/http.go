package master

import (
	"bytes"
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
	"github.com/dvmproject/dvm/internal/store"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MaxBody bounds every request body: the largest valid one is far smaller.
const MaxBody = 64 << 10

// Handler serves the API for a node. m is nil on a node that holds no management role:
// it still serves /metrics and /v1/health.
func Handler(m *Master, nodeName, token string, reg *metrics.Registry) http.Handler {
	return handlerFor(m, nodeName, token, reg, true)
}

// AgentHandler serves the same API on the agents' mutual-TLS listener. It does not
// forward: a node that is not the master answers 503 and the agent asks the next
// management node, so agent traffic never leaves TLS.
func AgentHandler(m *Master, nodeName, token string, reg *metrics.Registry) http.Handler {
	return handlerFor(m, nodeName, token, reg, false)
}

func handlerFor(m *Master, nodeName, token string, reg *metrics.Registry, forward bool) http.Handler {
	mux := http.NewServeMux()
	h := &handler{m: m, token: token, reg: reg, forward: forward}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	role := "node"
	if m != nil {
		role = "master"
	}
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, api.Health{Status: "ok", Node: nodeName, Role: role})
	})
	if m != nil {
		h.route(mux, "GET /v1/nodes", h.listNodes)
		h.route(mux, "PUT /v1/nodes/{name}/status", h.nodeStatus)
		h.route(mux, "GET /v1/nodes/{name}/assignment", h.assignment)
		h.route(mux, "GET /v1/guests", h.listGuests)
		h.route(mux, "POST /v1/guests", h.createGuest)
		h.route(mux, "GET /v1/guests/{name}", h.getGuest)
		h.route(mux, "GET /v1/guests/{name}/why", h.why)
		h.route(mux, "DELETE /v1/guests/{name}", h.deleteGuest)
		h.route(mux, "POST /v1/guests/{name}/start", h.desired(store.DesiredRunning))
		h.route(mux, "POST /v1/guests/{name}/stop", h.desired(store.DesiredStopped))
		h.route(mux, "POST /v1/guests/{name}/migrate", h.migrate)
		h.route(mux, "POST /v1/guests/{name}/migration", h.migrationDone)
		h.route(mux, "POST /v1/cluster/join", h.join)
		h.route(mux, "POST /v1/nodes/{name}/drain", h.drain(false))
		h.route(mux, "POST /v1/nodes/{name}/maintenance", h.drain(true))
		h.route(mux, "POST /v1/nodes/{name}/undrain", h.undrain)
		// Answered by every management node from its own role machine, leader or not:
		// during a partition, each side tells what it sees.
		mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
			if !h.authorized(r) {
				writeErr(w, http.StatusUnauthorized, "missing or wrong bearer token: set DVM_TOKEN or --token", "")
				return
			}
			writeJSON(w, http.StatusOK, h.m.ClusterStatus())
		})
		h.route(mux, "GET /v1/events", h.events)
		h.route(mux, "GET /v1/networks", h.listNetworks)
		h.route(mux, "POST /v1/networks", h.createNetwork)
		h.route(mux, "GET /v1/networks/{name}", h.getNetwork)
		h.route(mux, "DELETE /v1/networks/{name}", h.deleteNetwork)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if !h.authorized(r) {
			writeErr(w, http.StatusUnauthorized, "missing or wrong bearer token: set DVM_TOKEN or --token", "")
			return
		}
		writeErr(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path), "")
	})
	return mux
}

type handler struct {
	m       *Master
	token   string
	reg     *metrics.Registry
	forward bool
}

func (h *handler) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(h.token)) == 1
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(c int) { s.code = c; s.ResponseWriter.WriteHeader(c) }

// Flush lets streaming answers (drain progress) reach the client line by line.
func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// route registers an endpoint behind the token check, the body bound and the request
// duration metric.
func (h *handler) route(mux *http.ServeMux, pattern string, fn http.HandlerFunc) {
	method, path, _ := strings.Cut(pattern, " ")
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		defer func() {
			h.reg.APIRequestDuration.WithLabelValues(method, path, strconv.Itoa(sw.code)).Observe(time.Since(start).Seconds())
		}()
		if !h.authorized(r) {
			writeErr(sw, http.StatusUnauthorized, "missing or wrong bearer token: set DVM_TOKEN or --token", "")
			return
		}
		if !h.m.IsLeader() {
			if !h.forward {
				writeErr(sw, http.StatusServiceUnavailable, "not the master: ask another management node", "")
				return
			}
			h.m.forward(sw, r)
			return
		}
		r.Body = http.MaxBytesReader(sw, r.Body, MaxBody)
		fn(sw, r)
	})
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
	case errors.Is(err, ErrNotActing):
		writeErr(w, http.StatusServiceUnavailable, err.Error(), "")
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

func (h *handler) nodeStatus(w http.ResponseWriter, r *http.Request) {
	var st api.NodeStatus
	if err := decode(r, &st); err != nil {
		fail(w, err)
		return
	}
	if err := h.m.ReportStatus(r.PathValue("name"), st); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) assignment(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var index uint64
	var wait time.Duration
	var err error
	if s := q.Get("index"); s != "" {
		if index, err = strconv.ParseUint(s, 10, 64); err != nil {
			writeErr(w, http.StatusBadRequest, "index must be a whole number", "index")
			return
		}
	}
	if s := q.Get("wait"); s != "" {
		if wait, err = time.ParseDuration(s); err != nil || wait < 0 || wait > 5*time.Minute {
			writeErr(w, http.StatusBadRequest, "wait must be a duration up to 5m, such as 30s", "wait")
			return
		}
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
	g, err := h.m.CreateGuest(req)
	if err != nil {
		fail(w, err)
		return
	}
	code := http.StatusCreated
	if g.State == api.GuestPending {
		code = http.StatusAccepted // recorded, placed when room appears
	}
	writeJSON(w, code, g)
}

func (h *handler) getGuest(w http.ResponseWriter, r *http.Request) {
	g, err := h.m.Guest(r.PathValue("name"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, g)
}

func (h *handler) deleteGuest(w http.ResponseWriter, r *http.Request) {
	g, err := h.m.DeleteGuest(r.PathValue("name"))
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
	if err := h.m.Join(req); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	var wait time.Duration
	var err error
	if s := q.Get("after"); s != "" {
		if after, err = strconv.ParseUint(s, 10, 64); err != nil {
			writeErr(w, http.StatusBadRequest, "after must be a whole number (an event's seq)", "after")
			return
		}
	}
	if s := q.Get("wait"); s != "" {
		if wait, err = time.ParseDuration(s); err != nil || wait < 0 || wait > 5*time.Minute {
			writeErr(w, http.StatusBadRequest, "wait must be a duration up to 5m, such as 30s", "wait")
			return
		}
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
			sum = api.DrainProgress{Node: node, Done: true, Status: "failed", Error: err.Error()}
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
