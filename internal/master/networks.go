package master

import (
	"context"
	"crypto/rand"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// CreateNetwork validates and records a virtual network. Name and VNI are unique in the
// cluster and CIDRs do not overlap: a guest's address must mean one guest.
func (m *Master) CreateNetwork(req api.CreateNetwork) (api.Network, error) {
	if fe := req.Normalize(); fe != nil {
		return api.Network{}, fe
	}
	p := netip.MustParsePrefix(req.CIDR)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range m.st.Networks() {
		if n.Name == req.Name {
			return api.Network{}, fmt.Errorf("network %q %w: it exists (VNI %d, %s); choose another name or delete it first", req.Name, ErrConflict, n.VNI, n.CIDR)
		}
		if n.VNI == req.VNI {
			return api.Network{}, &api.FieldError{Field: "vni", Msg: fmt.Sprintf("%d is taken by network %q: each network needs its own VNI", req.VNI, n.Name)}
		}
		if other, err := netip.ParsePrefix(n.CIDR); err == nil && other.Overlaps(p) {
			return api.Network{}, &api.FieldError{Field: "cidr", Msg: fmt.Sprintf("%s overlaps %s of network %q: give a range of its own", p, other, n.Name)}
		}
	}
	rec := store.NetworkRecord{Name: req.Name, VNI: req.VNI, CIDR: req.CIDR, MTU: req.MTU, CreatedAt: time.Now().UTC()}
	if _, err := m.st.Apply(store.Command{Op: store.OpPutNetwork, Net: &rec}); err != nil {
		return api.Network{}, err
	}
	m.log.Info("network created", "network", rec.Name, "vni", rec.VNI, "cidr", rec.CIDR)
	return netView(rec, nil), nil
}

// Networks lists every network with the guests attached to it.
func (m *Master) Networks() []api.Network {
	_, guests, _ := m.st.Snapshot()
	users := networkUsers(guests)
	nets := m.st.Networks()
	out := make([]api.Network, 0, len(nets))
	for _, n := range nets {
		out = append(out, netView(n, users[n.Name]))
	}
	return out
}

// Network shows one network.
func (m *Master) Network(name string) (api.Network, error) {
	n, ok := m.st.Network(name)
	if !ok {
		return api.Network{}, fmt.Errorf("network %q %w", name, ErrNotFound)
	}
	_, guests, _ := m.st.Snapshot()
	return netView(n, networkUsers(guests)[name]), nil
}

// DeleteNetwork removes a network no guest uses. A guest being deleted still uses it
// until its node has removed it.
func (m *Master) DeleteNetwork(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.st.Network(name); !ok {
		return fmt.Errorf("network %q %w", name, ErrNotFound)
	}
	_, guests, _ := m.st.Snapshot()
	if users := networkUsers(guests)[name]; len(users) > 0 {
		return fmt.Errorf("network %q is used by guest%s %s: %w; delete those guests first", name, plural(len(users)), strings.Join(users, ", "), ErrConflict)
	}
	if _, err := m.st.Apply(store.Command{Op: store.OpDelNetwork, Name: name}); err != nil {
		return err
	}
	m.log.Info("network deleted", "network", name)
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func netView(n store.NetworkRecord, guests []string) api.Network {
	if guests == nil {
		guests = []string{}
	}
	return api.Network{Name: n.Name, VNI: n.VNI, CIDR: n.CIDR, MTU: n.MTU, Guests: guests, CreatedAt: n.CreatedAt}
}

// networkUsers maps each network to the sorted names of the guests with a NIC on it.
func networkUsers(guests []store.GuestRecord) map[string][]string {
	out := map[string][]string{}
	for _, g := range guests {
		for _, nic := range g.NICs {
			out[nic.Network] = append(out[nic.Network], g.Name)
		}
	}
	for _, v := range out {
		sort.Strings(v)
	}
	return out
}

// nicBook is what NICs the state's guests already have: every MAC in the cluster and
// every address of each network. Built once per batch of creates (it costs a pass over
// the guests), it takes what each create is given, so that the creates of one batch
// never get the same MAC or address. Used with m.mu held, so creates of two batches
// cannot either.
type nicBook struct {
	m    *Master
	macs map[string]bool
	ips  map[string]map[netip.Addr]bool // network -> addresses given
}

func (m *Master) nicBook(guests []store.GuestRecord) *nicBook {
	nb := &nicBook{m: m, macs: map[string]bool{}, ips: map[string]map[netip.Addr]bool{}}
	for _, g := range guests {
		for _, nic := range g.NICs {
			nb.macs[strings.ToLower(nic.MAC)] = true
			if p, err := netip.ParsePrefix(nic.IP); err == nil {
				nb.take(nic.Network, p.Addr())
			}
		}
	}
	return nb
}

func (nb *nicBook) take(network string, ip netip.Addr) {
	if nb.ips[network] == nil {
		nb.ips[network] = map[netip.Addr]bool{}
	}
	nb.ips[network][ip] = true
}

// alloc gives a new guest one NIC per network: a MAC in 52:54:00:xx:xx:xx (QEMU's
// locally administered range) that no other NIC in the cluster has, and the lowest
// free host address of the network's CIDR (the network address, and for IPv4 the
// broadcast address, are never given).
func (nb *nicBook) alloc(networks []string) ([]store.NICRecord, error) {
	if fe := api.ValidateNetworkList(networks); fe != nil {
		return nil, fe
	}
	var out []store.NICRecord
	for _, name := range networks {
		n, ok := nb.m.st.Network(name)
		if !ok {
			return nil, &api.FieldError{Field: "networks", Msg: fmt.Sprintf("network %q does not exist: create it with `vmctl net create %s --vni N --cidr CIDR`, or see `vmctl net ls`", name, name)}
		}
		p, err := netip.ParsePrefix(n.CIDR)
		if err != nil {
			return nil, fmt.Errorf("network %q has a bad CIDR %q in the state: %w", name, n.CIDR, err)
		}
		ip, ok := freeAddr(p, nb.ips[name])
		if !ok {
			return nil, fmt.Errorf("network %q (%s) has no free address: %w; delete a guest on it or make a larger network", name, p, ErrConflict)
		}
		nb.take(name, ip)
		mac, err := newMAC(nb.macs)
		if err != nil {
			return nil, err
		}
		nb.macs[mac] = true
		out = append(out, store.NICRecord{Network: name, MAC: mac, IP: netip.PrefixFrom(ip, p.Bits()).String()})
	}
	return out, nil
}

// freeAddr is the lowest host address of p not in used.
func freeAddr(p netip.Prefix, used map[netip.Addr]bool) (netip.Addr, bool) {
	var last netip.Addr // IPv4 broadcast
	if p.Addr().Is4() {
		b := p.Addr().As4()
		host := uint32(1)<<(32-p.Bits()) - 1
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
		last = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	// Bounded: a network with more guests than this is not what dvm is for.
	const maxScan = 1 << 20
	a := p.Addr().Next()
	for i := 0; i < maxScan && a.IsValid() && p.Contains(a) && a != last; i++ {
		if !used[a] {
			return a, true
		}
		a = a.Next()
	}
	return netip.Addr{}, false
}

// newMAC draws a MAC 52:54:00:xx:xx:xx not in used.
func newMAC(used map[string]bool) (string, error) {
	for try := 0; try < 1000; try++ {
		n, err := rand.Int(rand.Reader, big.NewInt(1<<24))
		if err != nil {
			return "", err
		}
		v := n.Int64()
		if v == 0 {
			continue
		}
		mac := fmt.Sprintf("52:54:00:%02x:%02x:%02x", byte(v>>16), byte(v>>8), byte(v))
		if !used[mac] {
			return mac, nil
		}
	}
	return "", fmt.Errorf("no free MAC in 52:54:00:xx:xx:xx after 1000 draws: %w", ErrConflict)
}

func nicViews(nics []store.NICRecord) []api.NIC {
	if len(nics) == 0 {
		return nil
	}
	out := make([]api.NIC, len(nics))
	for i, n := range nics {
		out[i] = api.NIC{Network: n.Network, MAC: n.MAC, IP: n.IP}
	}
	return out
}

// addNetworks fills in the network part of node's assignment: the NICs of its guests,
// the networks they (and incoming migrations and twins) need, the VTEPs of the other
// nodes with guests on those networks, and where every other guest NIC on them lives.
// A guest's NIC lives on the guest's node (store.GuestRecord.Node) until a migration
// has finished: the assignment that moves the guest moves its entries on every node.
func (m *Master) addNetworks(a *api.Assignment, node string, nodes []store.NodeRecord, guests []store.GuestRecord) {
	nets := map[string]store.NetworkRecord{}
	for _, n := range m.st.Networks() {
		nets[n.Name] = n
	}
	byGuest := map[string][]store.NICRecord{}
	for _, g := range guests {
		if len(g.NICs) > 0 {
			byGuest[g.Name] = g.NICs
		}
	}
	for i := range a.Guests {
		for _, nic := range byGuest[a.Guests[i].Name] {
			a.Guests[i].NICs = append(a.Guests[i].NICs, api.AssignedNIC{Network: nic.Network, VNI: nets[nic.Network].VNI, MAC: nic.MAC, IP: nic.IP})
		}
	}
	// Networks this node carries, and which nodes hold guests on each network.
	here := map[string]bool{}
	holders := map[string]map[string]bool{} // network -> nodes
	hold := func(net, n string) {
		if n == "" {
			return
		}
		if holders[net] == nil {
			holders[net] = map[string]bool{}
		}
		holders[net][n] = true
	}
	for _, g := range guests {
		if g.Desired == store.DesiredDeleted && g.Node != node {
			continue
		}
		for _, nic := range g.NICs {
			if _, ok := nets[nic.Network]; !ok {
				continue
			}
			hold(nic.Network, g.Node)
			hold(nic.Network, g.MigrateTo)
			hold(nic.Network, g.TwinNode)
			if g.Node == node || g.MigrateTo == node || g.TwinNode == node {
				here[nic.Network] = true
			}
		}
	}
	if len(here) == 0 {
		return
	}
	vteps := map[string]string{}
	for _, n := range nodes {
		if v := vtepOf(n.Address); v.IsValid() {
			vteps[n.Name] = v.String()
		}
	}
	na := &api.NetAssignment{Networks: []api.AssignedNetwork{}, Peers: []string{}, Endpoints: []api.Endpoint{}}
	peers := map[string]bool{}
	for name := range here {
		n := nets[name]
		na.Networks = append(na.Networks, api.AssignedNetwork{Name: n.Name, VNI: n.VNI, CIDR: n.CIDR, MTU: n.MTU})
		for h := range holders[name] {
			if v, ok := vteps[h]; ok && h != node && v != vteps[node] {
				peers[v] = true
			}
		}
	}
	for v := range peers {
		na.Peers = append(na.Peers, v)
	}
	for _, g := range guests {
		if g.Node == "" || g.Node == node || g.Desired == store.DesiredDeleted {
			continue
		}
		v, ok := vteps[g.Node]
		if !ok || v == vteps[node] {
			continue
		}
		for _, nic := range g.NICs {
			if !here[nic.Network] {
				continue
			}
			ip := ""
			if p, err := netip.ParsePrefix(nic.IP); err == nil {
				ip = p.Addr().String()
			}
			na.Endpoints = append(na.Endpoints, api.Endpoint{Network: nic.Network, Guest: g.Name, MAC: nic.MAC, IP: ip, Node: g.Node, VTEP: v})
		}
	}
	sort.Slice(na.Networks, func(i, j int) bool { return na.Networks[i].VNI < na.Networks[j].VNI })
	sort.Strings(na.Peers)
	sort.Slice(na.Endpoints, func(i, j int) bool {
		a, b := na.Endpoints[i], na.Endpoints[j]
		if a.Network != b.Network {
			return a.Network < b.Network
		}
		return a.MAC < b.MAC
	})
	a.Net = na
}

// vtepOf is the tunnel address of a node: the host of its advertised host:port
// address, resolved if it is a name. Invalid when it cannot be had.
func vtepOf(address string) netip.Addr {
	host := hostOf(address)
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap()
	}
	if host == "" {
		return netip.Addr{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return netip.Addr{}
	}
	return addrs[0].Unmap()
}

func (h *handler) listNetworks(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.m.Networks())
}

func (h *handler) createNetwork(w http.ResponseWriter, r *http.Request) {
	var req api.CreateNetwork
	if err := decode(r, &req); err != nil {
		fail(w, err)
		return
	}
	n, err := h.m.CreateNetwork(req)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, n)
}

func (h *handler) getNetwork(w http.ResponseWriter, r *http.Request) {
	n, err := h.m.Network(r.PathValue("name"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, n)
}

func (h *handler) deleteNetwork(w http.ResponseWriter, r *http.Request) {
	if err := h.m.DeleteNetwork(r.PathValue("name")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
