package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// State is a guest's state as the node sees it, in dvm's words.
type State string

const (
	StateRunning  State = "running"
	StatePaused   State = "paused"
	StateStopped  State = "stopped"
	StateCrashed  State = "crashed"
	StateStopping State = "stopping"
	StateUnknown  State = "unknown"
)

func stateOf(s libvirt.DomainState) State {
	switch s {
	case libvirt.DOMAIN_RUNNING, libvirt.DOMAIN_BLOCKED:
		return StateRunning
	case libvirt.DOMAIN_PAUSED, libvirt.DOMAIN_PMSUSPENDED:
		return StatePaused
	case libvirt.DOMAIN_SHUTOFF:
		return StateStopped
	case libvirt.DOMAIN_CRASHED:
		return StateCrashed
	case libvirt.DOMAIN_SHUTDOWN:
		return StateStopping
	}
	return StateUnknown
}

// ErrNotFound: the node has no dvm guest of that name.
var ErrNotFound = errors.New("no such guest on this node")

// Options say how to open a node.
type Options struct {
	URI string
	// Accelerator is "auto" (detect), "kvm" or "tcg". The test driver is always "test".
	Accelerator string
	// OnError is called with the operation of every failed libvirt call, for metrics.
	OnError func(op string)
}

// Node is one hypervisor reached through libvirt. Its methods are safe for concurrent
// use; libvirt serialises calls on a connection itself.
type Node struct {
	uri    string
	conn   *libvirt.Connect
	accel  Accelerator
	host   Capacity
	events chan Event
	onErr  func(op string)
	cbID   int
	// mirrorTo maps a guest to its mirror's target address (StartMirror), so that
	// StopMirror cuts the connection before it sends QEMU anything.
	mirrorTo sync.Map
}

// Event says a guest's state changed on the node.
type Event struct {
	Guest string
	State State
	// Detail is libvirt's reason, for logs ("destroyed", "crashed", "migrated", …).
	Detail string
}

var eventLoop sync.Once

// startEventLoop runs libvirt's default event loop for the whole process. libvirt wants
// it registered before the first connection that should deliver events.
func startEventLoop() {
	eventLoop.Do(func() {
		if err := libvirt.EventRegisterDefaultImpl(); err != nil {
			panic(fmt.Sprintf("libvirt event loop: %v", err))
		}
		go func() {
			for {
				if err := libvirt.EventRunDefaultImpl(); err != nil {
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	})
}

// Open connects to a hypervisor, reads its capacity and settles its accelerator.
func Open(opts Options) (*Node, error) {
	startEventLoop()
	conn, err := libvirt.NewConnect(opts.URI)
	if err != nil {
		return nil, fmt.Errorf("connect to libvirt at %s: %w", opts.URI, err)
	}
	n := &Node{uri: opts.URI, conn: conn, events: make(chan Event, 256), onErr: opts.OnError}
	if n.onErr == nil {
		n.onErr = func(string) {}
	}
	if err := n.init(opts.Accelerator); err != nil {
		conn.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) init(want string) error {
	info, err := n.conn.GetNodeInfo()
	if err != nil {
		return n.fail("nodeinfo", fmt.Errorf("read host capacity from %s: %w", n.uri, err))
	}
	n.host = Capacity{CPUs: int(info.Cpus), MemoryBytes: int64(info.Memory) << 10}
	capsXML, err := n.conn.GetCapabilities()
	if err != nil {
		return n.fail("capabilities", fmt.Errorf("read capabilities of %s: %w", n.uri, err))
	}
	var caps libvirtxml.Caps
	if err := caps.Unmarshal(capsXML); err != nil {
		return fmt.Errorf("parse capabilities of %s: %w", n.uri, err)
	}
	n.accel, err = chooseAccelerator(domainTypes(&caps), want, strings.HasPrefix(n.uri, "qemu:///"))
	if err != nil {
		return fmt.Errorf("node %s: %w", n.uri, err)
	}
	id, err := n.conn.DomainEventLifecycleRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, ev *libvirt.DomainEventLifecycle) {
		name, err := d.GetName()
		if err != nil {
			return
		}
		st := StateUnknown
		if s, _, err := d.GetState(); err == nil {
			st = stateOf(s)
		} else if ev.Event == libvirt.DOMAIN_EVENT_UNDEFINED {
			st = StateStopped
		}
		select {
		case n.events <- Event{Guest: name, State: st, Detail: ev.String()}:
		default:
			// The consumer is behind: it also lists domains periodically, so a dropped
			// event delays a state change, it does not lose it.
		}
	})
	if err != nil {
		return n.fail("events", fmt.Errorf("register for domain events on %s: %w", n.uri, err))
	}
	n.cbID = id
	return nil
}

func domainTypes(caps *libvirtxml.Caps) map[string]bool {
	types := map[string]bool{}
	for _, g := range caps.Guests {
		for _, d := range g.Arch.Domains {
			// The test driver offers only i686 and its own type; real hosts must offer
			// x86_64 for the type to count.
			if g.Arch.Name == "x86_64" || d.Type == "test" {
				types[d.Type] = true
			}
		}
	}
	return types
}

// chooseAccelerator settles the accelerator from what libvirt offers and the node's
// setting. "auto" takes KVM only where the hypervisor offers it and, on a local
// hypervisor, a probe guest really runs under it.
func chooseAccelerator(types map[string]bool, want string, local bool) (Accelerator, error) {
	if types["test"] {
		return AccelTest, nil
	}
	switch want {
	case "kvm":
		if !types["kvm"] {
			return "", errors.New("accelerator = kvm, but libvirt offers no kvm domains here: use accelerator = tcg or auto")
		}
		return AccelKVM, nil
	case "tcg":
		if !types["qemu"] {
			return "", errors.New("accelerator = tcg, but libvirt offers no qemu (TCG) domains: is qemu-system-x86 installed?")
		}
		return AccelTCG, nil
	case "", "auto":
		if types["kvm"] && (!local || ProbeKVM() == nil) {
			return AccelKVM, nil
		}
		if types["qemu"] {
			return AccelTCG, nil
		}
		return "", errors.New("libvirt offers neither kvm nor qemu domains for x86_64: is qemu-system-x86 installed?")
	}
	return "", fmt.Errorf("unknown accelerator %q: use auto, kvm or tcg", want)
}

func (n *Node) fail(op string, err error) error {
	n.onErr(op)
	return err
}

// Close ends the connection.
func (n *Node) Close() error {
	n.conn.DomainEventDeregister(n.cbID)
	_, err := n.conn.Close()
	return err
}

// URI is the libvirt URI this node was opened with.
func (n *Node) URI() string { return n.uri }

// Accelerator is how this node runs guests.
func (n *Node) Accelerator() Accelerator { return n.accel }

// HostCapacity is the host's whole CPU and memory, before any reservation.
func (n *Node) HostCapacity() Capacity { return n.host }

// Events delivers state changes of guests. One consumer.
func (n *Node) Events() <-chan Event { return n.events }

// Alive says whether the connection to libvirt still works.
func (n *Node) Alive() bool {
	ok, err := n.conn.IsAlive()
	return err == nil && ok
}

func isNoDomain(err error) bool {
	var lv libvirt.Error
	return errors.As(err, &lv) && lv.Code == libvirt.ERR_NO_DOMAIN
}

func (n *Node) lookup(name string) (*libvirt.Domain, error) {
	d, err := n.conn.LookupDomainByName(name)
	if err != nil {
		if isNoDomain(err) {
			return nil, fmt.Errorf("guest %q: %w", name, ErrNotFound)
		}
		return nil, n.fail("lookup", fmt.Errorf("look up guest %q: %w", name, err))
	}
	return d, nil
}

// Define creates or updates the persistent definition of a guest.
func (n *Node) Define(spec GuestSpec) error {
	d, err := BuildDomain(spec, n.accel)
	if err != nil {
		return err
	}
	x, err := d.Marshal()
	if err != nil {
		return fmt.Errorf("guest %q: marshal domain: %w", spec.Name, err)
	}
	dom, err := n.conn.DomainDefineXML(x)
	if err != nil {
		return n.fail("define", fmt.Errorf("define guest %q: %w", spec.Name, err))
	}
	dom.Free()
	return nil
}

// Start boots a defined guest. Starting a running guest is not an error.
func (n *Node) Start(name string) error {
	d, err := n.lookup(name)
	if err != nil {
		return err
	}
	defer d.Free()
	if active, err := d.IsActive(); err == nil && active {
		return nil
	}
	if err := d.Create(); err != nil {
		return n.fail("start", fmt.Errorf("start guest %q: %w", name, err))
	}
	return nil
}

// Shutdown asks the guest to power off (ACPI) and destroys it if it has not stopped when
// timeout passes or ctx ends: a guest that ignores ACPI must not block drain or delete.
func (n *Node) Shutdown(ctx context.Context, name string, timeout time.Duration) error {
	d, err := n.lookup(name)
	if err != nil {
		return err
	}
	defer d.Free()
	if active, err := d.IsActive(); err == nil && !active {
		return nil
	}
	if err := d.Shutdown(); err != nil {
		// Some guests (no ACPI, not yet booted) refuse; fall through to destroy.
		n.onErr("shutdown")
	} else {
		deadline := time.NewTimer(timeout)
		defer deadline.Stop()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
	wait:
		for {
			if active, err := d.IsActive(); err == nil && !active {
				return nil
			}
			select {
			case <-tick.C:
			case <-deadline.C:
				break wait
			case <-ctx.Done():
				break wait
			}
		}
	}
	return n.destroy(d, name)
}

// Destroy stops a guest at once, like pulling its power.
func (n *Node) Destroy(name string) error {
	d, err := n.lookup(name)
	if err != nil {
		return err
	}
	defer d.Free()
	return n.destroy(d, name)
}

func (n *Node) destroy(d *libvirt.Domain, name string) error {
	if active, err := d.IsActive(); err == nil && !active {
		return nil
	}
	if err := d.Destroy(); err != nil {
		if active, aerr := d.IsActive(); aerr == nil && !active {
			return nil // it stopped by itself meanwhile
		}
		return n.fail("destroy", fmt.Errorf("destroy guest %q: %w", name, err))
	}
	return nil
}

// Suspend pauses a running guest's vCPUs. QEMU finishes the guest's disk requests in
// flight before it answers, and libvirt releases the guest's disk locks (virtlockd)
// while it is paused, so a paused guest writes nothing and holds no disk another node
// may start it on. Suspending a paused guest is not an error.
func (n *Node) Suspend(name string) error {
	d, err := n.lookup(name)
	if err != nil {
		return err
	}
	defer d.Free()
	if s, _, err := d.GetState(); err == nil && s == libvirt.DOMAIN_PAUSED {
		return nil
	}
	if err := d.Suspend(); err != nil {
		return n.fail("suspend", fmt.Errorf("pause guest %q: %w", name, err))
	}
	return nil
}

// Resume runs a paused guest again. libvirt takes its disk locks back first and
// refuses the resume if another node's copy of the guest holds them. Resuming a
// running guest is not an error.
func (n *Node) Resume(name string) error {
	d, err := n.lookup(name)
	if err != nil {
		return err
	}
	defer d.Free()
	if s, _, err := d.GetState(); err == nil && s == libvirt.DOMAIN_RUNNING {
		return nil
	}
	if err := d.Resume(); err != nil {
		return n.fail("resume", fmt.Errorf("resume guest %q: %w", name, err))
	}
	return nil
}

// Undefine removes a stopped guest's definition. A running guest is destroyed first.
func (n *Node) Undefine(name string) error {
	d, err := n.lookup(name)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	defer d.Free()
	if err := n.destroy(d, name); err != nil {
		return err
	}
	if err := d.UndefineFlags(libvirt.DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA); err != nil {
		if isNoDomain(err) {
			return nil
		}
		return n.fail("undefine", fmt.Errorf("undefine guest %q: %w", name, err))
	}
	return nil
}

// Guest is a dvm guest found on the node.
type Guest struct {
	Name     string
	UUID     string // the domain's, which is the guest's
	OS       string
	Failover string // from the domain's metadata
	ISO      string // install media in its cdrom, from the domain's metadata
	VNC      bool   // it has a VNC display (VNCDisplay says where)
	State    State
	// PausedByCall: paused by a suspend call (libvirt's reason "user": dvm's fence, its
	// fence guard, or virsh suspend), not by a migration, an I/O error or QEMU itself.
	PausedByCall bool
}

// List returns the dvm guests defined or running on the node; domains without dvm's
// metadata are not dvm's and are not listed.
func (n *Node) List() ([]Guest, error) {
	doms, err := n.conn.ListAllDomains(0)
	if err != nil {
		return nil, n.fail("list", fmt.Errorf("list guests on %s: %w", n.uri, err))
	}
	var out []Guest
	for i := range doms {
		d := &doms[i]
		meta, err := d.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, MetadataNS, 0)
		if err == nil {
			if m, ok := ParseMetadata(meta); ok {
				st, byCall := StateUnknown, false
				if s, reason, err := d.GetState(); err == nil {
					st = stateOf(s)
					byCall = s == libvirt.DOMAIN_PAUSED && reason == int(libvirt.DOMAIN_PAUSED_USER)
				}
				name, _ := d.GetName()
				uuid, _ := d.GetUUIDString()
				out = append(out, Guest{Name: name, UUID: uuid, OS: m.OS, Failover: m.Failover, ISO: m.ISO, VNC: m.VNC, State: st, PausedByCall: byCall})
			}
		}
		d.Free()
	}
	return out, nil
}

// State returns a guest's state.
func (n *Node) State(name string) (State, error) {
	d, err := n.lookup(name)
	if err != nil {
		return StateUnknown, err
	}
	defer d.Free()
	s, _, err := d.GetState()
	if err != nil {
		if isNoDomain(err) {
			return StateUnknown, fmt.Errorf("guest %q: %w", name, ErrNotFound)
		}
		return StateUnknown, n.fail("state", fmt.Errorf("state of guest %q: %w", name, err))
	}
	return stateOf(s), nil
}

// DomainXML returns the live definition of a guest's domain, for tests.
func (n *Node) DomainXML(name string) (string, error) {
	d, err := n.lookup(name)
	if err != nil {
		return "", err
	}
	defer d.Free()
	x, err := d.GetXMLDesc(0)
	if err != nil {
		return "", n.fail("xml", fmt.Errorf("definition of guest %q: %w", name, err))
	}
	return x, nil
}
