package netplane

import (
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// listenUDP opens a UDP socket inside the namespace; the socket stays there wherever it
// is used from.
func (n *testNS) listenUDP(port int) *net.UDPConn {
	n.t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		n.t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(n.ns); err != nil {
		runtime.UnlockOSThread()
		n.t.Fatal(err)
	}
	conn, lerr := net.ListenUDP("udp4", &net.UDPAddr{Port: port})
	if err := netns.Set(orig); err != nil {
		panic(fmt.Sprintf("restore netns: %v", err)) // the thread stays locked and dies with us
	}
	runtime.UnlockOSThread()
	if lerr != nil {
		n.t.Fatal(lerr)
	}
	n.t.Cleanup(func() { conn.Close() })
	return conn
}

func echo(conn *net.UDPConn) {
	buf := make([]byte, 64)
	for {
		k, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		conn.WriteToUDP(buf[:k], from)
	}
}

// BenchmarkMoveTrafficGap measures netplane's share of the traffic gap when a guest moves
// between nodes: g1 on node 1 sends a UDP probe to g2 every 200 µs; each iteration hands
// g2 over from node 2 to node 3 or back (the "source" loses the address, the
// "destination", already plugged in like a migration target's tap, gains it, with the
// guest's neighbour cache as a migration carries it) and then reconciles every node at
// once, as agents do when the move is committed. The gap is the longest time without an
// echo around the hand-over. Migration downtime itself is not part of it.
func BenchmarkMoveTrafficGap(b *testing.B) {
	lab := newOverlayLab(b, 3)
	lab.reconcileAll()
	const g2mac, g2ip = "52:54:00:aa:00:02", "192.168.42.20"
	lab.plug("g1", 0, "52:54:00:aa:00:01", "192.168.42.10")
	lab.plug("g2dst", 2, g2mac, g2ip)
	dst := lab.guests["g2dst"]
	delete(lab.guests, "g2dst")
	lab.plug("g2", 1, g2mac, g2ip)
	src := lab.guests["g2"]
	a, err := netlink.ParseAddr(g2ip + "/24")
	dst.ns.must(err)
	dst.ns.must(dst.ns.h.AddrDel(dst.ns.link("eth0"), a))
	lab.reconcileAll()
	g1 := lab.guests["g1"]
	for _, g := range []*labGuest{src, dst} {
		g.ns.must(g.ns.h.NeighSet(&netlink.Neigh{LinkIndex: g.ns.link("eth0").Attrs().Index, Family: netlink.FAMILY_V4,
			State: netlink.NUD_PERMANENT, IP: g1.ip.AsSlice(), HardwareAddr: g1.mac}))
		go echo(g.ns.listenUDP(7))
	}
	ends := [2]*labGuest{src, dst}
	nodeOf := [2]int{1, 2}

	probe := g1.ns.listenUDP(0)
	var mu sync.Mutex
	var echoes []time.Time
	go func() {
		buf := make([]byte, 64)
		for {
			if _, _, err := probe.ReadFromUDP(buf); err != nil {
				return
			}
			mu.Lock()
			echoes = append(echoes, time.Now())
			mu.Unlock()
		}
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		to := &net.UDPAddr{IP: net.ParseIP(g2ip), Port: 7}
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		var seq uint64
		msg := make([]byte, 8)
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				seq++
				binary.BigEndian.PutUint64(msg, seq)
				probe.WriteToUDP(msg, to)
			}
		}
	}()
	// firstEchoAfter waits for an echo later than t (the probe keeps sending).
	firstEchoAfter := func(t time.Time) time.Time {
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Microsecond) {
			mu.Lock()
			i, _ := slices.BinarySearchFunc(echoes, t, func(e, t time.Time) int { return e.Compare(t) })
			var e time.Time
			if i < len(echoes) && echoes[i].After(t) {
				e = echoes[i]
			} else if i+1 < len(echoes) {
				e = echoes[i+1]
			}
			mu.Unlock()
			if !e.IsZero() {
				return e
			}
		}
		b.Fatalf("no echo from g2 within 5 s after %v", t)
		return time.Time{}
	}
	lastEchoBefore := func(t time.Time) time.Time {
		mu.Lock()
		defer mu.Unlock()
		i, _ := slices.BinarySearchFunc(echoes, t, func(e, t time.Time) int { return e.Compare(t) })
		if i == 0 {
			return time.Time{}
		}
		return echoes[i-1]
	}

	var gaps []time.Duration
	firstEchoAfter(time.Now())
	k := 0
	for b.Loop() {
		from, to := ends[k%2], ends[(k+1)%2]
		firstEchoAfter(time.Now()) // traffic flows before the hand-over
		t0 := time.Now()
		before := lastEchoBefore(t0)
		from.ns.must(from.ns.h.AddrDel(from.ns.link("eth0"), a))
		to.ns.must(to.ns.h.AddrAdd(to.ns.link("eth0"), a))
		lab.guests["g2"].node = nodeOf[(k+1)%2]
		lab.reconcileAll()
		after := firstEchoAfter(t0)
		gaps = append(gaps, after.Sub(before))
		k++
	}
	slices.Sort(gaps)
	b.ReportMetric(float64(gaps[len(gaps)/2])/1e6, "gap-median-ms")
	b.ReportMetric(float64(gaps[len(gaps)-1])/1e6, "gap-max-ms")
}
