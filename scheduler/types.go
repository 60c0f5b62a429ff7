// Package scheduler places guests on nodes. It is pure policy: it sees a snapshot of
// nodes and the guests already placed, and answers where a guest goes, why it cannot go
// anywhere, and how to empty or even out nodes. It does no I/O and imports no libvirt, no
// store and no HTTP; the master feeds it and carries out what it decides.
//
// See README.md for the pipeline (filters, scores, twins, HA admission control, plans)
// and for how placement stays fast at 100 000 nodes.
package scheduler

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Node is one node as the scheduler sees it. CPUs and MemoryBytes are the node's pool
// share: what it offers to guests after its host reservation and overcommit, already
// computed by hypervisor/. Allocated* is what placed guests use now.
type Node struct {
	Name                 string
	CPUs                 int
	MemoryBytes          int64
	AllocatedCPUs        int
	AllocatedMemoryBytes int64
	Schedulable          bool // false: cordoned, maintenance, not ready
	Draining             bool
	Accelerator          string            // "kvm" or "tcg"
	Profiles             []string          // OS profiles the node can run; empty = all
	Labels               map[string]string // failure domains ("rack", "zone") and others
}

// Failover policies of a guest.
const (
	FailoverNone    = "none"
	FailoverRestart = "restart"
	FailoverTwin    = "twin"
)

// Guest is a guest to place. Names are unique among the guests a Scheduler knows.
type Guest struct {
	Name        string
	OS          string // dragonfly, freebsd, netbsd, openbsd, linux; "" skips the profile filter
	CPUs        int
	MemoryBytes int64
	Failover    string            // "none", "restart", "twin"
	Constraints map[string]string // node labels the guest requires (key=value)
	Accelerator string            // required accelerator, "" = any
	Strategy    Strategy          // "" = cluster default; Pack or Spread
}

// Strategy is how a node is scored among the nodes that pass every filter.
type Strategy string

const (
	// Pack puts a guest on the node it fits most tightly (best fit: least free memory
	// left, then least free CPU), so whole nodes stay empty for big guests and power-off.
	Pack Strategy = "pack"
	// Spread puts a guest on the node with the most free memory, then the most free CPU,
	// so load and the blast radius of a lost node stay small.
	Spread Strategy = "spread"
)

// Options are the cluster-wide scheduling settings.
type Options struct {
	Strategy       Strategy // cluster default; "" means Spread
	FailureDomains []string // label keys, most specific first, e.g. {"rack","zone"}
	HAReserveNodes int      // K: headroom so restart guests of any K lost nodes re-place (0=off)
	HAWarnOnly     bool     // admit with a warning instead of refusing
}

// Validate reports options the scheduler cannot work with.
func (o Options) Validate() error {
	switch o.Strategy {
	case "", Pack, Spread:
	default:
		return fmt.Errorf("strategy %q unknown: use %q or %q", o.Strategy, Pack, Spread)
	}
	if o.HAReserveNodes < 0 {
		return fmt.Errorf("HA reserve of %d nodes: must be 0 (off) or more", o.HAReserveNodes)
	}
	seen := map[string]bool{}
	for _, k := range o.FailureDomains {
		if k == "" || seen[k] {
			return fmt.Errorf("failure domains %q: each must be a distinct, non-empty label key", o.FailureDomains)
		}
		seen[k] = true
	}
	return nil
}

// Assignment is a guest already placed: its primary node, and for twins its twin node.
type Assignment struct {
	Guest    Guest
	Node     string
	TwinNode string
	// MoveTo is the destination of a move in flight (a live migration, or a drain's
	// planned move), "" when the guest is not moving. Until the move ends, with success
	// or not, the guest holds its CPUs and memory on MoveTo as well as on Node, so
	// nothing placed meanwhile takes the room it lands in.
	MoveTo string
	// Stay keeps the guest where it is in Rebalance's plans: it cannot move live now
	// (stopped, not yet running, ...). It still counts as load on its node.
	Stay bool
}

// Placement is where Place put a guest.
type Placement struct {
	Node     string
	TwinNode string   // set only for Failover == "twin"
	Warnings []string // e.g. admitted below the HA reserve, twin sharing a zone
}

// Reason says why a node was rejected for a guest. The text is what operators read.
type Reason string

// Reasons, in the order the filters run; a node is counted under the first that rejects it.
const (
	ReasonUnschedulable   Reason = "unschedulable"
	ReasonDraining        Reason = "draining"
	ReasonAccelerator     Reason = "accelerator not available"
	ReasonProfile         Reason = "os profile not supported"
	ReasonLabel           Reason = "label constraint not met"
	ReasonNotEnoughCPU    Reason = "not enough cpu"
	ReasonNotEnoughMemory Reason = "not enough memory"
	// Twin search only: the node is the primary's own node or in its failure domain.
	ReasonTwinSameNode          Reason = "twin would share the primary's node"
	ReasonTwinSameFailureDomain Reason = "twin would share the primary's failure domain"
	// Cluster-wide: placing would eat the headroom kept for restarts after node loss.
	ReasonHAHeadroom Reason = "would break HA headroom"
)

// Sentinel errors; match with errors.Is.
var (
	// ErrInvalidGuest: the guest cannot be placed as given (no name, no CPU, no memory,
	// unknown failover or strategy). Nothing was changed.
	ErrInvalidGuest = errors.New("invalid guest")
	// ErrGuestExists: a guest of that name is already placed.
	ErrGuestExists = errors.New("guest already placed")
	// ErrUnknownNode: the node name is not in the snapshot.
	ErrUnknownNode = errors.New("unknown node")
)

// Unplaceable is returned (find it with errors.As) when no node, or no pair of nodes for
// a twin, can take a guest. Reasons counts the nodes per rejecting filter.
type Unplaceable struct {
	Guest   string
	Nodes   int            // nodes looked at
	Reasons map[Reason]int // nodes per reason; each node under its first reason
	// Twin is true when a primary node was found but no twin node: Reasons then
	// describe the search for the twin.
	Twin bool
	// Headroom explains a refusal by HA admission control (Reasons holds
	// ReasonHAHeadroom then).
	Headroom string
}

// Error reads like `guest "web": 3 nodes: not enough memory; 1 node: draining`.
func (u *Unplaceable) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "guest %q not placeable: ", u.Guest)
	if u.Twin {
		b.WriteString("no twin node: ")
	}
	if u.Headroom != "" {
		b.WriteString(u.Headroom)
		return b.String()
	}
	if u.Nodes == 0 {
		b.WriteString("no nodes")
		return b.String()
	}
	b.WriteString(Summary(u.Reasons))
	return b.String()
}

// Summary renders reason counts as "3 nodes: not enough memory; 1 node: draining", the
// most frequent reason first.
func Summary(reasons map[Reason]int) string {
	type rc struct {
		r Reason
		n int
	}
	list := make([]rc, 0, len(reasons))
	for r, n := range reasons {
		if n > 0 {
			list = append(list, rc{r, n})
		}
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].n != list[j].n {
			return list[i].n > list[j].n
		}
		return list[i].r < list[j].r
	})
	parts := make([]string, len(list))
	for i, e := range list {
		unit := "nodes"
		if e.n == 1 {
			unit = "node"
		}
		parts[i] = fmt.Sprintf("%d %s: %s", e.n, unit, e.r)
	}
	return strings.Join(parts, "; ")
}

// Verdict is one node's answer for one guest: Reason is "" when the node fits.
type Verdict struct {
	Node   string
	Reason Reason
}

// Explanation answers `vmctl vm why NAME`: how every node judged the guest.
type Explanation struct {
	Guest    string
	Nodes    int
	Feasible int            // nodes passing every filter for the primary
	Reasons  map[Reason]int // rejected nodes per reason
	Verdicts []Verdict      // one per node, in snapshot order
	// Where Place would put the guest now; empty when nowhere.
	Node     string
	TwinNode string
	// For twins whose primary fits: why nodes were rejected as the twin.
	TwinReasons map[Reason]int
	// Set when HA admission control would refuse (or, with HAWarnOnly, warn).
	Headroom string
	// Set when the guest itself is invalid; nothing else is filled in then.
	Error string
}

// Summary is the one-line answer, e.g. "3 nodes: not enough memory; 1 node: draining".
func (e Explanation) Summary() string {
	switch {
	case e.Error != "":
		return e.Error
	case e.Node == "" && e.Nodes == 0:
		return "no nodes"
	case e.Node == "" && e.Feasible > 0 && len(e.TwinReasons) > 0:
		return "no twin node: " + Summary(e.TwinReasons)
	case e.Node == "":
		return Summary(e.Reasons)
	case e.Headroom != "":
		return e.Headroom
	}
	return fmt.Sprintf("fits on %d of %d nodes; would go to %s", e.Feasible, e.Nodes, e.Node)
}

// Action is what a plan does with one guest.
type Action string

const (
	// ActionMigrate moves a running guest live (drain, rebalance).
	ActionMigrate Action = "migrate"
	// ActionRestart starts a guest of a lost node again elsewhere.
	ActionRestart Action = "restart"
	// ActionPromote makes the twin the primary (To = the old twin node) and builds a new
	// twin on NewTwin.
	ActionPromote Action = "promote"
	// ActionNewTwin builds a new twin on NewTwin; the primary stays where it is.
	ActionNewTwin Action = "new-twin"
)

// Move is one step of a plan.
type Move struct {
	Guest   string
	Action  Action
	From    string
	To      string // new primary node (migrate, restart, promote)
	NewTwin string // new twin node (promote, new-twin); "" if no room: see Plan.Warnings
}

// Plan is a list of moves the master carries out. Computing it changes nothing.
type Plan struct {
	Moves    []Move
	Unplaced []*Unplaceable // guests that have nowhere to go, with reasons
	Lost     []string       // guests with failover "none" on a lost node: not restarted
	Warnings []string
}
