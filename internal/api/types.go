// Package api is dvm's HTTP/JSON API: the types on the wire, their validation, the
// master's server and the client that vmctl and agents use.
package api

import (
	"strings"
	"time"
)

// Guest states as the API reports them. A guest's state joins what the cluster wants
// (its desired state) with what its node last reported.
const (
	GuestPending   = "pending"  // not placed: no node fits (see pending_reason)
	GuestStarting  = "starting" // placed and wanted running, not running yet
	GuestRunning   = "running"
	GuestStopping  = "stopping"
	GuestStopped   = "stopped"
	GuestMigrating = "migrating" // a live migration to migrate_to is in progress
	GuestDeleting  = "deleting"
	GuestFailed    = "failed"  // its node could not carry out the last step (see error)
	GuestUnknown   = "unknown" // its node has not reported for a while
	GuestLost      = "lost"    // its node was lost and its policy is none: not restarted
)

// FencedHold is the error an agent reports for an HA guest it holds back (a start
// refused, a guest paused) while its node holds no lease: not a failure, since the
// agent starts or resumes the guest once the lease is back (or destroys it if the
// node was declared lost meanwhile). The master shows such a guest starting, with
// this as its error.
const FencedHold = "stopped by fencing: the node lost its lease"

// HoldPrefix starts the error an agent reports for an HA guest whose start it holds
// back until the cluster vouches for it (an assignment read since the lease came back,
// one from the master the lease names): like FencedHold, not a failure.
const HoldPrefix = "held: "

// IsHold says whether a guest's reported error is an agent's hold (FencedHold or
// HoldPrefix), which the master shows as starting rather than failed.
func IsHold(err string) bool { return err == FencedHold || strings.HasPrefix(err, HoldPrefix) }

// Node states.
const (
	NodeReady       = "ready"
	NodeUnreachable = "unreachable" // no status report within the node timeout
	NodeLost        = "lost"        // declared lost by the role machine; its guests were recovered
)

// Failover policies.
const (
	FailoverNone    = "none"
	FailoverRestart = "restart"
	FailoverTwin    = "twin"
)

// Guest is a guest as the API shows it.
type Guest struct {
	Name          string            `json:"name"`
	UUID          string            `json:"uuid"`
	Node          string            `json:"node"`
	State         string            `json:"state"`
	OS            string            `json:"os"`
	CPUs          int               `json:"cpus"`
	MemoryBytes   int64             `json:"memory_bytes"`
	DiskBytes     int64             `json:"disk_bytes"`
	Image         string            `json:"image,omitempty"`
	Failover      string            `json:"failover"`
	Constraints   map[string]string `json:"constraints,omitempty"`
	Desired       string            `json:"desired"` // "running" or "stopped"
	MigrateTo     string            `json:"migrate_to,omitempty"`
	PendingReason string            `json:"pending_reason,omitempty"`
	Error         string            `json:"error,omitempty"`
	LastMigration *Migration        `json:"last_migration,omitempty"`
	// Warnings come with a create: admitted below the HA reserve, a twin sharing a zone.
	Warnings  []string  `json:"warnings,omitempty"`
	NICs      []NIC     `json:"nics,omitempty"`
	CreatedAt time.Time `json:"created_at"`

	// ExtraDiskBytes are the sizes of the guest's disks past its first.
	ExtraDiskBytes []int64 `json:"extra_disk_bytes,omitempty"`
	// ISO is the image (of format iso) in the guest's cdrom, until it is ejected
	// (POST /v1/guests/NAME/eject).
	ISO string `json:"iso,omitempty"`
	// VNC is the guest's VNC display, when it has one: where it listens, once its node
	// said. Its password is only in GET /v1/guests/NAME/vnc.
	VNC *GuestVNC `json:"vnc,omitempty"`
	// CloudInit is what the guest's cloud-init seed holds past its hostname and
	// addresses: the SSH keys, and how long its user data is (which may hold secrets,
	// and is not shown).
	CloudInit *GuestCloudInit `json:"cloud_init,omitempty"`
	// Pool is the storage pool of the guest's disks ("": disks_dir).
	Pool string `json:"pool,omitempty"`
	// TwinNode is the node that holds a twin guest's standby ("" while it has none).
	TwinNode string `json:"twin_node,omitempty"`
	// Protection says whether a twin guest survives the loss of its node now.
	Protection *Protection `json:"protection,omitempty"`
}

// Twin protection states (Protection.State). A twin on shared storage is protected as
// soon as its standby is placed: both nodes reach the one disk. A mirrored twin (its
// disk on a node's own storage, pool kind dir) is protected only while the standby's
// copy is in step with every write the guest's disk acknowledged.
const (
	ProtectionProtected   = "protected"   // the standby can take over with nothing lost
	ProtectionSyncing     = "syncing"     // the standby's copy is being filled: Done of Total bytes
	ProtectionUnprotected = "unprotected" // the guest would not survive its node: Reason says why
)

// Protection is a twin guest's protection, as its node reports it (ObservedGuest)
// and the API shows it (Guest).
type Protection struct {
	State string `json:"state"`
	// Node is the standby's node the state is about (a report about an earlier
	// standby says nothing about the one placed since).
	Node   string `json:"node,omitempty"`
	Done   uint64 `json:"done_bytes,omitempty"`
	Total  uint64 `json:"total_bytes,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// MirrorSince is the first dvmd version that runs mirrored twins: agents that serve a
// standby's copy and mirror a guest's disk to it, and report both; masters that read
// those reports. Nothing of a mirror is sent to or asked of an older dvmd.
const MirrorSince = "0.4.0"

// GuestCloudInit is a guest's cloud-init seed as the API shows it.
type GuestCloudInit struct {
	SSHKeys       []string `json:"ssh_keys,omitempty"`
	UserDataBytes int      `json:"user_data_bytes,omitempty"`
}

// CloudInit asks for a cloud-init NoCloud seed, for guests whose OS profile runs
// cloud-init (linux, freebsd): a cdrom labelled cidata holding the guest's hostname
// (its name), its addresses (from its networks), SSHKeys for the image's default user,
// and UserData as given.
type CloudInit struct {
	SSHKeys  []string `json:"ssh_keys,omitempty"`
	UserData string   `json:"user_data,omitempty"`
}

// GuestVNC is where a guest's VNC display listens: ADDRESS:PORT on its node ("" until
// the guest runs and its node reported the port libvirt chose).
type GuestVNC struct {
	Display string `json:"display,omitempty"`
}

// VNC is GET /v1/guests/NAME/vnc (operator scope): how to reach a guest's VNC display.
type VNC struct {
	Guest    string `json:"guest"`
	Node     string `json:"node,omitempty"`
	Display  string `json:"display,omitempty"` // ADDRESS:PORT, "" until known
	Password string `json:"password"`
}

// CreateGuest is the body of POST /v1/guests.
type CreateGuest struct {
	Name        string            `json:"name"`
	OS          string            `json:"os,omitempty"`
	CPUs        int               `json:"cpus"`
	MemoryBytes int64             `json:"memory_bytes"`
	DiskBytes   int64             `json:"disk_bytes,omitempty"`
	Image       string            `json:"image,omitempty"`
	Failover    string            `json:"failover,omitempty"`
	Constraints map[string]string `json:"constraints,omitempty"`
	// Start is whether the guest starts once placed; nil means yes.
	Start *bool `json:"start,omitempty"`
	// Networks get one NIC each, in this order (eth0 first), with a MAC and an address.
	Networks []string `json:"networks,omitempty"`

	// DiskBytes, with a disk image, is the size of the disk made from it: 0 for the
	// image's virtual size, never less. ExtraDiskBytes are the sizes of more disks,
	// made empty.
	ExtraDiskBytes []int64 `json:"extra_disk_bytes,omitempty"`
	// ISO names an image of format iso: install media in a read-only cdrom, booted
	// before the guest's first disk (made empty), until it is ejected.
	ISO string `json:"iso,omitempty"`
	// VNC gives the guest a VNC display, on its node's management address (or
	// loopback), with a password the master makes.
	VNC bool `json:"vnc,omitempty"`
	// CloudInit, when set, gives the guest a cloud-init NoCloud seed.
	CloudInit *CloudInit `json:"cloud_init,omitempty"`
	// Pool names the storage pool (of the nodes' dvmd.conf) that holds the guest's
	// disks; "" for disks_dir, as before pools. Since PoolsSince.
	Pool string `json:"pool,omitempty"`
}

// Node is a node as the API shows it.
type Node struct {
	Name                 string            `json:"name"`
	State                string            `json:"state"`
	Address              string            `json:"address"`
	LibvirtURI           string            `json:"libvirt_uri"`
	Accelerator          string            `json:"accelerator"`
	HostCPUs             int               `json:"host_cpus"`
	HostMemoryBytes      int64             `json:"host_memory_bytes"`
	CPUs                 int               `json:"cpus"`           // pool share
	MemoryBytes          int64             `json:"memory_bytes"`   // pool share
	AllocatedCPUs        int               `json:"allocated_cpus"` // held: its guests, twins it holds room for, moves toward it
	AllocatedMemoryBytes int64             `json:"allocated_memory_bytes"`
	Guests               int               `json:"guests"`
	Labels               map[string]string `json:"labels,omitempty"`
	// Pools are the node's storage pools, kind by name (dir, shared, rbd).
	Pools       map[string]string `json:"pools,omitempty"`
	Schedulable bool              `json:"schedulable"`
	Draining    bool              `json:"draining,omitempty"`
	Maintenance bool              `json:"maintenance,omitempty"`
	LastSeen    time.Time         `json:"last_seen"`
	// Version is the dvmd version the node's agent last reported ("" before it did,
	// or for a dvmd from before versions were carried).
	Version string `json:"version,omitempty"`
}

// NodeStatus is what an agent reports: PUT /v1/nodes/{name}/status.
type NodeStatus struct {
	Address         string            `json:"address"`
	LibvirtURI      string            `json:"libvirt_uri"` // as peers reach it, for migration
	Accelerator     string            `json:"accelerator"`
	HostCPUs        int               `json:"host_cpus"`
	HostMemoryBytes int64             `json:"host_memory_bytes"`
	CPUs            int               `json:"cpus"`
	MemoryBytes     int64             `json:"memory_bytes"`
	Labels          map[string]string `json:"labels,omitempty"`
	Guests          []ObservedGuest   `json:"guests"`
	// Pools are the node's storage pools, kind by name (dir, shared, rbd). Sent only
	// to a master of PoolsSince or newer (an older one refuses a field it does not
	// know).
	Pools map[string]string `json:"pools,omitempty"`
	// Version is the agent's dvmd version. It travels in the request's Dvm-Version
	// header, not in the body, which a master of an earlier release would refuse
	// for a field it does not know.
	Version string `json:"-"`
}

// ObservedGuest is one guest as its node sees it.
type ObservedGuest struct {
	Name  string `json:"name"`
	State string `json:"state"`           // hypervisor state: running, stopped, …
	Error string `json:"error,omitempty"` // the last reconcile step that failed
	// VNC is where its VNC display listens, ADDRESS:PORT, while it runs with one.
	VNC string `json:"vnc,omitempty"`
	// Standby is where this node serves its copy of a mirrored twin's disk
	// (ADDRESS:PORT, NBD over TLS), while it holds the guest's standby.
	Standby string `json:"standby,omitempty"`
	// Protection is a mirrored twin's protection as the guest's node sees it.
	Protection *Protection `json:"protection,omitempty"`
}

// Assignment is what the master wants of a node: GET /v1/nodes/{name}/assignment.
type Assignment struct {
	Index  uint64          `json:"index"`
	Guests []AssignedGuest `json:"guests"`
	Net    *NetAssignment  `json:"net,omitempty"` // nil: no guest of the node uses a network
	// Master wrote it, in management Generation (the raft group it leads): a node
	// starts restart and twin guests only from an assignment of the master that
	// holds its lease, in that lease's generation.
	Master     string `json:"master,omitempty"`
	Generation uint64 `json:"generation,omitempty"`
	// NodeLost: the replicated state records the node lost (its guests recovered
	// elsewhere); it starts none of its restart and twin guests until readmitted.
	NodeLost bool `json:"node_lost,omitempty"`
	// Version is the master's dvmd version. An agent refuses an assignment with a
	// field it does not know (a newer master's) and names this version.
	Version string `json:"version,omitempty"`
	// Losses is how many times the cluster declared the node lost
	// (store.NodeRecord.Losses), and LossesCounted says that this master counts them
	// (a master's own replica may lack losses from while a replica of its group ran
	// a dvmd from before the count: upgrade only with no node lost). A node resumes an HA guest it paused
	// when its lease lapsed only from an assignment that counts losses, with the
	// count it held at the pause: any loss since means the guest was recovered
	// elsewhere. Sent only to agents of LossesSince or newer.
	Losses        uint64 `json:"losses,omitempty"`
	LossesCounted bool   `json:"losses_counted,omitempty"`
}

// PoolsSince is the first dvmd version that knows storage pools: agents that report
// them and make disks in them, masters that read them.
const PoolsSince = "0.3.0"

// LossesSince is the first dvmd version whose agents read Assignment.Losses.
const LossesSince = "0.3.0"

// AssignedGuest is one guest a node must hold.
type AssignedGuest struct {
	Name        string `json:"name"`
	UUID        string `json:"uuid"`
	OS          string `json:"os"`
	CPUs        int    `json:"cpus"`
	MemoryBytes int64  `json:"memory_bytes"`
	DiskBytes   int64  `json:"disk_bytes"`
	Image       string `json:"image,omitempty"`
	Failover    string `json:"failover"`
	Desired     string `json:"desired"` // running, stopped, deleted
	// MigrateTo, when set, asks the node to live-migrate the guest to that node.
	MigrateTo         string `json:"migrate_to,omitempty"`
	MigrateLibvirtURI string `json:"migrate_libvirt_uri,omitempty"`
	MigrateAddress    string `json:"migrate_address,omitempty"` // host of the destination's migration stream
	// Incoming marks a guest that is migrating to this node: the node must leave its
	// domain alone until the migration ends.
	Incoming bool          `json:"incoming,omitempty"`
	NICs     []AssignedNIC `json:"nics,omitempty"`
	// Twin marks the guest's twin: defined on this node, not started, until the guest's
	// node is lost and the twin is promoted. On the wire it keeps its first name,
	// standby, which agents of earlier releases read during a rolling upgrade.
	Twin bool `json:"standby,omitempty"`
	// ExtraDiskBytes are the sizes of the guest's disks past its first (empty ones).
	ExtraDiskBytes []int64 `json:"extra_disk_bytes,omitempty"`
	// KeepDisks, on a guest to delete, keeps its disks (vmctl vm delete --keep-disks).
	KeepDisks bool `json:"keep_disks,omitempty"`
	// ISO names the image (of format iso) in the guest's cdrom; a node ejects the
	// media of a guest defined with it when it is gone from here.
	ISO string `json:"iso,omitempty"`
	// VNCPassword, when set, gives the guest a VNC display with this password, on the
	// node's management address (or loopback).
	VNCPassword string `json:"vnc_password,omitempty"`
	// CloudInit, when set, has the node make the guest's NoCloud seed and put it in a
	// second cdrom.
	CloudInit *CloudInit `json:"cloud_init,omitempty"`
	// Pool names the storage pool of the node's dvmd.conf that holds the guest's
	// disks; "" for disks_dir.
	Pool string `json:"pool,omitempty"`
	// Mirrored marks a twin whose disk is on a node's own storage: its standby is a
	// copy kept in step by a synchronous mirror, not a definition over a shared disk.
	// On the standby's node (Twin): serve the copy. On the guest's node: mirror to
	// Mirror; after a promotion, the disk is the copy this node served.
	Mirrored bool `json:"mirrored,omitempty"`
	// Mirror is where the guest's node mirrors a mirrored twin's disk: nil while the
	// guest has no standby.
	Mirror *MirrorTarget `json:"mirror,omitempty"`
	// Evict marks a guest this node still has although the cluster placed it elsewhere
	// (it was recovered while this node was lost): the node stops and undefines it,
	// and leaves its disk alone, which the guest's new node uses.
	Evict bool `json:"evict,omitempty"`
}

// MirrorTarget is a mirrored twin's standby, as the guest's node is told of it.
type MirrorTarget struct {
	Node string `json:"node"`
	// Address is ADDRESS:PORT of its NBD export (TLS); "" while the master has not
	// heard it from the standby's node: a mirror already running to that node goes on.
	Address string `json:"address"`
	// Protected: the cluster records the standby's copy as in step, so a promotion
	// would boot from it. A node whose mirror broke while this holds pauses the guest
	// until the cluster records otherwise: a write acknowledged in between would be
	// missing from a copy the cluster may still boot from.
	Protected bool `json:"protected,omitempty"`
}

// Migration is a finished (or failed) live migration.
type Migration struct {
	From            string    `json:"from"`
	To              string    `json:"to"`
	OK              bool      `json:"ok"`
	Error           string    `json:"error,omitempty"`
	TotalSeconds    float64   `json:"total_seconds"`
	DowntimeSeconds float64   `json:"downtime_seconds"`
	Bytes           uint64    `json:"bytes"`
	FinishedAt      time.Time `json:"finished_at"`
}

// MigrateRequest is the body of POST /v1/guests/{name}/migrate.
type MigrateRequest struct {
	Node string `json:"node"`
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
	// Field names the request field that was wrong, for validation errors.
	Field string `json:"field,omitempty"`
}

// Health is the body of GET /v1/health.
type Health struct {
	Status  string `json:"status"` // HealthOK or HealthHalted
	Node    string `json:"node"`
	Role    string `json:"role"`
	Version string `json:"version,omitempty"` // the node's dvmd
	// Error says what is wrong when Status is not ok.
	Error string `json:"error,omitempty"`
}

// Health statuses.
const (
	HealthOK = "ok"
	// HealthHalted: the node's replica of the cluster state met a log entry or
	// snapshot its dvmd cannot read and applies nothing more (Error says which).
	HealthHalted = "halted"
)

// Why is the answer of GET /v1/guests/{name}/why: how the scheduler sees the guest now.
type Why struct {
	Guest        string         `json:"guest"`
	State        string         `json:"state"`
	Node         string         `json:"node,omitempty"`
	Nodes        int            `json:"nodes"`    // nodes looked at
	Feasible     int            `json:"feasible"` // nodes that could take it now
	Reasons      map[string]int `json:"reasons"`  // rejected nodes per reason
	TwinReasons  map[string]int `json:"twin_reasons,omitempty"`
	Headroom     string         `json:"headroom,omitempty"` // HA admission control's objection
	Summary      string         `json:"summary"`            // "3 nodes: not enough memory; 1 node: draining"
	WouldPlaceOn string         `json:"would_place_on,omitempty"`
	WouldTwinOn  string         `json:"would_twin_on,omitempty"`
}

// JoinRequest is the body of POST /v1/cluster/join: a management node asks to follow
// the replicated state.
type JoinRequest struct {
	Name        string `json:"name"`
	RaftAddress string `json:"raft_address"`
}

// ClusterStatus is GET /v1/cluster: the management group as the master sees it.
type ClusterStatus struct {
	Generation uint64   `json:"generation"`
	Master     string   `json:"master"`
	Acting     bool     `json:"acting"` // the master holds leases from a majority of nodes
	Voters     []string `json:"voters"`
	// RaftVoters are the voters of this node's raft configuration. They follow Voters
	// within a second or so on an acting master; a difference that lasts means the
	// replicated state cannot elect the master the role table expects.
	RaftVoters []string      `json:"raft_voters"`
	Candidates []string      `json:"candidates"` // ranked, best first
	Nodes      []ClusterNode `json:"nodes"`
	// Adoption is the last restore from a snapshot and its adoption of the guests;
	// nil when the state was never restored.
	Adoption *Adoption `json:"adoption,omitempty"`
}

// ClusterNode is one node's role: master, backup, candidate, node, semi-master,
// on-hold or lost.
type ClusterNode struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// LeaseSeconds is what is left of the lease the node granted the master.
	LeaseSeconds float64   `json:"lease_seconds"`
	LostAt       time.Time `json:"lost_at,omitzero"`
}

// Event is one entry of GET /v1/events.
type Event struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Node   string    `json:"node,omitempty"`
	Guest  string    `json:"guest,omitempty"`
	Detail string    `json:"detail"`
	// Token names the API token whose request the event records (kinds "write" and
	// "console").
	Token string `json:"token,omitempty"`
}

// DrainProgress is one line of POST /v1/nodes/{name}/drain's answer (newline-delimited
// JSON): a guest moved or not; the last line has Done set and the totals.
type DrainProgress struct {
	Node  string `json:"node"`
	Guest string `json:"guest,omitempty"`
	To    string `json:"to,omitempty"`
	MoveOutcome
}

// MoveOutcome is what became of one move of a drain or a rebalance, as a line of its
// progress; on the last line (Done), the totals and, for a failure of the whole run, its
// error.
type MoveOutcome struct {
	Status          string  `json:"status,omitempty"` // moved or failed
	Error           string  `json:"error,omitempty"`
	TotalSeconds    float64 `json:"total_seconds,omitempty"`
	DowntimeSeconds float64 `json:"downtime_seconds,omitempty"`
	Done            bool    `json:"done,omitempty"`
	Moved           int     `json:"moved,omitempty"`
	Failed          int     `json:"failed,omitempty"`
}

// Headers of every answer the master gives itself (a forwarding node passes them on):
// which master answered, and the raft generation and term it answered in (the term
// only when it did not change while the request ran, so a write acknowledged with it
// was committed in that term). A checker outside the cluster (vmctl lab faults) uses
// them to tell whether two masters accepted writes at once: raft gives a term at most
// one leader, and a master of an older (generation, term) must not acknowledge a write
// after one of a newer has. On a read they say how new the master was that answered.
const (
	HeaderMaster     = "Dvm-Master"
	HeaderGeneration = "Dvm-Generation"
	HeaderTerm       = "Dvm-Term"
)

// HeaderIndex is the version of a guest's answer (GET /v1/guests/NAME): given back as
// ?index=VERSION&wait=30s, the request is answered once the guest differs from it, or
// after the wait. It is opaque, the same for the same view on any master.
const HeaderIndex = "Dvm-Index"

// HeaderVersion is the dvm version of whoever sent a request or an answer: every
// client (vmctl, agents) names its own, every dvmd its own on every answer (a
// forwarded answer names the master's). A client told "unknown field" or "no such
// endpoint" by an older dvmd says so (see Client); the master records each agent's
// as its node's version.
const HeaderVersion = "Dvm-Version"

// UpgradeCheck answers GET /v1/cluster/upgrade-check?to=VERSION: whether the cluster
// can take the next step of a rolling upgrade now (one more node upgraded), and why
// not.
type UpgradeCheck struct {
	Ready   bool     `json:"ready"`
	Reasons []string `json:"reasons"` // why not, when not ready
	// Oldest and Newest are the versions the nodes run; To, the version asked about.
	Oldest string        `json:"oldest"`
	Newest string        `json:"newest"`
	To     string        `json:"to,omitempty"`
	Master string        `json:"master"`
	Acting bool          `json:"acting"`
	Voters []string      `json:"voters"`
	Nodes  []UpgradeNode `json:"nodes"`
}

// UpgradeNode is one node in an UpgradeCheck.
type UpgradeNode struct {
	Name string `json:"name"`
	// Version is the dvmd its agent last reported (version.Unknown for one from
	// before versions were carried).
	Version string `json:"version"`
	State   string `json:"state"` // ready, unreachable or lost
	Role    string `json:"role"`
	// Draining covers maintenance too: the node is being emptied or kept empty.
	Draining bool `json:"draining,omitempty"`
}
