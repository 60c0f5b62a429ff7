package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
)

// handshake runs one TLS connection between a server using serverCfg and a client using
// clientCfg dialing addrFor(listener address), and returns both sides' results: the peer
// name each side saw, or its error.
type side struct {
	peer string
	err  error
}

func handshake(t *testing.T, listenAddr string, serverCfg, clientCfg *tls.Config, dialAddr func(net.Addr) string) (server, client side) {
	t.Helper()
	ln, err := tls.Listen("tcp", listenAddr, serverCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan side, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- side{err: err}
			return
		}
		defer conn.Close()
		var s side
		s.peer, s.err = PeerName(conn)
		if s.err == nil {
			// Let the client finish: with TLS 1.3 it learns of a refusal only on read.
			_, s.err = conn.Write([]byte("ok"))
		}
		done <- s
	}()
	conn, err := tls.Dial("tcp", dialAddr(ln.Addr()), clientCfg)
	if err != nil {
		client.err = err
	} else {
		client.peer, client.err = PeerName(conn)
		if client.err == nil {
			buf := make([]byte, 2)
			_, client.err = conn.Read(buf)
		}
		conn.Close()
	}
	server = <-done
	return server, client
}

func sameAddr(a net.Addr) string { return a.String() }

func TestMutualTLS(t *testing.T) {
	_, creds := newCluster(t, "n1", "n2")
	server, client := handshake(t, "127.0.0.1:0", creds["n1"].ServerTLS(), creds["n2"].ClientTLS(), sameAddr)
	if server.err != nil || client.err != nil {
		t.Fatalf("server: %v, client: %v", server.err, client.err)
	}
	if server.peer != "n2" || client.peer != "n1" {
		t.Errorf("server saw %q (want n2), client saw %q (want n1)", server.peer, client.peer)
	}

	// The client may ask for a node by name: the name is a DNS SAN of its certificate.
	byName := creds["n2"].ClientTLS()
	byName.ServerName = "n1"
	if server, client := handshake(t, "127.0.0.1:0", creds["n1"].ServerTLS(), byName, sameAddr); server.err != nil || client.err != nil {
		t.Errorf("dial n1 by name: server %v, client %v", server.err, client.err)
	}
	wrongName := creds["n2"].ClientTLS()
	wrongName.ServerName = "n3"
	if _, client := handshake(t, "127.0.0.1:0", creds["n1"].ServerTLS(), wrongName, sameAddr); client.err == nil || !strings.Contains(client.err.Error(), "n3") {
		t.Errorf("dialing n3 reached n1: client err %v", client.err)
	}
}

func TestTLSRefusesOthers(t *testing.T) {
	_, creds := newCluster(t, "n1", "n2")
	_, foreign := newCluster(t, "n2")
	var unknownCA x509.UnknownAuthorityError

	t.Run("client certificate from another CA", func(t *testing.T) {
		// The foreign client trusts our CA, so only the server's check can stop it, and
		// it presents its certificate even though the server asks for one from our CA
		// (Go's client would otherwise send none).
		cfg := foreign["n2"].ClientTLS()
		cfg.RootCAs = creds["n1"].pool
		cert := foreign["n2"].cert
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
		server, client := handshake(t, "127.0.0.1:0", creds["n1"].ServerTLS(), cfg, sameAddr)
		if !errors.As(server.err, &unknownCA) {
			t.Errorf("server accepted a client from another CA: %v (peer %q)", server.err, server.peer)
		}
		if client.err == nil {
			t.Errorf("client from another CA was served")
		}
	})
	t.Run("client without certificate", func(t *testing.T) {
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: creds["n1"].pool}
		server, client := handshake(t, "127.0.0.1:0", creds["n1"].ServerTLS(), cfg, sameAddr)
		if server.err == nil || !strings.Contains(server.err.Error(), "certificate") {
			t.Errorf("server accepted a client without certificate: %v (peer %q)", server.err, server.peer)
		}
		if client.err == nil {
			t.Errorf("client without certificate was served")
		}
	})
	t.Run("server certificate from another CA", func(t *testing.T) {
		server, client := handshake(t, "127.0.0.1:0", foreign["n2"].ServerTLS(), creds["n1"].ClientTLS(), sameAddr)
		if !errors.As(client.err, &unknownCA) {
			t.Errorf("client accepted a server from another CA: %v (peer %q)", client.err, client.peer)
		}
		if server.err == nil {
			t.Errorf("server from another CA saw no error")
		}
	})
	t.Run("TLS 1.2 client", func(t *testing.T) {
		cfg := creds["n2"].ClientTLS()
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		server, client := handshake(t, "127.0.0.1:0", creds["n1"].ServerTLS(), cfg, sameAddr)
		if server.err == nil || client.err == nil || !strings.Contains(server.err.Error(), "version") {
			t.Errorf("TLS 1.2: server %v, client %v", server.err, client.err)
		}
	})
	t.Run("server at an address its certificate does not list", func(t *testing.T) {
		// n1's certificate lists 127.0.0.1 only; a host at 127.0.0.2 holding it is not n1.
		server, client := handshake(t, "127.0.0.2:0", creds["n1"].ServerTLS(), creds["n2"].ClientTLS(), sameAddr)
		var hostErr x509.HostnameError
		if !errors.As(client.err, &hostErr) {
			t.Errorf("client accepted n1's certificate at 127.0.0.2: %v", client.err)
		}
		if server.err == nil {
			t.Errorf("server saw no error")
		}
	})
}

func TestPeerNameNeedsTLS(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := PeerName(a); err == nil || !strings.Contains(err.Error(), "not TLS") {
		t.Errorf("PeerName on a plain connection: %v", err)
	}
}
