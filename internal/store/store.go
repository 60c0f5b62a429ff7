// Package store keeps the cluster's desired state: nodes, guests and their placements.
// Changes are small commands, replicated with hashicorp/raft (log and stable store in
// bbolt, snapshots on disk) and applied in log order on every management node; readers
// wait on the applied index (blocking queries). Writes go through the raft leader, which
// is the cluster's master.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dvmproject/dvm/internal/version"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// NodeRecord is a node the cluster knows.
type NodeRecord struct {
	Name          string            `json:"name"`
	Address       string            `json:"address"`
	LibvirtURI    string            `json:"libvirt_uri"`
	Accelerator   string            `json:"accelerator"`
	HostCPUs      int               `json:"host_cpus"`
	HostMemory    int64             `json:"host_memory_bytes"`
	CPUs          int               `json:"cpus"`
	MemoryBytes   int64             `json:"memory_bytes"`
	Labels        map[string]string `json:"labels,omitempty"`
	Unschedulable bool              `json:"unschedulable,omitempty"`
	Draining      bool              `json:"draining,omitempty"`
	Maintenance   bool              `json:"maintenance,omitempty"`
	RegisteredAt  time.Time         `json:"registered_at"`
	// LostAt is when the role machine declared the node lost; zero while it is not.
	LostAt time.Time `json:"lost_at,omitzero"`
	// Version is the dvmd version the node's agent last reported; "" for one from
	// before versions were carried.
	Version string `json:"version,omitempty"`
	// Losses counts the times the node was declared lost (OpCountLoss), never lowered.
	// A node that paused its HA guests when its lease lapsed resumes one only if the
	// count is what it was at the pause: a loss in between means the guest was
	// recovered elsewhere, and the paused copy is stale.
	Losses uint64 `json:"losses,omitempty"`
	// Pools are the node's storage pools, kind by name, as it reported them (since
	// 0.3.0).
	Pools map[string]string `json:"pools,omitempty"`
}

// GuestRecord is a guest the cluster keeps, with where it runs and what is wanted of it.
type GuestRecord struct {
	Name          string            `json:"name"`
	UUID          string            `json:"uuid"`
	OS            string            `json:"os"`
	CPUs          int               `json:"cpus"`
	MemoryBytes   int64             `json:"memory_bytes"`
	DiskBytes     int64             `json:"disk_bytes"`
	Image         string            `json:"image,omitempty"`
	Failover      string            `json:"failover"`
	Constraints   map[string]string `json:"constraints,omitempty"`
	Desired       string            `json:"desired"` // running, stopped, deleted
	Node          string            `json:"node,omitempty"`
	TwinNode      string            `json:"twin_node,omitempty"`
	MigrateTo     string            `json:"migrate_to,omitempty"`
	PendingReason string            `json:"pending_reason,omitempty"`
	// Lost marks a guest with failover "none" whose node was lost: it is not restarted,
	// and is reported until an operator deletes or starts it.
	Lost          bool            `json:"lost,omitempty"`
	LastMigration json.RawMessage `json:"last_migration,omitempty"`
	// NICs are the guest's network interfaces; each keeps its MAC for the guest's life,
	// across moves.
	NICs      []NICRecord `json:"nics,omitempty"`
	CreatedAt time.Time   `json:"created_at"`
	// ExtraDiskBytes are the sizes of the guest's disks past its first (since 0.2.0).
	ExtraDiskBytes []int64 `json:"extra_disk_bytes,omitempty"`
	// KeepDisks: the guest is being deleted and its disks are to be kept (since 0.2.0).
	KeepDisks bool `json:"keep_disks,omitempty"`
	// ISO names the image of format iso in the guest's cdrom, until it is ejected
	// (since 0.3.0).
	ISO string `json:"iso,omitempty"`
	// VNCPassword is the password of the guest's VNC display, which it has when this
	// is set (since 0.3.0). Only operators read it (GET /v1/guests/NAME/vnc).
	VNCPassword string `json:"vnc_password,omitempty"`
	// CloudInit, when set, is what the guest's cloud-init NoCloud seed holds past its
	// hostname and addresses (since 0.3.0).
	CloudInit *CloudInitRecord `json:"cloud_init,omitempty"`
	// Pool names the storage pool of the guest's disks; "" for disks_dir (since
	// 0.3.0).
	Pool string `json:"pool,omitempty"`
	// TwinProtected: the standby on TwinNode holds a copy of the guest's disk in step
	// with it (a mirrored twin, on a pool of kind dir), as the guest's node reported;
	// a promotion boots from that copy only then. Cleared with every change of
	// TwinNode and every report that the mirror is not in step (since 0.4.0).
	TwinProtected bool `json:"twin_protected,omitempty"`
}

// CloudInitRecord is a guest's cloud-init seed as asked: SSH keys and user data.
type CloudInitRecord struct {
	SSHKeys  []string `json:"ssh_keys,omitempty"`
	UserData string   `json:"user_data,omitempty"`
}

// NICRecord is one guest network interface.
type NICRecord struct {
	Network string `json:"network"`
	MAC     string `json:"mac"`
	IP      string `json:"ip,omitempty"` // address within the network's CIDR, when dvm assigned one
}

// NetworkRecord is a virtual network: a VXLAN overlay between the nodes whose guests use it.
type NetworkRecord struct {
	Name      string    `json:"name"`
	VNI       uint32    `json:"vni"`
	CIDR      string    `json:"cidr"`
	MTU       int       `json:"mtu,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// EventRecord is something that happened in the cluster and why, for operators:
// "node n2 lost: …", "guest web restarted on n3 in 2.1 s".
type EventRecord struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Node   string    `json:"node,omitempty"`
	Guest  string    `json:"guest,omitempty"`
	Detail string    `json:"detail"`
	// Token names the API token whose request this event records (a write); empty
	// for what the cluster did by itself.
	Token string `json:"token,omitempty"`
}

// TokenRecord is an API token: its name, scope and the SHA-256 of its secret. The
// secret itself is never stored; it is shown once, when the token is made. A revoked
// token stays as a record (RevokedAt set) so that `vmctl token ls` and the refusal of
// its secret can say so.
type TokenRecord struct {
	Name      string    `json:"name"`
	Scope     string    `json:"scope"`
	Hash      string    `json:"hash"` // hex SHA-256 of the secret
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"` // the token that made it
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

// ImageRecord is an image guests are made from: files in the cluster's images
// directory (shared storage, the same path on every node), IMAGES_DIR/NAME/disk.FORMAT,
// or IMAGES_DIR/NAME/{kernel,initrd,cmdline} for a kernel image.
// An image is written as importing before its bytes arrive and becomes ready only
// once they are all written, synced and verified against their checksum; only a
// ready image makes guests.
type ImageRecord struct {
	Name   string `json:"name"`
	Format string `json:"format"` // qcow2, raw, iso or kernel
	// SizeBytes is the file's size; VirtualBytes the disk it holds (a qcow2's virtual
	// size; a raw or iso image's own size). Both 0 while importing.
	SizeBytes    int64     `json:"size_bytes"`
	VirtualBytes int64     `json:"virtual_bytes"`
	SHA256       string    `json:"sha256,omitempty"` // hex; set once ready
	State        string    `json:"state"`            // importing or ready
	CreatedAt    time.Time `json:"created_at"`
	CreatedBy    string    `json:"created_by,omitempty"` // the token that imported it
}

// Image states.
const (
	ImageImporting = "importing"
	ImageReady     = "ready"
)

// MaxEvents is how many events the cluster keeps; older ones are dropped.
const MaxEvents = 2000

// Desired states of a guest.
const (
	DesiredRunning = "running"
	DesiredStopped = "stopped"
	DesiredDeleted = "deleted"
)

// Op is a kind of command.
type Op string

const (
	OpPutNode     Op = "put_node"
	OpDeleteNode  Op = "delete_node"
	OpPutGuest    Op = "put_guest"
	OpDeleteGuest Op = "delete_guest"
	OpSetMeta     Op = "set_meta"
	OpPutNetwork  Op = "put_network"
	OpDelNetwork  Op = "delete_network"
	OpEvent       Op = "event"
	OpPutToken    Op = "put_token"
	OpSetAdoption Op = "set_adoption"
	// OpCountLoss raises the named node's Losses by one.
	OpCountLoss   Op = "count_loss"
	OpPutImage    Op = "put_image"
	OpDeleteImage Op = "delete_image"
)

// Command is one change. Commands are applied in order and must be deterministic: the
// same commands give the same state on every node that applies them.
type Command struct {
	Op Op `json:"op"`
	// Version is the dvmd version that wrote the command (Apply sets it); entries
	// written before versions were carried have none.
	Version string         `json:"v,omitempty"`
	Node    *NodeRecord    `json:"node,omitempty"`
	Guest   *GuestRecord   `json:"guest,omitempty"`
	Name    string         `json:"name,omitempty"` // for deletes
	Meta    *Meta          `json:"meta,omitempty"`
	Net     *NetworkRecord `json:"network,omitempty"`
	Event   *EventRecord   `json:"event,omitempty"`
	Token   *TokenRecord   `json:"token,omitempty"`
	// Adoption is set_adoption's record.
	Adoption *Adoption `json:"adoption,omitempty"`
	// Image is put_image's record.
	Image *ImageRecord `json:"image,omitempty"`
}

// Adoption is the cluster taking in the guests its nodes run, after its state was
// restored from a snapshot onto a new management group (vmctl cluster snapshot
// restore). The snapshot says where each guest was placed when it was taken; since
// then guests may have moved, stopped or been fenced. So, until every node of the
// restored state has reported what it runs (its running guests are then adopted
// where they run) or has been declared lost, the master starts, places and moves
// nothing: a guest is never started on the node the snapshot names while another
// node may still run it.
type Adoption struct {
	RestoredAt time.Time `json:"restored_at"`
	// The snapshot restored: the index it was taken at, when, and by which dvmd.
	SnapshotIndex   uint64    `json:"snapshot_index"`
	SnapshotTakenAt time.Time `json:"snapshot_taken_at"`
	SnapshotVersion string    `json:"snapshot_version"`
	// Awaiting are the nodes not yet heard from, sorted.
	Awaiting []string `json:"awaiting"`
	// Deadline is when nodes still awaited are declared lost, if they hold no lease.
	Deadline time.Time `json:"deadline"`
	// DoneAt is when the last awaited node reported or was declared lost; zero while
	// the cluster is adopting.
	DoneAt time.Time `json:"done_at,omitzero"`
}

// Adopting says whether the cluster is still waiting for nodes to report after a
// restore.
func (a *Adoption) Adopting() bool { return a != nil && a.DoneAt.IsZero() }

// ErrNotLeader: this node is not the master; the write must go to the leader.
var ErrNotLeader = errors.New("not the master")

// Store is the replicated cluster state as this node has applied it.
type Store struct {
	mu      sync.RWMutex
	index   uint64
	nodes   map[string]*NodeRecord
	guests  map[string]*GuestRecord
	nets    map[string]*NetworkRecord
	images  map[string]*ImageRecord
	events  []EventRecord
	tokens  map[string]*TokenRecord // by name
	byHash  map[string]string       // secret hash -> token name
	meta    Meta
	adopt   *Adoption
	changed chan struct{} // closed and replaced on every apply
	// placementWrites counts the entries applied that changed a node or a guest,
	// and the states loaded.
	placementWrites uint64

	// halt is why this replica stopped applying the log; nil while it applies.
	halt atomic.Pointer[HaltError]
	// peerVersion says which dvmd version a replica of the group runs ("" when it
	// cannot tell), for the writes of newer ops; nil does not check.
	peerVersion func(node string) string

	gmu      sync.Mutex // guards r and guard, which Reform and Rejoin replace
	r        *raft.Raft
	guard    *guard
	conf     atomic.Pointer[raft.Configuration]
	stop     chan struct{}
	stopOnce sync.Once
	closers  []func() error

	// What Reform and Rejoin need to stop and start raft again.
	reformMu sync.Mutex
	rc       *raft.Config
	logs     *raftboltdb.BoltStore
	snaps    raft.SnapshotStore
	trans    raft.Transport
	newTrans func() (raft.Transport, error)
	dir      string
	epoch    *Epoch
}

// Meta is cluster-wide state that is neither a node nor a guest.
type Meta struct {
	// Generation of the management group: raised when the group is re-formed after it
	// lost its quorum (the seed's scenarios 2 and 3).
	Generation uint64 `json:"generation"`
}

func newState() *Store {
	return &Store{nodes: map[string]*NodeRecord{}, guests: map[string]*GuestRecord{}, nets: map[string]*NetworkRecord{},
		images: map[string]*ImageRecord{}, tokens: map[string]*TokenRecord{}, byHash: map[string]string{}, changed: make(chan struct{})}
}

// applyBatch applies one log entry's commands at index.
func (s *Store) applyBatch(cmds []Command, index uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cmds {
		s.apply(c)
	}
	if slices.ContainsFunc(cmds, func(c Command) bool { return placementOps[c.Op] }) {
		s.placementWrites++
	}
	s.index = index
	close(s.changed)
	s.changed = make(chan struct{})
}

// placementOps are the ops that change where guests are or could go: what the
// scheduler's view is built from.
var placementOps = map[Op]bool{OpCountLoss: true, OpPutNode: true, OpDeleteNode: true, OpPutGuest: true, OpDeleteGuest: true}

// PlacementWrites counts the log entries this replica applied that changed a node or
// a guest, and the states it loaded (Restore, a raft snapshot): while it is the same,
// so are the nodes and guests. A master keeps a view of them up to date with its own
// writes as long as no other write comes between (see internal/master's batch.go).
func (s *Store) PlacementWrites() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.placementWrites
}

func (s *Store) apply(c Command) {
	switch c.Op {
	case OpPutNode:
		n := *c.Node
		s.nodes[n.Name] = &n
	case OpDeleteNode:
		delete(s.nodes, c.Name)
	case OpCountLoss:
		if n, ok := s.nodes[c.Name]; ok {
			cp := *n // records are shared with readers: replaced, never changed in place
			cp.Losses++
			s.nodes[c.Name] = &cp
		}
	case OpPutGuest:
		g := *c.Guest
		if old, ok := s.guests[g.Name]; ok && (old.Node != g.Node || old.TwinNode != g.TwinNode) {
			// A standby's copy was in step with the guest on one node, mirrored to
			// one standby: any move of either starts over (TwinProtected's contract,
			// kept here so that no writer can carry it across a move).
			g.TwinProtected = false
		}
		s.guests[g.Name] = &g
	case OpDeleteGuest:
		delete(s.guests, c.Name)
	case OpSetMeta:
		s.meta = *c.Meta
	case OpPutNetwork:
		n := *c.Net
		s.nets[n.Name] = &n
	case OpDelNetwork:
		delete(s.nets, c.Name)
	case OpPutToken:
		s.putToken(*c.Token)
	case OpPutImage:
		im := *c.Image
		s.images[im.Name] = &im
	case OpDeleteImage:
		delete(s.images, c.Name)
	case OpSetAdoption:
		a := *c.Adoption
		a.Awaiting = slices.Clone(a.Awaiting)
		s.adopt = &a
	case OpEvent:
		e := *c.Event
		e.Seq = 1
		if n := len(s.events); n > 0 {
			e.Seq = s.events[n-1].Seq + 1
		}
		s.events = append(s.events, e)
		// Dropped in bulk, not one by one: each drop copies the events kept, and a
		// busy master writes an event with every write. Only the last MaxEvents are
		// ever shown (kept).
		if len(s.events) >= 2*MaxEvents {
			s.events = append([]EventRecord(nil), s.kept()...)
		}
	}
}

// Apply replicates commands as one log entry and returns its index once this node has
// applied it. Only the leader can write: elsewhere the error is ErrNotLeader.
// A replica that has halted writes nothing, and an op newer than some replica of the
// group runs is refused (see opSince).
func (s *Store) Apply(cmds ...Command) (uint64, error) {
	wait, err := s.Submit(cmds...)
	if err != nil {
		return 0, err
	}
	return wait()
}

// Submit is Apply without the wait: it hands the entry to raft and returns what waits
// for it, which returns what Apply would. Entries submitted one after another are
// committed, and applied, in that order: one is committed only once every entry
// before it is.
func (s *Store) Submit(cmds ...Command) (wait func() (uint64, error), err error) {
	if err := s.Halted(); err != nil {
		return nil, err
	}
	stamped := make([]Command, len(cmds))
	for i, c := range cmds {
		if err := c.check(); err != nil {
			return nil, err
		}
		if err := s.mayWrite(c.Op); err != nil {
			return nil, err
		}
		if what, since := c.fieldsSince(); since != "" {
			if err := s.mayWriteSince(what, since); err != nil {
				return nil, err
			}
		}
		c.Version = version.Version
		stamped[i] = c
	}
	data, err := json.Marshal(stamped)
	if err != nil {
		return nil, err
	}
	f := s.Raft().Apply(data, 10*time.Second)
	return func() (uint64, error) {
		if err := f.Error(); err != nil {
			if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
				return 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
			}
			return 0, fmt.Errorf("replicate state change: %w", err)
		}
		if err, ok := f.Response().(error); ok && err != nil {
			return 0, err
		}
		return f.Index(), nil
	}, nil
}

func (c Command) check() error {
	switch c.Op {
	case OpPutNode:
		if c.Node == nil || c.Node.Name == "" {
			return errors.New("put_node without a node")
		}
	case OpPutGuest:
		if c.Guest == nil || c.Guest.Name == "" {
			return errors.New("put_guest without a guest")
		}
	case OpEvent:
		if c.Event == nil || c.Event.Kind == "" {
			return errors.New("event without a kind")
		}
	case OpPutNetwork:
		if c.Net == nil || c.Net.Name == "" {
			return errors.New("put_network without a network")
		}
	case OpPutToken:
		if c.Token == nil || c.Token.Name == "" || c.Token.Hash == "" {
			return errors.New("put_token without a named token and its hash")
		}
	case OpPutImage:
		if c.Image == nil || c.Image.Name == "" || c.Image.Format == "" || c.Image.State == "" {
			return errors.New("put_image without a named image, its format and state")
		}
	case OpDeleteNode, OpDeleteGuest, OpDelNetwork, OpCountLoss, OpDeleteImage:
		if c.Name == "" {
			return fmt.Errorf("%s without a name", c.Op)
		}
	case OpSetMeta:
		if c.Meta == nil {
			return errors.New("set_meta without meta")
		}
	case OpSetAdoption:
		if c.Adoption == nil {
			return errors.New("set_adoption without an adoption")
		}
	default:
		return fmt.Errorf("unknown command %q", c.Op)
	}
	return nil
}

// MayWriteCommand says whether this group may take c now, its fields included: a
// writer that can do without a newer field asks first.
func (s *Store) MayWriteCommand(c Command) error {
	if err := s.mayWrite(c.Op); err != nil {
		return err
	}
	if what, since := c.fieldsSince(); since != "" {
		return s.mayWriteSince(what, since)
	}
	return nil
}

// MayWrite says whether this group may take op now: nil, or why a replica would
// not apply it (ErrTooOld). A writer that can do without the op asks first.
func (s *Store) MayWrite(op Op) error { return s.mayWrite(op) }

// mayWrite refuses an op that a replica of this group would not apply: one newer
// than the version the replica runs, or than one that does not say.
func (s *Store) mayWrite(op Op) error { return s.mayWriteSince(string(op), opSince[op]) }

// fieldsSince names what of a command is newer than its op (a field added to its
// record since), and the first dvmd version that reads it: a replica of an older
// one would refuse the entry and halt. "" when nothing is.
func (c Command) fieldsSince() (what, since string) {
	if g := c.Guest; c.Op == OpPutGuest && g != nil {
		switch {
		case g.TwinProtected: // the newest first
			return "a twin with its copy in step", "0.4.0"
		case len(g.ExtraDiskBytes) > 0:
			return "a guest with extra disks", "0.3.0"
		case g.KeepDisks:
			return "a guest deleted keeping its disks", "0.3.0"
		case g.ISO != "":
			return "a guest with install media", "0.3.0"
		case g.VNCPassword != "":
			return "a guest with a VNC display", "0.3.0"
		case g.CloudInit != nil:
			return "a guest with a cloud-init seed", "0.3.0"
		case g.Pool != "":
			return "a guest on a storage pool", "0.3.0"
		}
	}
	if n := c.Node; c.Op == OpPutNode && n != nil && len(n.Pools) > 0 {
		return "a node with storage pools", "0.3.0"
	}
	return "", ""
}

// mayWriteSince refuses what (an op, or a command with newer fields) that a replica of
// this group would not apply: it needs dvmd since, and the replica runs an older
// version or one that does not say.
func (s *Store) mayWriteSince(what, since string) error {
	s.mu.RLock()
	peerVersion := s.peerVersion
	s.mu.RUnlock()
	if since == "" || peerVersion == nil {
		return nil
	}
	servers, err := s.Members()
	if err != nil {
		return err
	}
	for _, sv := range servers {
		if sv.ID == s.rc.LocalID {
			continue
		}
		if v := peerVersion(string(sv.ID)); !version.AtLeast(v, since) {
			return fmt.Errorf("%w: %s needs dvmd %s or newer on every management node, and %s runs %s: upgrade it first",
				ErrTooOld, what, since, sv.ID, version.Or(v))
		}
	}
	return nil
}

// ErrTooOld: a replica of the group runs a dvmd too old for a write.
var ErrTooOld = errors.New("a management node runs too old a dvmd")

// SetPeerVersion tells the store how to learn which dvmd version a replica runs (from
// gossip); before it is set, writes of newer ops are not checked.
func (s *Store) SetPeerVersion(f func(node string) string) {
	s.mu.Lock()
	s.peerVersion = f
	s.mu.Unlock()
}

// Adoption returns the last restore's adoption, nil when the state was never restored.
func (s *Store) Adoption() *Adoption {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.adopt == nil {
		return nil
	}
	a := *s.adopt
	a.Awaiting = slices.Clone(a.Awaiting)
	return &a
}

// Meta returns the cluster-wide state.
func (s *Store) Meta() Meta {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.meta
}

// Index is the index of the last applied change.
func (s *Store) Index() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.index
}

// Wait blocks until the index passes after, or ctx ends, and returns the index then.
func (s *Store) Wait(ctx context.Context, after uint64) uint64 {
	for {
		s.mu.RLock()
		idx, ch := s.index, s.changed
		s.mu.RUnlock()
		if idx > after {
			return idx
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return idx
		}
	}
}

// Node returns a copy of a node record.
func (s *Store) Node(name string) (NodeRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n, ok := s.nodes[name]
	if !ok {
		return NodeRecord{}, false
	}
	return *n, true
}

// Guest returns a copy of a guest record.
func (s *Store) Guest(name string) (GuestRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	g, ok := s.guests[name]
	if !ok {
		return GuestRecord{}, false
	}
	return *g, true
}

// Snapshot returns copies of all nodes and guests, sorted by name, and the index they
// were read at.
func (s *Store) Snapshot() ([]NodeRecord, []GuestRecord, uint64) {
	return s.SnapshotWhere(nil)
}

// SnapshotWhere is Snapshot with only the guests keep says (nil: all): it copies and
// sorts those alone. keep is called with the store's lock held and must not call it.
func (s *Store) SnapshotWhere(keep func(*GuestRecord) bool) ([]NodeRecord, []GuestRecord, uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	// Sorting the names and copying each record once is several times faster than
	// sorting the records, which are large: every create and placement reads this.
	nodes := make([]NodeRecord, 0, len(s.nodes))
	for _, name := range sortedKeys(s.nodes) {
		nodes = append(nodes, *s.nodes[name])
	}
	var names []string
	if keep == nil {
		names = sortedKeys(s.guests)
	} else {
		for name, g := range s.guests {
			if keep(g) {
				names = append(names, name)
			}
		}
		slices.Sort(names)
	}
	guests := make([]GuestRecord, 0, len(names))
	for _, name := range names {
		guests = append(guests, *s.guests[name])
	}
	return nodes, guests, s.index
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Networks returns copies of all networks, sorted by name.
func (s *Store) Networks() []NetworkRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]NetworkRecord, 0, len(s.nets))
	for _, n := range s.nets {
		out = append(out, *n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Network returns a copy of one network.
func (s *Store) Network(name string) (NetworkRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n, ok := s.nets[name]
	if !ok {
		return NetworkRecord{}, false
	}
	return *n, true
}

// Images returns copies of all images, sorted by name.
func (s *Store) Images() []ImageRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]ImageRecord, 0, len(s.images))
	for _, name := range sortedKeys(s.images) {
		out = append(out, *s.images[name])
	}
	return out
}

// Image returns a copy of one image.
func (s *Store) Image(name string) (ImageRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	im, ok := s.images[name]
	if !ok {
		return ImageRecord{}, false
	}
	return *im, true
}

// Events returns the events after seq, oldest first.
func (s *Store) Events(after uint64) []EventRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	kept := s.kept()
	i := sort.Search(len(kept), func(i int) bool { return kept[i].Seq > after })
	return append([]EventRecord(nil), kept[i:]...)
}

// kept is the events the cluster keeps: the last MaxEvents. Called with mu held.
func (s *Store) kept() []EventRecord {
	return s.events[max(len(s.events)-MaxEvents, 0):]
}

func (s *Store) putToken(t TokenRecord) {
	if old, ok := s.tokens[t.Name]; ok && s.byHash[old.Hash] == t.Name {
		delete(s.byHash, old.Hash)
	}
	s.tokens[t.Name] = &t
	s.byHash[t.Hash] = t.Name
}

// Tokens returns copies of all API tokens, revoked ones included, sorted by name.
func (s *Store) Tokens() []TokenRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]TokenRecord, 0, len(s.tokens))
	for _, t := range s.tokens {
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Token returns a copy of the API token of that name.
func (s *Store) Token(name string) (TokenRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.tokens[name]
	if !ok {
		return TokenRecord{}, false
	}
	return *t, true
}

// TokenByHash returns a copy of the API token whose secret has this hash.
func (s *Store) TokenByHash(hash string) (TokenRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	name, ok := s.byHash[hash]
	if !ok {
		return TokenRecord{}, false
	}
	return *s.tokens[name], true
}
