package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// nftTable is the lab's own nftables table (family bridge: the nodes' traffic
// crosses dvmlab0 as bridged frames). Up creates it, Down deletes it, and Cut and
// Heal replace its rules as a whole from the recorded cuts.
const nftTable = "dvmlab"

// bridgeAliasPrefix marks dvmlab0 with the DIR of the lab that owns it, so that an
// error can say which lab to bring down.
const bridgeAliasPrefix = "dvm-lab "

// createNetwork makes dvmlab0 with 10.77.0.1/24 and the empty nftables table.
func createNetwork(dir string) error {
	if err := CreateBridge(Bridge, BridgeAddr, bridgeAliasPrefix+dir, labMAC(0, 1)); err != nil {
		return err
	}
	return applyCuts(nil)
}

// CreateBridge makes bridge name, up, with addr/24 and the alias that marks whose it
// is, and a fixed MAC (see labMAC).
func CreateBridge(name, addr, alias string, mac net.HardwareAddr) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", name, err)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	if err := netlink.LinkSetAlias(link, alias); err != nil {
		return fmt.Errorf("bridge %s: set alias: %w", name, err)
	}
	a, _ := netlink.ParseAddr(addr + "/24")
	if err := netlink.AddrAdd(link, a); err != nil {
		return fmt.Errorf("bridge %s: add %s: %w", name, a, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bridge %s: up: %w", name, err)
	}
	return nil
}

// removeNetwork deletes what createNetwork and addVeth made for the lab in dir;
// missing parts are fine. A bridge that another lab owns (two `lab up` at once:
// the second one fails) is left alone, with its veths and nftables table.
func removeNetwork(dir string, nodes []nodeState) error {
	link, err := netlink.LinkByName(Bridge)
	if err == nil && link.Attrs().Alias != bridgeAliasPrefix+dir {
		return nil
	}
	var errs []error
	for _, n := range nodes {
		if err := delVeth(n.Index); err != nil {
			errs = append(errs, err)
		}
	}
	if link != nil {
		if err := netlink.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", Bridge, err))
		}
	}
	if nftHasTable() {
		if out, err := exec.Command("nft", "delete", "table", "bridge", nftTable).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("nft delete table bridge %s: %v: %s", nftTable, err, strings.TrimSpace(string(out))))
		}
	}
	return errors.Join(errs...)
}

// BridgeOwner returns the DIR of the lab whose bridge dvmlab0 exists on this
// machine; ok is false when there is no bridge (or no lab's mark on it).
func BridgeOwner() (dir string, ok bool) {
	link, err := netlink.LinkByName(Bridge)
	if err != nil {
		return "", false
	}
	dir, ok = strings.CutPrefix(link.Attrs().Alias, bridgeAliasPrefix)
	return dir, ok && dir != ""
}

// addVeth makes the veth pair of node k: dvmlab-nK on the bridge, eth0 in the
// network namespace of pid (the node script configures it).
func addVeth(k, pid int) error {
	return AddVeth(Bridge, vethName(k), pid, labMAC(1, k), labMAC(0, 10+k))
}

// AddVeth makes a veth pair: veth, up, on bridge, and eth0 in the network namespace
// of pid, with fixed MACs (see labMAC).
func AddVeth(bridge, veth string, pid int, vethMAC, eth0MAC net.HardwareAddr) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	v := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: veth, MasterIndex: br.Attrs().Index, HardwareAddr: vethMAC},
		PeerName:         "eth0",
		PeerNamespace:    netlink.NsPid(pid),
		PeerHardwareAddr: eth0MAC,
	}
	if err := netlink.LinkAdd(v); err != nil {
		return fmt.Errorf("create veth %s: %w", veth, err)
	}
	if err := netlink.LinkSetUp(v); err != nil {
		return fmt.Errorf("veth %s up: %w", veth, err)
	}
	return nil
}

// labMAC is a fixed, locally administered MAC address (02:77:00:00:hi:lo). A node's
// eth0 keeps its MAC across Restart, as a rebooted host keeps its NIC's: with a new
// one, the root namespace and the other nodes would send to the old MAC from their
// neighbour caches until the entries expire (half a minute and more). The bridge's
// MAC is set for the same reason: otherwise it follows its ports.
func labMAC(hi, lo int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x77, 0, 0, byte(hi), byte(lo)}
}

// delVeth deletes node k's veth pair if it still exists.
func delVeth(k int) error { return DelVeth(vethName(k)) }

// DelVeth deletes the veth pair called name if it still exists.
func DelVeth(name string) error {
	link, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("veth %s: %w", name, err)
	}
	// The pair goes away by itself when the node's namespace dies, which may happen
	// between the lookup and the delete: ENODEV is that, not a failure.
	if err := netlink.LinkDel(link); err != nil && !errors.As(err, &nf) && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("delete veth %s: %w", name, err)
	}
	return nil
}

func nftHasTable() bool {
	return exec.Command("nft", "list", "table", "bridge", nftTable).Run() == nil
}

// nftRules renders the lab's table for cuts. A cut from every peer drops all frames
// in or out of the node's veth (ARP too: a pulled cable); a cut from some peers
// drops IPv4 between the node's address and theirs, both ways.
func nftRules(cuts []Cut) string {
	var b strings.Builder
	// "table …" then "delete table …" makes the replacement atomic and idempotent.
	fmt.Fprintf(&b, "table bridge %s\ndelete table bridge %s\n", nftTable, nftTable)
	var fwd, in, out []string
	for _, c := range cuts {
		k := nodeIndex(c.Node)
		if len(c.From) == 0 {
			v := vethName(k)
			fwd = append(fwd, fmt.Sprintf("iifname %q drop", v), fmt.Sprintf("oifname %q drop", v))
			in = append(in, fmt.Sprintf("iifname %q drop", v))
			out = append(out, fmt.Sprintf("oifname %q drop", v))
			continue
		}
		for _, p := range c.From {
			a, z := nodeAddr(k), nodeAddr(nodeIndex(p))
			fwd = append(fwd, fmt.Sprintf("ip saddr %s ip daddr %s drop", a, z), fmt.Sprintf("ip saddr %s ip daddr %s drop", z, a))
		}
	}
	fmt.Fprintf(&b, "table bridge %s {\n", nftTable)
	for _, ch := range []struct {
		name  string
		rules []string
	}{{"forward", fwd}, {"input", in}, {"output", out}} {
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook %s priority 0; policy accept;\n", ch.name, ch.name)
		for _, r := range ch.rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// applyCuts replaces the lab's nftables table with the rules for cuts.
func applyCuts(cuts []Cut) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(nftRules(cuts))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft table bridge %s: %v: %s", nftTable, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// nodeIndex is K of "nK"; 0 if name is no node name.
func nodeIndex(name string) int {
	var k int
	if _, err := fmt.Sscanf(name, "n%d", &k); err != nil || nodeName(k) != name {
		return 0
	}
	return k
}

// Cut drops node's traffic to the nodes in from, both ways; with from empty, to
// every peer and to the root namespace (vmctl, virsh on the host). Cuts add up
// until Heal.
func (l *Lab) Cut(node string, from []string) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if !l.st.Up {
		return fmt.Errorf("lab in %s is down", l.dir)
	}
	if _, err := l.find(node); err != nil {
		return err
	}
	seen := map[string]bool{}
	var peers []string
	for _, p := range from {
		if _, err := l.find(p); err != nil {
			return fmt.Errorf("cut %s --from %s: %w", node, p, err)
		}
		if p == node {
			return fmt.Errorf("cut %s --from %s: a node cannot be cut from itself", node, p)
		}
		if !seen[p] {
			seen[p] = true
			peers = append(peers, p)
		}
	}
	cuts := append(slices.Clone(l.st.Cuts), Cut{Node: node, From: peers})
	if err := applyCuts(cuts); err != nil {
		return err
	}
	l.st.Cuts = cuts
	if len(peers) == 0 {
		l.logf("node %s cut from every peer", node)
	} else {
		l.logf("node %s cut from %s", node, strings.Join(peers, ", "))
	}
	return l.save()
}

// Heal undoes the cuts that involve node (every cut when node is ""), so that its
// traffic flows again.
func (l *Lab) Heal(node string) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if !l.st.Up {
		return fmt.Errorf("lab in %s is down", l.dir)
	}
	if node != "" {
		if _, err := l.find(node); err != nil {
			return err
		}
	}
	cuts := healCuts(l.st.Cuts, node)
	if err := applyCuts(cuts); err != nil {
		return err
	}
	l.st.Cuts = cuts
	if node == "" {
		l.logf("every cut healed")
	} else {
		l.logf("node %s healed", node)
	}
	return l.save()
}

// healCuts is cuts without what involves node (nothing, when node is "").
func healCuts(cuts []Cut, node string) []Cut {
	var out []Cut
	if node == "" {
		return nil
	}
	for _, c := range cuts {
		if c.Node == node {
			continue
		}
		if len(c.From) > 0 && slices.Contains(c.From, node) {
			// Keep the rest of this cut; a cut left with no peer is gone, not "all".
			rest := slices.DeleteFunc(slices.Clone(c.From), func(p string) bool { return p == node })
			if len(rest) == 0 {
				continue
			}
			c.From = rest
		}
		out = append(out, c)
	}
	return out
}

// Cuts lists the cuts in force.
func (l *Lab) Cuts() []Cut {
	l.mu.Lock()
	l.reload()
	defer l.mu.Unlock()
	return slices.Clone(l.st.Cuts)
}

// DialFrom opens a TCP connection to address from inside node's network namespace,
// as a process of that node would: what tests use to see what a cut does.
func (l *Lab) DialFrom(ctx context.Context, node, address string) (net.Conn, error) {
	l.mu.Lock()
	l.reload()
	n, err := l.find(node)
	if err != nil {
		l.mu.Unlock()
		return nil, err
	}
	pid, start := n.PID, n.PIDStart
	l.mu.Unlock()
	if !alive(pid, start) {
		return nil, fmt.Errorf("node %s is not running", node)
	}
	return dialIn(ctx, pid, address)
}

// dialIn dials address over TCP from the network namespace of pid, giving up after
// 2 seconds at most.
func dialIn(ctx context.Context, pid int, address string) (net.Conn, error) {
	target, err := netns.GetFromPid(pid)
	if err != nil {
		return nil, fmt.Errorf("network namespace of PID %d: %w", pid, err)
	}
	defer target.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The socket belongs to the namespace of the thread that creates it. The
		// thread goes back to its own namespace after; if it cannot, it stays locked
		// and ends with this goroutine, so no other goroutine runs in the node.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			ch <- result{nil, err}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", address)
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
