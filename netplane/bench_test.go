package netplane

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
)

// benchDesired: nets networks, each with endpoints remote guests spread over 8 peers.
func benchDesired(nets, endpoints int) Desired {
	d := Desired{LocalVTEP: addr("10.77.0.1")}
	for p := range 8 {
		d.Peers = append(d.Peers, netip.AddrFrom4([4]byte{10, 77, 0, byte(2 + p)}))
	}
	for n := range nets {
		name := fmt.Sprintf("net%d", n)
		d.Networks = append(d.Networks, Network{Name: name, VNI: uint32(100 + n), CIDR: prefix(fmt.Sprintf("10.%d.0.0/16", n))})
		for e := range endpoints {
			d.Endpoints = append(d.Endpoints, Endpoint{
				Network: name,
				MAC:     net.HardwareAddr{0x52, 0x54, 0, byte(n), byte(e >> 8), byte(e)},
				IP:      netip.AddrFrom4([4]byte{10, byte(n), byte(e >> 8), byte(e)}),
				VTEP:    d.Peers[e%len(d.Peers)],
			})
		}
	}
	return d
}

func benchReconciler(b *testing.B) *Reconciler {
	ns := newTestNS(b)
	ns.underlay("10.77.0.1/24", 1500)
	return ns.reconciler("")
}

// BenchmarkReconcileNoop is the steady state: the agent reconciles and nothing changed.
func BenchmarkReconcileNoop(b *testing.B) {
	for _, c := range []struct{ nets, endpoints int }{{1, 10}, {1, 100}, {1, 1000}, {10, 100}} {
		b.Run(fmt.Sprintf("nets=%d/endpoints=%d", c.nets, c.endpoints), func(b *testing.B) {
			r := benchReconciler(b)
			d := benchDesired(c.nets, c.endpoints)
			if _, err := r.Reconcile(d); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				cs, err := r.Reconcile(d)
				if err != nil || len(cs) != 0 {
					b.Fatalf("changes %v, err %v", cs, err)
				}
			}
		})
	}
}

// BenchmarkReconcileMove: one guest moved to another node; the FDB entry is replaced.
// This is the node's share of the traffic gap after a move.
func BenchmarkReconcileMove(b *testing.B) {
	for _, endpoints := range []int{10, 1000} {
		b.Run(fmt.Sprintf("endpoints=%d", endpoints), func(b *testing.B) {
			r := benchReconciler(b)
			d := benchDesired(1, endpoints)
			if _, err := r.Reconcile(d); err != nil {
				b.Fatal(err)
			}
			i := 0
			for b.Loop() {
				i++
				d.Endpoints[0].VTEP = d.Peers[i%2]
				cs, err := r.Reconcile(d)
				if err != nil || len(cs) != 1 {
					b.Fatalf("changes %v, err %v", cs, err)
				}
			}
		})
	}
}

// BenchmarkReconcileAddRemoveNetwork: a network with 100 remote endpoints appears on the
// node (bridge, vxlan, 8 flood and 100 FDB and neighbour entries), then goes again.
func BenchmarkReconcileAddRemoveNetwork(b *testing.B) {
	r := benchReconciler(b)
	full := benchDesired(1, 100)
	empty := Desired{LocalVTEP: full.LocalVTEP, Peers: full.Peers}
	for b.Loop() {
		if _, err := r.Reconcile(full); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Reconcile(empty); err != nil {
			b.Fatal(err)
		}
	}
}
