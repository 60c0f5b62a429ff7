package store

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/dvmproject/dvm/internal/version"
	"github.com/hashicorp/raft"
)

// A cluster snapshot file (vmctl cluster snapshot save) is one line of JSON, the
// header, then the state as JSON, exactly Size bytes whose SHA-256 the header holds:
//
//	{"kind":"dvm-cluster-snapshot","format":1,"version":"0.2.0","index":812,…,"size":20481,"sha256":"…"}
//	{"format":1,"version":"0.2.0","index":812,"nodes":[…],"guests":[…],…}
//
// The header can be read with head -1; the checksum covers the state, which repeats
// the header's index and version, so neither can be changed unseen.

// SnapshotKind is the header's kind: what tells a snapshot file from any other.
const SnapshotKind = "dvm-cluster-snapshot"

// SnapshotFormat is the file format this build writes and the newest it reads.
const SnapshotFormat = 1

// MaxSnapshotBytes bounds a snapshot file's state: far above any cluster's (a few
// KiB a guest), and a bound on what a restore reads into memory.
const MaxSnapshotBytes = 1 << 30

// SnapshotHeader is a snapshot file's first line.
type SnapshotHeader struct {
	Kind    string `json:"kind"`
	Format  int    `json:"format"`
	Version string `json:"version"` // the dvmd that wrote the file
	// Index and Term are where the state stands in the raft log it was read from:
	// every change up to Index and none after it.
	Index      uint64    `json:"index"`
	Term       uint64    `json:"term"`
	Generation uint64    `json:"generation"`
	Master     string    `json:"master"` // the master that took it
	TakenAt    time.Time `json:"taken_at"`
	// What it holds, for people reading the header.
	Nodes    int `json:"nodes"`
	Guests   int `json:"guests"`
	Networks int `json:"networks"`
	Tokens   int `json:"tokens"`
	// Size and SHA256 are the length and hex SHA-256 of the state after the header.
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// ErrBadSnapshot: a snapshot file that cannot be restored; the error says why.
var ErrBadSnapshot = errors.New("bad snapshot file")

// SnapshotError says what is wrong with a snapshot file.
type SnapshotError struct{ Msg string }

func (e *SnapshotError) Error() string { return ErrBadSnapshot.Error() + ": " + e.Msg }
func (e *SnapshotError) Unwrap() error { return ErrBadSnapshot }

func badSnapshot(format string, a ...any) error {
	return &SnapshotError{Msg: fmt.Sprintf(format, a...)}
}

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

// WriteSnapshot writes st as a snapshot file, with h's index, term, generation,
// master and time (its kind, format, version, counts, size and checksum are filled
// in here), and returns the header written.
func WriteSnapshot(w io.Writer, st State, h SnapshotHeader) (SnapshotHeader, error) {
	body, err := json.Marshal(st)
	if err != nil {
		return h, err
	}
	sum := sha256.Sum256(body)
	h.Kind, h.Format, h.Version = SnapshotKind, SnapshotFormat, st.Version
	h.Index = st.Index
	h.Nodes, h.Guests, h.Networks, h.Tokens = len(st.Nodes), len(st.Guests), len(st.Networks), len(st.Tokens)
	h.Size, h.SHA256 = int64(len(body)), hex.EncodeToString(sum[:])
	head, err := json.Marshal(h)
	if err != nil {
		return h, err
	}
	if _, err := w.Write(append(head, '\n')); err != nil {
		return h, err
	}
	_, err = w.Write(body)
	return h, err
}

// ReadSnapshotHeader reads and checks a snapshot file's header alone.
func ReadSnapshotHeader(r *bufio.Reader) (SnapshotHeader, error) {
	var h SnapshotHeader
	line, err := r.ReadSlice('\n')
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return h, fmt.Errorf("read snapshot file: %w", err)
	}
	if errors.Is(err, bufio.ErrBufferFull) || json.Unmarshal(bytes.TrimSpace(line), &h) != nil || h.Kind != SnapshotKind {
		return h, badSnapshot("its first line is not a whole snapshot header: a truncated file, or not one vmctl cluster snapshot save wrote")
	}
	if err != nil {
		return h, badSnapshot("truncated: the file ends after its header, before the state")
	}
	if h.Format > SnapshotFormat || h.Format < 1 {
		return h, badSnapshot("its format is %d, written by dvmd %s; this dvmd (%s) reads formats up to %d: restore it with dvmd %s or newer",
			h.Format, version.Or(h.Version), version.Version, SnapshotFormat, version.Or(h.Version))
	}
	if h.Size <= 0 || h.Size > MaxSnapshotBytes || len(h.SHA256) != 2*sha256.Size {
		return h, badSnapshot("its header gives no valid size and checksum")
	}
	return h, nil
}

// ReadSnapshot reads a snapshot file whole and checks it: its header, its length, its
// checksum, and its state, which must be one this build reads entirely (no format,
// field or op it does not know). Nothing is taken from a file that fails a check.
func ReadSnapshot(r io.Reader) (SnapshotHeader, State, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	h, err := ReadSnapshotHeader(br)
	if err != nil {
		return h, State{}, err
	}
	body, err := io.ReadAll(io.LimitReader(br, h.Size+1))
	if err != nil {
		return h, State{}, fmt.Errorf("read snapshot file: %w", err)
	}
	switch {
	case int64(len(body)) < h.Size:
		return h, State{}, badSnapshot("truncated: %d of the state's %d bytes", len(body), h.Size)
	case int64(len(body)) > h.Size:
		return h, State{}, badSnapshot("data after the state's %d bytes: not a file vmctl cluster snapshot save wrote, or two run together", h.Size)
	}
	sum := sha256.Sum256(body)
	if got := hex.EncodeToString(sum[:]); got != h.SHA256 {
		return h, State{}, badSnapshot("checksum mismatch: the state's SHA-256 is %s, the header says %s: the file is damaged", got, h.SHA256)
	}
	st, err := DecodeState(body)
	if err != nil {
		var he *HaltError
		if errors.As(err, &he) {
			return h, State{}, badSnapshot("its state %s: restore it with dvmd %s or newer", he.problem(), he.Writer)
		}
		return h, State{}, badSnapshot("its state: %v", err)
	}
	if st.Index != h.Index || version.Or(st.Version) != version.Or(h.Version) {
		return h, State{}, badSnapshot("its header (index %d, dvmd %s) does not match its state (index %d, dvmd %s)",
			h.Index, version.Or(h.Version), st.Index, version.Or(st.Version))
	}
	for _, g := range st.Guests {
		if g.Name == "" {
			return h, State{}, badSnapshot("its state holds a guest without a name")
		}
	}
	for _, n := range st.Nodes {
		if n.Name == "" {
			return h, State{}, badSnapshot("its state holds a node without a name")
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
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: st.Index, Size: int64(len(data))}
	if err := s.Raft().Restore(meta, bytes.NewReader(data), 30*time.Second); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return fmt.Errorf("restore state: %w", err)
	}
	return nil
}
