package cluster

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// BenchmarkFailureDetection measures, with the default probe settings, the time from a
// member stopping without a word to another member's EventFailed for it, in a cluster of
// three on loopback. One op is one failure; setup is not timed.
func BenchmarkFailureDetection(b *testing.B) {
	_, creds := newCluster(b, "n1", "n2", "n3")
	var times []time.Duration
	for b.Loop() {
		b.StopTimer()
		n1 := benchJoin(b, creds["n1"])
		n2 := benchJoin(b, creds["n2"], n1.Addr())
		n3 := benchJoin(b, creds["n3"], n1.Addr())
		for _, m := range []*Members{n1, n2, n3} {
			benchWait(b, m, func(e Event) bool { return e.Kind == EventJoin && e.Member.Name == "n3" })
		}
		b.StartTimer()
		start := time.Now()
		n3.Shutdown()
		benchWait(b, n1, func(e Event) bool { return e.Kind == EventFailed && e.Member.Name == "n3" })
		times = append(times, time.Since(start))
		b.StopTimer()
		n1.Shutdown()
		n2.Shutdown()
		b.StartTimer()
	}
	slices.Sort(times)
	b.ReportMetric(times[len(times)/2].Seconds(), "median-s")
	b.ReportMetric(times[len(times)-1].Seconds(), "max-s")
}

func benchJoin(b *testing.B, c *Credentials, peers ...string) *Members {
	m, err := Join(MemberConfig{Credentials: c, BindAddr: "127.0.0.1", Peers: peers})
	if err != nil {
		b.Fatal(err)
	}
	return m
}

func benchWait(b *testing.B, m *Members, ok func(Event) bool) {
	timeout := time.After(time.Minute)
	for {
		select {
		case ev, open := <-m.Events():
			if !open {
				b.Fatal("events closed")
			}
			if ok(ev) {
				return
			}
		case <-timeout:
			b.Fatalf("%s: event not seen within a minute", m.Name())
		}
	}
}

// BenchmarkSend measures one signed message from one member to another, received.
func BenchmarkSend(b *testing.B) {
	_, creds := newCluster(b, "n1", "n2")
	n1 := benchJoin(b, creds["n1"])
	defer n1.Shutdown()
	n2 := benchJoin(b, creds["n2"], n1.Addr())
	defer n2.Shutdown()
	payload := make([]byte, 256)
	for b.Loop() {
		if err := n1.Send("n2", payload); err != nil {
			b.Fatal(err)
		}
		<-n2.Messages()
	}
}

// BenchmarkOpenMessage measures checking a received message (signature; the sender's
// certificate chain is cached after the first).
func BenchmarkOpenMessage(b *testing.B) {
	_, creds := newCluster(b, "n1", "n2")
	env, err := seal(creds["n1"], kindUser, "n2", make([]byte, 256))
	if err != nil {
		b.Fatal(err)
	}
	cache := &certCache{pool: creds["n2"].pool, names: map[[32]byte]verified{}}
	now := time.Now()
	for b.Loop() {
		if _, _, _, err := open(cache, "n2", env, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMutualTLSHandshake measures a new mutually authenticated connection on
// loopback: connect, TLS 1.3 handshake both ways, one byte back.
func BenchmarkMutualTLSHandshake(b *testing.B) {
	_, creds := newCluster(b, "n1", "n2")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", creds["n1"].ServerTLS())
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				if _, err := PeerName(conn); err == nil {
					conn.Write([]byte{1})
				}
			}()
		}
	}()
	cfg := creds["n2"].ClientTLS()
	buf := make([]byte, 1)
	for b.Loop() {
		conn, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Read(buf); err != nil {
			b.Fatal(err)
		}
		conn.Close()
	}
}

// BenchmarkRaftApply measures a committed raft entry between two voters on loopback,
// over this package's TLS stream layer and, for comparison, over raft's plain TCP
// transport.
func BenchmarkRaftApply(b *testing.B) {
	_, creds := newCluster(b, "n1", "n2")
	for _, kind := range []string{"tls", "plain"} {
		b.Run(kind, func(b *testing.B) {
			var rafts []*raft.Raft
			var servers []raft.Server
			var transports []raft.Transport
			for _, name := range []string{"n1", "n2"} {
				var tr raft.Transport
				if kind == "tls" {
					ln, err := net.Listen("tcp", "127.0.0.1:0")
					if err != nil {
						b.Fatal(err)
					}
					tr = raft.NewNetworkTransport(creds[name].RaftStreamLayer(ln, nil), 3, 5*time.Second, io.Discard)
				} else {
					t, err := raft.NewTCPTransport("127.0.0.1:0", nil, 3, 5*time.Second, io.Discard)
					if err != nil {
						b.Fatal(err)
					}
					tr = t
				}
				transports = append(transports, tr)
				servers = append(servers, raft.Server{ID: raft.ServerID(name), Address: tr.LocalAddr()})
			}
			for i, tr := range transports {
				cfg := raft.DefaultConfig()
				cfg.LocalID = servers[i].ID
				cfg.Logger = hclog.NewNullLogger()
				logs, stable, snaps := raft.NewInmemStore(), raft.NewInmemStore(), raft.NewInmemSnapshotStore()
				if err := raft.BootstrapCluster(cfg, logs, stable, snaps, tr, raft.Configuration{Servers: servers}); err != nil {
					b.Fatal(err)
				}
				r, err := raft.NewRaft(cfg, newLogFSM(), logs, stable, snaps, tr)
				if err != nil {
					b.Fatal(err)
				}
				rafts = append(rafts, r)
				defer func() { r.Shutdown().Error() }()
			}
			var leader *raft.Raft
			for start := time.Now(); leader == nil; time.Sleep(10 * time.Millisecond) {
				if time.Since(start) > time.Minute {
					b.Fatal("no leader elected within a minute")
				}
				for _, r := range rafts {
					if r.State() == raft.Leader {
						leader = r
					}
				}
			}
			data := []byte(fmt.Sprintf("%0256d", 0))
			for b.Loop() {
				if err := leader.Apply(data, 5*time.Second).Error(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkJoinSeen measures, on loopback, the time from a third member's Join to both
// others and itself seeing all three alive: with names bound to certificates, news of a
// new name waits for its certificate, which a push/pull asked for at once brings. Setup
// is not timed.
func BenchmarkJoinSeen(b *testing.B) {
	_, creds := newCluster(b, "n1", "n2", "n3")
	var times []time.Duration
	for b.Loop() {
		b.StopTimer()
		n1 := benchJoin(b, creds["n1"])
		n2 := benchJoin(b, creds["n2"], n1.Addr())
		benchWait(b, n1, func(e Event) bool { return e.Kind == EventJoin && e.Member.Name == "n2" })
		b.StartTimer()
		start := time.Now()
		n3 := benchJoin(b, creds["n3"], n1.Addr())
		for _, m := range []*Members{n1, n2} {
			benchWait(b, m, func(e Event) bool { return e.Kind == EventJoin && e.Member.Name == "n3" })
		}
		for len(n3.Alive()) < 3 {
			time.Sleep(time.Millisecond)
		}
		times = append(times, time.Since(start))
		b.StopTimer()
		for _, m := range []*Members{n1, n2, n3} {
			m.Shutdown()
		}
		b.StartTimer()
	}
	slices.Sort(times)
	b.ReportMetric(float64(times[len(times)/2].Milliseconds()), "median-ms")
	b.ReportMetric(float64(times[len(times)-1].Milliseconds()), "max-ms")
}
