package master

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/scheduler"
)

// outcome is what one create of a batch was answered.
type outcome struct {
	g   api.Guest
	err error
}

// oneBatch makes the creates at once and sees to it that they are written as one
// batch: it holds the master's lock until every one is queued (or answered before,
// as a create of a name taken is), so the create that takes the applier's turn finds
// them all when it gets the lock. It returns the
// names in the order they were queued (the order the batch plans them in), the
// answers by name, and how many log entries the store applied meanwhile.
func oneBatch(t *testing.T, m *Master, reqs []api.CreateGuest) ([]string, map[string]outcome, uint64) {
	t.Helper()
	before := m.st.Index()
	m.mu.Lock()
	var mu sync.Mutex
	out := map[string]outcome{}
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := m.CreateGuest(r)
			mu.Lock()
			defer mu.Unlock()
			// Two creates of one name: the second answer is kept by its index.
			key := r.Name
			if _, dup := out[key]; dup {
				key = fmt.Sprintf("%s#%d", r.Name, i)
			}
			out[key] = outcome{g, err}
		}()
	}
	var order []string
	for {
		mu.Lock()
		early := len(out)
		mu.Unlock()
		m.createMu.Lock()
		if len(m.creates)+early == len(reqs) {
			for _, r := range m.creates {
				order = append(order, r.g.Name)
			}
		}
		m.createMu.Unlock()
		if order != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	m.mu.Unlock()
	wg.Wait()
	return order, out, m.st.Index() - before
}

func stopped(name string, cpus int, memGiB int64) api.CreateGuest {
	no := false
	return api.CreateGuest{Name: name, CPUs: cpus, MemoryBytes: memGiB * gib, Start: &no}
}

// A batch of creates that together need more than the nodes' room: planned in queue
// order, each takes its room before the next is planned, so the first ones get a node
// and the others wait pending, with the reason; no node is ever overfilled, and the
// whole batch is one log entry.
func TestBatchPlacesInOrderAndNeverOverfills(t *testing.T) {
	m, c := newTestMasterWith(t, Options{NodeTimeout: time.Hour})
	report(t, c, "n1", 4, 8)
	var reqs []api.CreateGuest
	for i := 0; i < 6; i++ {
		reqs = append(reqs, stopped(fmt.Sprintf("g%d", i), 1, 1))
	}
	order, out, entries := oneBatch(t, m, reqs)
	if entries != 1 {
		t.Errorf("the batch took %d log entries, want 1", entries)
	}
	for i, name := range order {
		o := out[name]
		switch {
		case o.err != nil:
			t.Errorf("%s: %v", name, o.err)
		case i < 4 && o.g.Node != "n1":
			t.Errorf("%s (queued %d of 6) not placed on n1: %+v", name, i+1, o.g)
		case i >= 4 && (o.g.Node != "" || !strings.Contains(o.g.PendingReason, string(scheduler.ReasonNotEnoughCPU))):
			t.Errorf("%s (queued %d of 6) not pending for want of CPU: node %q, %q", name, i+1, o.g.Node, o.g.PendingReason)
		}
		if g, ok := m.st.Guest(name); !ok || g.Node != o.g.Node || g.Desired != store.DesiredStopped {
			t.Errorf("%s answered %+v, recorded %+v", name, o.g, g)
		}
	}
	nodes, guests, _ := m.st.Snapshot()
	if o := overfilled(nodes, guests); len(o) > 0 {
		t.Fatalf("overfilled: %v", o)
	}
}

// Creates refused in a batch each get their own error and leave the others as they
// are: HA admission control refuses exactly the creates past the reserve, in queue
// order, a name taken before is refused, and nothing of a refused create is written.
func TestBatchRefusesEachCreateAlone(t *testing.T) {
	m, c := newTestMasterWith(t, Options{NodeTimeout: time.Hour, Scheduler: scheduler.Options{Strategy: scheduler.Spread, HAReserveNodes: 1}})
	report(t, c, "n1", 4, 8)
	report(t, c, "n2", 4, 8)
	put(t, m, store.GuestRecord{Name: "taken", CPUs: 1, MemoryBytes: gib, Desired: store.DesiredStopped, PendingReason: "test"})
	// 8 CPUs, and any one lost node's 4 must stay free: 4 guests of 1 CPU fit.
	var reqs []api.CreateGuest
	for i := 0; i < 6; i++ {
		reqs = append(reqs, stopped(fmt.Sprintf("ha%d", i), 1, 1))
	}
	reqs = append(reqs, stopped("taken", 1, 1))
	order, out, entries := oneBatch(t, m, reqs)
	if entries != 1 {
		t.Errorf("the batch took %d log entries, want 1", entries)
	}
	if o := out["taken"]; !errors.Is(o.err, ErrConflict) || !strings.Contains(o.err.Error(), "delete it first") {
		t.Errorf("taken: %v, want a conflict on the name", o.err)
	}
	if g, _ := m.st.Guest("taken"); g.PendingReason != "test" {
		t.Errorf("the guest taken was overwritten: %+v", g)
	}
	for i, name := range order {
		o := out[name]
		var refused *RefusedError
		switch {
		case i < 4 && (o.err != nil || o.g.Node == ""):
			t.Errorf("%s: %v, want placed: it is among the first 4 of the batch", name, o.err)
		case i >= 4 && !errors.As(o.err, &refused):
			t.Errorf("%s: %v %+v, want refused by HA admission control: the first 4 took the room", name, o.err, o.g)
		case i >= 4:
			if _, ok := m.st.Guest(name); ok {
				t.Errorf("%s refused, yet recorded", name)
			}
		}
	}
	nodes, guests, _ := m.st.Snapshot()
	if o := overfilled(nodes, guests); len(o) > 0 {
		t.Fatalf("overfilled: %v", o)
	}
}

// Of two creates of one name in a batch, the first queued is created and the other
// is refused; the rest of the batch is created.
func TestBatchRefusesANameGivenTwice(t *testing.T) {
	m, c := newTestMasterWith(t, Options{NodeTimeout: time.Hour})
	report(t, c, "n1", 8, 8)
	no := false
	first, second := stopped("twice", 1, 1), api.CreateGuest{Name: "twice", CPUs: 2, MemoryBytes: gib, Start: &no}
	_, out, _ := oneBatch(t, m, []api.CreateGuest{first, second, stopped("other", 1, 1)})
	var created, refused []outcome
	for key, o := range out {
		switch {
		case !strings.HasPrefix(key, "twice"):
			if o.err != nil {
				t.Errorf("%s: %v", key, o.err)
			}
		case o.err == nil:
			created = append(created, o)
		case errors.Is(o.err, ErrConflict) && strings.Contains(o.err.Error(), "delete it first"):
			refused = append(refused, o)
		default:
			t.Errorf("twice: %v, want created or a conflict on the name", o.err)
		}
	}
	if len(created) != 1 || len(refused) != 1 {
		t.Fatalf("twice: %d created, %d refused, want one each", len(created), len(refused))
	}
	if g, _ := m.st.Guest("twice"); g.CPUs != created[0].g.CPUs || g.UUID != created[0].g.UUID {
		t.Errorf("twice recorded as %+v, answered as %+v", g, created[0].g)
	}
}

// The creates of one batch on a network each get an address of their own, and the
// one for which none is left is refused alone.
func TestBatchGivesEachCreateItsOwnAddress(t *testing.T) {
	m, c := newTestMasterWith(t, Options{NodeTimeout: time.Hour})
	report(t, c, "n1", 8, 8)
	if _, err := m.CreateNetwork(api.CreateNetwork{Name: "tiny", VNI: 9, CIDR: "10.9.0.0/30"}); err != nil {
		t.Fatal(err)
	}
	var reqs []api.CreateGuest
	for i := 0; i < 3; i++ {
		r := stopped(fmt.Sprintf("net%d", i), 1, 1)
		r.Networks = []string{"tiny"}
		reqs = append(reqs, r)
	}
	order, out, _ := oneBatch(t, m, reqs)
	ips := map[string]bool{}
	for i, name := range order {
		o := out[name]
		if i == 2 {
			if !errors.Is(o.err, ErrConflict) || !strings.Contains(o.err.Error(), "no free address") {
				t.Errorf("%s, third on a /30: %v, want no free address", name, o.err)
			}
			continue
		}
		if o.err != nil || len(o.g.NICs) != 1 || ips[o.g.NICs[0].IP] {
			t.Fatalf("%s: %v %+v, want a NIC with an address of its own", name, o.err, o.g.NICs)
		}
		ips[o.g.NICs[0].IP] = true
	}
}

// A master that stops acting while creates are queued writes nothing of their batch,
// and each create is told so.
func TestBatchOfAMasterNoLongerActingWritesNothing(t *testing.T) {
	var acts atomic.Bool
	acts.Store(true)
	m, c := newTestMasterWith(t, Options{NodeTimeout: time.Hour, Authority: authorityFunc(acts.Load)})
	report(t, c, "n1", 4, 8)
	before := m.st.Index()
	m.mu.Lock()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.CreateGuest(stopped(fmt.Sprintf("late%d", i), 1, 1))
		}()
	}
	for queued := 0; queued < len(errs); time.Sleep(time.Millisecond) {
		m.createMu.Lock()
		queued = len(m.creates)
		m.createMu.Unlock()
	}
	acts.Store(false)
	m.mu.Unlock()
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, ErrNotActing) {
			t.Errorf("create %d: %v, want %v", i, err, ErrNotActing)
		}
	}
	if after := m.st.Index(); after != before {
		t.Errorf("the state changed (index %d -> %d)", before, after)
	}
}

type authorityFunc func() bool

func (f authorityFunc) Acting() bool { return f() }

// The batches' view of the state follows what others write: room taken by another
// write, and a node that stopped reporting, are seen by the next batch.
func TestBatchViewFollowsOtherWrites(t *testing.T) {
	m, c := newTestMasterWith(t, Options{NodeTimeout: time.Hour})
	report(t, c, "n1", 4, 8)
	report(t, c, "n2", 4, 8)
	if g, err := m.CreateGuest(stopped("first", 1, 1)); err != nil || g.Node == "" {
		t.Fatalf("first: %v %+v", err, g)
	}
	// Another write fills n1 and n2 but for one CPU on n2.
	put(t, m, store.GuestRecord{Name: "fill1", CPUs: 4, MemoryBytes: gib, Node: "n1", Desired: store.DesiredStopped})
	g, _ := m.st.Guest("first")
	put(t, m, store.GuestRecord{Name: "fill2", CPUs: 3 - oneIf(g.Node == "n2"), MemoryBytes: gib, Node: "n2", Desired: store.DesiredStopped})
	if g, err := m.CreateGuest(stopped("second", 1, 1)); err != nil || g.Node != "n2" {
		t.Fatalf("second: %v %+v, want on n2, the only room left", err, g)
	}
	if g, err := m.CreateGuest(stopped("third", 1, 1)); err != nil || g.Node != "" {
		t.Fatalf("third: %v %+v, want pending: no room left", err, g)
	}
	// Another write frees room on n1.
	if _, err := m.st.Apply(store.Command{Op: store.OpDeleteGuest, Name: "fill1"}); err != nil {
		t.Fatal(err)
	}
	if g, err := m.CreateGuest(stopped("fourth", 1, 1)); err != nil || g.Node != "n1" {
		t.Fatalf("fourth: %v %+v, want on n1, freed", err, g)
	}
	nodes, guests, _ := m.st.Snapshot()
	if o := overfilled(nodes, guests); len(o) > 0 {
		t.Fatalf("overfilled: %v", o)
	}
	m.obsMu.Lock()
	m.lastSeen["n1"] = time.Now().Add(-2 * m.opts.NodeTimeout)
	m.obsMu.Unlock()
	if g, err := m.CreateGuest(stopped("fifth", 1, 1)); err != nil || g.Node != "" {
		t.Fatalf("fifth: %v %+v, want pending: n1 stopped reporting, n2 is full", err, g)
	}
}

func oneIf(b bool) int {
	if b {
		return 1
	}
	return 0
}

// A create through the API and the event that records it as a write are one log
// entry: no reader sees the guest without its event.
func TestCreateAndItsWriteEventAreOneEntry(t *testing.T) {
	m, c := newTestMasterWith(t, Options{NodeTimeout: time.Hour})
	report(t, c, "n1", 4, 8)
	before := m.st.Index()
	events := len(m.st.Events(0))
	create(t, c, "web", 1, 1)
	got := m.st.Events(0)
	if after := m.st.Index(); after != before+1 || len(got) != events+1 {
		t.Fatalf("the create took %d entries and wrote %d events, want 1 and 1", after-before, len(got)-events)
	}
	if e := got[len(got)-1]; e.Kind != EventWrite || e.Guest != "web" || e.Token != api.BootstrapToken || e.Detail != "POST /v1/guests (201)" {
		t.Fatalf("write event %+v", e)
	}
}

// A node's poll for its assignment is answered when its assignment changes, not at
// every write: a create placed on another node does not wake it, one placed on it does.
func TestAssignmentWaitsForItsNode(t *testing.T) {
	m, c := newTestMasterWith(t, Options{NodeTimeout: time.Hour})
	report(t, c, "n2", 8, 16)
	report(t, c, "n1", 2, 16)
	got := make(chan api.Assignment, 1)
	idx := m.st.Index()
	go func() { got <- m.Assignment(context.Background(), "n1", idx, time.Hour) }()
	if g := create(t, c, "elsewhere", 7, 1); g.Node != "n2" {
		t.Fatalf("elsewhere on %q, want n2, the only node with room", g.Node)
	}
	if g := create(t, c, "here", 1, 1); g.Node != "n1" {
		t.Fatalf("here on %q, want n1, the emptier", g.Node)
	}
	a := <-got
	if len(a.Guests) != 1 || a.Guests[0].Name != "here" {
		t.Fatalf("n1 was answered %+v, want its guest here", a.Guests)
	}
}
