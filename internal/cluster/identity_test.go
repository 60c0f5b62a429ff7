package cluster

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestSignedMeta(t *testing.T) {
	_, creds := newCluster(t, "n1", "n2")
	meta := Meta{API: "127.0.0.1:7460", Management: true, CPU: 0.5}
	wire, err := signMeta(creds["n1"], meta, "127.0.0.1:7462", time.UnixMilli(1_700_000_000_000))
	if err != nil {
		t.Fatal(err)
	}
	peer := &memberlist.Node{Name: "n1", Addr: loopback[0], Port: 7462, Meta: wire}
	ids := newIdentities()
	ids.keys["n1"] = &creds["n1"].key.PublicKey
	ids.keys["n2"] = &creds["n2"].key.PublicKey
	if _, err := ids.check(peer, time.Now()); err != nil {
		t.Fatalf("n1's own metadata: %v", err)
	}
	if got := toMember(peer, StateAlive); got.MetaErr != nil || got.Meta != meta {
		t.Fatalf("read back %+v, %v", got.Meta, got.MetaErr)
	}
	refused := func(what string, p *memberlist.Node, want string) {
		t.Helper()
		if _, err := ids.check(p, time.Now()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", what, err, want)
		}
	}
	as := *peer
	as.Name = "n2"
	refused("n1's metadata under n2's name", &as, "not signed by node \"n2\"'s certificate")
	moved := *peer
	moved.Port = 9999
	refused("n1's metadata from another address", &moved, "signed for address 127.0.0.1:7462")
	changed := *peer
	changed.Meta = []byte(strings.Replace(string(wire), `"mgmt":true`, `"mgmt":false`, 1))
	refused("n1's metadata changed", &changed, "not signed")
	plain := *peer
	plain.Meta = []byte(`{"api":"127.0.0.1:7460","mgmt":true}`)
	refused("unsigned metadata", &plain, errUnsigned.Error())
	older, _ := signMeta(creds["n1"], meta, "127.0.0.1:7462", time.UnixMilli(1_600_000_000_000))
	replay := *peer
	replay.Meta = older
	refused("metadata older than what was taken", &replay, "older than")

	// A name whose certificate is not known yet: set aside, and its member asked (not
	// again within askAgain), until the certificate comes.
	ids = newIdentities()
	now := time.Now()
	if ask, err := ids.check(peer, now); !errors.Is(err, errAwaitingCert) || ask != "127.0.0.1:7462" {
		t.Fatalf("unknown certificate: ask %q, %v", ask, err)
	}
	if ask, _ := ids.check(peer, now.Add(askAgain/2)); ask != "" {
		t.Fatalf("asked again after %s", askAgain/2)
	}
	if ask := ids.learn("n1", &creds["n1"].key.PublicKey, now); ask != "127.0.0.1:7462" {
		t.Fatalf("learning n1's certificate asks %q again", ask)
	}
	if _, err := ids.check(peer, now); err != nil {
		t.Fatal(err)
	}
}

// TestGossipNameBoundToCertificate: a host that has the gossip key and a certificate of
// the cluster, but for another name, cannot gossip under a name its certificate does
// not give it: neither a name nobody holds nor the name of a node that stopped, at that
// node's own address. Real nodes keep joining each other.
func TestGossipNameBoundToCertificate(t *testing.T) {
	_, creds := newCluster(t, "n1", "n2", "n3")
	n1 := mustJoin(t, creds["n1"], Meta{API: "n1-api"})
	n2 := mustJoin(t, creds["n2"], Meta{API: "n2-api"}, n1.Addr())
	waitJoined(t, n1, "n2")
	waitJoined(t, n2, "n1")

	// n3's certificate, gossiping as n4, whom no certificate names.
	as4 := *creds["n3"]
	as4.node = "n4"
	imp := mustJoin(t, &as4, Meta{API: "impostor"}, n1.Addr())
	waitFor(t, "n1 set n4 aside, having learned the certificate the impostor holds (n3's)", func() bool {
		n1.ids.mu.Lock()
		defer n1.ids.mu.Unlock()
		_, waits := n1.ids.waiting["n4"]
		return waits && n1.ids.keys["n3"] != nil
	})
	for _, m := range n1.Members() {
		if m.Name == "n4" {
			t.Fatalf("n1 took n4 in: %+v", m)
		}
	}
	imp.Shutdown()

	// n2 stops; the impostor takes its address and gossips as n2 with n3's key.
	addr := n2.Addr()
	n2.Shutdown()
	as2 := *creds["n3"]
	as2.node = "n2"
	host, port := splitAddr(t, addr)
	imp2, err := Join(MemberConfig{Credentials: &as2, BindAddr: host, BindPort: port, Meta: Meta{API: "impostor"}, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer imp2.Shutdown()
	if _, err := imp2.JoinPeers(n1.Addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n1 refused news of n2 signed with n3's key", func() bool { return n1.refusedNews.Load() > 0 })
	for _, m := range n1.Members() {
		if m.Name == "n2" && m.Meta.API != "n2-api" {
			t.Fatalf("n1 took the impostor as n2: %+v", m)
		}
	}
}

func splitAddr(t *testing.T, addr string) (string, int) {
	t.Helper()
	i := strings.LastIndex(addr, ":")
	var port int
	for _, c := range addr[i+1:] {
		port = port*10 + int(c-'0')
	}
	return addr[:i], port
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := untilDeadline(t)
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("gave up waiting: %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
