package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/dvmproject/dvm/internal/snapshot"
	"github.com/dvmproject/dvm/internal/version"
	"github.com/hashicorp/raft"
)

// Barrier waits until every change raft has committed is applied to this replica
// (the leader's, which a snapshot is taken from). Only the leader can.
func (s *Store) Barrier(timeout time.Duration) error {
	if err := s.Raft().Barrier(timeout).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return fmt.Errorf("wait for committed changes to be applied: %w", err)
	}
	return nil
}

// WriteSnapshot writes st as a snapshot file (package snapshot), with h's term,
// generation, master and time; the rest of the header is filled in from st. It
// returns the header written.
func WriteSnapshot(w io.Writer, st State, h snapshot.Header) (snapshot.Header, error) {
	body, err := json.Marshal(st)
	if err != nil {
		return h, err
	}
	h.Version, h.Index = st.Version, st.Index
	h.Nodes, h.Guests, h.Networks, h.Tokens = len(st.Nodes), len(st.Guests), len(st.Networks), len(st.Tokens)
	return snapshot.Write(w, h, body)
}

// ReadSnapshot reads a snapshot file whole and checks it: its envelope (header,
// length, checksum) and its state, which must be one this build reads entirely (no
// format, field or op it does not know). Nothing is taken from a file that fails a
// check; the error wraps snapshot.ErrBad.
func ReadSnapshot(r io.Reader) (snapshot.Header, State, error) {
	h, body, err := snapshot.Read(r)
	if err != nil {
		return h, State{}, err
	}
	st, err := DecodeState(body)
	if err != nil {
		var he *HaltError
		if errors.As(err, &he) {
			return h, State{}, snapshot.Bad("its state %s: restore it with dvmd %s or newer", he.problem(), he.Writer)
		}
		return h, State{}, snapshot.Bad("its state: %v", err)
	}
	if st.Index != h.Index || version.Or(st.Version) != version.Or(h.Version) {
		return h, State{}, snapshot.Bad("its header (index %d, dvmd %s) does not match its state (index %d, dvmd %s)",
			h.Index, version.Or(h.Version), st.Index, version.Or(st.Version))
	}
	for _, g := range st.Guests {
		if g.Name == "" {
			return h, State{}, snapshot.Bad("its state holds a guest without a name")
		}
	}
	for _, n := range st.Nodes {
		if n.Name == "" {
			return h, State{}, snapshot.Bad("its state holds a node without a name")
		}
	}
	for _, im := range st.Images {
		if im.Name == "" {
			return h, State{}, snapshot.Bad("its state holds an image without a name")
		}
	}
	return h, st, nil
}

// Restore replaces the whole replicated state with st, through raft's restore of a
// snapshot on the leader: every replica of the group takes st at once (followers get
// it as a raft snapshot), with raft's configuration and this group's log kept. st
// comes from ReadSnapshot; the caller decides what of the group's own state it keeps.
// The store's index never goes back (blocking queries wait on it): st.Index is raised
// to this replica's when it is lower.
func (s *Store) Restore(st State) error {
	if err := s.Halted(); err != nil {
		return err
	}
	if !s.IsLeader() {
		return ErrNotLeader
	}
	if st.Adoption != nil {
		if err := s.mayWrite(OpSetAdoption); err != nil {
			return err
		}
	}
	if len(st.Images) > 0 {
		// A replica that does not know images would halt on the state.
		if err := s.mayWrite(OpPutImage); err != nil {
			return err
		}
	}
	st.Format, st.Version = StateFormat, version.Version
	st.Index = max(st.Index, s.Index())
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	// raft stops the process if its state machine refuses a restore: make sure first
	// that it will not.
	if _, err := DecodeState(data); err != nil {
		return fmt.Errorf("restore state: %w", err)
	}
	// raft refuses a restore until its leader has applied the latest configuration
	// entry, which a group just bootstrapped or just elected may not have yet: a
	// barrier waits for everything before it to be applied.
	if err := s.Raft().Barrier(30 * time.Second).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return fmt.Errorf("restore state: waiting for the log to be applied: %w", err)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: st.Index, Size: int64(len(data))}
	if err := s.Raft().Restore(meta, bytes.NewReader(data), 30*time.Second); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return fmt.Errorf("restore state: %w", err)
	}
	return nil
}
