package api

import (
	"fmt"
	"net/netip"
	"time"
)

// MaxVNI is the largest VXLAN network identifier (24 bits); VNI 0 is not used.
const MaxVNI = 1<<24 - 1

// MaxNetworksPerGuest bounds the NICs of one guest: PCI slots and the guest's patience
// run out long before, and a longer list is a mistake.
const MaxNetworksPerGuest = 8

// Network is a virtual network as the API shows it: GET /v1/networks, /v1/networks/{name}.
type Network struct {
	Name      string    `json:"name"`
	VNI       uint32    `json:"vni"`
	CIDR      string    `json:"cidr"`
	MTU       int       `json:"mtu,omitempty"` // 0: each node derives it from its underlay (1450 on a 1500 IPv4 underlay)
	Guests    []string  `json:"guests"`        // guests with a NIC on it, sorted
	CreatedAt time.Time `json:"created_at"`
}

// CreateNetwork is the body of POST /v1/networks.
type CreateNetwork struct {
	Name string `json:"name"`
	VNI  uint32 `json:"vni"`
	CIDR string `json:"cidr"`
	MTU  int    `json:"mtu,omitempty"`
}

// NIC is one guest network interface. The MAC (and the address, when dvm assigned
// one) stays with the guest for its life, across migration and restart elsewhere.
type NIC struct {
	Network string `json:"network"`
	MAC     string `json:"mac"`
	IP      string `json:"ip,omitempty"` // ADDR/PREFIX inside the network's CIDR
}

// AssignedNIC is a NIC of an assigned guest, with what its node needs to plug it in.
type AssignedNIC struct {
	Network string `json:"network"`
	VNI     uint32 `json:"vni"`
	MAC     string `json:"mac"`
	IP      string `json:"ip,omitempty"` // ADDR/PREFIX
}

// NetAssignment is what a node needs to wire its guests' networks (netplane.Desired
// without the node's own tunnel address, which the node knows itself).
type NetAssignment struct {
	// Networks are the networks of the node's guests, incoming migrations and twins.
	Networks []AssignedNetwork `json:"networks"`
	// Peers are the VTEPs of the other nodes holding guests on those networks.
	Peers []string `json:"peers"`
	// Endpoints are the NICs on those networks of guests on other nodes.
	Endpoints []Endpoint `json:"endpoints"`
}

// AssignedNetwork is one network a node must carry.
type AssignedNetwork struct {
	Name string `json:"name"`
	VNI  uint32 `json:"vni"`
	CIDR string `json:"cidr"`
	MTU  int    `json:"mtu,omitempty"`
}

// Endpoint is a guest NIC on another node: where its MAC (and address) lives now.
type Endpoint struct {
	Network string `json:"network"`
	Guest   string `json:"guest"`
	MAC     string `json:"mac"`
	IP      string `json:"ip,omitempty"` // address without prefix length
	Node    string `json:"node"`
	VTEP    string `json:"vtep"` // tunnel address of Node
}

// Normalize validates a create request and puts its CIDR in canonical form. It returns
// the first wrong field; nothing changes in the cluster for a request that fails here.
// Uniqueness (name, VNI, overlapping CIDRs) is the master's check, against the state.
func (c *CreateNetwork) Normalize() *FieldError {
	if e := ValidateName("name", c.Name); e != nil {
		return e
	}
	if c.VNI < 1 || c.VNI > MaxVNI {
		return fieldErr("vni", "%d is out of range: give a VXLAN network identifier from 1 to %d", c.VNI, MaxVNI)
	}
	p, fe := ParseNetworkCIDR(c.CIDR)
	if fe != nil {
		return fe
	}
	c.CIDR = p.String()
	minMTU := 68
	if p.Addr().Is6() {
		minMTU = 1280 // IPv6 needs at least this on every link
	}
	if c.MTU != 0 && (c.MTU < minMTU || c.MTU > 9000) {
		return fieldErr("mtu", "%d is out of range: give %d to 9000, or leave it out to fit the nodes' underlay (1450 on a 1500 IPv4 underlay)", c.MTU, minMTU)
	}
	return nil
}

// ParseNetworkCIDR reads a network's address range: an IPv4 or IPv6 prefix in canonical
// form (no host bits set), with room for at least two guests.
func ParseNetworkCIDR(s string) (netip.Prefix, *FieldError) {
	if s == "" {
		return netip.Prefix{}, fieldErr("cidr", "is empty: give the guests' address range, such as 192.168.42.0/24 or fd42::/64")
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fieldErr("cidr", "%q is not an IPv4 or IPv6 prefix: write it as 192.168.42.0/24 or fd42::/64", s)
	}
	if p.Addr().Zone() != "" || p.Addr().Is4In6() {
		return netip.Prefix{}, fieldErr("cidr", "%q: give a plain IPv4 or IPv6 prefix, without zone or mapped form", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fieldErr("cidr", "%q has host bits set: write the network's prefix, %s", s, p.Masked())
	}
	if (p.Addr().Is4() && p.Bits() > 30) || (p.Addr().Is6() && p.Bits() > 126) {
		return netip.Prefix{}, fieldErr("cidr", "%s is too small for two guests: give /30 or larger (IPv6: /126 or larger)", p)
	}
	if p.Addr().IsLoopback() || p.Addr().IsMulticast() || p.Addr().IsUnspecified() {
		return netip.Prefix{}, fieldErr("cidr", "%s is not a range guests can use: give a private range such as 192.168.42.0/24", p)
	}
	return p, nil
}

// ValidateNetworkList checks the networks of a guest create request: names, no
// repeats, at most MaxNetworksPerGuest. Whether they exist is the master's check.
func ValidateNetworkList(nets []string) *FieldError {
	if len(nets) > MaxNetworksPerGuest {
		return fieldErr("networks", "%d networks: a guest has at most %d NICs", len(nets), MaxNetworksPerGuest)
	}
	seen := map[string]bool{}
	for _, n := range nets {
		if e := ValidateName("networks", n); e != nil {
			return e
		}
		if seen[n] {
			return fieldErr("networks", "%q is given twice: a guest has one NIC per network", n)
		}
		seen[n] = true
	}
	return nil
}

// String is the NIC as one word for tables: NETWORK=MAC/IP.
func (n NIC) String() string {
	s := n.Network + "=" + n.MAC
	if n.IP != "" {
		s += fmt.Sprintf(" (%s)", n.IP)
	}
	return s
}
