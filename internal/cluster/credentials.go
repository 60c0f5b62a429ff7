package cluster

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// File names inside a credentials directory. A cluster directory (made by NewCA) holds
// CAKeyFile; a node's directory (made by IssueTo) never does.
const (
	CACertFile    = "ca.crt"
	CAKeyFile     = "ca.key"
	GossipKeyFile = "gossip.key"
)

// NodeCertFile and NodeKeyFile name a node's certificate and key inside a directory. The
// "node-" prefix keeps a node named "ca" or "gossip" from colliding with the cluster files.
func NodeCertFile(node string) string { return "node-" + node + ".crt" }

// NodeKeyFile: see NodeCertFile.
func NodeKeyFile(node string) string { return "node-" + node + ".key" }

// Validity of what NewCA and Issue make. Certificates start a few minutes in the past so
// that a node whose clock is slightly behind the operator's accepts them at once.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	NodeValidity = 365 * 24 * time.Hour
	clockSkew    = 5 * time.Minute
)

// GossipKeySize is the gossip key's length: 32 bytes selects AES-256 in memberlist.
const GossipKeySize = 32

var (
	// ErrExists is returned when writing credentials would replace a file that is
	// already there with different content. Nothing is written in that case.
	ErrExists = errors.New("file exists")
	// ErrExpired is returned by Load for a certificate past its end of validity.
	ErrExpired = errors.New("certificate expired")
	// ErrForeign is returned by Load for a certificate not signed by the cluster's CA.
	ErrForeign = errors.New("certificate from another cluster")
)

// nameRE is the node name rule of internal/api's ValidateName (a DNS label), repeated here
// so this package does not pull libvirt in through the api package.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateNodeName checks a node name: a DNS label, since it becomes a DNS SAN and a
// file name.
func ValidateNodeName(name string) error {
	if name == "" {
		return errors.New("node name is empty: give a name such as n1")
	}
	if !nameRE.MatchString(name) {
		return fmt.Errorf("node name %q is not valid: use 1 to 63 lowercase letters, digits and dashes, starting and ending with a letter or digit", name)
	}
	return nil
}

// Credentials are what one node holds: the cluster's CA certificate (not its key), the
// node's certificate and key, and the gossip key. They are read-only once loaded.
type Credentials struct {
	node      string
	ca        *x509.Certificate
	pool      *x509.CertPool
	cert      tls.Certificate // Leaf is set
	key       *ecdsa.PrivateKey
	gossipKey []byte
}

// Node is the node name the certificate was issued for.
func (c *Credentials) Node() string { return c.node }

// CA is the cluster's CA certificate.
func (c *Credentials) CA() *x509.Certificate { return c.ca }

// Certificate is the node's certificate.
func (c *Credentials) Certificate() *x509.Certificate { return c.cert.Leaf }

// Expires is when the node's certificate (or the CA's, if earlier) stops being valid.
// Issue a new one before then: peers refuse an expired certificate.
func (c *Credentials) Expires() time.Time {
	if c.ca.NotAfter.Before(c.cert.Leaf.NotAfter) {
		return c.ca.NotAfter
	}
	return c.cert.Leaf.NotAfter
}

// NewCA makes a cluster's credentials in dir: a self-signed ECDSA P-256 CA valid for 10
// years (ca.crt, ca.key) and a random gossip key (gossip.key). dir is created if missing.
// It refuses to replace any existing file and then writes nothing.
func NewCA(dir string) error {
	return newCA(dir, time.Now())
}

func newCA(dir string, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate CA key: %w", err)
	}
	id := make([]byte, 4)
	if _, err := rand.Read(id); err != nil {
		return err
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// The random suffix tells two clusters' CAs apart in error messages.
		Subject:               pkix.Name{CommonName: "dvm cluster CA " + hex.EncodeToString(id), Organization: []string{"dvm"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true, // node certificates only; no intermediate CAs
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("make CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	gossip := make([]byte, GossipKeySize)
	if _, err := rand.Read(gossip); err != nil {
		return err
	}
	return writeFiles(dir, []file{
		{CACertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644},
		{CAKeyFile, keyPEM, 0o600},
		{GossipKeyFile, []byte(base64.StdEncoding.EncodeToString(gossip) + "\n"), 0o600},
	})
}

// Issue issues a node certificate, signed by the CA in the cluster directory dir, into
// dir itself (node-NAME.crt, node-NAME.key), so that Load(dir, nodeName) works. See
// IssueTo for what the certificate holds.
func Issue(dir, nodeName string, ips []net.IP, dnsNames []string) error {
	return IssueTo(dir, dir, nodeName, ips, dnsNames)
}

// IssueTo issues a node certificate signed by the CA in clusterDir and writes everything
// that node needs into outDir, to be copied to the node: ca.crt, gossip.key,
// node-NAME.crt and node-NAME.key (never ca.key). The certificate is valid for one
// year, for both server and client authentication, with the node name as its common name
// and as a DNS SAN, plus ips and dnsNames as SANs, and localhost, 127.0.0.1 and ::1. At
// least one IP is required: peers dial nodes by address and check it against the
// certificate.
//
// Bad input (name, addresses, a CA that is missing or expired) or a file in outDir that
// would be replaced with different content is an error, and nothing is written.
func IssueTo(clusterDir, outDir, nodeName string, ips []net.IP, dnsNames []string) error {
	now := time.Now()
	return issue(clusterDir, outDir, nodeName, ips, dnsNames, now.Add(-clockSkew), now.Add(NodeValidity))
}

func issue(clusterDir, outDir, nodeName string, ips []net.IP, dnsNames []string, notBefore, notAfter time.Time) error {
	tmpl, err := nodeTemplate(nodeName, ips, dnsNames, notBefore, notAfter)
	if err != nil {
		return err
	}
	ca, caKey, err := loadCA(clusterDir, notBefore.Add(clockSkew))
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate node key: %w", err)
	}
	der, err := signNode(tmpl, &key.PublicKey, ca, caKey)
	if err != nil {
		return err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	files := []file{
		{NodeCertFile(nodeName), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644},
		{NodeKeyFile(nodeName), keyPEM, 0o600},
	}
	if !sameDir(clusterDir, outDir) {
		for _, f := range []file{{CACertFile, nil, 0o644}, {GossipKeyFile, nil, 0o600}} {
			b, err := os.ReadFile(filepath.Join(clusterDir, f.name))
			if err != nil {
				return fmt.Errorf("cluster directory %s: %w (make it with dvmd cluster init)", clusterDir, err)
			}
			f.data = b
			files = append(files, f)
		}
	}
	return writeFiles(outDir, files)
}

// Loopback names every node certificate carries besides the node's own addresses, so
// that vmctl, curl or Prometheus on the host itself reach its API at
// https://127.0.0.1:7460 or https://localhost:7460 (Consul's server certificates carry
// them for the same reason).
var (
	loopbackDNS = "localhost"
	loopbackIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
)

// nodeTemplate checks a node's name and addresses and makes its certificate's template:
// the name as common name and DNS SAN, ips and dnsNames as SANs, and the loopback names.
func nodeTemplate(nodeName string, ips []net.IP, dnsNames []string, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	if err := ValidateNodeName(nodeName); err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("node %q: no IP address given: give the addresses peers use to reach it (--ip 10.0.0.5)", nodeName)
	}
	for _, ip := range ips {
		if ip == nil || ip.IsUnspecified() || ip.IsMulticast() {
			return nil, fmt.Errorf("node %q: %v is not an address of a host: give the unicast addresses peers dial", nodeName, ip)
		}
	}
	sans := []string{nodeName}
	for _, d := range dnsNames {
		if err := validateDNSName(d); err != nil {
			return nil, fmt.Errorf("node %q: %w", nodeName, err)
		}
		if d != nodeName && d != loopbackDNS {
			sans = append(sans, d)
		}
	}
	sans = append(sans, loopbackDNS)
	all := slices.Clone(ips)
	for _, lo := range loopbackIPs {
		if !slices.ContainsFunc(all, lo.Equal) {
			all = append(all, lo)
		}
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: nodeName, Organization: []string{"dvm"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     sans,
		IPAddresses:  all,
	}, nil
}

// signNode signs a node certificate for pub with the CA, ending no later than the CA.
func signNode(tmpl *x509.Certificate, pub *ecdsa.PublicKey, ca *x509.Certificate, caKey *ecdsa.PrivateKey) ([]byte, error) {
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for node %q: %w", tmpl.Subject.CommonName, err)
	}
	return der, nil
}

// Load reads and checks node nodeName's credentials in dir (ca.crt, gossip.key,
// node-NAME.crt, node-NAME.key). It refuses a missing file, a key file others can read,
// a certificate that is expired or not yet valid (ErrExpired), one not signed by ca.crt
// (ErrForeign), one issued to another node, and a key that does not match.
func Load(dir, nodeName string) (*Credentials, error) {
	return load(dir, nodeName, time.Now())
}

func load(dir, nodeName string, now time.Time) (*Credentials, error) {
	if err := ValidateNodeName(nodeName); err != nil {
		return nil, err
	}
	ca, err := readCert(dir, CACertFile)
	if err != nil {
		return nil, err
	}
	if !ca.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate: copy the cluster's ca.crt there", filepath.Join(dir, CACertFile))
	}
	if err := checkValidity(filepath.Join(dir, CACertFile), ca, now); err != nil {
		return nil, err
	}
	certPath := filepath.Join(dir, NodeCertFile(nodeName))
	cert, err := readCert(dir, NodeCertFile(nodeName))
	if err != nil {
		return nil, err
	}
	if cert.Subject.CommonName != nodeName {
		return nil, fmt.Errorf("%s is issued to node %q, not %q", certPath, cert.Subject.CommonName, nodeName)
	}
	if err := cert.CheckSignatureFrom(ca); err != nil {
		return nil, fmt.Errorf("%s: %w: it is not signed by %s (%q); issue it from this cluster's directory with dvmd cluster issue",
			certPath, ErrForeign, filepath.Join(dir, CACertFile), ca.Subject.CommonName)
	}
	if err := checkValidity(certPath, cert, now); err != nil {
		return nil, err
	}
	if !hasUsage(cert, x509.ExtKeyUsageServerAuth) || !hasUsage(cert, x509.ExtKeyUsageClientAuth) {
		return nil, fmt.Errorf("%s is not a dvm node certificate (it lacks server or client authentication): issue one with dvmd cluster issue", certPath)
	}
	key, err := readKey(dir, NodeKeyFile(nodeName))
	if err != nil {
		return nil, err
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("%s does not match %s: copy both files from the same dvmd cluster issue", filepath.Join(dir, NodeKeyFile(nodeName)), certPath)
	}
	gossip, err := readGossipKey(dir)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &Credentials{
		node: nodeName, ca: ca, pool: pool, key: key, gossipKey: gossip,
		cert: tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert},
	}, nil
}

func loadCA(dir string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	ca, err := readCert(dir, CACertFile)
	if err != nil {
		return nil, nil, err
	}
	if !ca.IsCA {
		return nil, nil, fmt.Errorf("%s is not a CA certificate", filepath.Join(dir, CACertFile))
	}
	if err := checkValidity(filepath.Join(dir, CACertFile), ca, now); err != nil {
		return nil, nil, err
	}
	key, err := readKey(dir, CAKeyFile)
	if err != nil {
		return nil, nil, err
	}
	if pub, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, nil, fmt.Errorf("%s does not match %s", filepath.Join(dir, CAKeyFile), filepath.Join(dir, CACertFile))
	}
	return ca, key, nil
}

func checkValidity(path string, c *x509.Certificate, now time.Time) error {
	if now.After(c.NotAfter) {
		return fmt.Errorf("%s: %w on %s: issue new credentials with dvmd cluster issue (for the CA: dvmd cluster init, then reissue every node)",
			path, ErrExpired, c.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("%s is not valid before %s: check this host's clock", path, c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

func hasUsage(c *x509.Certificate, u x509.ExtKeyUsage) bool {
	for _, have := range c.ExtKeyUsage {
		if have == u {
			return true
		}
	}
	return false
}

// missing turns a missing file into an error that says how to make it.
func missing(path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w: make cluster credentials with dvmd cluster init and node credentials with dvmd cluster issue, then copy the node's files there", path, fs.ErrNotExist)
	}
	return err
}

func readCert(dir, name string) (*x509.Certificate, error) {
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, missing(path, err)
	}
	return parseCert(path, b)
}

// readSecret reads a key file, refusing one that others can read: a key that leaked
// to other local users is no longer a credential.
func readSecret(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, missing(path, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %o): chmod 600 %s", path, st.Mode().Perm(), path)
	}
	return os.ReadFile(path)
}

func readKey(dir, name string) (*ecdsa.PrivateKey, error) {
	path := filepath.Join(dir, name)
	b, err := readSecret(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s holds no PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s is not an ECDSA key", path)
	}
	return ek, nil
}

func readGossipKey(dir string) ([]byte, error) {
	path := filepath.Join(dir, GossipKeyFile)
	b, err := readSecret(path)
	if err != nil {
		return nil, err
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) != GossipKeySize {
		return nil, fmt.Errorf("%s does not hold a base64 key of %d bytes: copy the cluster's gossip.key there", path, GossipKeySize)
	}
	return k, nil
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// ParseIPs parses node addresses as given on a command line: each entry an IP address,
// or several separated by commas.
func ParseIPs(list []string) ([]net.IP, error) {
	var ips []net.IP
	for _, entry := range list {
		for _, s := range strings.Split(entry, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			ip := net.ParseIP(s)
			if ip == nil {
				return nil, fmt.Errorf("%q is not an IP address: give addresses such as 10.0.0.5 or fd00::5", s)
			}
			ips = append(ips, ip)
		}
	}
	if len(ips) == 0 {
		return nil, errors.New("no IP address given: give the addresses other nodes reach the node at, such as 10.0.0.5")
	}
	return ips, nil
}

func validateDNSName(d string) error {
	if len(d) == 0 || len(d) > 253 {
		return fmt.Errorf("DNS name %q is not valid: give a host name such as n1.lab.example", d)
	}
	for _, label := range strings.Split(d, ".") {
		if !nameRE.MatchString(label) {
			return fmt.Errorf("DNS name %q is not valid: each dot-separated part must be 1 to 63 lowercase letters, digits and dashes", d)
		}
	}
	return nil
}

func sameDir(a, b string) bool {
	ca, errA := filepath.Abs(a)
	cb, errB := filepath.Abs(b)
	if errA != nil || errB != nil {
		return a == b
	}
	return filepath.Clean(ca) == filepath.Clean(cb)
}

type file struct {
	name string
	data []byte
	mode os.FileMode
}

// writeFiles writes files into dir all or nothing. A file already there with the same
// content is left as is; one with different content fails the whole write with
// ErrExists before anything is written. Each file is written to a temporary name and
// linked into place, so a concurrent writer cannot be overwritten either.
func writeFiles(dir string, files []file) (err error) {
	var todo []file
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		old, rerr := os.ReadFile(path)
		switch {
		case rerr == nil && bytes.Equal(old, f.data):
			continue
		case rerr == nil:
			return fmt.Errorf("%s: %w with other content; nothing was written: choose an empty directory or move the file away", path, ErrExists)
		case !errors.Is(rerr, fs.ErrNotExist):
			return rerr
		}
		todo = append(todo, f)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("credentials directory: %w", err)
	}
	var done []string
	defer func() {
		if err != nil {
			for _, p := range done {
				os.Remove(p)
			}
		}
	}()
	for _, f := range todo {
		path := filepath.Join(dir, f.name)
		tmp, err := os.CreateTemp(dir, "."+f.name+".tmp*")
		if err != nil {
			return err
		}
		_, werr := tmp.Write(f.data)
		if werr == nil {
			werr = tmp.Chmod(f.mode)
		}
		if werr == nil {
			werr = tmp.Sync()
		}
		if cerr := tmp.Close(); werr == nil {
			werr = cerr
		}
		if werr == nil {
			werr = os.Link(tmp.Name(), path)
		}
		os.Remove(tmp.Name())
		if werr != nil {
			if errors.Is(werr, fs.ErrExist) {
				return fmt.Errorf("%s: %w (made while writing); nothing was written", path, ErrExists)
			}
			return fmt.Errorf("write %s: %w", path, werr)
		}
		done = append(done, path)
	}
	return nil
}

// fingerprint is a certificate's SHA-256, used to cache verified peers.
func fingerprint(der []byte) [32]byte { return sha256.Sum256(der) }
