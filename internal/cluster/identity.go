package cluster

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// A gossip member's name is bound to its node certificate. Every node holds the same
// gossip key, which only keeps hosts without it out; what keeps a node from gossiping
// under another's name (a host that joined with a join token is given the gossip key,
// and a certificate for its own name only) is this:
//
//   - Each node signs its gossiped metadata with its certificate's key: the signature
//     covers its node name, the gossip address it advertises and the time it signed.
//   - Each node hands its certificate to the members it exchanges state with
//     (memberlist's push/pull), and learns theirs; a certificate counts only if the
//     cluster's CA signed it, and it speaks for the node its common name names.
//   - A member's "alive" news (a join, an address, a metadata change) is taken only when
//     it is signed by the key of that name's certificate, for the address it comes
//     from, and no older than what was taken before. News of a name whose certificate
//     is not known yet is set aside and the member is asked for its state at once; it is
//     taken when its certificate has come.
//
// On the wire the metadata is Meta's JSON with three members added at the end, which
// older readers ignore: "gossip" (the advertised address), "at" (Unix milliseconds) and
// "sig" (base64 ECDSA over the name and the JSON before "sig").

const (
	metaDomain = "dvm gossip meta v1\x00"
	certState  = "dvmcert1" // LocalState: this prefix, then the node's certificate (DER)
	sigMember  = `,"sig":"`
	// askAgain bounds how often a member is asked for its state while its news waits.
	askAgain = 200 * time.Millisecond
)

// Why a member's news is refused.
var (
	errUnsigned     = errors.New("carries no proof of its name (an older dvmd, or a host without the cluster's node certificates)")
	errAwaitingCert = errors.New("its certificate is not known yet: asked for it")
)

// signed is what a signed Meta adds to Meta's JSON.
type signed struct {
	Gossip string `json:"gossip"`
	At     int64  `json:"at"`
}

// signMeta encodes meta for gossip, signed by c's key for c's node at gossipAddr.
func signMeta(c *Credentials, meta Meta, gossipAddr string, at time.Time) ([]byte, error) {
	b, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	extra, _ := json.Marshal(signed{Gossip: gossipAddr, At: at.UnixMilli()})
	body := append(bytes.TrimSuffix(b, []byte("}")), ',')
	if len(b) == 2 { // "{}": no member to follow
		body = body[:1]
	}
	body = append(body, extra[1:]...) // extra without its "{"
	digest := metaDigest(c.node, body)
	sig, err := ecdsa.SignASN1(rand.Reader, c.key, digest[:])
	if err != nil {
		return nil, fmt.Errorf("sign node metadata: %w", err)
	}
	out := append(bytes.TrimSuffix(body, []byte("}")), sigMember...)
	out = append(out, base64.StdEncoding.EncodeToString(sig)...)
	out = append(out, `"}`...)
	if len(out) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("%w: %d bytes of JSON, at most %d: shorten the API address", ErrMetaTooLarge, len(out), memberlist.MetaMaxSize)
	}
	return out, nil
}

// openMeta splits signed metadata into what was signed, its signature and its
// address and time. Unsigned metadata gives errUnsigned.
func openMeta(wire []byte) (body, sig []byte, s signed, err error) {
	i := bytes.LastIndex(wire, []byte(sigMember))
	if i < 0 || !bytes.HasSuffix(wire, []byte(`"}`)) {
		return nil, nil, s, errUnsigned
	}
	sig, err = base64.StdEncoding.DecodeString(string(wire[i+len(sigMember) : len(wire)-2]))
	if err != nil {
		return nil, nil, s, errUnsigned
	}
	body = append(wire[:i:i], '}')
	if err := json.Unmarshal(body, &s); err != nil || s.Gossip == "" {
		return nil, nil, s, errUnsigned
	}
	return body, sig, s, nil
}

func metaDigest(node string, body []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(metaDomain))
	var lb [binary.MaxVarintLen64]byte
	h.Write(lb[:binary.PutUvarint(lb[:], uint64(len(node)))])
	h.Write([]byte(node))
	h.Write(body)
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// identities is what a node knows of the other members' certificates.
type identities struct {
	mu      sync.Mutex
	keys    map[string]*ecdsa.PublicKey // node -> key of its verified certificate
	lastAt  map[string]int64            // node -> time of the newest metadata taken
	waiting map[string]waiting          // node -> news set aside for want of its certificate
}

type waiting struct {
	addr  string // where the member gossips: asked for its state
	asked time.Time
}

func newIdentities() identities {
	return identities{keys: map[string]*ecdsa.PublicKey{}, lastAt: map[string]int64{}, waiting: map[string]waiting{}}
}

// check decides on news of peer. When its certificate is still missing it returns
// errAwaitingCert and, at most every askAgain, the address to ask for it.
func (ids *identities) check(peer *memberlist.Node, now time.Time) (ask string, err error) {
	body, sig, s, err := openMeta(peer.Meta)
	if err != nil {
		return "", err
	}
	if s.Gossip != peer.Address() {
		return "", fmt.Errorf("its metadata was signed for address %s, not %s", s.Gossip, peer.Address())
	}
	ids.mu.Lock()
	defer ids.mu.Unlock()
	key := ids.keys[peer.Name]
	if key == nil {
		w := ids.waiting[peer.Name]
		if w.addr != peer.Address() || now.Sub(w.asked) >= askAgain {
			ask, w.asked = peer.Address(), now
		}
		w.addr = peer.Address()
		ids.waiting[peer.Name] = w
		return ask, errAwaitingCert
	}
	digest := metaDigest(peer.Name, body)
	if !ecdsa.VerifyASN1(key, digest[:], sig) {
		return "", fmt.Errorf("its metadata is not signed by node %q's certificate: a host gossiping under another node's name?", peer.Name)
	}
	if s.At < ids.lastAt[peer.Name] {
		return "", fmt.Errorf("its metadata (signed %s) is older than what was taken before", time.UnixMilli(s.At).UTC().Format(time.RFC3339Nano))
	}
	ids.lastAt[peer.Name] = s.At
	delete(ids.waiting, peer.Name)
	return "", nil
}

// learn records node's certificate key. If news of node waits for it, it returns the
// address to ask for that news again.
func (ids *identities) learn(node string, key *ecdsa.PublicKey, now time.Time) (ask string) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	if old := ids.keys[node]; old == nil || !old.Equal(key) {
		ids.keys[node] = key
	}
	if w, ok := ids.waiting[node]; ok {
		w.asked = now
		ids.waiting[node] = w
		return w.addr
	}
	return ""
}

// forget drops the time of node's newest metadata, when it failed or left.
func (ids *identities) forget(node string) {
	ids.mu.Lock()
	delete(ids.lastAt, node)
	ids.mu.Unlock()
}

// aliveDelegate is memberlist's AliveDelegate. memberlist calls it with its node lock
// held: it decides from what it knows, and asks members for their state from another
// goroutine.
type aliveDelegate Members

func (d *aliveDelegate) NotifyAlive(peer *memberlist.Node) error {
	m := (*Members)(d)
	if peer.Name == m.Name() {
		return nil
	}
	ask, err := m.ids.check(peer, time.Now())
	if ask != "" {
		go m.askState(ask)
	}
	if err != nil {
		if err != errAwaitingCert {
			m.refusedNews.Add(1)
		}
		return fmt.Errorf("node %q at %s: %w", peer.Name, peer.Address(), err)
	}
	return nil
}

// askState exchanges state with the member at addr (memberlist's push/pull): it sends
// this node's certificate and brings back the member's.
func (m *Members) askState(addr string) {
	if _, err := m.ml.Join([]string{addr}); err != nil {
		m.log.Debug("ask a member for its certificate", "addr", addr, "err", err)
	}
}

// localState is what this node sends in a push/pull: its certificate.
func (m *Members) localState() []byte {
	return append([]byte(certState), m.creds.cert.Leaf.Raw...)
}

// mergeState takes a member's certificate from its push/pull state.
func (m *Members) mergeState(buf []byte) {
	der, ok := bytes.CutPrefix(buf, []byte(certState))
	if !ok {
		return
	}
	name, key, err := m.peers.verify(der, time.Now())
	if err != nil {
		m.log.Warn("refused a member's certificate", "err", err)
		return
	}
	if ask := m.ids.learn(name, key, time.Now()); ask != "" {
		go m.askState(ask)
	}
}
