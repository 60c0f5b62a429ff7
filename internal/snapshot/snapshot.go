// Package snapshot is the file format of a cluster snapshot (vmctl cluster snapshot
// save): one line of JSON, the header, then the state, exactly Size bytes whose
// SHA-256 the header holds:
//
//	{"kind":"dvm-cluster-snapshot","format":1,"version":"0.2.0","index":812,…,"size":20481,"sha256":"…"}
//	{"format":1,"version":"0.2.0","index":812,"nodes":[…],"guests":[…],…}
//
// The header reads with head -1. The checksum covers the state, which repeats the
// header's index and version, so neither changes unseen. What the state holds, and
// whether this build understands it, is the store's (store.ReadSnapshot); this
// package checks the envelope alone, and so does vmctl after a download.
package snapshot

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
)

// Kind is the header's kind: what tells a snapshot file from any other.
const Kind = "dvm-cluster-snapshot"

// Format is the file format this build writes and the newest it reads.
const Format = 1

// MaxBytes bounds a snapshot's state: far above any cluster's (a few KiB a guest),
// and a bound on what a restore reads into memory.
const MaxBytes = 1 << 30

// Header is a snapshot file's first line.
type Header struct {
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

// ErrBad: a snapshot file that cannot be restored; the error says why.
var ErrBad = errors.New("bad snapshot file")

// Error says what is wrong with a snapshot file.
type Error struct{ Msg string }

func (e *Error) Error() string { return ErrBad.Error() + ": " + e.Msg }
func (e *Error) Unwrap() error { return ErrBad }

// Bad makes an *Error.
func Bad(format string, a ...any) error {
	return &Error{Msg: fmt.Sprintf(format, a...)}
}

// Write writes a snapshot file of state (the JSON the store made) with h, whose kind,
// format, size and checksum it fills in; it returns the header written.
func Write(w io.Writer, h Header, state []byte) (Header, error) {
	sum := sha256.Sum256(state)
	h.Kind, h.Format = Kind, Format
	h.Size, h.SHA256 = int64(len(state)), hex.EncodeToString(sum[:])
	head, err := json.Marshal(h)
	if err != nil {
		return h, err
	}
	if _, err := w.Write(append(head, '\n')); err != nil {
		return h, err
	}
	_, err = w.Write(state)
	return h, err
}

// Read reads a snapshot file whole and checks its envelope: its header, its length
// and its checksum. It returns the state's bytes, for the store to decode.
func Read(r io.Reader) (Header, []byte, error) {
	var h Header
	br := bufio.NewReaderSize(r, 64<<10)
	line, err := br.ReadSlice('\n')
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return h, nil, fmt.Errorf("read snapshot file: %w", err)
	}
	if errors.Is(err, bufio.ErrBufferFull) || json.Unmarshal(bytes.TrimSpace(line), &h) != nil || h.Kind != Kind {
		return h, nil, Bad("its first line is not a whole snapshot header: a truncated file, or not one vmctl cluster snapshot save wrote")
	}
	if err != nil {
		return h, nil, Bad("truncated: the file ends after its header, before the state")
	}
	if h.Format > Format || h.Format < 1 {
		return h, nil, Bad("its format is %d, written by dvmd %s; this build (%s) reads formats up to %d: restore it with dvmd %s or newer",
			h.Format, version.Or(h.Version), version.Version, Format, version.Or(h.Version))
	}
	if h.Size <= 0 || h.Size > MaxBytes || len(h.SHA256) != 2*sha256.Size {
		return h, nil, Bad("its header gives no valid size and checksum")
	}
	body, err := io.ReadAll(io.LimitReader(br, h.Size+1))
	if err != nil {
		return h, nil, fmt.Errorf("read snapshot file: %w", err)
	}
	switch {
	case int64(len(body)) < h.Size:
		return h, nil, Bad("truncated: %d of the state's %d bytes", len(body), h.Size)
	case int64(len(body)) > h.Size:
		return h, nil, Bad("data after the state's %d bytes: not a file vmctl cluster snapshot save wrote, or two run together", h.Size)
	}
	sum := sha256.Sum256(body)
	if got := hex.EncodeToString(sum[:]); got != h.SHA256 {
		return h, nil, Bad("checksum mismatch: the state's SHA-256 is %s, the header says %s: the file is damaged", got, h.SHA256)
	}
	return h, body, nil
}
