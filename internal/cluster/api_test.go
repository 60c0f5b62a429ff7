package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// operatorCert writes a certificate for 127.0.0.1 signed by a CA of its own (an
// operator's, not the cluster's) and its key into dir, and returns their paths and the
// CA's pool.
func operatorCert(t *testing.T, dir string, notBefore, notAfter time.Time, usage x509.ExtKeyUsage) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "operator CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "api.example"}, NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: loopback}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := encodeKey(key)
	certFile, keyFile = filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, keyPEM, 0o600)
	roots = x509.NewCertPool()
	roots.AddCert(ca)
	return certFile, keyFile, roots
}

// dialAPI connects to a listener served with cfg and returns the certificates shown.
func dialAPI(t *testing.T, cfg, client *tls.Config) ([]*x509.Certificate, error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates, nil
}

// TestAPIServerTLS: the API listener shows the node's certificate and the CA's, which a
// client that trusts the cluster's CA accepts at 127.0.0.1; with an operator's
// certificate, clients get that one, and a peer asking for the node by name still gets
// the node's.
func TestAPIServerTLS(t *testing.T) {
	_, creds := newCluster(t, "n1")
	n1 := creds["n1"]
	shown, err := dialAPI(t, n1.APIServerTLS(nil), &tls.Config{RootCAs: n1.pool})
	if err != nil {
		t.Fatalf("a client trusting the cluster's CA: %v", err)
	}
	if len(shown) != 2 || shown[0].Subject.CommonName != "n1" || !shown[1].Equal(n1.CA()) {
		t.Fatalf("shown %d certificates, want the node's and the CA's", len(shown))
	}
	if _, err := dialAPI(t, n1.APIServerTLS(nil), &tls.Config{}); err == nil {
		t.Fatal("a client trusting only the system's roots accepted the cluster's certificate")
	}

	certFile, keyFile, roots := operatorCert(t, t.TempDir(), time.Now().Add(-time.Hour), time.Now().Add(time.Hour), x509.ExtKeyUsageServerAuth)
	op, err := LoadAPICertificate(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	shown, err = dialAPI(t, n1.APIServerTLS(&op), &tls.Config{RootCAs: roots})
	if err != nil || shown[0].Subject.CommonName != "api.example" {
		t.Fatalf("an operator's client: %v", err)
	}
	shown, err = dialAPI(t, n1.APIServerTLS(&op), n1.PeerAPITLS("n1"))
	if err != nil || shown[0].Subject.CommonName != "n1" {
		t.Fatalf("a peer asking for n1 by name: %v", err)
	}
	if _, err := dialAPI(t, n1.APIServerTLS(&op), n1.PeerAPITLS("n2")); err == nil {
		t.Fatal("a peer asking for n2 accepted n1")
	}

	if err := n1.CheckAPIHost("127.0.0.1"); err != nil {
		t.Errorf("127.0.0.1: %v", err)
	}
	if err := n1.CheckAPIHost("0.0.0.0"); err != nil {
		t.Errorf("0.0.0.0: %v", err)
	}
	if err := n1.CheckAPIHost("10.0.0.99"); err == nil || !strings.Contains(err.Error(), "--ip 10.0.0.99") {
		t.Errorf("10.0.0.99, not in the certificate: %v", err)
	}
}

func TestLoadAPICertificateRefusesBadFiles(t *testing.T) {
	now := time.Now()
	good := t.TempDir()
	certFile, keyFile, _ := operatorCert(t, good, now.Add(-time.Hour), now.Add(time.Hour), x509.ExtKeyUsageServerAuth)
	other := t.TempDir()
	_, otherKey, _ := operatorCert(t, other, now.Add(-time.Hour), now.Add(time.Hour), x509.ExtKeyUsageServerAuth)
	expired := t.TempDir()
	expiredCert, expiredKey, _ := operatorCert(t, expired, now.Add(-2*time.Hour), now.Add(-time.Hour), x509.ExtKeyUsageServerAuth)
	client := t.TempDir()
	clientCert, clientKey, _ := operatorCert(t, client, now.Add(-time.Hour), now.Add(time.Hour), x509.ExtKeyUsageClientAuth)
	open := filepath.Join(t.TempDir(), "open.key")
	b, _ := os.ReadFile(keyFile)
	os.WriteFile(open, b, 0o644)

	for _, tc := range []struct{ what, cert, key, want string }{
		{"missing certificate", filepath.Join(good, "nope.crt"), keyFile, "no such file"},
		{"key readable by others", certFile, open, "chmod 600"},
		{"key of another certificate", certFile, otherKey, "the key it was made for"},
		{"expired", expiredCert, expiredKey, "not now"},
		{"a client certificate", clientCert, clientKey, "not a TLS server certificate"},
	} {
		if _, err := LoadAPICertificate(tc.cert, tc.key); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.what, err, tc.want)
		}
	}
}

// TestIssuerSignsAJoiningHost: a management node holding ca.key signs a joining host's
// request; the host writes a credentials directory that Load accepts, for its own key.
// A request for another name, a CA other than the join token's, or a certificate for
// another key is refused, and nothing is written.
func TestIssuerSignsAJoiningHost(t *testing.T) {
	dir, creds := newCluster(t, "n1")
	nodeDir := t.TempDir()
	if err := IssueTo(dir, nodeDir, "n2", loopback, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIssuer(nodeDir); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), CAKeyFile) {
		t.Fatalf("LoadIssuer of a node's directory, without ca.key: %v, want fs.ErrNotExist", err)
	}
	iss, err := LoadIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	if iss.CAHash() != CAHash(creds["n1"].CA()) {
		t.Fatal("the issuer's CA hash is not the cluster's")
	}
	key, csr, err := NodeRequest("n4")
	if err != nil {
		t.Fatal(err)
	}
	ips := []net.IP{net.ParseIP("10.0.0.14")}
	if _, _, _, err := iss.IssueNode("n5", csr, ips); err == nil || !strings.Contains(err.Error(), `for node "n4", not "n5"`) {
		t.Fatalf("a request for n4 issued as n5: %v", err)
	}
	if _, _, _, err := iss.IssueNode("n4", []byte("junk"), ips); err == nil {
		t.Fatal("junk issued")
	}
	if _, _, _, err := iss.IssueNode("n4", csr, nil); err == nil {
		t.Fatal("issued without an address")
	}
	caPEM, certPEM, gossip, err := iss.IssueNode("n4", csr, ips)
	if err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "n4")
	var wrong [32]byte
	if err := WriteJoined(out, "n4", key, caPEM, certPEM, gossip, wrong); !errors.Is(err, ErrOtherCA) {
		t.Fatalf("another CA than the token's: %v", err)
	}
	otherKey, _, _ := NodeRequest("n4")
	if err := WriteJoined(out, "n4", otherKey, caPEM, certPEM, gossip, iss.CAHash()); err == nil {
		t.Fatal("a certificate for another key was written")
	}
	if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused answer wrote %s: %v", out, err)
	}
	if err := WriteJoined(out, "n4", key, caPEM, certPEM, gossip, iss.CAHash()); err != nil {
		t.Fatal(err)
	}
	n4, err := Load(out, "n4")
	if err != nil {
		t.Fatalf("the joined host's credentials: %v", err)
	}
	if err := n4.CheckAPIHost("10.0.0.14"); err != nil {
		t.Error(err)
	}
	if string(n4.gossipKey) != string(creds["n1"].gossipKey) {
		t.Error("the joined host got another gossip key")
	}
	server, client := handshake(t, "127.0.0.1:0", creds["n1"].ServerTLS(), n4.ClientTLS(), sameAddr)
	if server.err != nil || client.err != nil || server.peer != "n4" {
		t.Fatalf("mutual TLS between n1 and the joined n4: server %+v, client %+v", server, client)
	}
}
