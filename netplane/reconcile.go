package netplane

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// fdbState is what `bridge fdb add` uses by default: a permanent entry that never ages.
const fdbState = unix.NUD_PERMANENT | unix.NUD_NOARP

// Reconciler makes one network namespace match a Desired. It is safe for concurrent use;
// calls are serialised.
type Reconciler struct {
	prefix string
	mu     sync.Mutex
	h      *netlink.Handle
}

// NewReconciler opens a netlink handle in the namespace of opts (see Options). Close it when done.
func NewReconciler(opts Options) (*Reconciler, error) {
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if len(prefix) > maxPrefixLen {
		return nil, invalid("prefix %q is longer than %d characters: device names must fit 15", prefix, maxPrefixLen)
	}
	for _, c := range prefix {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return nil, invalid("prefix %q: use only lower-case letters and digits", prefix)
		}
	}
	var h *netlink.Handle
	var err error
	if opts.NetnsPath == "" {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		var ns netns.NsHandle
		ns, err = netns.GetFromPath(opts.NetnsPath)
		if err != nil {
			return nil, fmt.Errorf("netplane: open network namespace %s: %w", opts.NetnsPath, err)
		}
		defer ns.Close()
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("netplane: open netlink handle: %w", err)
	}
	return &Reconciler{prefix: prefix, h: h}, nil
}

// Close releases the netlink handle. The devices stay.
func (r *Reconciler) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.h.Close()
}

// BridgeName is the bridge of network vni under this reconciler's prefix.
func (r *Reconciler) BridgeName(vni uint32) string { return bridgeName(r.prefix, vni) }

// VXLANName is the VXLAN device of network vni under this reconciler's prefix.
func (r *Reconciler) VXLANName(vni uint32) string { return vxlanName(r.prefix, vni) }

// BridgeMTU is the MTU of network vni's bridge as set by the last Reconcile. Guest NICs
// should get it too (libvirt <mtu size='…'/>): libvirt gives the tap device the bridge's
// MTU by itself, but only an explicit <mtu> tells the guest's virtio NIC.
func (r *Reconciler) BridgeMTU(vni uint32) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l, err := r.h.LinkByName(r.BridgeName(vni))
	if err != nil {
		return 0, &OpError{Op: "get", Object: "mtu", Device: r.BridgeName(vni), Err: err}
	}
	return l.Attrs().MTU, nil
}

// run collects the changes and errors of one Reconcile.
type run struct {
	changes Changes
	errs    []error
}

// do performs one kernel modification, recording it as a Change or an OpError.
func (rn *run) do(op, object, device string, f func() error) error {
	if err := f(); err != nil {
		err = &OpError{Op: op, Object: object, Device: device, Err: err}
		rn.errs = append(rn.errs, err)
		return err
	}
	rn.changes = append(rn.changes, Change{Op: op, Object: object, Device: device})
	return nil
}

// dump retries a netlink dump the kernel interrupted because the table changed under it.
func dump[T any](f func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := f()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 10 {
			continue
		}
		return v, err
	}
}

// Reconcile makes the namespace match d and returns what it changed. Invalid input
// (errors.Is(err, ErrInvalid)) changes nothing. Otherwise Reconcile carries on past a
// failed operation and returns every failure joined, each an *OpError naming device and
// operation; the Changes made before and after a failure are still returned. Calling it
// again with the same d changes nothing and returns empty Changes. The zero Desired
// removes every device of ours.
func (r *Reconciler) Reconcile(d Desired) (Changes, error) {
	r.mu.Lock()
	defer r.mu.Unlock()

	p, err := validate(d)
	if err != nil {
		return nil, err
	}
	var ul underlay
	if len(p.nets) > 0 {
		if ul, err = r.underlay(d.Underlay, p.local, p.peers); err != nil {
			return nil, err
		}
		if err := p.resolveMTU(ul.name, ul.mtu); err != nil {
			return nil, err
		}
	}

	links, err := dump(r.h.LinkList)
	if err != nil {
		return nil, &OpError{Op: "list", Object: "links", Device: "all", Err: err}
	}
	owned := map[string]netlink.Link{}
	for _, l := range links {
		if _, _, ok := parseOwned(r.prefix, l.Attrs().Name); ok {
			owned[l.Attrs().Name] = l
		}
	}

	rn := &run{}
	want := map[string]bool{}
	type wired struct {
		n      *netPlan
		br, vx netlink.Link
	}
	var ready []wired
	for i := range p.nets {
		n := &p.nets[i]
		want[r.BridgeName(n.VNI)] = true
		want[r.VXLANName(n.VNI)] = true
		if br, vx := r.network(rn, n, p.local, ul, owned); br != nil {
			ready = append(ready, wired{n, br, vx})
		}
	}

	// Entries: one dump per table for the whole namespace (the kernel does not filter
	// bridge FDB dumps by device), then each network's share.
	if len(ready) > 0 {
		fdb, err := dumpByLink(r.h, unix.AF_BRIDGE)
		if err != nil {
			rn.errs = append(rn.errs, &OpError{Op: "list", Object: "fdb", Device: "all", Err: err})
		}
		neigh4, err4 := dumpByLink(r.h, unix.AF_INET)
		neigh6, err6 := dumpByLink(r.h, unix.AF_INET6)
		if err := errors.Join(err4, err6); err != nil {
			rn.errs = append(rn.errs, &OpError{Op: "list", Object: "neighbours", Device: "all", Err: err})
		}
		for _, w := range ready {
			if fdb != nil {
				r.fdb(rn, p, w.n, w.vx, fdb[w.vx.Attrs().Index])
			}
			if err4 == nil && err6 == nil {
				r.neigh(rn, w.n, w.br, append(neigh4[w.br.Attrs().Index], neigh6[w.br.Attrs().Index]...))
			}
		}
	}

	// Devices of networks no longer desired: each tunnel before its bridge, so traffic
	// stops arriving before the switch it would enter goes.
	var stale []netlink.Link
	for name, l := range owned {
		if !want[name] {
			stale = append(stale, l)
		}
	}
	slices.SortFunc(stale, func(a, b netlink.Link) int {
		ka, _, _ := parseOwned(r.prefix, a.Attrs().Name)
		kb, _, _ := parseOwned(r.prefix, b.Attrs().Name)
		if ka != kb {
			return -strings.Compare(ka, kb) // "vx" before "br"
		}
		return strings.Compare(a.Attrs().Name, b.Attrs().Name)
	})
	for _, l := range stale {
		rn.do("delete", l.Type()+" (network no longer desired)", l.Attrs().Name, func() error { return r.h.LinkDel(l) })
	}
	return rn.changes, errors.Join(rn.errs...)
}

// underlay is what the overlay runs over.
type underlay struct {
	name string // for messages: a link name, or "route to PEER via LINK"
	mtu  int    // 0 = unknown (routed VTEP without reachable peers)
	bind int    // ifindex the VXLAN device is bound to; 0 = none (routed VTEP)
}

// underlay finds the link the overlay runs over: the named one; else the link holding
// LocalVTEP; else, when LocalVTEP sits on loopback (a routed VTEP, as in BGP fabrics),
// the links the routes to the peers leave by, taking the smallest MTU and binding to none.
func (r *Reconciler) underlay(name string, local netip.Addr, peers []netip.Addr) (underlay, error) {
	if name != "" {
		l, err := r.h.LinkByName(name)
		if err != nil {
			return underlay{}, invalid("underlay link %q: %v: name an existing link, or leave Underlay empty to use the link holding LocalVTEP %s", name, err, local)
		}
		return underlay{name: name, mtu: l.Attrs().MTU, bind: l.Attrs().Index}, nil
	}
	family := unix.AF_INET
	if local.Is6() {
		family = unix.AF_INET6
	}
	addrs, err := dump(func() ([]netlink.Addr, error) { return r.h.AddrList(nil, family) })
	if err != nil {
		return underlay{}, &OpError{Op: "list", Object: "addresses", Device: "all", Err: err}
	}
	var holder netlink.Link
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == local {
			if holder, err = r.h.LinkByIndex(a.LinkIndex); err != nil {
				return underlay{}, &OpError{Op: "get", Object: "link holding " + local.String(), Device: fmt.Sprintf("ifindex %d", a.LinkIndex), Err: err}
			}
			break
		}
	}
	if holder == nil {
		return underlay{}, invalid("LocalVTEP %s is not an address of any link in this namespace: assign it to the underlay link or set Underlay", local)
	}
	if holder.Attrs().Flags&net.FlagLoopback == 0 {
		return underlay{name: holder.Attrs().Name, mtu: holder.Attrs().MTU, bind: holder.Attrs().Index}, nil
	}
	// Routed VTEP. A peer without a route is skipped here: the entries of the other
	// peers and of moved guests must still be applied while one node is unreachable.
	u := underlay{name: "routes from " + holder.Attrs().Name}
	for _, peer := range peers {
		routes, err := r.h.RouteGet(net.IP(peer.AsSlice()))
		if err != nil || len(routes) == 0 {
			continue
		}
		l, err := r.h.LinkByIndex(routes[0].LinkIndex)
		if err != nil {
			continue
		}
		mtu := l.Attrs().MTU
		if routes[0].MTU > 0 && routes[0].MTU < mtu {
			mtu = routes[0].MTU
		}
		if u.mtu == 0 || mtu < u.mtu {
			u.mtu = mtu
			u.name = "route to " + peer.String() + " via " + l.Attrs().Name
		}
	}
	return u, nil
}

// network reconciles the devices of one network. It returns the bridge and the VXLAN
// device when both are in place, nils otherwise (the failure is recorded in rn).
func (r *Reconciler) network(rn *run, n *netPlan, local netip.Addr, ul underlay, owned map[string]netlink.Link) (netlink.Link, netlink.Link) {
	h := r.h
	brName, vxName := r.BridgeName(n.VNI), r.VXLANName(n.VNI)

	br := owned[brName]
	if br != nil && br.Type() != "bridge" {
		l := br
		if rn.do("delete", l.Type()+" (not a bridge)", brName, func() error { return h.LinkDel(l) }) != nil {
			return nil, nil
		}
		br = nil
	}
	if br == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = brName, n.mtu
		// A bridge with an address of its own keeps it; otherwise the kernel gives it the
		// lowest MAC of its ports, changing it as guest ports come and go, and every
		// change of address flushes the bridge's neighbour entries, permanent ones too.
		var err error
		if attrs.HardwareAddr, err = randomMAC(); err != nil {
			rn.errs = append(rn.errs, &OpError{Op: "add", Object: "bridge", Device: brName, Err: err})
			return nil, nil
		}
		if rn.do("add", "bridge", brName, func() error { return r.create(&netlink.Bridge{LinkAttrs: attrs}) }) != nil {
			return nil, nil
		}
		if br = r.fetch(rn, brName); br == nil {
			return nil, nil
		}
	}

	wantVX := &netlink.Vxlan{
		VxlanId:      int(n.VNI),
		VtepDevIndex: ul.bind,
		SrcAddr:      net.IP(local.AsSlice()),
		Port:         VXLANPort,
		Learning:     false,
		UDPCSum:      true,
	}
	dev := ""
	if ul.bind != 0 {
		dev = ", dev " + ul.name
	}
	vxDesc := fmt.Sprintf("vxlan (vni %d, local %s%s, dstport %d, nolearning)", n.VNI, local, dev, VXLANPort)
	vx := owned[vxName]
	if vx != nil {
		if why := vxlanMismatch(vx, wantVX); why != "" {
			l := vx
			if rn.do("delete", "vxlan ("+why+")", vxName, func() error { return h.LinkDel(l) }) != nil {
				return nil, nil
			}
			vx = nil
		}
	}
	if vx == nil {
		wantVX.LinkAttrs = netlink.NewLinkAttrs()
		wantVX.Name, wantVX.MTU = vxName, n.mtu
		if rn.do("add", vxDesc, vxName, func() error { return r.create(wantVX) }) != nil {
			return nil, nil
		}
		if vx = r.fetch(rn, vxName); vx == nil {
			return nil, nil
		}
	}

	// MTU: the bridge never above its tunnel port, so raise the tunnel first and lower
	// the bridge first.
	order := []netlink.Link{vx, br}
	if n.mtu < vx.Attrs().MTU {
		order = []netlink.Link{br, vx}
	}
	for _, l := range order {
		if l.Attrs().MTU != n.mtu {
			l := l
			rn.do("set", fmt.Sprintf("mtu %d (was %d)", n.mtu, l.Attrs().MTU), l.Attrs().Name, func() error { return h.LinkSetMTU(l, n.mtu) })
		}
	}
	if vx.Attrs().MasterIndex != br.Attrs().Index {
		if rn.do("set", "master "+brName, vxName, func() error { return h.LinkSetMasterByIndex(vx, br.Attrs().Index) }) != nil {
			return nil, nil
		}
	}
	// neigh_suppress on the tunnel port: the bridge answers ARP/ND for remote guests from
	// its neighbour entries instead of flooding the request to every node; requests
	// for unknown addresses are still flooded.
	pi, err := h.LinkGetProtinfo(vx)
	if err != nil {
		rn.errs = append(rn.errs, &OpError{Op: "get", Object: "bridge port flags", Device: vxName, Err: err})
	} else if !pi.NeighSuppress {
		rn.do("set", "neigh_suppress on", vxName, func() error { return h.LinkSetBrNeighSuppress(vx, true) })
	}
	for _, l := range []netlink.Link{vx, br} {
		if l.Attrs().Flags&net.FlagUp == 0 {
			l := l
			rn.do("set", "up", l.Attrs().Name, func() error { return h.LinkSetUp(l) })
		}
	}

	return br, vx
}

// dumpByLink lists the neighbour table of family (AF_BRIDGE: the FDB) grouped by link index.
func dumpByLink(h *netlink.Handle, family int) (map[int][]netlink.Neigh, error) {
	entries, err := dump(func() ([]netlink.Neigh, error) { return h.NeighList(0, family) })
	if err != nil {
		return nil, err
	}
	m := map[int][]netlink.Neigh{}
	for _, e := range entries {
		m[e.LinkIndex] = append(m[e.LinkIndex], e)
	}
	return m, nil
}

// create adds a link with IPv6 address generation off, set while it is still down: a
// node has no business on its guests' networks, and a link-local address on the bridge
// would make the node reachable from every guest and chatty (MLD, router solicitations)
// across the overlay. Addresses someone assigns later are left alone.
func (r *Reconciler) create(l netlink.Link) error {
	if err := r.h.LinkAdd(l); err != nil {
		return err
	}
	if err := r.h.LinkSetIP6AddrGenMode(l, nl.IN6_ADDR_GEN_MODE_NONE); err != nil {
		// A link that would come up with a link-local address is not the one we want.
		if derr := r.h.LinkDel(l); derr != nil {
			return fmt.Errorf("set addrgenmode none: %w (and delete again: %v)", err, derr)
		}
		return fmt.Errorf("set addrgenmode none: %w", err)
	}
	return nil
}

// randomMAC is a random locally administered unicast MAC.
func randomMAC() (net.HardwareAddr, error) {
	m := make(net.HardwareAddr, 6)
	if _, err := rand.Read(m); err != nil {
		return nil, fmt.Errorf("random MAC: %w", err)
	}
	m[0] = m[0]&^1 | 2
	return m, nil
}

// fetch re-reads a link after creating it, for its index and kernel-chosen attributes.
func (r *Reconciler) fetch(rn *run, name string) netlink.Link {
	l, err := r.h.LinkByName(name)
	if err != nil {
		rn.errs = append(rn.errs, &OpError{Op: "get", Object: "link", Device: name, Err: err})
		return nil
	}
	return l
}

// vxlanMismatch says why an existing VXLAN device cannot be kept; "" = it can. These
// attributes cannot be changed on a live device, so a mismatch means delete and add.
func vxlanMismatch(l netlink.Link, want *netlink.Vxlan) string {
	vx, ok := l.(*netlink.Vxlan)
	switch {
	case !ok:
		return "not a vxlan device but " + l.Type()
	case vx.VxlanId != want.VxlanId:
		return fmt.Sprintf("vni %d, want %d", vx.VxlanId, want.VxlanId)
	case !vx.SrcAddr.Equal(want.SrcAddr):
		return fmt.Sprintf("local %v, want %v", vx.SrcAddr, want.SrcAddr)
	case vx.VtepDevIndex != want.VtepDevIndex:
		return fmt.Sprintf("bound to ifindex %d, want %d", vx.VtepDevIndex, want.VtepDevIndex)
	case vx.Port != want.Port:
		return fmt.Sprintf("dstport %d, want %d", vx.Port, want.Port)
	case vx.Learning:
		return "learning on, want nolearning"
	}
	return ""
}

func addrOf(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// fdb reconciles the VXLAN device's own forwarding table: one all-zero entry per peer
// (head-end replication of broadcast, unknown unicast and multicast) and one entry per
// remote guest MAC naming the VTEP of the node it runs on.
func (r *Reconciler) fdb(rn *run, p *plan, n *netPlan, vx netlink.Link, entries []netlink.Neigh) {
	h, dev, idx := r.h, vx.Attrs().Name, vx.Attrs().Index
	flood := map[netip.Addr]bool{}
	uni := map[string][]netip.Addr{}
	macs := map[string]net.HardwareAddr{}
	learned := map[string]bool{} // the bridge's dynamic entries on the tunnel port
	for _, e := range entries {
		if e.LinkIndex != idx {
			continue
		}
		if e.Flags&unix.NTF_SELF == 0 && e.State&(unix.NUD_PERMANENT|unix.NUD_NOARP) == 0 {
			learned[e.HardwareAddr.String()] = true
		}
		// NTF_SELF entries with a destination are the VXLAN driver's; entries without
		// NTF_SELF are the bridge's (learned or local), not ours but for the case below.
		if e.Flags&unix.NTF_SELF == 0 || e.IP == nil {
			continue
		}
		ip, ok := addrOf(e.IP)
		if !ok {
			continue
		}
		if bytes.Equal(e.HardwareAddr, zeroMAC) {
			flood[ip] = true
			continue
		}
		m := e.HardwareAddr.String()
		uni[m] = append(uni[m], ip)
		macs[m] = e.HardwareAddr
	}

	entry := func(mac net.HardwareAddr, ip netip.Addr) *netlink.Neigh {
		return &netlink.Neigh{
			LinkIndex:    idx,
			Family:       unix.AF_BRIDGE,
			Flags:        unix.NTF_SELF,
			State:        fdbState,
			HardwareAddr: mac,
			IP:           net.IP(ip.AsSlice()),
		}
	}
	label := func(kind string, mac string, ip netip.Addr) string { return kind + " " + mac + "→" + ip.String() }

	for _, peer := range p.peers {
		if !flood[peer] {
			rn.do("add", label("flood fdb", zeroMAC.String(), peer), dev, func() error { return h.NeighAppend(entry(zeroMAC, peer)) })
		}
	}
	for _, ip := range slices.SortedFunc(maps.Keys(flood), netip.Addr.Compare) {
		if !slices.Contains(p.peers, ip) {
			rn.do("delete", label("flood fdb", zeroMAC.String(), ip), dev, func() error { return h.NeighDel(entry(zeroMAC, ip)) })
		}
	}

	for _, m := range slices.Sorted(maps.Keys(n.fdb)) {
		want, have := n.fdb[m], uni[m]
		mac, _ := net.ParseMAC(m)
		switch {
		case len(have) == 1 && have[0] == want:
		case len(have) == 1:
			// The guest moved: replace in place, so there is no moment without an entry.
			rn.do("replace", label("fdb", m, want)+" (was "+have[0].String()+")", dev, func() error { return h.NeighSet(entry(mac, want)) })
		default:
			for _, ip := range have {
				if ip != want {
					rn.do("delete", label("fdb", m, ip), dev, func() error { return h.NeighDel(entry(mac, ip)) })
				}
			}
			if !slices.Contains(have, want) {
				rn.do("add", label("fdb", m, want), dev, func() error { return h.NeighSet(entry(mac, want)) })
			}
		}
	}
	for _, m := range slices.Sorted(maps.Keys(uni)) {
		if _, ok := n.fdb[m]; ok {
			continue
		}
		for _, ip := range uni[m] {
			rn.do("delete", label("fdb", m, ip), dev, func() error { return h.NeighDel(entry(macs[m], ip)) })
		}
		// The guest is no longer behind the tunnel: gone, or moved onto this node. Forget
		// what the bridge learned about it on the tunnel port, or the bridge would keep
		// sending its frames into the tunnel until the entry ages out (300 s) or the guest
		// happens to send a frame from its new port.
		if learned[m] {
			rn.do("delete", "learned bridge fdb "+m, dev, func() error {
				return h.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: unix.NTF_MASTER, HardwareAddr: macs[m]})
			})
		}
	}
}

// neigh reconciles permanent neighbour entries (remote guest IP -> MAC) on the bridge.
// Entries the kernel resolved itself (not permanent) are left to the kernel.
func (r *Reconciler) neigh(rn *run, n *netPlan, br netlink.Link, entries []netlink.Neigh) {
	h, dev, idx := r.h, br.Attrs().Name, br.Attrs().Index
	have := map[netip.Addr]netlink.Neigh{}
	for _, e := range entries {
		if ip, ok := addrOf(e.IP); ok && e.LinkIndex == idx {
			have[ip] = e
		}
	}
	entry := func(ip netip.Addr, mac net.HardwareAddr) *netlink.Neigh {
		family := unix.AF_INET
		if ip.Is6() {
			family = unix.AF_INET6
		}
		return &netlink.Neigh{LinkIndex: idx, Family: family, State: unix.NUD_PERMANENT, IP: net.IP(ip.AsSlice()), HardwareAddr: mac}
	}
	for _, ip := range slices.SortedFunc(maps.Keys(n.neigh), netip.Addr.Compare) {
		mac := n.neigh[ip]
		cur, ok := have[ip]
		switch {
		case ok && cur.State&unix.NUD_PERMANENT != 0 && bytes.Equal(cur.HardwareAddr, mac):
		case ok && cur.State&unix.NUD_PERMANENT != 0:
			rn.do("replace", fmt.Sprintf("neigh %s→%v (was %v)", ip, mac, cur.HardwareAddr), dev, func() error { return h.NeighSet(entry(ip, mac)) })
		default:
			rn.do("add", fmt.Sprintf("neigh %s→%v", ip, mac), dev, func() error { return h.NeighSet(entry(ip, mac)) })
		}
	}
	for _, ip := range slices.SortedFunc(maps.Keys(have), netip.Addr.Compare) {
		cur := have[ip]
		if _, ok := n.neigh[ip]; !ok && cur.State&unix.NUD_PERMANENT != 0 {
			rn.do("delete", fmt.Sprintf("neigh %s→%v", ip, cur.HardwareAddr), dev, func() error { return h.NeighDel(entry(ip, cur.HardwareAddr)) })
		}
	}
}
