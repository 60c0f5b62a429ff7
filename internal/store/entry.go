package store

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/dvmproject/dvm/internal/strictjson"
	"github.com/dvmproject/dvm/internal/version"
	"github.com/hashicorp/raft"
)

// opSince is every op this build knows, with the first dvmd version that applies it
// ("" for ops from before versions were carried, which every build applies). A leader
// writes a newer op only once every replica of its group says it runs that version
// or a newer one (see Store.Apply): an older replica would refuse the entry and halt,
// and one from before versions were carried would skip it. Ops are never removed
// from this table: old log entries and snapshots hold them.
var opSince = map[Op]string{
	OpPutNode:     "",
	OpDeleteNode:  "",
	OpPutGuest:    "",
	OpDeleteGuest: "",
	OpSetMeta:     "",
	OpPutNetwork:  "",
	OpDelNetwork:  "",
	OpEvent:       "",
	OpPutToken:    "",
	OpSetAdoption: "0.1.0",
	OpCountLoss:   "0.3.0",
	OpPutImage:    "0.3.0",
	OpDeleteImage: "0.3.0",
}

// ErrHalted: this replica met a log entry or snapshot it cannot read and applies
// nothing more (see HaltError).
var ErrHalted = errors.New("this replica of the cluster state has halted")

// HaltError says why a replica stopped applying the log: the entry (or snapshot) it
// could not read, what in it, and the dvmd version that wrote it. A replica never
// skips such an entry: skipping would lose state quietly (a downgrade, a newer
// master's new kind of entry), and a later snapshot would make the loss permanent.
type HaltError struct {
	Index   uint64 // the log entry's index; for a snapshot, the index it was taken at
	Term    uint64
	Op      Op     // the op not known, when that is the reason
	Field   string // the field not known, when that is the reason
	Writer  string // the dvmd version that wrote it (version.Unknown for one that did not say)
	Reason  string // what else was wrong, when neither
	Snap    bool   // a snapshot, not a log entry
	Running string // this build's version
}

func (e *HaltError) Error() string {
	what := fmt.Sprintf("log entry %d", e.Index)
	if e.Snap {
		what = fmt.Sprintf("the state snapshot at index %d", e.Index)
	}
	why := e.problem()
	todo := "the entry is damaged or was written by an incompatible build: restore the cluster state from a snapshot (vmctl cluster snapshot restore)"
	if version.Compare(e.Writer, e.Running) > 0 {
		todo = "upgrade this node's dvmd to " + e.Writer + " or newer; it then applies the log from where it stopped"
	}
	return fmt.Sprintf("%s: %s, written by dvmd %s, %s: this replica applies nothing more: %s", ErrHalted, what, e.Writer, why, todo)
}

func (e *HaltError) Unwrap() error { return ErrHalted }

// problem says what is wrong with the entry or snapshot, in a phrase.
func (e *HaltError) problem() string {
	switch {
	case e.Op != "":
		return fmt.Sprintf("holds op %q, which this dvmd (%s) does not know", e.Op, e.Running)
	case e.Field != "":
		return fmt.Sprintf("has field %q, which this dvmd (%s) does not know", e.Field, e.Running)
	}
	return "cannot be read: " + e.Reason
}

// decodeEntry reads one log entry's commands strictly: every op must be one this
// build knows, every field one it knows, and every command complete. Anything else is
// a *HaltError.
func decodeEntry(data []byte, index, term uint64) ([]Command, error) {
	halt := &HaltError{Index: index, Term: term, Writer: version.Unknown, Running: version.Version}
	// First the ops and versions alone, so that the refusal can name them.
	var heads []struct {
		Op Op     `json:"op"`
		V  string `json:"v"`
	}
	if err := json.Unmarshal(data, &heads); err != nil {
		halt.Reason = "not a list of commands: " + err.Error()
		return nil, halt
	}
	for _, h := range heads {
		if h.V != "" && version.Compare(h.V, halt.Writer) >= 0 {
			halt.Writer = h.V
		}
	}
	for _, h := range heads {
		if _, ok := opSince[h.Op]; !ok {
			halt.Op = h.Op
			return nil, halt
		}
	}
	var cmds []Command
	if err := strictjson.Decode(data, &cmds); err != nil {
		if f, ok := strictjson.UnknownField(err); ok {
			halt.Field = f
		} else {
			halt.Reason = err.Error()
		}
		return nil, halt
	}
	for _, c := range cmds {
		if err := c.check(); err != nil {
			halt.Reason = err.Error()
			return nil, halt
		}
	}
	return cmds, nil
}

// Halted returns why this replica stopped applying the log, or nil while it applies.
func (s *Store) Halted() error {
	if e := s.halt.Load(); e != nil {
		return e
	}
	return nil
}

// stopApplying records why this replica applies nothing more, says so once in the
// log, and hands raft's leadership to another voter if it has it: a master whose
// state stopped cannot place anything truthfully.
func (s *Store) stopApplying(e *HaltError) {
	if !s.halt.CompareAndSwap(nil, e) {
		return
	}
	s.rc.Logger.Error("replica halted", "error", e.Error())
	s.mu.Lock()
	close(s.changed) // wake blocking readers: the health answer changed
	s.changed = make(chan struct{})
	s.mu.Unlock()
	if r := s.Raft(); r != nil && r.State() == raft.Leader {
		go r.LeadershipTransfer()
	}
}
