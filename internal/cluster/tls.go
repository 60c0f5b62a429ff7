package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// HandshakeTimeout bounds a TLS handshake on an accepted connection, so that a peer
// that connects and says nothing cannot hold a goroutine forever.
const HandshakeTimeout = 10 * time.Second

// ServerTLS is the configuration for a node's listeners (raft, API, agent traffic):
// TLS 1.3 only, the node's certificate, and a client certificate signed by the cluster's
// CA required of every peer. Use PeerName to learn which node connected.
func (c *Credentials) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    c.pool,
	}
}

// ClientTLS is the configuration for dialing another node: TLS 1.3 only, the node's
// certificate as client certificate, and the server's certificate checked against the
// cluster's CA and against the name dialed. Nodes' certificates carry their node name
// and IP addresses, so dialing "10.0.0.5:7460" checks the IP and setting ServerName to
// "n2" checks that the peer is node n2.
func (c *Credentials) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.cert},
		RootCAs:      c.pool,
	}
}

// PeerName returns the node name of the peer of a TLS connection made with ServerTLS or
// ClientTLS, completing the handshake if it has not happened yet. The name comes from a
// certificate chain verified against the cluster's CA, never from the peer's words.
func PeerName(conn net.Conn) (string, error) {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		if sc, isServer := conn.(*serverConn); isServer {
			if err := sc.handshake(); err != nil {
				return "", err
			}
			tc = sc.Conn
		} else {
			return "", fmt.Errorf("connection from %s is not TLS: use ServerTLS or ClientTLS", conn.RemoteAddr())
		}
	}
	if err := tc.Handshake(); err != nil {
		return "", fmt.Errorf("TLS handshake with %s: %w", conn.RemoteAddr(), err)
	}
	cs := tc.ConnectionState()
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", fmt.Errorf("peer %s presented no certificate verified against the cluster's CA", conn.RemoteAddr())
	}
	name := cs.VerifiedChains[0][0].Subject.CommonName
	if err := ValidateNodeName(name); err != nil {
		return "", fmt.Errorf("peer %s: %w", conn.RemoteAddr(), err)
	}
	return name, nil
}

// StreamLayer is hashicorp/raft's StreamLayer over mutual TLS with the cluster's
// credentials: give it to raft.NewNetworkTransport. Only nodes with a certificate from
// the cluster's CA can connect, and raft dials only servers whose certificate names the
// address dialed.
type StreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config
	// Allow, if set, is asked (from raft's connection goroutine) about each peer that
	// passed the TLS handshake, by node name; a peer it refuses is disconnected. Use it
	// to keep nodes that hold no management role off the raft port. It must be quick
	// and safe for concurrent use. Set it before giving the layer to raft.
	Allow func(node string) bool
	// Refused, if set, is called (from raft's connection goroutine) when a peer fails
	// the TLS handshake on the listener (a host without the cluster's credentials, or
	// with an expired certificate) or is refused by Allow. Set it before giving the
	// layer to raft.
	Refused func(remote net.Addr, err error)
	// Epoch, if set, gives this replica's raft epoch (store.Epoch): the generation of
	// the management group its raft configuration belongs to. Every connection starts
	// with the dialer's epoch; a listener whose epoch and the peer's are both known and
	// differ refuses the peer, so that raft of an old group never speaks to the
	// re-formed one. Set it before giving the layer to raft.
	Epoch func() uint64
}

var _ raft.StreamLayer = (*StreamLayer)(nil)

// ErrEpoch is the refusal of a raft peer of another management generation.
var ErrEpoch = errors.New("raft peer of another management generation")

// RaftStreamLayer wraps ln (a plain TCP listener; the layer adds TLS) for raft.
// advertise is the address other nodes dial to reach ln; nil means ln.Addr().
func (c *Credentials) RaftStreamLayer(ln net.Listener, advertise net.Addr) *StreamLayer {
	if advertise == nil {
		advertise = ln.Addr()
	}
	return &StreamLayer{ln: ln, advertise: advertise, server: c.ServerTLS(), client: c.ClientTLS()}
}

// Accept returns the next connection. Its handshake runs on first use, in the caller's
// connection goroutine, so that a slow peer does not hold up the others.
func (s *StreamLayer) Accept() (net.Conn, error) {
	conn, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	return &serverConn{Conn: tls.Server(conn, s.server), allow: s.Allow, refused: s.Refused, epoch: s.Epoch}, nil
}

// Close closes the listener.
func (s *StreamLayer) Close() error { return s.ln.Close() }

// Addr is the advertised address.
func (s *StreamLayer) Addr() net.Addr { return s.advertise }

// Dial connects to a raft server and completes the TLS handshake within timeout.
func (s *StreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(address))
	if err != nil {
		return nil, fmt.Errorf("raft address %q: %w", address, err)
	}
	cfg := s.client.Clone()
	cfg.ServerName = host
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		var hostErr x509.HostnameError
		if errors.As(err, &hostErr) {
			return nil, fmt.Errorf("raft dial %s: %w: the node there must have a certificate listing %s (dvmd cluster issue --ip %s)", address, err, host, host)
		}
		return nil, fmt.Errorf("raft dial %s: %w", address, err)
	}
	var ep [8]byte
	if s.Epoch != nil {
		binary.BigEndian.PutUint64(ep[:], s.Epoch())
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetWriteDeadline(d)
	}
	if _, err := conn.Write(ep[:]); err != nil {
		conn.Close()
		return nil, fmt.Errorf("raft dial %s: %w", address, err)
	}
	conn.SetWriteDeadline(time.Time{})
	return conn, nil
}

// serverConn is an accepted TLS connection whose handshake runs once, with a deadline,
// on first read or write.
type serverConn struct {
	*tls.Conn
	allow   func(string) bool
	refused func(net.Addr, error)
	epoch   func() uint64
	once    sync.Once
	err     error
}

func (c *serverConn) handshake() error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
		defer cancel()
		err := c.Conn.HandshakeContext(ctx)
		if err == nil && c.allow != nil {
			// The handshake verified the chain, so the name is the certificate's.
			name := c.Conn.ConnectionState().VerifiedChains[0][0].Subject.CommonName
			if !c.allow(name) {
				err = fmt.Errorf("node %q is not allowed on this port", name)
			}
		}
		if err == nil {
			err = c.checkEpoch(ctx)
		}
		if err != nil {
			c.err = fmt.Errorf("TLS handshake with %s: %w", c.RemoteAddr(), err)
			if c.refused != nil {
				c.refused(c.RemoteAddr(), err)
			}
			c.Conn.Close()
		}
	})
	return c.err
}

// checkEpoch reads the dialer's raft epoch, which starts every connection, and refuses
// a peer of another generation when both epochs are known.
func (c *serverConn) checkEpoch(ctx context.Context) error {
	if d, ok := ctx.Deadline(); ok {
		c.Conn.SetReadDeadline(d)
		defer c.Conn.SetReadDeadline(time.Time{})
	}
	var ep [8]byte
	if _, err := io.ReadFull(c.Conn, ep[:]); err != nil {
		return fmt.Errorf("read the peer's raft epoch: %w", err)
	}
	peer := binary.BigEndian.Uint64(ep[:])
	if c.epoch == nil {
		return nil
	}
	if mine := c.epoch(); mine != 0 && peer != 0 && mine != peer {
		return fmt.Errorf("%w: the peer's replica is of generation %d, this node's of %d", ErrEpoch, peer, mine)
	}
	return nil
}

func (c *serverConn) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *serverConn) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}
