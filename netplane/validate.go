package netplane

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// plan is a validated Desired, normalised: networks sorted by VNI, peers deduplicated.
type plan struct {
	local    netip.Addr
	overhead int
	peers    []netip.Addr
	nets     []netPlan
}

type netPlan struct {
	Network
	mtu   int                             // resolved MTU (explicit or derived)
	fdb   map[string]netip.Addr           // remote guest MAC -> VTEP
	neigh map[netip.Addr]net.HardwareAddr // remote guest IP -> MAC
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// validate checks everything that does not need the kernel; MTUs are resolved later,
// once the underlay is known (resolveMTU).
func validate(d Desired) (*plan, error) {
	if !d.LocalVTEP.IsValid() && len(d.Networks) == 0 && len(d.Peers) == 0 && len(d.Endpoints) == 0 {
		return &plan{}, nil // nothing wanted: remove what is ours (a node leaving, drained)
	}
	if !d.LocalVTEP.IsValid() {
		return nil, invalid("LocalVTEP is not set: give this node's tunnel address on the cluster network")
	}
	local := d.LocalVTEP.Unmap()
	if local.IsUnspecified() || local.IsMulticast() {
		return nil, invalid("LocalVTEP %s is not a unicast address: give this node's tunnel address", local)
	}
	p := &plan{local: local, overhead: OverheadIPv4}
	if local.Is6() {
		p.overhead = OverheadIPv6
	}

	seenPeer := map[netip.Addr]bool{}
	for _, peer := range d.Peers {
		if err := checkVTEP(peer, local); err != nil {
			return nil, invalid("peer %v: %v", peer, err)
		}
		peer = peer.Unmap()
		if !seenPeer[peer] {
			seenPeer[peer] = true
			p.peers = append(p.peers, peer)
		}
	}
	slices.SortFunc(p.peers, func(a, b netip.Addr) int { return a.Compare(b) })

	byName := map[string]int{}
	byVNI := map[uint32]string{}
	for _, n := range d.Networks {
		if n.Name == "" {
			return nil, invalid("network with VNI %d has no name", n.VNI)
		}
		if _, dup := byName[n.Name]; dup {
			return nil, invalid("network %q is listed twice", n.Name)
		}
		if n.VNI == 0 || n.VNI > MaxVNI {
			return nil, invalid("network %q: VNI %d is out of range: use 1..%d", n.Name, n.VNI, MaxVNI)
		}
		if other, dup := byVNI[n.VNI]; dup {
			return nil, invalid("networks %q and %q share VNI %d: each network needs its own VNI", other, n.Name, n.VNI)
		}
		if !n.CIDR.IsValid() {
			return nil, invalid("network %q: CIDR is not set: give the guests' address range, e.g. 192.168.42.0/24", n.Name)
		}
		if n.MTU < 0 || (n.MTU > 0 && n.MTU < 68) {
			return nil, invalid("network %q: MTU %d is out of range: use 0 (derive from the underlay) or 68 and up", n.Name, n.MTU)
		}
		byName[n.Name] = len(p.nets)
		byVNI[n.VNI] = n.Name
		n.CIDR = n.CIDR.Masked()
		p.nets = append(p.nets, netPlan{
			Network: n,
			fdb:     map[string]netip.Addr{},
			neigh:   map[netip.Addr]net.HardwareAddr{},
		})
	}

	for _, e := range d.Endpoints {
		i, ok := byName[e.Network]
		if !ok {
			return nil, invalid("endpoint %v: network %q is not among Networks: add the network or drop the endpoint", e.MAC, e.Network)
		}
		np := &p.nets[i]
		if len(e.MAC) != 6 || e.MAC[0]&1 != 0 || bytes.Equal(e.MAC, make(net.HardwareAddr, 6)) {
			return nil, invalid("endpoint on network %q: MAC %v is not a unicast Ethernet address", e.Network, e.MAC)
		}
		mac := e.MAC.String()
		if err := checkVTEP(e.VTEP, local); err != nil {
			if e.VTEP.IsValid() && e.VTEP.Unmap() == local {
				err = fmt.Errorf("is this node's own VTEP: list only guest NICs on other nodes")
			}
			return nil, invalid("endpoint %s on network %q: VTEP %v: %v", mac, e.Network, e.VTEP, err)
		}
		vtep := e.VTEP.Unmap()
		if old, dup := np.fdb[mac]; dup && old != vtep {
			return nil, invalid("endpoint %s on network %q is listed behind two VTEPs, %s and %s: give only its current node", mac, e.Network, old, vtep)
		}
		np.fdb[mac] = vtep
		if e.IP.IsValid() {
			ip := e.IP.Unmap()
			if !np.CIDR.Contains(ip) {
				return nil, invalid("endpoint %s on network %q: IP %s is outside the network's CIDR %s", mac, e.Network, ip, np.CIDR)
			}
			if old, dup := np.neigh[ip]; dup && !bytes.Equal(old, e.MAC) {
				return nil, invalid("network %q: IP %s is claimed by two MACs, %v and %s", e.Network, ip, old, mac)
			}
			np.neigh[ip] = e.MAC
		}
	}

	slices.SortFunc(p.nets, func(a, b netPlan) int { return int(a.VNI) - int(b.VNI) })
	return p, nil
}

func checkVTEP(a, local netip.Addr) error {
	if !a.IsValid() {
		return fmt.Errorf("not set")
	}
	a = a.Unmap()
	if a.Is4() != local.Is4() {
		return fmt.Errorf("address family differs from LocalVTEP %s: the overlay runs over one family", local)
	}
	if a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("not a unicast address")
	}
	if a == local {
		return fmt.Errorf("equals LocalVTEP: leave this node out")
	}
	return nil
}

// resolveMTU fills in each network's MTU from the underlay MTU (0 = unknown).
func (p *plan) resolveMTU(underlay string, underlayMTU int) error {
	max := underlayMTU - p.overhead
	for i := range p.nets {
		n := &p.nets[i]
		switch {
		case underlayMTU == 0 && n.MTU == 0:
			return invalid("network %q: cannot derive the MTU: LocalVTEP is on loopback and no peer has a route yet: set Underlay, or the network's MTU", n.Name)
		case underlayMTU == 0:
			n.mtu = n.MTU
		case n.MTU == 0:
			n.mtu = max
		case n.MTU > max:
			return invalid("network %q: MTU %d does not fit the underlay %s (MTU %d, VXLAN overhead %d): use %d or less, or 0 to derive",
				n.Name, n.MTU, underlay, underlayMTU, p.overhead, max)
		default:
			n.mtu = n.MTU
		}
		if n.mtu < 68 {
			return invalid("network %q: underlay %s has MTU %d, too small for VXLAN (overhead %d)", n.Name, underlay, underlayMTU, p.overhead)
		}
	}
	return nil
}
