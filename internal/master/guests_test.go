package master

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// TestGuestWritesRefuseAndWriteNothing: start, stop, delete and a migration's result
// share one read-modify-write (updateGuest). Each refuses what it must, with the
// status that says why (404 for a guest that does not exist, 409 for one in the wrong
// state), and a refused change leaves the guest's record as it was.
func TestGuestWritesRefuseAndWriteNothing(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	st := m.Store()
	ctx := context.Background()
	report(t, c, "n1", 4, 8)
	report(t, c, "n2", 4, 8)
	if g := create(t, c, "web", 1, 1); g.Node == "" {
		t.Fatalf("web not placed: %+v", g)
	}
	status := func(err error) int {
		var se *api.StatusError
		if !errors.As(err, &se) {
			t.Fatalf("want an HTTP status, got %v", err)
		}
		return se.Code
	}
	unchanged := func(what string, before store.GuestRecord) {
		t.Helper()
		if after, _ := st.Guest("web"); !reflect.DeepEqual(before, after) {
			t.Errorf("%s changed web:\n before %+v\n after  %+v", what, before, after)
		}
	}

	for _, req := range []struct{ method, path string }{
		{"POST", "/v1/guests/nope/stop"},
		{"POST", "/v1/guests/nope/start"},
		{"DELETE", "/v1/guests/nope"},
		{"POST", "/v1/guests/nope/migration?node=n1"},
	} {
		var body any
		if req.path == "/v1/guests/nope/migration?node=n1" {
			body = api.Migration{OK: true}
		}
		if code := status(c.Do(ctx, req.method, req.path, body, nil)); code != http.StatusNotFound {
			t.Errorf("%s %s: %d, want 404", req.method, req.path, code)
		}
	}

	// A migration result for a guest that is not migrating is refused.
	g, _ := st.Guest("web")
	err := c.Do(ctx, "POST", "/v1/guests/web/migration?node="+g.Node, api.Migration{OK: true}, nil)
	if code := status(err); code != http.StatusConflict {
		t.Errorf("migration result for a guest not migrating: %d, want 409 (%v)", code, err)
	}
	unchanged("a refused migration result", g)

	// Stop, then stop again (nothing changes), then start.
	if err := c.Do(ctx, "POST", "/v1/guests/web/stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	if g, _ := st.Guest("web"); g.Desired != store.DesiredStopped {
		t.Fatalf("after stop, web wants %s", g.Desired)
	}
	g, _ = st.Guest("web")
	if err := c.Do(ctx, "POST", "/v1/guests/web/stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	unchanged("a second stop", g)
	if err := c.Do(ctx, "POST", "/v1/guests/web/start", nil, nil); err != nil {
		t.Fatal(err)
	}

	// A migrating guest cannot be deleted; a deleted one cannot be started.
	other := "n1"
	if g, _ := st.Guest("web"); g.Node == "n1" {
		other = "n2"
	}
	done := migrate(t, c, "web", other)
	g = awaitGuest(t, st, "web", "migrating", func(g store.GuestRecord) bool { return g.MigrateTo != "" })
	if code := status(c.Do(ctx, "DELETE", "/v1/guests/web", nil, nil)); code != http.StatusConflict {
		t.Errorf("delete of a migrating guest: %d, want 409", code)
	}
	unchanged("a refused delete", g)
	endMigration(t, c, "web", g.Node, true)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if g, _ := st.Guest("web"); g.Node != other || g.MigrateTo != "" {
		t.Fatalf("after the migration web is %+v, want on %s", g, other)
	}
	if err := c.Do(ctx, "DELETE", "/v1/guests/web", nil, nil); err != nil {
		t.Fatal(err)
	}
	g, _ = st.Guest("web")
	if code := status(c.Do(ctx, "POST", "/v1/guests/web/start", nil, nil)); code != http.StatusConflict {
		t.Errorf("start of a guest being deleted: %d, want 409", code)
	}
	unchanged("a refused start", g)
}
