package api

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Scopes of an API token. read, operator and admin are ordered: each may do what the
// one before it may. join stands apart: a join token can only fetch a new host's
// credentials (POST /v1/cluster/credentials), and nothing else.
const (
	ScopeRead     = "read"     // every GET
	ScopeOperator = "operator" // and guest, network and node work
	ScopeAdmin    = "admin"    // and token management, and the agents' endpoints
	ScopeJoin     = "join"     // a new host's credentials only
)

// Scopes lists the scopes in the order vmctl shows them.
var Scopes = []string{ScopeRead, ScopeOperator, ScopeAdmin, ScopeJoin}

// BootstrapToken names the admin token a cluster makes at its first start (the secret
// in DATA_DIR/token of the node that formed it).
const BootstrapToken = "bootstrap"

// Token lifetimes. A token without a TTL lasts until it is revoked, except a join
// token, which lasts DefaultJoinTTL unless told otherwise: it hands out the cluster's
// credentials.
const (
	MinTokenTTL    = time.Minute
	MaxTokenTTL    = 10 * 365 * 24 * time.Hour
	DefaultJoinTTL = 24 * time.Hour
)

// ScopeAllows says whether a token of scope have may make a request that needs need.
func ScopeAllows(have, need string) bool {
	if have == ScopeJoin || need == ScopeJoin {
		return need == ScopeJoin && (have == ScopeJoin || have == ScopeAdmin)
	}
	rank := map[string]int{ScopeRead: 1, ScopeOperator: 2, ScopeAdmin: 3}
	return rank[have] > 0 && rank[have] >= rank[need]
}

// CreateToken is the body of POST /v1/tokens.
type CreateToken struct {
	Name  string `json:"name"`
	Scope string `json:"scope"`
	// TTL is how long the token lasts, such as 12h or 30d; empty: until revoked (a
	// join token: DefaultJoinTTL).
	TTL string `json:"ttl,omitempty"`
}

// Normalize checks a token request and returns the token's lifetime (0: until revoked).
func (c *CreateToken) Normalize() (time.Duration, *FieldError) {
	if e := ValidateName("name", c.Name); e != nil {
		return 0, e
	}
	if !validScope(c.Scope) {
		if c.Scope == "" {
			return 0, fieldErr("scope", "is empty: give one of %s", strings.Join(Scopes, ", "))
		}
		return 0, fieldErr("scope", "unknown scope %q: use one of %s", c.Scope, strings.Join(Scopes, ", "))
	}
	ttl, err := ParseTTL(c.TTL)
	if err != nil {
		return 0, fieldErr("ttl", "%s", err)
	}
	if ttl == 0 && c.Scope == ScopeJoin {
		ttl = DefaultJoinTTL
	}
	return ttl, nil
}

func validScope(s string) bool {
	for _, v := range Scopes {
		if s == v {
			return true
		}
	}
	return false
}

// ParseTTL reads a token lifetime: a Go duration (90m, 12h) or whole days (30d),
// between MinTokenTTL and MaxTokenTTL. Empty is 0: no expiry.
func ParseTTL(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration: give one such as 12h or 30d", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q is not a duration: give one such as 12h or 30d", s)
		}
	}
	if d < MinTokenTTL || d > MaxTokenTTL {
		return 0, fmt.Errorf("%q is out of range: give 1m to %dd", s, int(MaxTokenTTL/(24*time.Hour)))
	}
	return d, nil
}

// Token states as the API shows them.
const (
	TokenActive  = "active"
	TokenExpired = "expired"
	TokenRevoked = "revoked"
)

// Token is an API token as GET /v1/tokens shows it: never its secret.
type Token struct {
	Name      string    `json:"name"`
	Scope     string    `json:"scope"`
	State     string    `json:"state"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

// TokenCreated answers POST /v1/tokens: the token and its secret, shown this once.
// For a join token the secret is the whole join token that `dvmd join` takes.
type TokenCreated struct {
	Token
	Secret string `json:"secret"`
	// Warning says the token is made but not yet on enough management nodes to
	// survive the loss of two (other writes answer 504 then; a token's secret, which
	// the cluster does not keep, would be lost with such an answer).
	Warning string `json:"warning,omitempty"`
}

// NewSecret makes a token's secret: 32 random bytes, hex.
func NewSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// HashSecret is what the cluster keeps of a token's secret.
func HashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// JoinToken is what a new host needs to join: the secret of a join-scope token, the
// SHA-256 of the cluster's CA certificate (so the host can check, before it sends the
// secret, that it speaks to this cluster), and the management nodes' API addresses.
type JoinToken struct {
	Secret  string   // hex, as NewSecret makes it
	CA      [32]byte // SHA-256 of the CA certificate's DER
	Masters []string // https URLs
}

const joinTokenPrefix = "dvmjoin1."

// String is the join token as operators copy it: dvmjoin1.KEYS.MASTERS, base64url,
// where KEYS is the secret, the CA's hash and a CRC-32 of MASTERS, so that a token cut
// short in copying is refused rather than tried.
func (j JoinToken) String() string {
	masters := strings.Join(j.Masters, ",")
	keys, _ := hex.DecodeString(j.Secret)
	keys = append(keys, j.CA[:]...)
	keys = binary.BigEndian.AppendUint32(keys, crc32.ChecksumIEEE([]byte(masters)))
	return joinTokenPrefix + base64.RawURLEncoding.EncodeToString(keys) + "." + base64.RawURLEncoding.EncodeToString([]byte(masters))
}

// ErrNotJoinToken: the text given is not a join token as vmctl token create --scope
// join prints it.
var ErrNotJoinToken = errors.New("not a join token: give the token `vmctl token create NAME --scope join` printed (dvmjoin1.…)")

// ParseJoinToken reads a join token.
func ParseJoinToken(s string) (JoinToken, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), joinTokenPrefix)
	if !ok {
		return JoinToken{}, ErrNotJoinToken
	}
	keys, masters, ok := strings.Cut(rest, ".")
	if !ok {
		return JoinToken{}, ErrNotJoinToken
	}
	k, err := base64.RawURLEncoding.DecodeString(keys)
	m, merr := base64.RawURLEncoding.DecodeString(masters)
	if err != nil || merr != nil || len(k) != 68 || binary.BigEndian.Uint32(k[64:]) != crc32.ChecksumIEEE(m) {
		return JoinToken{}, fmt.Errorf("%w (it is cut short or changed)", ErrNotJoinToken)
	}
	j := JoinToken{Secret: hex.EncodeToString(k[:32])}
	copy(j.CA[:], k[32:])
	for _, a := range strings.Split(string(m), ",") {
		if a == "" {
			continue
		}
		if u, err := url.Parse(a); err != nil || u.Scheme != "https" || u.Host == "" {
			return JoinToken{}, fmt.Errorf("%w (its address %q is not an https URL)", ErrNotJoinToken, a)
		}
		j.Masters = append(j.Masters, a)
	}
	return j, nil
}

// HostJoinRequest is the body of POST /v1/cluster/credentials, made with a join token:
// a new host asks for its node certificate (for the key of its certificate request;
// the key itself never leaves the host) and the cluster's CA and gossip key.
type HostJoinRequest struct {
	Name string `json:"name"`
	// CSR is a PEM certificate request for the node name, signed with the host's key.
	CSR string `json:"csr"`
	// IPs are the addresses the other nodes reach the host at.
	IPs []string `json:"ips"`
}

// HostCredentials answers a HostJoinRequest.
type HostCredentials struct {
	CACert      string `json:"ca_cert"`     // PEM
	Certificate string `json:"certificate"` // PEM, the node's, signed by the CA
	GossipKey   string `json:"gossip_key"`  // base64, as in gossip.key
}
