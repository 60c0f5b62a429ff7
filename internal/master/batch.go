package master

import (
	"time"

	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/scheduler"
)

// Creates are written in batches (group commit, as etcd and Nomad's plan applier do).
// A raft entry costs a round to a majority of the voters and a sync to disk on each,
// and the master holds m.mu across that write so that the state it checked is the
// state it writes over; one entry per create would queue every create behind the one
// before it. So each create is queued, and the create that takes the applier's turn
// writes every create queued by then (writeCreates):
//
//   - it holds m.mu, as every write that places guests does, and checks again that
//     this master may place (acting, its replica not halted, not adopting): a master
//     that lost its role meanwhile writes nothing of the batch;
//   - it plans the creates in the order they were queued on one scheduler view of the
//     state, each placement taking its room there before the next one is planned,
//     and then checks them with commit, whose books count every create admitted
//     before in the batch: a batch can never overfill a node, however many creates
//     it holds;
//   - it writes the admitted creates as one log entry, with the events that record
//     them as writes through the API, which every replica applies whole
//     (store.Apply), and answers each create only once raft has committed and this
//     replica applied that entry. A create refused (its name taken, no network
//     address free, HA admission control, or a refusal at commit) gets its own error
//     and leaves the others as they are; if the entry cannot be written, no create of
//     it is acknowledged.
//
// While one batch is being written the next one gathers, so the number of entries, and
// of scheduler views built, grows with the rounds to disk and to the backups rather
// than with the creates.

// createReq is one create waiting for its batch.
type createReq struct {
	g        store.GuestRecord // as the request asks, not yet placed
	networks []string
	image    bool                                 // its image is a recorded one (images.go), ready when the create was asked
	event    func(pending bool) store.EventRecord // the write's event, written with it; nil: none
	done     chan createResult                    // buffered: the applier never waits on a create
}

type createResult struct {
	g        store.GuestRecord // as written
	warnings []string
	err      error
}

// maxBatch bounds the creates of one entry: a raft entry travels and is synced whole,
// and a few hundred records still make an entry of a few hundred kilobytes.
const maxBatch = 512

// createBatched queues r and returns its outcome once the batch that holds it is
// written: by the create that takes the applier's turn next, this one or another.
func (m *Master) createBatched(r *createReq) createResult {
	m.createMu.Lock()
	m.creates = append(m.creates, r)
	m.createMu.Unlock()
	for {
		select {
		case res := <-r.done:
			return res
		case m.applier <- struct{}{}:
			// Whoever held the turn before answered every create it took before it
			// let go; r is answered or still queued.
			m.writeCreates()
			<-m.applier
		}
	}
}

// writeCreates writes one batch of the queued creates and answers each of them.
func (m *Master) writeCreates() {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Taken under m.mu: the creates queued while another write held it join this batch.
	m.createMu.Lock()
	n := min(len(m.creates), maxBatch)
	batch := make([]*createReq, n)
	copy(batch, m.creates)
	m.creates = append(m.creates[:0], m.creates[n:]...)
	m.createMu.Unlock()
	if n == 0 {
		return
	}
	out := make([]createResult, n)
	defer func() {
		for i, r := range batch {
			r.done <- out[i]
		}
	}()
	if err := m.mustPlace(); err != nil {
		for i := range out {
			out[i].err = err
		}
		return
	}
	v := m.createView()
	var nb *nicBook
	var changes []change
	var owner []int // changes[k] is batch[owner[k]]'s
	names := make(map[string]bool, n)
	for i, r := range batch {
		g := r.g
		if _, ok := m.st.Guest(g.Name); ok || names[g.Name] {
			out[i].err = guestExists(g.Name)
			continue
		}
		if r.image {
			// Checked again under m.mu, which an image's delete holds: no guest is
			// made from an image deleted since the create was asked.
			if err := m.imageStill(g.Image); err != nil {
				out[i].err = err
				continue
			}
		}
		if g.ISO != "" {
			if err := m.imageStill(g.ISO); err != nil {
				out[i].err = err
				continue
			}
		}
		if len(r.networks) > 0 {
			if nb == nil {
				_, guests, _ := m.st.Snapshot()
				nb = m.nicBook(guests)
			}
			nics, err := nb.alloc(r.networks)
			if err != nil {
				out[i].err = err
				continue
			}
			g.NICs = nics
		}
		warnings, headroom := m.place(&g, v.s)
		if headroom != "" {
			// HA admission control refuses: admitting the guest would leave too little
			// room to restart the guests of a lost node. Nothing is created.
			out[i].err = &RefusedError{Reason: headroom}
			continue
		}
		names[g.Name] = true
		out[i].g, out[i].warnings = g, warnings
		changes = append(changes, change{next: g})
		owner = append(owner, i)
	}
	if len(changes) == 0 {
		return
	}
	cmds, refused := v.b.check(changes)
	why := make(map[string]*RefusedPlacement, len(refused))
	for _, r := range refused {
		why[r.Guest] = r
	}
	for k, i := range owner {
		if why[changes[k].next.Name] == nil && batch[i].event != nil {
			e := batch[i].event(changes[k].next.Node == "")
			cmds = append(cmds, store.Command{Op: store.OpEvent, Event: &e})
		}
	}
	var err error
	if len(cmds) > 0 {
		_, err = m.st.Apply(cmds...)
	}
	if err != nil || len(refused) > 0 {
		// The view took room for what was not written (or may not have been).
		m.cview = nil
	} else {
		v.writes++
	}
	for k, i := range owner {
		if r := why[changes[k].next.Name]; r != nil {
			// Planned on the very state it was checked against: only a node's report
			// timing out in between gets here.
			out[i].err = r
		} else if err != nil {
			out[i].err = err
		}
	}
}

// createView is the state as batches of creates see it: the scheduler's view and the
// books, built from a snapshot and then kept up to date by every batch, whose
// placements take their room in both as they are planned and checked. A batch then
// costs what its own creates do, not a pass over every guest. The view holds as long
// as the store's nodes and guests changed by the batches' entries alone (counted by
// store.PlacementWrites), the plans' holds did not change, and the same nodes are
// ready: otherwise it is built again.
type createView struct {
	s      *scheduler.Scheduler
	b      *books
	writes uint64 // the store's PlacementWrites the view shows
	holds  uint64 // m.holdVersion it shows
	ready  string // which of nodes were ready, one byte each
	nodes  []string
}

// createView returns the creates' view of the state now. Called with m.mu held.
func (m *Master) createView() *createView {
	now := time.Now()
	if v := m.cview; v != nil && v.writes == m.st.PlacementWrites() && v.holds == m.holdVersion() && v.ready == m.readyOf(v.nodes, now) {
		v.b.now = now
		return v
	}
	// Read before the snapshot: a write between the two makes the view older than it
	// says, and it is built again next time.
	writes, holds := m.st.PlacementWrites(), m.holdVersion()
	nodes, guests, _ := m.st.Snapshot()
	v := &createView{writes: writes, holds: holds}
	for _, n := range nodes {
		v.nodes = append(v.nodes, n.Name)
	}
	// Likewise before the scheduler reads it: a node that goes silent or comes back
	// meanwhile makes the view built again next time.
	v.ready = m.readyOf(v.nodes, now)
	v.s, v.b = m.schedulerView(nodes, guests), m.books(nodes, guests)
	m.cview = v
	return v
}

// readyOf says which of nodes are ready at now, one byte each.
func (m *Master) readyOf(nodes []string, now time.Time) string {
	b := make([]byte, len(nodes))
	for i, n := range nodes {
		b[i] = '0'
		if m.nodeReady(n, now) {
			b[i] = '1'
		}
	}
	return string(b)
}
