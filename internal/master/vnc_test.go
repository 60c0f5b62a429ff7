package master

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// TestGuestVNC: a guest created with a VNC display gets a password of 8 characters
// from the master, in its node's assignment; the password is shown by GET
// /v1/guests/NAME/vnc to an operator token only (a read token gets 403), and never in
// the guest's answer, the guest list, an event or the create's answer; the display's
// address is what its node reports; each reading of the password is an event naming
// the token. A guest without one is a 409 that says how to get
// one; a node of an older dvmd refuses the create.
func TestGuestVNC(t *testing.T) {
	m, admin := capacityMaster(t, Options{})
	ops := as(t, admin, mustToken(t, admin, "ops", api.ScopeOperator))
	reader := as(t, admin, mustToken(t, admin, "viewer", api.ScopeRead))
	ctx := context.Background()
	report(t, admin, "n1", 8, 16)
	var raw json.RawMessage
	if err := ops.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "gui", CPUs: 1, MemoryBytes: 1 << 30, VNC: true}, &raw); err != nil {
		t.Fatal(err)
	}
	rec, _ := m.st.Guest("gui")
	pw := rec.VNCPassword
	if len(pw) != 8 || strings.Trim(pw, vncAlphabet) != "" {
		t.Fatalf("password %q", pw)
	}
	if other := newVNCPassword(); other == pw {
		t.Fatalf("two passwords alike: %q", pw)
	}
	var ag api.AssignedGuest
	for _, g := range m.Assignment(ctx, "n1", 0, 0).Guests {
		if g.Name == "gui" {
			ag = g
		}
	}
	if ag.VNCPassword != pw {
		t.Fatalf("assignment of gui: %+v", ag)
	}
	leaks := map[string]string{"create": string(raw)}
	for what, path := range map[string]string{"show": "/v1/guests/gui", "list": "/v1/guests", "events": "/v1/events"} {
		var b json.RawMessage
		if err := reader.Do(ctx, "GET", path, nil, &b); err != nil {
			t.Fatal(err)
		}
		leaks[what] = string(b)
	}
	for what, body := range leaks {
		if strings.Contains(body, pw) {
			t.Errorf("the password is in the %s answer: %s", what, body)
		}
	}
	if !strings.Contains(leaks["show"], `"vnc":{}`) {
		t.Errorf("show does not say gui has a VNC display: %s", leaks["show"])
	}
	wantStatus(t, "vnc with a read token", reader.Do(ctx, "GET", "/v1/guests/gui/vnc", nil, nil), 403, "operator")
	var v api.VNC
	if err := ops.Do(ctx, "GET", "/v1/guests/gui/vnc", nil, &v); err != nil || v.Password != pw || v.Node != "n1" || v.Display != "" {
		t.Fatalf("vnc: %+v, %v", v, err)
	}
	read := 0
	for _, e := range m.st.Events(0) {
		if e.Kind == EventConsole && e.Guest == "gui" && e.Token == "ops" && e.Detail == "VNC display's password read" {
			read++
		}
		if strings.Contains(e.Detail, pw) {
			t.Errorf("the password is in an event: %+v", e)
		}
	}
	if read != 1 {
		t.Errorf("%d events of the password read by ops, want 1", read)
	}
	st := api.NodeStatus{Address: "10.0.0.5:7460", LibvirtURI: "test:///n1", Accelerator: "test", HostCPUs: 8, HostMemoryBytes: 16 * gib,
		CPUs: 8, MemoryBytes: 16 * gib, Guests: []api.ObservedGuest{{Name: "gui", State: "running", VNC: "10.0.0.5:5900"}}}
	if err := admin.Do(ctx, "PUT", "/v1/nodes/n1/status", st, nil); err != nil {
		t.Fatal(err)
	}
	var g api.Guest
	if err := reader.Do(ctx, "GET", "/v1/guests/gui", nil, &g); err != nil || g.VNC == nil || g.VNC.Display != "10.0.0.5:5900" {
		t.Fatalf("show after the report: %+v, %v", g.VNC, err)
	}
	if err := ops.Do(ctx, "GET", "/v1/guests/gui/vnc", nil, &v); err != nil || v.Display != "10.0.0.5:5900" {
		t.Fatalf("vnc after the report: %+v, %v", v, err)
	}

	create(t, ops, "plain", 1, 1)
	wantStatus(t, "vnc of a guest without", ops.Do(ctx, "GET", "/v1/guests/plain/vnc", nil, nil), 409, "has no VNC display: conflict; it has one when created with --vnc")
	wantStatus(t, "vnc of no guest", ops.Do(ctx, "GET", "/v1/guests/nope/vnc", nil, nil), 404, `guest "nope"`)
	putNode(t, m, store.NodeRecord{Name: "old", CPUs: 4, MemoryBytes: 8 << 30, Version: "0.2.0-dev"})
	err := ops.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "x", CPUs: 1, MemoryBytes: 1 << 30, VNC: true}, nil)
	wantStatus(t, "vnc with a 0.2.0-dev node", err, 409, "node old runs 0.2.0-dev")
	if _, ok := m.st.Guest("x"); ok {
		t.Fatal("x was created")
	}
}
