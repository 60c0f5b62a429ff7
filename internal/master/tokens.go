package master

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// Issuer signs a joining host's node certificate: cluster.Issuer, on a management node
// whose credentials directory holds the cluster's CA key.
type Issuer interface {
	// CAHash is the SHA-256 of the CA certificate, which a join token carries.
	CAHash() [32]byte
	// IssueNode signs a certificate for node name and the key of csrPEM; an error means
	// the request itself is wrong.
	IssueNode(name string, csrPEM []byte, ips []net.IP) (caPEM, certPEM []byte, gossipKey string, err error)
}

// SetIssuer lets this master hand joining hosts their credentials.
func (m *Master) SetIssuer(i Issuer) { m.issuer = i }

// errNoIssuer: this master holds no CA key to sign a joining host's certificate with.
var errNoIssuer = fmt.Errorf("this master cannot sign a joining host's certificate: its credentials_dir holds no ca.key. "+
	"Copy the cluster's ca.key (mode 0600) to the management nodes' credentials_dir and restart them to let hosts join with "+
	"a join token, or issue the host's credentials with dvmd cluster issue: %w", ErrConflict)

// Why a token's secret is refused.
var (
	errNoToken      = errors.New("missing bearer token: set DVM_TOKEN or --token")
	errUnknownToken = errors.New("unknown token: set DVM_TOKEN or --token to a token made with vmctl token create (or the token file of the node that formed the cluster)")
)

// tokenView is a token as the API shows it.
func tokenView(t store.TokenRecord, now time.Time) api.Token {
	state := api.TokenActive
	switch {
	case !t.RevokedAt.IsZero():
		state = api.TokenRevoked
	case !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt):
		state = api.TokenExpired
	}
	return api.Token{Name: t.Name, Scope: t.Scope, State: state, CreatedAt: t.CreatedAt, CreatedBy: t.CreatedBy,
		ExpiresAt: t.ExpiresAt, RevokedAt: t.RevokedAt}
}

// Tokens lists the API tokens, revoked and expired ones included, never their secrets.
func (m *Master) Tokens() []api.Token {
	now := time.Now()
	out := []api.Token{}
	for _, t := range m.st.Tokens() {
		out = append(out, tokenView(t, now))
	}
	return out
}

// Authenticate finds the token whose secret this is. bootstrap is the secret of this
// node's token file: until the cluster records its bootstrap token (KeepBootstrapToken),
// it is taken as that admin token.
func (m *Master) Authenticate(secret, bootstrap string) (api.Token, error) {
	if secret == "" {
		return api.Token{}, errNoToken
	}
	now := time.Now()
	if t, ok := m.st.TokenByHash(api.HashSecret(secret)); ok {
		v := tokenView(t, now)
		switch v.State {
		case api.TokenRevoked:
			return api.Token{}, fmt.Errorf("token %q was revoked at %s: ask an admin for another (vmctl token create)", t.Name, t.RevokedAt.Format(time.RFC3339))
		case api.TokenExpired:
			return api.Token{}, fmt.Errorf("token %q expired at %s: ask an admin for another (vmctl token create)", t.Name, t.ExpiresAt.Format(time.RFC3339))
		}
		return v, nil
	}
	if bootstrap != "" && subtle.ConstantTimeCompare([]byte(secret), []byte(bootstrap)) == 1 {
		if _, recorded := m.st.Token(api.BootstrapToken); !recorded {
			return api.Token{Name: api.BootstrapToken, Scope: api.ScopeAdmin, State: api.TokenActive}, nil
		}
	}
	return api.Token{}, errUnknownToken
}

// KeepBootstrapToken records secret (the token file of the node that formed the
// cluster) as the admin token "bootstrap" once this master acts, unless the cluster
// has one by that name already; it returns when the cluster has it or ctx ends. A
// cluster made before tokens had scopes gets its shared token recorded this way.
func (m *Master) KeepBootstrapToken(ctx context.Context, secret string) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if _, ok := m.st.Token(api.BootstrapToken); ok {
			return
		}
		if m.acting() {
			rec := store.TokenRecord{Name: api.BootstrapToken, Scope: api.ScopeAdmin, Hash: api.HashSecret(secret),
				CreatedAt: time.Now().UTC(), CreatedBy: "dvmd"}
			m.tokMu.Lock()
			if _, ok := m.st.Token(api.BootstrapToken); !ok {
				if _, err := m.st.Apply(store.Command{Op: store.OpPutToken, Token: &rec}); err != nil {
					m.log.Warn("record the bootstrap token", "err", err)
				}
			}
			m.tokMu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// CreateToken makes an API token at the request of token by, and returns it with its
// secret, which the cluster does not keep. A join token's secret is the whole join
// token: with the CA's hash and masters, the management nodes' API addresses.
func (m *Master) CreateToken(req api.CreateToken, by string, masters []string) (api.TokenCreated, error) {
	ttl, fe := req.Normalize()
	if fe != nil {
		return api.TokenCreated{}, fe
	}
	if req.Scope == api.ScopeJoin && m.issuer == nil {
		return api.TokenCreated{}, errNoIssuer
	}
	if err := m.mustAct(); err != nil {
		return api.TokenCreated{}, err
	}
	m.tokMu.Lock()
	defer m.tokMu.Unlock()
	now := time.Now().UTC()
	if old, ok := m.st.Token(req.Name); ok && tokenView(old, now).State == api.TokenActive {
		return api.TokenCreated{}, fmt.Errorf("token %q %w: it exists; revoke it first (vmctl token revoke %s) or choose another name", req.Name, ErrConflict, req.Name)
	}
	secret, err := api.NewSecret()
	if err != nil {
		return api.TokenCreated{}, err
	}
	rec := store.TokenRecord{Name: req.Name, Scope: req.Scope, Hash: api.HashSecret(secret), CreatedAt: now, CreatedBy: by}
	if ttl > 0 {
		rec.ExpiresAt = now.Add(ttl)
	}
	if _, err := m.st.Apply(store.Command{Op: store.OpPutToken, Token: &rec}); err != nil {
		return api.TokenCreated{}, err
	}
	out := api.TokenCreated{Token: tokenView(rec, now), Secret: secret}
	if req.Scope == api.ScopeJoin {
		out.Secret = api.JoinToken{Secret: secret, CA: m.issuer.CAHash(), Masters: masters}.String()
	}
	return out, nil
}

// RevokeToken revokes a token: its secret is refused from now on. The last active
// admin token cannot be revoked, which would leave nobody to make tokens.
func (m *Master) RevokeToken(name string) error {
	if fe := api.ValidateName("name", name); fe != nil {
		return fe
	}
	if err := m.mustAct(); err != nil {
		return err
	}
	m.tokMu.Lock()
	defer m.tokMu.Unlock()
	now := time.Now().UTC()
	t, ok := m.st.Token(name)
	if !ok {
		return fmt.Errorf("token %q %w", name, ErrNotFound)
	}
	if !t.RevokedAt.IsZero() {
		return fmt.Errorf("token %q was revoked already, at %s: %w", name, t.RevokedAt.Format(time.RFC3339), ErrConflict)
	}
	if t.Scope == api.ScopeAdmin && tokenView(t, now).State == api.TokenActive {
		admins := 0
		for _, o := range m.st.Tokens() {
			if o.Scope == api.ScopeAdmin && tokenView(o, now).State == api.TokenActive {
				admins++
			}
		}
		if admins < 2 {
			return fmt.Errorf("token %q is the last active admin token: make another (vmctl token create NAME --scope admin) before you revoke it: %w", name, ErrConflict)
		}
	}
	t.RevokedAt = now
	_, err := m.st.Apply(store.Command{Op: store.OpPutToken, Token: &t})
	return err
}

// managementURLs are the API addresses of the management nodes (raft's servers) as
// https URLs, for a join token; fallback when none is known (a dev cluster).
func (m *Master) managementURLs(fallback string) []string {
	var out []string
	if servers, err := m.st.Members(); err == nil {
		for _, s := range servers {
			if n, ok := m.st.Node(string(s.ID)); ok && n.Address != "" {
				out = append(out, (&url.URL{Scheme: "https", Host: n.Address}).String())
			}
		}
	}
	sort.Strings(out)
	if len(out) == 0 && fallback != "" {
		out = []string{(&url.URL{Scheme: "https", Host: fallback}).String()}
	}
	return out
}

// JoinHost gives a host joining with a join token its credentials: the CA certificate,
// a node certificate for its name and request, and the gossip key. A name the cluster
// already knows is refused: a host that was reinstalled is removed first.
func (m *Master) JoinHost(req api.HostJoinRequest) (api.HostCredentials, error) {
	if fe := api.ValidateName("name", req.Name); fe != nil {
		return api.HostCredentials{}, fe
	}
	var ips []net.IP
	for _, s := range req.IPs {
		ip := net.ParseIP(s)
		if ip == nil || ip.IsUnspecified() || ip.IsMulticast() {
			return api.HostCredentials{}, &api.FieldError{Field: "ips", Msg: fmt.Sprintf("%q is not a unicast IP address: give the addresses other nodes reach the host at", s)}
		}
		ips = append(ips, ip)
	}
	if len(ips) == 0 {
		return api.HostCredentials{}, &api.FieldError{Field: "ips", Msg: "is empty: give the addresses other nodes reach the host at"}
	}
	if m.issuer == nil {
		return api.HostCredentials{}, errNoIssuer
	}
	if m.knownNode(req.Name) {
		return api.HostCredentials{}, fmt.Errorf("node %q %w: the cluster has a node of that name; give the host another name (dvmd join --name), or remove the old node first (vmctl node remove)", req.Name, ErrConflict)
	}
	// Peers check a node's certificate by the address they dial: a certificate naming
	// another node's address would let its holder pose as that node there.
	nodes, _, _ := m.st.Snapshot()
	for _, n := range nodes {
		host, _, _ := net.SplitHostPort(n.Address)
		for _, ip := range ips {
			if h := net.ParseIP(host); h != nil && h.Equal(ip) && !ip.IsLoopback() {
				return api.HostCredentials{}, &api.FieldError{Field: "ips", Msg: fmt.Sprintf("%s is node %s's address: give this host's own addresses (dvmd join --ip)", ip, n.Name)}
			}
		}
	}
	caPEM, certPEM, gossip, err := m.issuer.IssueNode(req.Name, []byte(req.CSR), ips)
	if err != nil {
		return api.HostCredentials{}, &api.FieldError{Field: "csr", Msg: err.Error()}
	}
	m.log.Info("host joined with a join token", "node", req.Name, "ips", req.IPs)
	return api.HostCredentials{CACert: string(caPEM), Certificate: string(certPEM), GossipKey: gossip}, nil
}

// knownNode says whether the cluster knows a node of that name: registered, or in
// the role table.
func (m *Master) knownNode(name string) bool {
	if _, ok := m.st.Node(name); ok {
		return true
	}
	if m.roles != nil {
		if _, view, ok := m.roles.Status(); ok {
			for _, n := range view.Nodes {
				if n.Name == name {
					return true
				}
			}
		}
	}
	return false
}

// writeEvent is the event that keeps an operator's write, naming its token.
func writeEvent(token, node, guest, detail string) store.EventRecord {
	return store.EventRecord{Time: time.Now().UTC(), Kind: EventWrite, Node: node, Guest: guest, Detail: detail, Token: token}
}

// recordWrite keeps an operator's write as an event naming its token. It runs after
// the write was answered: a master that loses its role in between records nothing.
func (m *Master) recordWrite(e store.EventRecord) {
	if _, err := m.st.Apply(store.Command{Op: store.OpEvent, Event: &e}); err != nil {
		m.log.Warn("record a write", "token", e.Token, "detail", e.Detail, "err", err)
	}
}

// EventWrite is the kind of event that records a write through the API and its token.
const EventWrite = "write"
