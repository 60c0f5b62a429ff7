package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/snapshot"
	"github.com/dvmproject/dvm/internal/version"
	"github.com/hashicorp/raft"
)

func filled(t *testing.T, s *Store) {
	t.Helper()
	cmds := []Command{
		{Op: OpPutNode, Node: &NodeRecord{Name: "n1", CPUs: 8}},
		{Op: OpPutNode, Node: &NodeRecord{Name: "n2", CPUs: 8}},
		{Op: OpPutNetwork, Net: &NetworkRecord{Name: "blue", VNI: 7, CIDR: "10.7.0.0/24"}},
		{Op: OpPutToken, Token: &TokenRecord{Name: "ops", Scope: "operator", Hash: "ab"}},
		{Op: OpEvent, Event: &EventRecord{Kind: "write", Detail: "x"}},
	}
	for i := 0; i < 5; i++ {
		cmds = append(cmds, Command{Op: OpPutGuest, Guest: &GuestRecord{Name: fmt.Sprintf("g%d", i), Node: "n1", Desired: DesiredRunning}})
	}
	if _, err := s.Apply(cmds...); err != nil {
		t.Fatal(err)
	}
}

// savedState is the state of a filled store, saved to a snapshot file and read back.
func savedState(t *testing.T) State {
	t.Helper()
	src := single(t, t.TempDir())
	defer src.Close()
	filled(t, src)
	_, st, err := ReadSnapshot(bytes.NewReader(snapshotFile(t, src.State())))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func snapshotFile(t *testing.T, st State) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := WriteSnapshot(&buf, st, snapshot.Header{Term: 3, Generation: 1, Master: "n1", TakenAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// resum rewrites a snapshot file's header for a changed state, as one made by hand
// would be: the checks past the checksum must hold on their own.
func resum(t *testing.T, file []byte, edit func(h *snapshot.Header, body []byte) []byte) []byte {
	t.Helper()
	head, body, _ := bytes.Cut(file, []byte("\n"))
	var h snapshot.Header
	if err := json.Unmarshal(head, &h); err != nil {
		t.Fatal(err)
	}
	body = edit(&h, body)
	sum := sha256.Sum256(body)
	h.Size, h.SHA256 = int64(len(body)), hex.EncodeToString(sum[:])
	head, _ = json.Marshal(h)
	return append(append(head, '\n'), body...)
}

func TestSnapshotFileRoundTrip(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	filled(t, s)
	want := s.State()
	h, st, err := ReadSnapshot(bytes.NewReader(snapshotFile(t, want)))
	if err != nil {
		t.Fatal(err)
	}
	if h.Kind != snapshot.Kind || h.Format != snapshot.Format || h.Version != version.Version || h.Index != want.Index ||
		h.Guests != 5 || h.Nodes != 2 || h.Networks != 1 || h.Tokens != 1 || h.Master != "n1" || h.Term != 3 {
		t.Fatalf("header %+v", h)
	}
	a, _ := json.Marshal(want)
	b, _ := json.Marshal(st)
	if !bytes.Equal(a, b) {
		t.Fatalf("state read back differs:\n%s\n%s", a, b)
	}
}

// TestSnapshotFileRefusesBadInput: a wrong checksum, a truncated file, a newer
// format, a field this build does not know, another file altogether: each refused
// with what is wrong.
func TestSnapshotFileRefusesBadInput(t *testing.T) {
	s := single(t, t.TempDir())
	defer s.Close()
	filled(t, s)
	good := snapshotFile(t, s.State())
	head, _, _ := bytes.Cut(good, []byte("\n"))
	flipped := bytes.Clone(good)
	flipped[len(flipped)-10] ^= 0x01
	for _, c := range []struct {
		what string
		file []byte
		want string
	}{
		{"a byte changed", flipped, "checksum mismatch"},
		{"cut in the state", good[:len(good)-100], "truncated: "},
		{"cut after the header", append(bytes.Clone(head), '\n'), "truncated: 0 of the state's"},
		{"cut in the header", head[:len(head)/2], "not a whole snapshot header"},
		{"nothing", nil, "not a whole snapshot header"},
		{"another file", []byte("[{\"op\":\"put_node\"}]\n{}"), "not a whole snapshot header"},
		{"two run together", append(bytes.Clone(good), good...), "data after the state's"},
		{"a newer format", resum(t, good, func(h *snapshot.Header, b []byte) []byte { h.Format, h.Version = 2, "9.0.0"; return b }),
			"its format is 2, written by dvmd 9.0.0; this build (" + version.Version + ") reads formats up to 1: restore it with dvmd 9.0.0 or newer"},
		{"a newer state format", resum(t, good, func(h *snapshot.Header, b []byte) []byte {
			return bytes.Replace(b, []byte(`"format":1`), []byte(`"format":3`), 1)
		}), "its format 3 is newer than this build's (1)"},
		{"a field not known", resum(t, good, func(h *snapshot.Header, b []byte) []byte {
			return bytes.Replace(b, []byte(`"guests":[{`), []byte(`"guests":[{"colour":"red",`), 1)
		}), `has field "colour", which this dvmd`},
		{"a header not its state's", resum(t, good, func(h *snapshot.Header, b []byte) []byte { h.Index++; return b }), "does not match its state"},
		{"no checksum", bytes.Replace(good, []byte(`"sha256":"`), []byte(`"sha256":"x`), 1), "gives no valid size and checksum"},
	} {
		_, _, err := ReadSnapshot(bytes.NewReader(c.file))
		if !errors.Is(err, snapshot.ErrBad) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", c.what, err, c.want)
		}
	}
}

// TestRestoreReplacesTheState: a restore replaces every record with the snapshot's
// at once, never lowers the index, and stays after a restart.
func TestRestoreReplacesTheState(t *testing.T) {
	snap := savedState(t)
	dir := t.TempDir()
	s := single(t, dir)
	for i := 0; i < 30; i++ { // an index past the snapshot's
		if _, err := s.Apply(Command{Op: OpPutNode, Node: &NodeRecord{Name: "fresh"}}); err != nil {
			t.Fatal(err)
		}
	}
	before := s.Index()
	snap.Adoption = &Adoption{Awaiting: []string{"n1", "n2"}, RestoredAt: time.Now().UTC()}
	if err := s.Restore(snap); err != nil {
		t.Fatal(err)
	}
	check := func(when string, wantGuests int) {
		t.Helper()
		nodes, guests, idx := s.Snapshot()
		if len(nodes) != 2 || len(guests) != wantGuests || len(s.Networks()) != 1 || len(s.Tokens()) != 1 || idx < before {
			t.Fatalf("%s: %d nodes %d guests %d networks %d tokens, index %d (was %d)", when, len(nodes), len(guests), len(s.Networks()), len(s.Tokens()), idx, before)
		}
		if _, ok := s.Node("fresh"); ok {
			t.Fatalf("%s: a record of the state before the restore is left", when)
		}
		if a := s.Adoption(); !a.Adopting() || len(a.Awaiting) != 2 {
			t.Fatalf("%s: adoption %+v", when, a)
		}
	}
	check("after the restore", 5)
	if _, err := s.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "after", Desired: DesiredRunning}}); err != nil {
		t.Fatal(err)
	}
	if s.Index() <= before {
		t.Fatalf("a write after the restore is at %d, not past %d", s.Index(), before)
	}
	s.Close()
	s = single(t, dir)
	defer s.Close()
	waitTrue(t, "replayed", func() bool { _, ok := s.Guest("after"); return ok })
	check("after a restart", 6)
}

// TestRestoreReachesEveryReplica: the followers of the leader that restores take the
// restored state too (raft sends it to them as a snapshot), and a follower that
// becomes leader afterwards holds it.
func TestRestoreReachesEveryReplica(t *testing.T) {
	c := newMemCluster(t, "n1", "n2", "n3")
	names, stores, leader := c.names, c.stores, c.stores["n1"]
	for _, n := range names[1:] {
		if err := leader.Raft().AddVoter(raft.ServerID(n), raft.ServerAddress(n), 0, 0).Error(); err != nil {
			t.Fatal(err)
		}
	}
	snap := savedState(t)
	if err := leader.Restore(snap); err != nil {
		t.Fatal(err)
	}
	for _, n := range names[1:] {
		s := stores[n]
		waitTrue(t, n+" has the restored state", func() bool { _, g, _ := s.Snapshot(); return len(g) == 5 && len(s.Networks()) == 1 })
	}
	if err := leader.Raft().LeadershipTransfer().Error(); err != nil {
		t.Fatal(err)
	}
	next := leaderAmong(t, stores, names[1:])
	if _, err := next.Apply(Command{Op: OpPutGuest, Guest: &GuestRecord{Name: "after", Desired: DesiredRunning}}); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "n1 follows the new leader", func() bool { _, g, _ := leader.Snapshot(); return len(g) == 6 })
}
