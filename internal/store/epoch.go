package store

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
)

// Epoch is the generation of the management group this replica's raft configuration
// belongs to. A forced re-formation (Reform) starts a new raft configuration among
// some of the old voters; the old group's survivors still hold the old one and share
// node names and addresses with the new. Without an epoch, an old-group leader that
// comes back from a partition with a higher term would overwrite the new group's log.
// The raft transport exchanges epochs and refuses a peer of another one (see
// cluster.StreamLayer.Epoch). Zero means not known yet: a fresh replica, which has no
// log to push on anyone, follows whoever the current group's leader makes it follow.
type Epoch struct {
	path string
	v    atomic.Uint64
}

// OpenEpoch reads the epoch kept in dir (zero when there is none yet).
func OpenEpoch(dir string) (*Epoch, error) {
	e := &Epoch{path: filepath.Join(dir, "epoch")}
	b, err := os.ReadFile(e.path)
	switch {
	case os.IsNotExist(err):
		return e, nil
	case err != nil:
		return nil, fmt.Errorf("raft epoch: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("raft epoch %s: %q is not a generation number (remove the file to rejoin as a fresh replica)", e.path, b)
	}
	e.v.Store(v)
	return e, nil
}

// Get returns the epoch; safe for concurrent use (the transport asks on every
// connection).
func (e *Epoch) Get() uint64 {
	if e == nil {
		return 0
	}
	return e.v.Load()
}

// Set writes the epoch durably, then makes it current.
func (e *Epoch) Set(v uint64) error {
	if e == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(e.path), 0o700); err != nil {
		return err
	}
	tmp := e.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("raft epoch: %w", err)
	}
	if _, err := fmt.Fprintf(f, "%d\n", v); err != nil {
		f.Close()
		return fmt.Errorf("raft epoch: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("raft epoch: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("raft epoch: %w", err)
	}
	if err := os.Rename(tmp, e.path); err != nil {
		return fmt.Errorf("raft epoch: %w", err)
	}
	e.v.Store(v)
	return nil
}
