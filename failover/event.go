package failover

import (
	"fmt"
	"strings"
	"time"
)

// Event is an input to Machine.Step.
type Event interface{ isEvent() }

// Tick advances the Machine's clock. Time never goes back: an older Now is
// ignored. All timers run on the Now of the latest Tick; other events are
// taken to happen at that time.
type Tick struct{ Now time.Time }

// HandOver asks an acting master about to stop (dvmd's SIGTERM: an upgrade, a
// restart) to give its role to a backup at once rather than leave the nodes to wait
// for its leases to lapse: it stops acting, tells every node, which may then grant
// the successor its lease without waiting, and hands raft's leadership to it.
// Anything else ignores it.
type HandOver struct{}

// Probe is a failure detector result about another node (memberlist's direct
// and indirect probes). Via names the node that reached it for us when the
// direct probe failed; Reachable false means neither worked.
type Probe struct {
	Node      string
	Reachable bool
	Via       string
}

// PoweredOff is the answer of the power fence agent the caller ran for a
// PowerFence: OK when it confirmed Node powered off (or rebooted), else Why it
// failed. Asked is the PowerFence's, given back: the node was off at some moment
// after it.
type PoweredOff struct {
	Node  string
	Asked time.Time
	OK    bool
	Why   string
}

// Health is a node's HealthReport, as gossiped.
type Health struct {
	Node   string
	Report HealthReport
}

// LogPos is where a replica's raft log ends: the generation of the raft group
// it belongs to (its epoch), and the term and index of its last entry. A newer
// epoch is further whatever its terms (it was re-formed from the furthest log of
// its time, and no older group acknowledges writes after that); within one
// epoch, raft's order: the later term, then the higher index.
type LogPos struct {
	Epoch, Term, Index uint64
}

// Less reports whether p is behind q.
func (p LogPos) Less(q LogPos) bool {
	if p.Epoch != q.Epoch {
		return p.Epoch < q.Epoch
	}
	return p.Term < q.Term || p.Term == q.Term && p.Index < q.Index
}

func (p LogPos) String() string { return fmt.Sprintf("%d/%d/%d", p.Epoch, p.Term, p.Index) }

// Replica is what this node's raft replica of the cluster state says of itself:
// the caller feeds it with every Tick on a management-capable node. The machine
// takes raft's leadership from it, compares logs before it votes, and decides what
// raft must do (ReForm, Rejoin, TransferLeadership, SetMembership).
type Replica struct {
	// Epoch is the generation whose raft group the replica belongs to; zero for a
	// fresh replica that has joined none yet.
	Epoch uint64
	// Leader is the raft leader this replica hears from now: "" when there is none
	// or it has gone silent.
	Leader string
	// Term is the replica's raft term.
	Term uint64
	// Log is where its log ends (Log.Epoch is Epoch).
	Log LogPos
	// Voters and Servers (voters and non-voters) are the raft configuration as the
	// replica knows it.
	Voters, Servers []string
	// Lost are the nodes its replicated state records as lost: their guests have
	// been recovered elsewhere in the same write.
	Lost []string
}

// Register adds a host that joined the cluster to the master's role table: a
// candidate when it is management-capable, else a plain node. Other Machines
// ignore it; they learn of the node from the master's view. Registering a known
// node changes nothing.
type Register struct {
	Node    string
	Capable bool
}

// Deregister removes a host that is gone for good from the master's role table,
// on an operator's word: it no longer counts toward majorities nor among the
// replicas a re-formation waits for. Only the acting master takes it, and only for
// a node it holds lost; others ignore it. The host, if it ever returns, registers
// again as a new one.
type Deregister struct{ Node string }

func (Deregister) isEvent() {}
func (Register) isEvent()   {}
func (Tick) isEvent()       {}
func (Probe) isEvent()      {}
func (Health) isEvent()     {}
func (Replica) isEvent()    {}
func (Message) isEvent()    {}
func (HandOver) isEvent()   {}
func (PoweredOff) isEvent() {}

// MsgType is the kind of a Message.
type MsgType string

const (
	// MsgLease is a master's lease request, carrying its view.
	MsgLease MsgType = "lease"
	// MsgLeaseGrant answers MsgLease.
	MsgLeaseGrant MsgType = "lease-grant"
	// MsgVote is a semi-master's witness vote request for a new generation.
	MsgVote MsgType = "vote"
	// MsgVoteGrant answers MsgVote.
	MsgVoteGrant MsgType = "vote-grant"
	// MsgRefuse answers either request when the node holds a lease for
	// another holder; it says which group the node follows.
	MsgRefuse MsgType = "refuse"
	// MsgRelease is sent by a semi-master that gave way (or stopped proposing)
	// to the nodes it asked: it counts their votes no more, so a vote for that
	// very proposal (its Generation and Since) may go to another at once.
	MsgRelease MsgType = "release"
	// MsgHandOver is sent by a master that hands its role over before it stops
	// (HandOver) to every node: it acts no more, so a node that granted it its
	// lease in that tenure (Since) may grant the successor (Holder) at once.
	MsgHandOver MsgType = "hand-over"
)

// Message travels between Machines: returned inside Send, delivered with Step.
// Lost, late and duplicate messages are safe.
type Message struct {
	Type     MsgType
	From, To string
	// Generation is the sender's generation, or for MsgVote the generation it
	// proposes; grants echo the request's; a refusal gives the lowest
	// generation the refusing node still grants to (that of its view, or of
	// its last grant or vote if newer).
	Generation uint64
	// SentAt is the requester's clock when it sent the request; grants echo
	// it, so the requester times the lease from its own clock.
	SentAt time.Time
	// ActingUntil (MsgLease) is how long the master's majority lease holds,
	// less the margin; zero if it is not acting. A granting node serves its
	// HA guests no longer than this.
	ActingUntil time.Time
	// View (MsgLease) is the master's role table.
	View *ClusterView
	// Role and Since describe the sender (requests) or, in MsgRefuse, the
	// holder the refusing node follows; Since is when it took that role, so
	// the seed's "longer uptime" is the earlier Since, the same answer on
	// both sides.
	Role  Role
	Since time.Time
	// Epoch is the raft epoch of the sender's (or holder's) group: the
	// generation it was re-formed in (proposed, for a semi-master). A winning
	// master raises its Generation past what the other group's nodes have seen,
	// but scenario 5 compares epochs, so both sides of a meeting pick the same
	// winner however late their news is.
	Epoch uint64
	// Term is the raft term in which the sender (or holder) leads its
	// generation: of two masters of one generation, the newer term leads.
	Term uint64
	// Acting (MsgLease) says the master holds its majority lease; in
	// MsgRefuse it says whether the holder did when last heard.
	Acting bool
	// Holder, HolderGeneration (MsgRefuse): the holder the node granted its
	// lease to and its generation (proposed, for a semi-master).
	Holder           string
	HolderGeneration uint64
	// Log (MsgVote) is the proposer's raft log position: a node votes only for a
	// proposer whose log is at least as far as its own, so the group re-forms from
	// the furthest log. In MsgRefuse it is the refusing node's own, and HolderLog
	// that of the semi-master it voted for.
	Log, HolderLog LogPos
	// Servers (MsgVoteGrant) are the voter's raft configuration: the proposer
	// counts them among the replicas that may hold a client write.
	Servers []string
}

func (m Message) String() string {
	s := fmt.Sprintf("%s %s->%s g%d", m.Type, m.From, m.To, m.Generation)
	if m.Type == MsgRefuse {
		s += fmt.Sprintf(" holder=%s(%s g%d acting=%v)", m.Holder, m.Role, m.HolderGeneration, m.Acting)
	}
	return s
}

// Action is an output of Machine.Step, for the caller to carry out.
type Action interface {
	fmt.Stringer
	isAction()
}

// Send asks the caller to deliver Msg to Msg.To.
type Send struct{ Msg Message }

// Promote raises Node to role To (candidate to backup, backup to master).
type Promote struct {
	Node string
	To   Role
}

// Demote takes management status from Node, or returns it to the ranked list
// (To is candidate, node, backup or semi-master).
type Demote struct {
	Node string
	To   Role
}

// ReplaceVoter changes the raft configuration: New takes Old's voter slot.
type ReplaceVoter struct{ Old, New string }

// DeclareLost tells the recovery planner that Node is lost: its guests may be
// restarted or their twins promoted. The node has fenced itself by now.
type DeclareLost struct{ Node, Why string }

// PowerFence asks the caller to power Node off through the cluster's power fence
// agent (Config.PowerFenceAfter) and to step the agent's answer back as PoweredOff.
// Only an acting master emits it, for a node it would declare lost but for the
// lease rule's wait.
type PowerFence struct {
	Node  string
	Asked time.Time // this machine's clock when it asked; PoweredOff gives it back
}

// Fence stops Node's restart and twin guests: its lease lapsed at Since (its
// own clock). The agent destroys them FenceGrace after Since, not after it hears
// of it: a node that was paused past its lease must not give its guests a grace
// they no longer have.
type Fence struct {
	Node  string
	Since time.Time
}

// Unfence lets Node run its HA guests again: it holds a fresh lease from an
// acting master.
type Unfence struct{ Node string }

// ReForm starts the management group of Generation from this node's own raft
// log: its replica becomes the only voter of a new raft group of that epoch, and
// the other Voters (the backups of the new view) join it afresh (Rejoin) and are
// made voters (SetMembership). Only the node with the furthest log among those
// that voted for it re-forms, so no entry on a voting replica is lost.
type ReForm struct {
	Generation uint64
	Voters     []string
}

// Rejoin: this node's replica belongs to an older generation than the acting
// master's: it is thrown away and the node joins the current group afresh.
type Rejoin struct{ Generation uint64 }

// Join asks the master to take this node's replica into raft's configuration
// (as a non-voter; SetMembership makes voters): it hears from no raft leader
// while an acting master of Generation speaks to it.
type Join struct{ Generation uint64 }

// TransferLeadership hands raft's leadership to To, the acting master: this node
// leads raft but is not the master of the view.
type TransferLeadership struct{ To string }

// SetMembership makes raft's configuration the view's: the servers among Voters
// vote, any other server only follows the log, and the servers in Remove (nodes
// declared lost) leave it. Emitted by the acting master while it leads raft and
// the configuration differs.
type SetMembership struct {
	Voters, Remove []string
}

// Readmit tells the master's replicated state that Node, recorded lost, is back:
// the role machine has taken it in again (its recovered guests stay where they
// were restarted).
type Readmit struct{ Node string }

// Hold puts Node on hold: it returned but is not fully functional.
type Hold struct{ Node, Why string }

// RequestVotes starts a semi-master's witness vote for Generation.
type RequestVotes struct{ Generation uint64 }

// Merge: this node's group yields to the group led by Into.
type Merge struct {
	Into   string
	Reason string
}

// GiveUp: Node has been lost for GiveUpAfter; stop renewing its lease (the seed's
// "give up": wait for a person).
type GiveUp struct{ Node string }

// SolitudeShutdown: Node reached no other node for SolitudeAfter; it writes its
// state and shuts its management down.
type SolitudeShutdown struct{ Node string }

// Notify is an event for operators (an alert rule turns it into a message).
type Notify struct{ Node, Kind, Detail string }

func (Send) isAction()               {}
func (Promote) isAction()            {}
func (Demote) isAction()             {}
func (ReplaceVoter) isAction()       {}
func (DeclareLost) isAction()        {}
func (PowerFence) isAction()         {}
func (Fence) isAction()              {}
func (Unfence) isAction()            {}
func (ReForm) isAction()             {}
func (Hold) isAction()               {}
func (RequestVotes) isAction()       {}
func (Merge) isAction()              {}
func (GiveUp) isAction()             {}
func (SolitudeShutdown) isAction()   {}
func (Notify) isAction()             {}
func (Rejoin) isAction()             {}
func (Join) isAction()               {}
func (TransferLeadership) isAction() {}
func (SetMembership) isAction()      {}
func (Readmit) isAction()            {}

func (a Send) String() string         { return "send " + a.Msg.String() }
func (a Promote) String() string      { return fmt.Sprintf("promote %s to %s", a.Node, a.To) }
func (a Demote) String() string       { return fmt.Sprintf("demote %s to %s", a.Node, a.To) }
func (a ReplaceVoter) String() string { return fmt.Sprintf("replace-voter %s with %s", a.Old, a.New) }
func (a DeclareLost) String() string  { return fmt.Sprintf("declare-lost %s (%s)", a.Node, a.Why) }
func (a Fence) String() string        { return "fence " + a.Node }
func (a PowerFence) String() string   { return "power-fence " + a.Node }
func (a Unfence) String() string      { return "unfence " + a.Node }
func (a ReForm) String() string {
	return fmt.Sprintf("re-form generation %d voters %s", a.Generation, strings.Join(a.Voters, ","))
}
func (a Hold) String() string { return fmt.Sprintf("hold %s (%s)", a.Node, a.Why) }
func (a RequestVotes) String() string {
	return fmt.Sprintf("request-votes generation %d", a.Generation)
}
func (a Merge) String() string            { return fmt.Sprintf("merge into %s (%s)", a.Into, a.Reason) }
func (a GiveUp) String() string           { return "give-up " + a.Node }
func (a SolitudeShutdown) String() string { return "solitude-shutdown " + a.Node }
func (a Notify) String() string           { return fmt.Sprintf("notify %s %s: %s", a.Kind, a.Node, a.Detail) }
func (a Rejoin) String() string           { return fmt.Sprintf("rejoin generation %d", a.Generation) }
func (a Join) String() string             { return fmt.Sprintf("join generation %d", a.Generation) }
func (a TransferLeadership) String() string {
	return "transfer-leadership to " + a.To
}
func (a SetMembership) String() string {
	s := "set-membership voters " + strings.Join(a.Voters, ",")
	if len(a.Remove) > 0 {
		s += " remove " + strings.Join(a.Remove, ",")
	}
	return s
}
func (a Readmit) String() string { return "readmit " + a.Node }
