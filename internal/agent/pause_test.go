package agent

import (
	"context"
	"io"

	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/fenceguard"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/internal/version"
)

// pauseRig is an agent with fencing on libvirt's test driver, fed assignments by
// hand as its poll would be.
type pauseRig struct {
	t      *testing.T
	node   *hypervisor.Node
	a      *Agent
	cfg    Config
	holder string
	live   bool // the lease, as the role machine would say
}

func newPauseRig(t *testing.T) *pauseRig {
	t.Helper()
	dir := t.TempDir()
	uri, err := hypervisor.TestDriverURI(dir, "n1", hypervisor.Capacity{CPUs: 8, MemoryBytes: 16 << 30})
	if err != nil {
		t.Fatal(err)
	}
	node, err := hypervisor.Open(hypervisor.Options{URI: uri, Accelerator: "auto"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	images := filepath.Join(dir, "images")
	if err := os.MkdirAll(filepath.Join(images, "lab"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(images, "lab", "kernel"), []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &pauseRig{t: t, node: node, holder: "m1", live: true}
	r.cfg = Config{Name: "n1", Node: node, ImagesDir: images, Fencing: true, FenceGrace: 10 * time.Millisecond,
		FenceCheck: 5 * time.Millisecond, PausedFile: filepath.Join(dir, "paused-guests.json"),
		Lease: func() (string, uint64, bool) { return r.holder, 1, r.live }, Net: NetConfig{Disabled: true},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var err2 error
	if r.a, err2 = New(r.cfg); err2 != nil {
		t.Fatal(err2)
	}
	r.run(r.a)
	return r
}

// run runs a's fence loop until the test ends.
func (r *pauseRig) run(a *Agent) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.fenceLoop(ctx); close(done) }()
	r.t.Cleanup(func() { cancel(); <-done })
}

// read hands the agent an assignment as its poll would, and reconciles it.
func (r *pauseRig) read(losses uint64, guests ...api.AssignedGuest) {
	held := heldAssignment{Assignment: api.Assignment{Master: "m1", Generation: 1, Version: version.Version,
		Losses: losses, LossesCounted: true, Guests: guests}, asked: time.Now()}
	r.a.mu.Lock()
	r.a.latest = &held
	r.a.mu.Unlock()
	r.a.noteBasis(held.Assignment)
	r.a.reconcile(context.Background(), held)
}

func (r *pauseRig) fence() {
	r.live = false
	r.a.Fence(time.Now())
}

func (r *pauseRig) unfence() {
	r.live = true
	r.a.Unfence()
}

func (r *pauseRig) wait(guest string, want hypervisor.State) {
	r.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := r.node.State(guest)
		if err == nil && st == want {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s is %s (%v), want %s", guest, st, err, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var domainID = regexp.MustCompile(`<domain type='[a-z]+' id='(\d+)'`)

// id is the guest's libvirt domain id: a new one at every start, kept by a resume.
func (r *pauseRig) id(guest string) string {
	r.t.Helper()
	x, err := r.node.DomainXML(guest)
	m := domainID.FindStringSubmatch(x)
	if err != nil || m == nil {
		r.t.Fatalf("domain id of %s: %v", guest, err)
	}
	return m[1]
}

func assigned(name, uuid, policy string) api.AssignedGuest {
	return api.AssignedGuest{Name: name, UUID: uuid, Image: "lab", CPUs: 1, MemoryBytes: 64 << 20, Failover: policy, Desired: store.DesiredRunning}
}

// TestFencePausesAndResumes: a node whose lease lapses pauses its restart guests
// (not those of policy none), resumes them with the same domain once the lease is
// back and the cluster still places them there, and destroys (then starts afresh)
// a paused copy when the node was declared lost meanwhile, when the guest of that
// name is another one, or when the master does not count losses. A pause not made
// by the fence is destroyed; a dvmd restart keeps the record of its pauses.
func TestFencePausesAndResumes(t *testing.T) {
	r := newPauseRig(t)
	web := assigned("web", "5c338286-c360-4b65-a1c1-a97ca933a4ad", api.FailoverRestart)
	db := assigned("db", "6c338286-c360-4b65-a1c1-a97ca933a4ad", api.FailoverNone)
	r.unfence()
	r.read(0, web, db)
	r.wait("web", hypervisor.StateRunning)
	r.wait("db", hypervisor.StateRunning)
	first := r.id("web")

	// Lease lapses: paused, not destroyed; the none guest runs on.
	r.fence()
	r.wait("web", hypervisor.StatePaused)
	if st, _ := r.node.State("db"); st != hypervisor.StateRunning {
		t.Fatalf("db (policy none) is %s while fenced", st)
	}
	// An assignment read while fenced resumes nothing.
	r.read(0, web, db)
	if st, _ := r.node.State("web"); st != hypervisor.StatePaused {
		t.Fatalf("web is %s after a read while fenced", st)
	}
	// A restarted dvmd knows its pause.
	if a2, err := New(r.cfg); err != nil || len(a2.readPaused().Guests) != 1 || a2.readPaused().Guests["web"].UUID != web.UUID || !a2.readPaused().Guests["web"].Counted {
		t.Fatalf("paused record after a restart: %+v, %v", a2.readPaused(), err)
	}
	r.unfence()
	r.read(0, web, db)
	r.wait("web", hypervisor.StateRunning)
	if got := r.id("web"); got != first {
		t.Fatalf("web resumed as domain %s, was %s: it was started anew", got, first)
	}
	if _, ok := r.a.readPaused().Guests["web"]; ok {
		t.Fatal("a resumed guest is still recorded as paused")
	}

	// Declared lost meanwhile: the copy is stale, destroyed, and the guest starts anew.
	for _, c := range []struct {
		name   string
		losses uint64
		guest  api.AssignedGuest
		count  bool
	}{
		{"declared lost since", 1, web, true},
		{"another guest of that name", 1, assigned("web", "7c338286-c360-4b65-a1c1-a97ca933a4ad", api.FailoverRestart), true},
		{"losses not counted", 1, web, false},
	} {
		before := r.id("web")
		r.fence()
		r.wait("web", hypervisor.StatePaused)
		r.unfence()
		held := heldAssignment{Assignment: api.Assignment{Master: "m1", Generation: 1, Version: version.Version,
			Losses: c.losses + 1, LossesCounted: c.count, Guests: []api.AssignedGuest{c.guest, db}}, asked: time.Now()}
		r.a.reconcile(context.Background(), held)
		if _, ok := r.a.readPaused().Guests["web"]; ok {
			t.Fatalf("%s: the paused copy is still recorded", c.name)
		}
		r.read(c.losses+1, web, db)
		r.wait("web", hypervisor.StateRunning)
		if r.id("web") == before {
			t.Fatalf("%s: the paused copy was resumed", c.name)
		}
		web.UUID = c.guest.UUID
	}

	// A record written just before a pause (the fence guard records, then pauses)
	// outlives a reconcile that sees the guest still running.
	if err := fenceguard.UpdatePaused(r.cfg.PausedFile, func(p *fenceguard.Paused) {
		p.Guests["web"] = fenceguard.PausedGuest{UUID: web.UUID, Losses: 2, Counted: true}
	}); err != nil {
		t.Fatal(err)
	}
	r.read(2, web, db)
	if _, ok := r.a.readPaused().Guests["web"]; !ok {
		t.Fatal("the record of a guest about to be paused was forgotten")
	}
	r.a.forgetPaused("web")

	// A pause by a call the record does not hold (the guard on a stale lease file,
	// virsh suspend), seen with the lease held: destroyed, then started afresh.
	before := r.id("web")
	if err := r.node.Suspend("web"); err != nil {
		t.Fatal(err)
	}
	r.read(2, web, db)
	r.read(2, web, db)
	r.wait("web", hypervisor.StateRunning)
	if r.id("web") == before {
		t.Fatal("a guest paused by an unknown call was resumed")
	}

	// A pause the fence did not make (by hand; an incoming migration's), seen while
	// fenced: destroyed.
	if err := r.node.Suspend("web"); err != nil {
		t.Fatal(err)
	}
	r.fence()
	r.wait("web", hypervisor.StateStopped)
}
