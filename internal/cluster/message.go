package cluster

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// A message sent with Send travels as an envelope:
//
//	"dvm1" | kind | from | to | sender's certificate (DER) | payload | signature
//
// kind is one byte; each later field is prefixed with its length as a uvarint. The
// signature is the sender's ECDSA signature over
// sha256(messageDomain | kind | from | to | payload) with the same length prefixes. The gossip key already encrypts it on the wire; the signature binds it
// to one node's certificate, since every node holds the same gossip key.
const (
	envelopeMagic = "dvm1"
	messageDomain = "dvm cluster message v1\x00"
	// maxEnvelopeField bounds each field so a malformed length cannot allocate much.
	maxEnvelopeField = 16 << 20
)

var errEnvelope = errors.New("malformed message envelope")

// Kinds of envelope: a user message (Send), or a notice that the sender is leaving.
const (
	kindUser    byte = 'm'
	kindLeaving byte = 'l'
)

func seal(c *Credentials, kind byte, to string, payload []byte) ([]byte, error) {
	digest := messageDigest(kind, c.node, to, payload)
	sig, err := ecdsa.SignASN1(rand.Reader, c.key, digest[:])
	if err != nil {
		return nil, fmt.Errorf("sign message: %w", err)
	}
	cert := c.cert.Leaf.Raw
	b := make([]byte, 0, len(envelopeMagic)+len(c.node)+len(to)+len(cert)+len(payload)+len(sig)+5*binary.MaxVarintLen32)
	b = append(b, envelopeMagic...)
	b = append(b, kind)
	for _, f := range [][]byte{[]byte(c.node), []byte(to), cert, payload, sig} {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b, nil
}

// open checks an envelope addressed to self and returns its kind, verified sender and
// payload. The payload is a copy: memberlist reuses b.
func open(peers *certCache, self string, b []byte, now time.Time) (kind byte, from string, payload []byte, err error) {
	if len(b) < len(envelopeMagic)+1 || string(b[:len(envelopeMagic)]) != envelopeMagic {
		return 0, "", nil, fmt.Errorf("%w: not a dvm message", errEnvelope)
	}
	kind = b[len(envelopeMagic)]
	if kind != kindUser && kind != kindLeaving {
		return 0, "", nil, fmt.Errorf("%w: unknown kind %q", errEnvelope, kind)
	}
	b = b[len(envelopeMagic)+1:]
	var fields [5][]byte
	for i := range fields {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > maxEnvelopeField || n > uint64(len(b)-k) {
			return 0, "", nil, fmt.Errorf("%w: field %d", errEnvelope, i)
		}
		fields[i] = b[k : k+int(n)]
		b = b[k+int(n):]
	}
	if len(b) != 0 {
		return 0, "", nil, fmt.Errorf("%w: %d trailing bytes", errEnvelope, len(b))
	}
	from = string(fields[0])
	to, certDER, sig := string(fields[1]), fields[2], fields[4]
	payload = fields[3]
	if to != self {
		return 0, "", nil, fmt.Errorf("message from %q is addressed to %q, not this node %q", from, to, self)
	}
	name, pub, err := peers.verify(certDER, now)
	if err != nil {
		return 0, "", nil, fmt.Errorf("message from %q: %w", from, err)
	}
	if name != from {
		return 0, "", nil, fmt.Errorf("message claims to be from %q but is signed with node %q's certificate", from, name)
	}
	digest := messageDigest(kind, from, to, payload)
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		return 0, "", nil, fmt.Errorf("message from %q: bad signature", from)
	}
	return kind, from, append([]byte(nil), payload...), nil
}

func messageDigest(kind byte, from, to string, payload []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(messageDomain))
	h.Write([]byte{kind})
	var lb [binary.MaxVarintLen64]byte
	for _, f := range [][]byte{[]byte(from), []byte(to), payload} {
		h.Write(lb[:binary.PutUvarint(lb[:], uint64(len(f)))])
		h.Write(f)
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// certCache remembers peer certificates already verified against the cluster's CA, so
// that a message costs one signature check rather than a chain verification too.
type certCache struct {
	pool  *x509.CertPool
	mu    sync.Mutex
	names map[[32]byte]verified
}

type verified struct {
	name                string
	pub                 *ecdsa.PublicKey
	notBefore, notAfter time.Time
}

func (c *certCache) verify(der []byte, now time.Time) (string, *ecdsa.PublicKey, error) {
	fp := fingerprint(der)
	c.mu.Lock()
	v, ok := c.names[fp]
	c.mu.Unlock()
	if !ok {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return "", nil, fmt.Errorf("sender certificate: %w", err)
		}
		if err := validAt(cert.Subject.CommonName, cert.NotBefore, cert.NotAfter, now); err != nil {
			return "", nil, err
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: c.pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			return "", nil, fmt.Errorf("sender certificate %q: %w", cert.Subject.CommonName, err)
		}
		pub, isEC := cert.PublicKey.(*ecdsa.PublicKey)
		if !isEC {
			return "", nil, fmt.Errorf("sender certificate %q has no ECDSA key", cert.Subject.CommonName)
		}
		if err := ValidateNodeName(cert.Subject.CommonName); err != nil {
			return "", nil, fmt.Errorf("sender certificate: %w", err)
		}
		v = verified{name: cert.Subject.CommonName, pub: pub, notBefore: cert.NotBefore, notAfter: cert.NotAfter}
		c.mu.Lock()
		c.names[fp] = v
		c.mu.Unlock()
	}
	if err := validAt(v.name, v.notBefore, v.notAfter, now); err != nil {
		return "", nil, err
	}
	return v.name, v.pub, nil
}

func validAt(name string, notBefore, notAfter, now time.Time) error {
	if now.After(notAfter) || now.Before(notBefore) {
		return fmt.Errorf("sender certificate %q: %w or not yet valid (valid %s to %s)", name, ErrExpired,
			notBefore.UTC().Format(time.RFC3339), notAfter.UTC().Format(time.RFC3339))
	}
	return nil
}
