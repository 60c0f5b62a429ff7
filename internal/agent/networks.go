package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/netplane"
)

// NetConfig is a node's guest networking.
type NetConfig struct {
	// Disabled leaves the kernel alone: networks stay cluster objects and guests still get
	// their NICs (bridge, MAC, address) in their definitions, but no bridge, VXLAN device
	// or entry is made. For `dvmd dev`: libvirt's test driver, one process, no root.
	Disabled bool
	// VTEP is this node's tunnel address; invalid = the host of Config.Address (resolved
	// if it is a name), which is what the master gives the other nodes as this node's VTEP.
	VTEP netip.Addr
	// Underlay is the link the overlay runs over; "" = the link holding VTEP.
	Underlay string
	// NetnsPath is the network namespace to wire; "" = the agent's own (tests use a
	// private one).
	NetnsPath string
}

// netAgent is the agent's guest networking state; its maps are guarded by Agent.mu.
type netAgent struct {
	np      *netplane.Reconciler // opened on first use; only reconcileLoop's goroutine touches it
	mtu     map[uint32]int       // VNI -> MTU of the bridge after the last reconcile
	errs    map[string]string    // guest -> network error of the last reconcile
	lastErr string               // last error logged, so a lasting failure is logged once
}

// reconcileNetworks makes this node's bridges, VXLAN devices and forwarding entries
// match the assignment (see netplane), before guests are defined or started on it: a
// guest's NIC needs its bridge. Failures become the error of every guest whose network
// they concern, shown in the node's status, and are logged.
func (a *Agent) reconcileNetworks(asg api.Assignment) {
	na := &a.net
	nets := map[uint32]api.AssignedNetwork{}
	if asg.Net != nil {
		for _, n := range asg.Net.Networks {
			nets[n.VNI] = n
		}
	}
	if a.cfg.Net.Disabled {
		mtu := map[uint32]int{}
		for vni, n := range nets {
			mtu[vni] = n.MTU
		}
		a.mu.Lock()
		na.mtu, na.errs = mtu, nil
		a.mu.Unlock()
		return
	}
	d, err := a.desired(asg)
	if err == nil && na.np == nil {
		if na.np, err = netplane.NewReconciler(netplane.Options{NetnsPath: a.cfg.Net.NetnsPath}); err != nil {
			na.np = nil
		}
	}
	var changes netplane.Changes
	if err == nil {
		changes, err = na.np.Reconcile(d)
	}
	if len(changes) > 0 {
		a.cfg.Log.Info("networks reconciled", "changes", changes.String())
	}
	mtu := map[uint32]int{}
	if na.np != nil {
		for vni := range nets {
			if m, e := na.np.BridgeMTU(vni); e == nil {
				mtu[vni] = m
			}
		}
	}
	errs := guestNetErrors(asg, err)
	a.mu.Lock()
	na.mtu, na.errs = mtu, errs
	logIt := err != nil && err.Error() != na.lastErr
	if err == nil {
		na.lastErr = ""
	} else {
		na.lastErr = err.Error()
	}
	a.mu.Unlock()
	if logIt {
		a.cfg.Log.Warn("reconcile networks", "err", err)
	}
}

// desired turns the network part of an assignment into netplane's input.
func (a *Agent) desired(asg api.Assignment) (netplane.Desired, error) {
	if asg.Net == nil || len(asg.Net.Networks) == 0 {
		return netplane.Desired{}, nil // no guest here needs a network: remove ours
	}
	local := a.cfg.Net.VTEP
	if !local.IsValid() {
		var err error
		if local, err = VTEPOf(a.cfg.Address); err != nil {
			return netplane.Desired{}, fmt.Errorf("node %s has no tunnel address: %w", a.cfg.Name, err)
		}
	}
	d := netplane.Desired{LocalVTEP: local, Underlay: a.cfg.Net.Underlay}
	for _, n := range asg.Net.Networks {
		p, err := netip.ParsePrefix(n.CIDR)
		if err != nil {
			return netplane.Desired{}, fmt.Errorf("network %q: CIDR %q from the master: %w", n.Name, n.CIDR, err)
		}
		d.Networks = append(d.Networks, netplane.Network{Name: n.Name, VNI: n.VNI, CIDR: p, MTU: n.MTU})
	}
	for _, s := range asg.Net.Peers {
		p, err := netip.ParseAddr(s)
		if err != nil {
			return netplane.Desired{}, fmt.Errorf("peer VTEP %q from the master: %w", s, err)
		}
		// The master knows this node by its advertised address; a node reached under
		// another address of its own must not flood to itself.
		if p.Unmap() != local.Unmap() {
			d.Peers = append(d.Peers, p)
		}
	}
	for _, e := range asg.Net.Endpoints {
		mac, err := net.ParseMAC(e.MAC)
		if err != nil {
			return netplane.Desired{}, fmt.Errorf("guest %s: MAC %q from the master: %w", e.Guest, e.MAC, err)
		}
		vtep, err := netip.ParseAddr(e.VTEP)
		if err != nil {
			return netplane.Desired{}, fmt.Errorf("guest %s: VTEP %q of node %s from the master: %w", e.Guest, e.VTEP, e.Node, err)
		}
		if vtep.Unmap() == local.Unmap() {
			continue
		}
		ep := netplane.Endpoint{Network: e.Network, MAC: mac, VTEP: vtep}
		if e.IP != "" {
			if ep.IP, err = netip.ParseAddr(e.IP); err != nil {
				return netplane.Desired{}, fmt.Errorf("guest %s: address %q from the master: %w", e.Guest, e.IP, err)
			}
		}
		d.Endpoints = append(d.Endpoints, ep)
	}
	return d, nil
}

// guestNetErrors gives each guest of the assignment the part of err that concerns its
// networks: an *netplane.OpError on a device of one of them, or any error that is not
// about one device (invalid input, a failed dump, no tunnel address).
func guestNetErrors(asg api.Assignment, err error) map[string]string {
	if err == nil {
		return nil
	}
	var all []string
	byVNI := map[uint32][]string{}
	for _, e := range flatten(err) {
		var op *netplane.OpError
		if errors.As(e, &op) {
			if vni, ok := deviceVNI(op.Device); ok {
				byVNI[vni] = append(byVNI[vni], e.Error())
				continue
			}
		}
		all = append(all, e.Error())
	}
	out := map[string]string{}
	for _, g := range asg.Guests {
		var msgs []string
		for _, nic := range g.NICs {
			msgs = append(msgs, byVNI[nic.VNI]...)
		}
		if len(g.NICs) > 0 {
			msgs = append(msgs, all...)
		}
		if len(msgs) > 0 {
			sort.Strings(msgs)
			out[g.Name] = "network: " + strings.Join(dedup(msgs), "; ")
		}
	}
	return out
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func dedup(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// deviceVNI reads the VNI from one of netplane's device names (dvmbr42, dvmvx42).
func deviceVNI(dev string) (uint32, bool) {
	for _, kind := range []string{"br", "vx"} {
		if rest, ok := strings.CutPrefix(dev, netplane.DefaultPrefix+kind); ok {
			var v uint32
			if _, err := fmt.Sscanf(rest, "%d", &v); err == nil && fmt.Sprint(v) == rest {
				return v, true
			}
		}
	}
	return 0, false
}

// attachNICs puts the guest's NICs into its spec: each on its network's bridge
// (netplane.BridgeName), with its MAC and the bridge's MTU. A direct-boot image gets the
// first NIC's address on its kernel command line as dvm.ip=ADDR/PREFIX, which the lab
// guest's init (and any image that wants it) reads to configure eth0.
func (a *Agent) attachNICs(spec *hypervisor.GuestSpec, g api.AssignedGuest) {
	a.mu.Lock()
	mtu := a.net.mtu
	a.mu.Unlock()
	for _, nic := range g.NICs {
		spec.NICs = append(spec.NICs, hypervisor.NIC{Bridge: netplane.BridgeName(nic.VNI), MAC: nic.MAC, MTU: mtu[nic.VNI]})
	}
	if spec.Boot != nil && len(g.NICs) > 0 && g.NICs[0].IP != "" && !strings.Contains(spec.Boot.Cmdline, "dvm.ip=") {
		spec.Boot.Cmdline = strings.TrimSpace(spec.Boot.Cmdline + " dvm.ip=" + g.NICs[0].IP)
	}
}

// guestError is what the node reports as a guest's error: its last failed step and its
// networks' failure. a.mu is held.
func (a *Agent) guestError(name string) string {
	e, ne := a.errs[name], a.net.errs[name]
	switch {
	case e == "":
		return ne
	case ne == "":
		return e
	}
	return e + "; " + ne
}

// VTEPOf is the tunnel address of a node advertised at address (host:port, or a host):
// the host, resolved if it is a name. The master derives every node's VTEP the same way.
func VTEPOf(address string) (netip.Addr, error) {
	host := address
	if h, _, err := net.SplitHostPort(address); err == nil {
		host = h
	}
	if host == "" {
		return netip.Addr{}, fmt.Errorf("advertised address %q has no host: set advertise to this node's address on the cluster network", address)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.Unmap(), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("advertised host %q does not resolve (%v): set advertise to this node's IP address on the cluster network", host, err)
	}
	return addrs[0].Unmap(), nil
}
