package master

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// After a restore the replicated state says where each guest was when the snapshot
// was taken. The guests themselves kept running on their hosts (libvirtd keeps them
// when dvmd stops), and some may have moved, stopped or been fenced since. The worst
// outcome would be a guest started on the node the snapshot names while another node
// still runs it; the second worst, a guest that no node runs any more and nobody
// starts. So, while the cluster adopts (store.Adoption):
//
//   - every report adopts the guests its node runs: a guest the state places on
//     another node, or on none, is recorded where it runs (adopt);
//   - a node's assignment names only the guests it runs itself, with no flag that
//     starts, moves, twins or evicts anything (adoptingAssignment);
//   - nothing is placed, created, migrated or drained (mustPlace);
//   - a node declared lost leaves the wait, its guests recovered as always
//     (RecoverNode); at the deadline, nodes still silent that hold no lease from
//     this master are declared lost (checkAdoption).
//
// Once every node has reported or been declared lost, each guest that runs is
// recorded where it runs, and the rest are started, each on the one node the state
// now names: the ordinary assignments take over.

// ErrAdopting: the cluster waits for its nodes to report after a restore; nothing
// is placed or moved until then.
var ErrAdopting = errors.New("the cluster is adopting its guests after a restore")

// adopting returns the adoption in progress, nil when none is.
func (m *Master) adopting() *store.Adoption {
	if a := m.st.Adoption(); a.Adopting() {
		return a
	}
	return nil
}

func adoptingErr(a *store.Adoption) error {
	return fmt.Errorf("%w: waiting for %s to report, or to be declared lost at %s; retry then (vmctl cluster status shows the wait)",
		ErrAdopting, orNobody(a.Awaiting), a.Deadline.Local().Format(time.TimeOnly))
}

// mustPlace is mustAct for writes that place or move guests: not while adopting.
func (m *Master) mustPlace() error {
	if err := m.mustAct(); err != nil {
		return err
	}
	if a := m.adopting(); a != nil {
		return adoptingErr(a)
	}
	return nil
}

func runs(o api.ObservedGuest) bool {
	return o.State == "running" || o.State == "paused"
}

// adopt records where the guests that node reports running are, while the cluster
// adopts, and takes the node off the awaited list. Called by ReportStatus with m.mu
// held; it returns the commands to write with the report's, and the events to record
// once they are written.
func (m *Master) adopt(a *store.Adoption, node string, obs map[string]api.ObservedGuest, guests []store.GuestRecord, now time.Time) ([]store.Command, []adoptEvent) {
	byName := make(map[string]store.GuestRecord, len(guests))
	for _, g := range guests {
		byName[g.Name] = g
	}
	names := make([]string, 0, len(obs))
	for n, o := range obs {
		if runs(o) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var cmds []store.Command
	var events []adoptEvent
	for _, name := range names {
		g, ok := byName[name]
		if !ok {
			events = append(events, adoptEvent{guest: name, once: true, detail: fmt.Sprintf(
				"node %s runs guest %s, which the restored state does not hold (made after the snapshot was taken): it keeps running there, unmanaged; stop and undefine it there with virsh when it is not wanted", node, name)})
			continue
		}
		next := g
		if g.Node != node {
			if g.Node != "" && m.nodeReady(g.Node, now) && runs(m.observedOn(g.Node, name)) {
				// Both run it: the state's copy stays, and the other node's is
				// evicted once the ordinary assignments take over.
				events = append(events, adoptEvent{guest: name, once: true, detail: fmt.Sprintf(
					"guest %s runs on %s and on %s: kept on %s, where the state places it; %s's copy is removed when the adoption ends", name, g.Node, node, g.Node, node)})
				continue
			}
			next.Node = node
			if next.TwinNode == node {
				next.TwinNode = ""
			}
			from := "on no node (pending)"
			if g.Node != "" {
				from = "on " + g.Node
			}
			events = append(events, adoptEvent{guest: name, detail: fmt.Sprintf("guest %s runs on %s; the snapshot placed it %s: adopted where it runs", name, node, from)})
		}
		// It runs: whatever the snapshot said of it then, it is not lost, not pending,
		// and wanted running (a guest being deleted stays so).
		next.Lost, next.PendingReason, next.MigrateTo = false, "", ""
		if next.Desired == store.DesiredStopped {
			next.Desired = store.DesiredRunning
		}
		if !sameGuest(g, next) {
			cmds = append(cmds, store.Command{Op: store.OpPutGuest, Guest: &next})
		}
	}
	if i := slices.Index(a.Awaiting, node); i >= 0 {
		cmds = append(cmds, store.Command{Op: store.OpSetAdoption, Adoption: awaitingLess(a, node, now)})
		if len(a.Awaiting) == 1 {
			events = append(events, adoptEvent{done: true})
		}
	}
	return cmds, events
}

// adoptEvent is an event of the adoption, recorded once its write is done.
type adoptEvent struct {
	guest, detail string
	once          bool // said once per guest and node, not at every report
	done          bool // the adoption ended
}

// recordAdoption records the adoption's events of one report.
func (m *Master) recordAdoption(node string, events []adoptEvent) {
	for _, e := range events {
		if e.done {
			m.Record("adopted", node, "", "every node of the restored state has reported or was declared lost: guests are placed, started and moved again")
			continue
		}
		if e.once {
			m.adoptMu.Lock()
			key := node + "/" + e.guest + "/" + e.detail
			seen := m.adoptSaid[key]
			m.adoptSaid[key] = true
			m.adoptMu.Unlock()
			if seen {
				continue
			}
		}
		m.Record("adopt", node, e.guest, e.detail)
	}
}

// awaitingLess is a copy of a without node among the awaited, done when none is left.
func awaitingLess(a *store.Adoption, node string, now time.Time) *store.Adoption {
	next := *a
	next.Awaiting = slices.DeleteFunc(slices.Clone(a.Awaiting), func(n string) bool { return n == node })
	if len(next.Awaiting) == 0 {
		next.DoneAt = now.UTC()
	}
	return &next
}

func sameGuest(a, b store.GuestRecord) bool {
	return a.Node == b.Node && a.TwinNode == b.TwinNode && a.Desired == b.Desired && a.Lost == b.Lost &&
		a.PendingReason == b.PendingReason && a.MigrateTo == b.MigrateTo
}

// observedOn is what node last reported of guest.
func (m *Master) observedOn(node, guest string) api.ObservedGuest {
	m.obsMu.RLock()
	defer m.obsMu.RUnlock()
	return m.observed[node][guest]
}

// adoptingAssignment is a node's assignment while the cluster adopts: only the guests
// the state places on it that it reports running, wanted running. Nothing in it
// starts, stops, deletes, moves, twins or evicts a guest (a guest the snapshot says
// is stopped or being deleted waits for the adoption's end); agents leave the guests
// it does not name alone.
func (m *Master) adoptingAssignment(a *api.Assignment, node string, guests []store.GuestRecord) {
	for _, g := range guests {
		if g.Node != node || g.Desired == store.DesiredDeleted || !runs(m.observedOn(node, g.Name)) {
			continue
		}
		a.Guests = append(a.Guests, api.AssignedGuest{Name: g.Name, UUID: g.UUID, OS: g.OS, CPUs: g.CPUs, MemoryBytes: g.MemoryBytes,
			DiskBytes: g.DiskBytes, Image: g.Image, Failover: g.Failover, Desired: store.DesiredRunning, ExtraDiskBytes: g.ExtraDiskBytes,
			ISO: g.ISO, VNCPassword: g.VNCPassword, CloudInit: cloudInit(g), Pool: g.Pool})
	}
}

// checkAdoption ends the wait for nodes that stay silent past the deadline: each is
// declared lost, unless it holds a lease from this master (it is in touch, and
// its agent will report).
func (m *Master) checkAdoption() {
	a := m.adopting()
	if a == nil || !m.acting() || time.Now().Before(a.Deadline) {
		return
	}
	for _, node := range a.Awaiting {
		if m.holdsLease(node) {
			m.log.Warn("adoption: node past the deadline still holds a lease: waiting for its report", "node", node)
			continue
		}
		m.RecoverNode(node, fmt.Sprintf("not heard from by %s, the deadline for the nodes of the restored state to report", a.Deadline.Format(time.RFC3339)))
	}
}

// holdsLease says whether node holds an unexpired lease from this master.
func (m *Master) holdsLease(node string) bool {
	if m.roles == nil {
		return false
	}
	st, _, ok := m.roles.Status()
	if !ok {
		return true // cannot tell: keep waiting
	}
	d, held := st.LeaseAges[node]
	return held && d > 0
}

// adoptionStatus is the last restore's adoption as the API shows it.
func (m *Master) adoptionStatus() *api.Adoption {
	a := m.st.Adoption()
	if a == nil {
		return nil
	}
	v := adoptionView(a)
	return &v
}
