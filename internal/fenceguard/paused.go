package fenceguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/dvmproject/dvm/internal/atomicfile"
)

// A node whose lease lapsed pauses its HA guests rather than destroying them (dvmd's
// agent, or this guard when dvmd is gone). A paused guest runs no vCPU, QEMU has
// finished its disk requests before the pause returns, and libvirt has released its
// disk locks, so the cluster may start it elsewhere as safely as if it had been
// destroyed; but when the lease comes back with the node never declared lost (a new
// master, every management node restarted, a state restored from a snapshot), the
// guest resumes where it was, with no reboot. The agent decides that (see
// internal/agent's pause.go) from this record, which both write.

// Paused is the node's record of its paused HA guests, in dvmd's data directory.
type Paused struct {
	// Losses is the node's loss count (api.Assignment.Losses) in the last assignment
	// dvmd received while its lease held, and Counted whether that master counted
	// losses at all: the basis each pause is recorded with.
	Losses  uint64 `json:"losses"`
	Counted bool   `json:"counted"`
	// Guests are the guests paused because the lease lapsed, by name.
	Guests map[string]PausedGuest `json:"guests"`
}

// PausedGuest is one guest paused because the node's lease lapsed.
type PausedGuest struct {
	UUID    string    `json:"uuid"`
	Losses  uint64    `json:"losses"`
	Counted bool      `json:"counted"`
	At      time.Time `json:"paused_at"`
}

// ReadPaused reads the record; a missing file is an empty record.
func ReadPaused(path string) (Paused, error) {
	p := Paused{Guests: map[string]PausedGuest{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return p, nil
	}
	if err == nil {
		err = json.Unmarshal(data, &p)
	}
	if err != nil {
		return Paused{Guests: map[string]PausedGuest{}}, fmt.Errorf("paused guests' record %s: %w", path, err)
	}
	if p.Guests == nil {
		p.Guests = map[string]PausedGuest{}
	}
	return p, nil
}

// UpdatePaused changes the record under a lock that dvmd and the guard share, and
// writes it whole (a crash leaves the old record or the new one). An unreadable
// record is started afresh: its guests are then unknown pauses, destroyed, never
// resumed.
func UpdatePaused(path string, change func(*Paused)) error {
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	p, _ := ReadPaused(path)
	change(&p)
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}
