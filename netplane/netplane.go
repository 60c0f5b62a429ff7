// Package netplane reconciles a node's guest networks with netlink: one Linux bridge and
// one VXLAN device per network, and the forwarding entries that make the VXLAN overlay a
// unicast, flannel-style overlay (no multicast, no learning on the tunnel).
//
// netplane decides no policy and knows no HTTP. Its caller (the node agent) computes a
// Desired from cluster state — which networks this node's guests need, where the other
// nodes' tunnel endpoints (VTEPs) are, and where every guest NIC on another node lives —
// and calls Reconcile whenever that changes. Reconcile makes the kernel match Desired and
// reports what it changed; calling it again with the same Desired changes nothing.
//
// A guest NIC that moved (migration, restart elsewhere, twin promotion) keeps its MAC;
// the next Reconcile on every node replaces the FDB entry of that MAC with one pointing at
// the guest's new node, so peers reach it without waiting for any timeout.
//
// Ownership: netplane touches only links whose names are its own (Options.Prefix followed
// by "br" or "vx" and a VNI, see BridgeName and VXLANName). Every other link, and every
// entry on other links, is left alone.
package netplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// DefaultPrefix names devices when Options.Prefix is empty: bridge "dvmbr42", vxlan "dvmvx42".
const DefaultPrefix = "dvm"

// VXLANPort is the IANA VXLAN UDP port every node listens and sends on.
const VXLANPort = 4789

// MaxVNI is the largest VXLAN network identifier (24 bits). VNI 0 is not used.
const MaxVNI = 1<<24 - 1

// Encapsulation overhead of VXLAN: outer Ethernet 14 + outer IP + UDP 8 + VXLAN 8.
// The guest-facing MTU is the underlay MTU minus this, so guest frames never fragment.
const (
	OverheadIPv4 = 50 // outer IPv4 header 20 bytes
	OverheadIPv6 = 70 // outer IPv6 header 40 bytes
)

// maxPrefixLen keeps prefix + "br" + 8 digits of VNI within IFNAMSIZ-1 = 15 characters.
const maxPrefixLen = 15 - 2 - 8

// Network is one virtual network (one VXLAN segment) a guest on this node is attached to.
type Network struct {
	Name string       // cluster name of the network, used in messages only
	VNI  uint32       // 1..MaxVNI, unique per cluster; names the devices
	CIDR netip.Prefix // guest addresses; endpoint IPs must lie inside it
	MTU  int          // guest-facing MTU; 0 = derive: underlay MTU - OverheadIPv4/OverheadIPv6
}

// Endpoint is a guest NIC somewhere in the cluster, on a node other than this one.
type Endpoint struct {
	Network string           // Network.Name the NIC is attached to
	MAC     net.HardwareAddr // the NIC's MAC; it stays with the guest across moves
	IP      netip.Addr       // the guest's address in the network; zero Addr = not known
	VTEP    netip.Addr       // tunnel address of the node the guest runs on now
}

// Desired is everything one node needs to know to wire its guests' networks.
type Desired struct {
	LocalVTEP netip.Addr   // this node's tunnel address on the cluster network
	Underlay  string       // underlay link name (MTU, vxlan binding); "" = the link holding LocalVTEP, or by route to the peers when that is loopback
	Networks  []Network    // networks this node's guests need; others with our prefix are removed
	Peers     []netip.Addr // other nodes' VTEPs: flood list (all-zero FDB entries) for broadcast, unknown unicast, multicast
	Endpoints []Endpoint   // guest NICs on OTHER nodes: static FDB (MAC -> VTEP) and neighbour (IP -> MAC) entries
}

// Options configure a Reconciler.
type Options struct {
	// Prefix of every device name netplane creates, owns and may delete: up to 5 lower-case
	// letters or digits; "" = DefaultPrefix. Two reconcilers in one namespace need
	// different prefixes (and different VNIs: the kernel allows one VXLAN device per VNI
	// and port).
	Prefix string
	// NetnsPath is the network namespace to act in, e.g. "/proc/PID/ns/net" or
	// "/run/netns/NAME"; "" = the namespace of the thread calling NewReconciler.
	NetnsPath string
}

// ErrInvalid marks a Desired or Options that cannot be applied; nothing was changed.
var ErrInvalid = errors.New("netplane: invalid input")

// OpError is a failed netlink operation: it names the operation, its object and the device.
type OpError struct {
	Op     string // "add", "delete", "replace", "set", "list", …
	Object string // what was operated on, e.g. "fdb 52:54:00:12:34:56→10.77.0.12", "mtu 1450", "vxlan (vni 42)"
	Device string // the link, e.g. "dvmvx42"
	Err    error  // the kernel's answer
}

func (e *OpError) Error() string {
	return fmt.Sprintf("netplane: %s %s on %s: %v", e.Op, e.Object, e.Device, e.Err)
}

func (e *OpError) Unwrap() error { return e.Err }

// Change is one modification Reconcile made to the kernel.
type Change struct {
	Op     string // "add", "delete", "replace", "set"
	Object string // as in OpError.Object
	Device string
}

func (c Change) String() string { return c.Op + " " + c.Object + " on " + c.Device }

// Changes lists what one Reconcile changed, in the order it changed it. Empty means the
// kernel already matched Desired.
type Changes []Change

func (cs Changes) String() string {
	s := ""
	for i, c := range cs {
		if i > 0 {
			s += "; "
		}
		s += c.String()
	}
	return s
}

// BridgeName is the bridge a guest NIC of network vni attaches to (libvirt
// <interface type='bridge'><source bridge='…'/>), with the DefaultPrefix.
func BridgeName(vni uint32) string { return bridgeName(DefaultPrefix, vni) }

// VXLANName is the VXLAN device of network vni, with the DefaultPrefix.
func VXLANName(vni uint32) string { return vxlanName(DefaultPrefix, vni) }

func bridgeName(prefix string, vni uint32) string {
	return prefix + "br" + strconv.FormatUint(uint64(vni), 10)
}

func vxlanName(prefix string, vni uint32) string {
	return prefix + "vx" + strconv.FormatUint(uint64(vni), 10)
}

// parseOwned reports whether name is one of ours (prefix + "br"|"vx" + canonical VNI),
// and if so its kind ("br" or "vx") and VNI.
func parseOwned(prefix, name string) (kind string, vni uint32, ok bool) {
	if len(name) < len(prefix)+3 || name[:len(prefix)] != prefix {
		return "", 0, false
	}
	kind = name[len(prefix) : len(prefix)+2]
	if kind != "br" && kind != "vx" {
		return "", 0, false
	}
	digits := name[len(prefix)+2:]
	n, err := strconv.ParseUint(digits, 10, 32)
	if err != nil || n == 0 || n > MaxVNI || strconv.FormatUint(n, 10) != digits {
		return "", 0, false
	}
	return kind, uint32(n), true
}
