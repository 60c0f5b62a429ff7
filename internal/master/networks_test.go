package master

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/metrics"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/hashicorp/raft"
)

// newTestMaster is a master over a real one-voter raft store, served over HTTP as dvmd
// serves it.
func newTestMaster(t *testing.T) (*Master, *api.Client) {
	t.Helper()
	return newTestMasterWith(t, Options{})
}

// newTestMasterWith is newTestMaster with options (its log is discarded).
func newTestMasterWith(t testing.TB, opts Options) (*Master, *api.Client) {
	t.Helper()
	_, tr := raft.NewInmemTransport("")
	st, err := store.Open(store.Config{NodeID: "m1", Dir: t.TempDir(), Transport: tr, Bootstrap: true, LogOutput: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !st.IsLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("store never became leader")
		}
	}
	opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := New(st, opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(m, "m1", "tok", metrics.New()))
	t.Cleanup(srv.Close)
	c, err := api.NewClient(srv.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	return m, c
}

func statusOf(err error) (int, string) {
	if se, ok := err.(*api.StatusError); ok {
		return se.Code, se.Field
	}
	return 0, ""
}

func TestNetworkCreateValidation(t *testing.T) {
	m, c := newTestMaster(t)
	ctx := context.Background()
	var blue api.Network
	if err := c.Do(ctx, "POST", "/v1/networks", api.CreateNetwork{Name: "blue", VNI: 42, CIDR: "192.168.42.0/24"}, &blue); err != nil {
		t.Fatal(err)
	}
	if blue.Name != "blue" || blue.VNI != 42 || blue.CIDR != "192.168.42.0/24" || len(blue.Guests) != 0 {
		t.Fatalf("created %+v", blue)
	}
	bad := []struct {
		name  string
		body  any
		code  int
		field string
	}{
		{"bad name", api.CreateNetwork{Name: "Blue!", VNI: 1, CIDR: "10.1.0.0/16"}, 400, "name"},
		{"no name", api.CreateNetwork{VNI: 1, CIDR: "10.1.0.0/16"}, 400, "name"},
		{"vni 0", api.CreateNetwork{Name: "red", CIDR: "10.1.0.0/16"}, 400, "vni"},
		{"vni too big", api.CreateNetwork{Name: "red", VNI: 1 << 24, CIDR: "10.1.0.0/16"}, 400, "vni"},
		{"vni taken", api.CreateNetwork{Name: "red", VNI: 42, CIDR: "10.1.0.0/16"}, 400, "vni"},
		{"no cidr", api.CreateNetwork{Name: "red", VNI: 7}, 400, "cidr"},
		{"cidr garbage", api.CreateNetwork{Name: "red", VNI: 7, CIDR: "10.1.0.0"}, 400, "cidr"},
		{"cidr host bits", api.CreateNetwork{Name: "red", VNI: 7, CIDR: "10.1.0.5/16"}, 400, "cidr"},
		{"cidr too small", api.CreateNetwork{Name: "red", VNI: 7, CIDR: "10.1.0.0/31"}, 400, "cidr"},
		{"cidr overlaps", api.CreateNetwork{Name: "red", VNI: 7, CIDR: "192.168.0.0/16"}, 400, "cidr"},
		{"cidr overlaps inside", api.CreateNetwork{Name: "red", VNI: 7, CIDR: "192.168.42.128/25"}, 400, "cidr"},
		{"mtu small", api.CreateNetwork{Name: "red", VNI: 7, CIDR: "10.1.0.0/16", MTU: 60}, 400, "mtu"},
		{"mtu v6 small", api.CreateNetwork{Name: "red", VNI: 7, CIDR: "fd07::/64", MTU: 1000}, 400, "mtu"},
		{"name taken", api.CreateNetwork{Name: "blue", VNI: 7, CIDR: "10.1.0.0/16"}, 409, ""},
		{"unknown field", map[string]any{"name": "red", "vni": 7, "cidr": "10.1.0.0/16", "vlan": 3}, 400, "vlan"},
		{"vni wrong type", map[string]any{"name": "red", "vni": "seven", "cidr": "10.1.0.0/16"}, 400, "vni"},
		// Found by the API body fuzzers: these were 400s without the field.
		{"not an object", json.RawMessage(`7`), 400, "body"},
		{"field without a name", map[string]any{"": 1, "name": "red", "vni": 7, "cidr": "10.1.0.0/16"}, 400, "body"},
	}
	for _, b := range bad {
		err := c.Do(ctx, "POST", "/v1/networks", b.body, nil)
		code, field := statusOf(err)
		if code != b.code || field != b.field {
			t.Errorf("%s: got %d field %q (%v); want %d field %q", b.name, code, field, err, b.code, b.field)
		}
		if n := len(m.Networks()); n != 1 {
			t.Fatalf("%s: %d networks after a refused create; want 1", b.name, n)
		}
	}
	var six api.Network
	if err := c.Do(ctx, "POST", "/v1/networks", api.CreateNetwork{Name: "six", VNI: 16777215, CIDR: "fd42::/64", MTU: 1400}, &six); err != nil {
		t.Fatalf("IPv6 network at the top VNI: %v", err)
	}
	var list []api.Network
	if err := c.Do(ctx, "GET", "/v1/networks", nil, &list); err != nil || len(list) != 2 || list[0].Name != "blue" || list[1].MTU != 1400 {
		t.Fatalf("list %+v, %v", list, err)
	}
	if code, _ := statusOf(c.Do(ctx, "GET", "/v1/networks/nope", nil, nil)); code != 404 {
		t.Errorf("GET unknown network: %d, want 404", code)
	}
	if code, _ := statusOf(c.Do(ctx, "DELETE", "/v1/networks/nope", nil, nil)); code != 404 {
		t.Errorf("DELETE unknown network: %d, want 404", code)
	}
}

func TestGuestNICsAndNetworkDelete(t *testing.T) {
	m, c := newTestMaster(t)
	ctx := context.Background()
	for _, n := range []api.CreateNetwork{{Name: "blue", VNI: 42, CIDR: "192.168.42.0/30"}, {Name: "green", VNI: 43, CIDR: "fd43::/64"}} {
		if err := c.Do(ctx, "POST", "/v1/networks", n, nil); err != nil {
			t.Fatal(err)
		}
	}
	create := func(name string, nets ...string) (api.Guest, error) {
		var g api.Guest
		err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: name, CPUs: 1, MemoryBytes: 128 << 20, Networks: nets}, &g)
		return g, err
	}
	g1, err := create("g1", "blue", "green")
	if err != nil {
		t.Fatal(err)
	}
	g2, err := create("g2", "blue")
	if err != nil {
		t.Fatal(err)
	}
	if len(g1.NICs) != 2 || g1.NICs[0].Network != "blue" || g1.NICs[0].IP != "192.168.42.1/30" || g1.NICs[1].IP != "fd43::1/64" {
		t.Fatalf("g1 NICs %+v", g1.NICs)
	}
	if len(g2.NICs) != 1 || g2.NICs[0].IP != "192.168.42.2/30" {
		t.Fatalf("g2 NICs %+v: want the next free address", g2.NICs)
	}
	macs := map[string]bool{}
	for _, n := range append(g1.NICs, g2.NICs...) {
		if !strings.HasPrefix(n.MAC, "52:54:00:") || len(n.MAC) != 17 || macs[n.MAC] {
			t.Errorf("MAC %q: want a unique 52:54:00:xx:xx:xx", n.MAC)
		}
		macs[n.MAC] = true
	}
	// /30 holds two guests: the third is refused, and nothing is recorded.
	if _, err := create("g3", "blue"); err == nil || !strings.Contains(err.Error(), "no free address") {
		t.Errorf("third guest on a /30: %v; want no free address", err)
	}
	for _, bad := range [][]string{{"nope"}, {"green", "green"}, {"Bad_Name"}} {
		_, err := create("g4", bad...)
		if code, field := statusOf(err); code != 400 || field != "networks" {
			t.Errorf("networks %v: %d %q (%v); want 400 networks", bad, code, field, err)
		}
	}
	if len(m.Guests()) != 2 {
		t.Fatalf("%d guests after refused creates; want 2", len(m.Guests()))
	}
	var blue api.Network
	if err := c.Do(ctx, "GET", "/v1/networks/blue", nil, &blue); err != nil || strings.Join(blue.Guests, ",") != "g1,g2" {
		t.Fatalf("blue %+v, %v", blue, err)
	}
	err = c.Do(ctx, "DELETE", "/v1/networks/blue", nil, nil)
	if code, _ := statusOf(err); code != 409 || !strings.Contains(err.Error(), "g1, g2") {
		t.Fatalf("delete of a used network: %v; want 409 naming g1, g2", err)
	}
	// Pending guests (no node here) are removed at once.
	for _, g := range []string{"g1", "g2"} {
		if err := c.Do(ctx, "DELETE", "/v1/guests/"+g, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Do(ctx, "DELETE", "/v1/networks/blue", nil, nil); err != nil {
		t.Fatalf("delete of an unused network: %v", err)
	}
	if code, _ := statusOf(c.Do(ctx, "GET", "/v1/networks/blue", nil, nil)); code != http.StatusNotFound {
		t.Errorf("deleted network still answers: %d", code)
	}
}

// TestAssignmentNetworks checks the network part of every node's assignment, and that
// a guest's move changes the endpoints of every other node (entries follow the guest).
func TestAssignmentNetworks(t *testing.T) {
	m, _ := newTestMaster(t)
	st := m.Store()
	apply := func(cmds ...store.Command) {
		t.Helper()
		if _, err := st.Apply(cmds...); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range []string{"n1", "n2", "n3", "n4"} {
		apply(store.Command{Op: store.OpPutNode, Node: &store.NodeRecord{Name: n, Address: "10.77.0." + string(rune('1'+i)) + ":7460"}})
	}
	apply(store.Command{Op: store.OpPutNetwork, Net: &store.NetworkRecord{Name: "blue", VNI: 42, CIDR: "192.168.42.0/24"}},
		store.Command{Op: store.OpPutNetwork, Net: &store.NetworkRecord{Name: "red", VNI: 7, CIDR: "10.7.0.0/16", MTU: 1400}})
	nic := func(net, mac, ip string) store.NICRecord { return store.NICRecord{Network: net, MAC: mac, IP: ip} }
	apply(
		store.Command{Op: store.OpPutGuest, Guest: &store.GuestRecord{Name: "a", Node: "n1", Desired: store.DesiredRunning, NICs: []store.NICRecord{nic("blue", "52:54:00:00:00:0a", "192.168.42.1/24")}}},
		store.Command{Op: store.OpPutGuest, Guest: &store.GuestRecord{Name: "b", Node: "n2", Desired: store.DesiredRunning, NICs: []store.NICRecord{nic("blue", "52:54:00:00:00:0b", "192.168.42.2/24"), nic("red", "52:54:00:00:00:1b", "10.7.0.1/16")}}},
		store.Command{Op: store.OpPutGuest, Guest: &store.GuestRecord{Name: "c", Node: "n3", Desired: store.DesiredRunning, NICs: []store.NICRecord{nic("red", "52:54:00:00:00:1c", "10.7.0.2/16")}}},
		store.Command{Op: store.OpPutGuest, Guest: &store.GuestRecord{Name: "plain", Node: "n4", Desired: store.DesiredRunning}},
	)
	ctx := context.Background()
	a1 := m.Assignment(ctx, "n1", 0, 0)
	if a1.Net == nil || len(a1.Net.Networks) != 1 || a1.Net.Networks[0].VNI != 42 {
		t.Fatalf("n1 networks: %+v; want blue only", a1.Net)
	}
	if strings.Join(a1.Net.Peers, ",") != "10.77.0.2" {
		t.Errorf("n1 peers %v; want n2's VTEP only (n3 has no guest on blue)", a1.Net.Peers)
	}
	if len(a1.Net.Endpoints) != 1 || a1.Net.Endpoints[0].MAC != "52:54:00:00:00:0b" || a1.Net.Endpoints[0].VTEP != "10.77.0.2" || a1.Net.Endpoints[0].IP != "192.168.42.2" {
		t.Errorf("n1 endpoints %+v; want b's blue NIC behind n2", a1.Net.Endpoints)
	}
	if len(a1.Guests) != 1 || len(a1.Guests[0].NICs) != 1 || a1.Guests[0].NICs[0].VNI != 42 || a1.Guests[0].NICs[0].IP != "192.168.42.1/24" {
		t.Errorf("n1 guest NICs %+v", a1.Guests)
	}
	a2 := m.Assignment(ctx, "n2", 0, 0)
	if a2.Net == nil || len(a2.Net.Networks) != 2 || a2.Net.Networks[0].Name != "red" || a2.Net.Networks[0].MTU != 1400 {
		t.Fatalf("n2 networks %+v; want red (VNI 7) then blue", a2.Net)
	}
	if strings.Join(a2.Net.Peers, ",") != "10.77.0.1,10.77.0.3" || len(a2.Net.Endpoints) != 2 {
		t.Errorf("n2 peers %v endpoints %+v", a2.Net.Peers, a2.Net.Endpoints)
	}
	if a4 := m.Assignment(ctx, "n4", 0, 0); a4.Net != nil {
		t.Errorf("n4 has no networked guest but got %+v", a4.Net)
	}

	// b live-migrates to n4: while it migrates n4 carries its networks (the bridge must
	// exist before the domain arrives) and b still lives on n2.
	b, _ := st.Guest("b")
	b.MigrateTo = "n4"
	apply(store.Command{Op: store.OpPutGuest, Guest: &b})
	a4 := m.Assignment(ctx, "n4", 0, 0)
	if a4.Net == nil || len(a4.Net.Networks) != 2 {
		t.Fatalf("n4 during incoming migration: %+v; want both of b's networks", a4.Net)
	}
	if ep := endpoint(m.Assignment(ctx, "n1", 0, 0), "52:54:00:00:00:0b"); ep.VTEP != "10.77.0.2" {
		t.Errorf("during migration n1 sees b at %q; want n2 still", ep.VTEP)
	}
	b.Node, b.MigrateTo = "n4", ""
	apply(store.Command{Op: store.OpPutGuest, Guest: &b})
	for node, want := range map[string]string{"n1": "10.77.0.4", "n3": "", "n2": "10.77.0.4"} {
		a := m.Assignment(ctx, node, 0, 0)
		if node == "n2" {
			if a.Net != nil {
				t.Errorf("n2 after b left: %+v; want no networks", a.Net)
			}
			continue
		}
		if got := endpoint(a, "52:54:00:00:00:0b").VTEP; node == "n1" && got != want {
			t.Errorf("%s sees b at %q after the move; want %s", node, got, want)
		}
		if got := endpoint(a, "52:54:00:00:00:1b").VTEP; node == "n3" && got != "10.77.0.4" {
			t.Errorf("n3 sees b's red NIC at %q; want n4", got)
		}
	}
	if v := vtepOf("[fd00::5]:7460"); v != netip.MustParseAddr("fd00::5") {
		t.Errorf("vtepOf IPv6: %v", v)
	}
}

func endpoint(a api.Assignment, mac string) api.Endpoint {
	if a.Net == nil {
		return api.Endpoint{}
	}
	for _, e := range a.Net.Endpoints {
		if e.MAC == mac {
			return e
		}
	}
	return api.Endpoint{}
}

func TestFreeAddr(t *testing.T) {
	used := map[netip.Addr]bool{netip.MustParseAddr("10.0.0.1"): true}
	if a, ok := freeAddr(netip.MustParsePrefix("10.0.0.0/30"), used); !ok || a.String() != "10.0.0.2" {
		t.Errorf("got %v %v; want 10.0.0.2", a, ok)
	}
	used[netip.MustParseAddr("10.0.0.2")] = true
	if a, ok := freeAddr(netip.MustParsePrefix("10.0.0.0/30"), used); ok {
		t.Errorf("got %v from a full /30: the broadcast address must not be given", a)
	}
	if a, ok := freeAddr(netip.MustParsePrefix("fd00::/126"), nil); !ok || a.String() != "fd00::1" {
		t.Errorf("IPv6: %v %v", a, ok)
	}
}

// BenchmarkAssignmentNetworks: one node's assignment in a cluster of 100 nodes and 5000
// guests, each with a NIC on one of 20 networks (the master answers this for every node
// on every state change).
func BenchmarkAssignmentNetworks(b *testing.B) {
	_, tr := raft.NewInmemTransport("")
	st, err := store.Open(store.Config{NodeID: "m1", Dir: b.TempDir(), Transport: tr, Bootstrap: true, LogOutput: io.Discard})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if err := st.WaitLeader(10 * time.Second); err != nil {
		b.Fatal(err)
	}
	for !st.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}
	m, err := New(st, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	var cmds []store.Command
	for i := 0; i < 100; i++ {
		cmds = append(cmds, store.Command{Op: store.OpPutNode, Node: &store.NodeRecord{Name: fmt.Sprintf("n%d", i), Address: fmt.Sprintf("10.77.%d.%d:7460", i/250, i%250+1)}})
	}
	for i := 0; i < 20; i++ {
		cmds = append(cmds, store.Command{Op: store.OpPutNetwork, Net: &store.NetworkRecord{Name: fmt.Sprintf("net%d", i), VNI: uint32(i + 1), CIDR: fmt.Sprintf("10.%d.0.0/16", i+100)}})
	}
	if _, err := st.Apply(cmds...); err != nil {
		b.Fatal(err)
	}
	cmds = cmds[:0]
	for i := 0; i < 5000; i++ {
		g := store.GuestRecord{Name: fmt.Sprintf("g%d", i), Node: fmt.Sprintf("n%d", i%100), Desired: store.DesiredRunning,
			NICs: []store.NICRecord{{Network: fmt.Sprintf("net%d", i%20), MAC: fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16, (i>>8)&0xff, i&0xff), IP: fmt.Sprintf("10.%d.%d.%d/16", i%20+100, (i/250)%250, i%250+1)}}}
		cmds = append(cmds, store.Command{Op: store.OpPutGuest, Guest: &g})
		if len(cmds) == 500 {
			if _, err := st.Apply(cmds...); err != nil {
				b.Fatal(err)
			}
			cmds = cmds[:0]
		}
	}
	ctx := context.Background()
	a := m.Assignment(ctx, "n7", 0, 0)
	if a.Net == nil || len(a.Net.Endpoints) == 0 {
		b.Fatalf("no network assignment: %+v", a.Net)
	}
	b.ReportMetric(float64(len(a.Net.Endpoints)), "endpoints")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.Assignment(ctx, "n7", 0, 0)
	}
}
