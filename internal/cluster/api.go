package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// APIServerTLS is the configuration of a node's API listener (`listen`): TLS 1.2 or
// newer (operators' tools vary), no client certificate asked (tokens authenticate).
// It shows the node's certificate followed by the CA's, so that a host joining with a
// join token can match the CA against the hash the token carries.
//
// With operator set (an operator-supplied certificate, api_tls_cert and api_tls_key),
// clients get that one instead, except a peer that asks for this node by its name (TLS
// SNI, as PeerAPITLS does): the cluster's own probes and forwarded requests check the
// node's certificate against the cluster's CA whatever operators are shown.
//
// A peer that names this node may show its own node certificate, which is then
// verified against the cluster's CA (r.TLS.VerifiedChains): the master shows it to
// open a guest's console here (PeerAPIClientTLS). Clients that do not name the node,
// operators' among them, are never asked for a certificate.
func (c *Credentials) APIServerTLS(operator *tls.Certificate) *tls.Config {
	node := c.cert
	node.Certificate = [][]byte{c.cert.Certificate[0], c.ca.Raw}
	shown := &node
	if operator != nil {
		shown = operator
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hello.ServerName == c.node {
				return &node, nil
			}
			return shown, nil
		},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if hello.ServerName != c.node {
				return nil, nil
			}
			return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{node},
				ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: c.pool}, nil
		},
	}
}

// PeerAPITLS is the configuration for calling node's API as a peer (health probes,
// requests forwarded to the master): its certificate checked against the cluster's CA
// for its node name, which is sent as SNI so that the node shows its own certificate
// even where operators are shown another.
func (c *Credentials) PeerAPITLS(node string) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: c.pool, ServerName: node}
}

// PeerAPIClientTLS is PeerAPITLS with this node's certificate shown as the client's:
// the master calls a node's API so to open a guest's console there.
func (c *Credentials) PeerAPIClientTLS(node string) *tls.Config {
	cfg := c.PeerAPITLS(node)
	cfg.Certificates = []tls.Certificate{c.cert}
	return cfg
}

// CheckAPIHost returns an error unless the node's certificate is valid for host (an IP
// address or DNS name), the host its API is reached at: vmctl and Prometheus check it.
// An unspecified address (0.0.0.0, ::) names no host and is not checked.
func (c *Credentials) CheckAPIHost(host string) error {
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return nil
	}
	if err := c.cert.Leaf.VerifyHostname(host); err != nil {
		return fmt.Errorf("node certificate %s does not name %s, the host its API is reached at (advertise): issue it anew with dvmd cluster issue --ip %s (or --dns), or give the API a certificate of your own with api_tls_cert and api_tls_key",
			NodeCertFile(c.node), host, host)
	}
	return nil
}

// LoadAPICertificate reads an operator-supplied certificate for the API listener: a
// PEM file with the certificate first (then any intermediates), and its key. It refuses
// a key file that others can read, a key that does not match, a certificate that is
// expired or not yet valid, and one not meant for a TLS server.
func LoadAPICertificate(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	st, err := os.Stat(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return tls.Certificate{}, fmt.Errorf("%s is readable by others (mode %o): chmod 600 %s", keyFile, st.Mode().Perm(), keyFile)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s and %s: %w: give the certificate (PEM, leaf first) and the key it was made for", certFile, keyFile, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("%s: %w", certFile, err)
		}
		pair.Leaf = leaf
	}
	now := time.Now()
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		return tls.Certificate{}, fmt.Errorf("%s is valid from %s to %s, not now: renew it (or check this host's clock)",
			certFile, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if len(leaf.ExtKeyUsage) > 0 && !hasUsage(leaf, x509.ExtKeyUsageServerAuth) && !hasUsage(leaf, x509.ExtKeyUsageAny) {
		return tls.Certificate{}, fmt.Errorf("%s is not a TLS server certificate (its extended key usage lacks server authentication)", certFile)
	}
	return pair, nil
}

// CAHash is the SHA-256 of a CA certificate's DER: what a join token names the
// cluster's CA by.
func CAHash(ca *x509.Certificate) [32]byte { return sha256.Sum256(ca.Raw) }

// Issuer signs node certificates for hosts that join with a join token. A management
// node holds one when its credentials_dir has the cluster's ca.key, which it then keeps
// as carefully as the operator's cluster directory.
type Issuer struct {
	ca     *x509.Certificate
	key    *ecdsa.PrivateKey
	gossip []byte
}

// LoadIssuer reads the CA certificate and key and the gossip key in dir. Without
// ca.key the error wraps fs.ErrNotExist.
func LoadIssuer(dir string) (*Issuer, error) {
	ca, key, err := loadCA(dir, time.Now())
	if err != nil {
		return nil, err
	}
	gossip, err := readGossipKey(dir)
	if err != nil {
		return nil, err
	}
	return &Issuer{ca: ca, key: key, gossip: gossip}, nil
}

// CAHash is the hash a join token names this cluster's CA by.
func (i *Issuer) CAHash() [32]byte { return CAHash(i.ca) }

// IssueNode signs a certificate for node name, valid for one year (as IssueTo's),
// for the key of csrPEM (a PEM certificate request for that name, made with
// NodeRequest), and gives the CA certificate (PEM) and the gossip key (base64) with it.
// The name and ips are checked as IssueTo checks them; the request must name the node
// and carry an ECDSA P-256 key.
func (i *Issuer) IssueNode(name string, csrPEM []byte, ips []net.IP) (caPEM, certPEM []byte, gossipKey string, err error) {
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, nil, "", errors.New("holds no PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, nil, "", fmt.Errorf("not a certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, "", fmt.Errorf("its signature does not match its key: %w", err)
	}
	if csr.Subject.CommonName != name {
		return nil, nil, "", fmt.Errorf("the request is for node %q, not %q", csr.Subject.CommonName, name)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, nil, "", errors.New("its key is not ECDSA P-256, the only kind dvm nodes use")
	}
	now := time.Now()
	tmpl, err := nodeTemplate(name, ips, nil, now.Add(-clockSkew), now.Add(NodeValidity))
	if err != nil {
		return nil, nil, "", err
	}
	der, err := signNode(tmpl, pub, i.ca, i.key)
	if err != nil {
		return nil, nil, "", err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: i.ca.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		base64.StdEncoding.EncodeToString(i.gossip), nil
}

// NodeRequest makes a joining host's key and a certificate request for its node name,
// to send with a join token. The key stays on the host: WriteJoined writes it.
func NodeRequest(name string) (*ecdsa.PrivateKey, []byte, error) {
	if err := ValidateNodeName(name); err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate node key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name, Organization: []string{"dvm"}},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("make certificate request: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ErrOtherCA is returned by WriteJoined when the cluster answered with a CA other than
// the one the join token names.
var ErrOtherCA = errors.New("the cluster answered with a CA other than the join token names")

// WriteJoined checks what a cluster gave a joining host — its CA certificate (whose
// hash must be caHash), the node certificate for key, signed by that CA, and the
// gossip key — and writes node name's credentials directory from it, as IssueTo
// writes one: ca.crt, gossip.key, node-NAME.crt and node-NAME.key. Anything wrong, or a
// file in dir with other content, is an error and nothing is written.
func WriteJoined(dir, name string, key *ecdsa.PrivateKey, caPEM, certPEM []byte, gossipKey string, caHash [32]byte) error {
	ca, err := parseCert("the cluster's CA", caPEM)
	if err != nil {
		return err
	}
	if CAHash(ca) != caHash || !ca.IsCA {
		return fmt.Errorf("%w: is the address right? (CA %q)", ErrOtherCA, ca.Subject.CommonName)
	}
	cert, err := parseCert("the node certificate", certPEM)
	if err != nil {
		return err
	}
	if err := cert.CheckSignatureFrom(ca); err != nil {
		return fmt.Errorf("the node certificate is not signed by the cluster's CA: %w", err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) || cert.Subject.CommonName != name {
		return fmt.Errorf("the node certificate is not the one asked for (node %q, this host's key)", name)
	}
	if g, err := base64.StdEncoding.DecodeString(gossipKey); err != nil || len(g) != GossipKeySize {
		return fmt.Errorf("the cluster's gossip key is not a base64 key of %d bytes", GossipKeySize)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	return writeFiles(dir, []file{
		{CACertFile, caPEM, 0o644},
		{GossipKeyFile, []byte(strings.TrimSpace(gossipKey) + "\n"), 0o600},
		{NodeCertFile(name), certPEM, 0o644},
		{NodeKeyFile(name), keyPEM, 0o600},
	})
}

func parseCert(what string, b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", what)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return c, nil
}

// CACertPath is the cluster's CA certificate in a credentials directory: what vmctl's
// --ca (DVM_CA) names.
func CACertPath(dir string) string { return filepath.Join(dir, CACertFile) }
