package master

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/snapshot"
	"github.com/dvmproject/dvm/internal/store"
)

// DefaultAdoptTimeout is how long after a restore the master waits for the nodes of
// the restored state to report before it declares the silent ones lost: time for an
// operator to start dvmd again on hosts that lost it with the management group.
const DefaultAdoptTimeout = 5 * time.Minute

// SaveSnapshot writes the replicated state to w as a snapshot file: every change
// committed when it is called, none made after, all read at one index. Only the
// master can: it alone knows its state holds every committed change.
func (m *Master) SaveSnapshot(w io.Writer) (snapshot.Header, error) {
	if err := m.st.Halted(); err != nil {
		return snapshot.Header{}, err
	}
	if !m.IsLeader() {
		return snapshot.Header{}, store.ErrNotLeader
	}
	if err := m.st.Barrier(10 * time.Second); err != nil {
		return snapshot.Header{}, err
	}
	st := m.st.State()
	_, _, term := m.st.Position()
	h, err := store.WriteSnapshot(w, st, snapshot.Header{Term: term, Generation: m.st.Generation(), Master: m.st.ID(), TakenAt: time.Now().UTC()})
	if err != nil {
		return h, fmt.Errorf("write snapshot: %w", err)
	}
	m.log.Info("snapshot saved", "index", h.Index, "term", h.Term, "bytes", h.Size, "guests", h.Guests, "nodes", h.Nodes)
	return h, nil
}

// RestoreSnapshot replaces the state of a new management group with a snapshot's:
// the disaster recovery when every management node of a cluster is lost. The file is
// read whole and checked first (a bad one changes nothing). Only a group whose state
// holds no guest and no network takes it, so a restore never takes a running
// cluster's state back in time. The restored state keeps this group's generation,
// ends every migration it records as in flight (each is over one way or another),
// holds no mirrored twin's copy in step until its node reports it again, and starts an adoption (see store.Adoption) that waits for the snapshot's nodes
// until adoptTimeout.
func (m *Master) RestoreSnapshot(r io.Reader, adoptTimeout time.Duration) (api.SnapshotRestored, error) {
	h, snap, err := store.ReadSnapshot(r)
	if err != nil {
		if errors.Is(err, snapshot.ErrBad) {
			return api.SnapshotRestored{}, fmt.Errorf("%w: %v; nothing was changed", ErrBadRequest, err)
		}
		return api.SnapshotRestored{}, err
	}
	if adoptTimeout <= 0 {
		adoptTimeout = DefaultAdoptTimeout
	}
	if err := m.mustAct(); err != nil {
		return api.SnapshotRestored{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, guests, _ := m.st.Snapshot()
	nets := m.st.Networks()
	images := m.st.Images()
	if len(guests) > 0 || len(nets) > 0 || len(images) > 0 {
		return api.SnapshotRestored{}, fmt.Errorf("this cluster's state already holds %d guests, %d networks and %d images: a snapshot is restored only onto a new management group, started empty, after every management node of the old one was lost (operator guide, section Backup and restore); nothing was changed: %w",
			len(guests), len(nets), len(images), ErrConflict)
	}
	now := time.Now().UTC()
	a := &store.Adoption{RestoredAt: now, SnapshotIndex: h.Index, SnapshotTakenAt: h.TakenAt, SnapshotVersion: h.Version,
		Deadline: now.Add(adoptTimeout)}
	for _, n := range snap.Nodes {
		if n.LostAt.IsZero() {
			a.Awaiting = append(a.Awaiting, n.Name)
		}
	}
	sort.Strings(a.Awaiting)
	if len(a.Awaiting) == 0 {
		a.DoneAt = now
	}
	for i := range snap.Guests {
		// A mirror in step when the snapshot was taken may have broken since: the
		// guests' nodes say again (a promotion meanwhile waits for its node).
		snap.Guests[i].MigrateTo, snap.Guests[i].TwinProtected = "", false
	}
	// The generation is the group's, not the data's: the group that took the
	// snapshot is gone, and this one's raft epoch and terms are its own.
	snap.Meta = m.st.Meta()
	snap.Adoption = a
	if err := m.st.Restore(snap); err != nil {
		return api.SnapshotRestored{}, err
	}
	// What this master kept of the state before (the drains' holds, recoveries in
	// progress) belongs to a state that is gone.
	m.holdMu.Lock()
	clear(m.holds)
	m.holdVer++
	m.holdMu.Unlock()
	m.recMu.Lock()
	clear(m.recStart)
	m.recMu.Unlock()
	m.log.Warn("cluster state restored from a snapshot", "snapshot_index", h.Index, "snapshot_version", h.Version,
		"taken_at", h.TakenAt, "guests", len(snap.Guests), "nodes", len(snap.Nodes), "awaiting", a.Awaiting)
	go m.Record("restore", "", "", fmt.Sprintf("state restored from the snapshot taken at %s (index %d, dvmd %s): %d guests, %d nodes; waiting for %s to report until %s",
		h.TakenAt.Format(time.RFC3339), h.Index, h.Version, len(snap.Guests), len(snap.Nodes), orNobody(a.Awaiting), a.Deadline.Format(time.RFC3339)))
	return api.SnapshotRestored{SnapshotIndex: h.Index, SnapshotTakenAt: h.TakenAt, SnapshotVersion: h.Version,
		Nodes: len(snap.Nodes), Guests: len(snap.Guests), Networks: len(snap.Networks), Tokens: len(snap.Tokens),
		Adoption: adoptionView(a)}, nil
}

func orNobody(nodes []string) string {
	if len(nodes) == 0 {
		return "no node"
	}
	return "nodes " + strings.Join(nodes, ", ")
}

func adoptionView(a *store.Adoption) api.Adoption {
	return api.Adoption{Adopting: a.Adopting(), RestoredAt: a.RestoredAt, SnapshotIndex: a.SnapshotIndex,
		SnapshotTakenAt: a.SnapshotTakenAt, SnapshotVersion: a.SnapshotVersion, Awaiting: append([]string{}, a.Awaiting...),
		Deadline: a.Deadline, DoneAt: a.DoneAt}
}
