package master

import (
	"context"
	"encoding/json"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/dvmproject/dvm/internal/api"
)

// WatchGuest shows guest name once its view differs from the one version names, or
// once wait has passed: the blocking query GET /v1/guests/NAME?index=VERSION&wait=D,
// whose answers carry their own version (api.HeaderIndex). With version "" or no wait
// it answers at once. A guest removed meanwhile is ErrNotFound at once.
//
// A guest's view joins its replicated record with what its node last reported and
// whether that node reports at all, so the query wakes on a change of the store, on a
// report that changed what a node observes (or from a node that was not reporting),
// and when the guest's node is due to be shown unreachable. The version is a hash of
// the view, not an index of this master's: a client that moves to another master
// with it is answered at once if that master sees the guest otherwise.
func (m *Master) WatchGuest(ctx context.Context, name, version string, wait time.Duration) (api.Guest, string, error) {
	deadline := time.Now().Add(wait)
	for {
		// What may change the view is read before the view, so no change is missed.
		idx := m.st.Index()
		m.obsMu.RLock()
		reported := m.obsChanged
		m.obsMu.RUnlock()
		g, err := m.Guest(name)
		if err != nil {
			return api.Guest{}, "", err
		}
		v := guestVersion(g)
		now := time.Now()
		if version == "" || v != version || !now.Before(deadline) || ctx.Err() != nil {
			return g, v, nil
		}
		until := deadline
		if t, ok := m.unreachableAt(g.Node); ok && t.After(now) && t.Before(until) {
			until = t
		}
		wctx, cancel := context.WithDeadline(ctx, until)
		stored := make(chan struct{})
		go func() {
			m.st.Wait(wctx, idx)
			close(stored)
		}()
		select {
		case <-stored:
		case <-reported:
		case <-wctx.Done():
		}
		cancel()
	}
}

// guestVersion names a view of a guest: the same view on any master, the same name.
func guestVersion(g api.Guest) string {
	b, _ := json.Marshal(g)
	h := fnv.New64a()
	h.Write(b)
	return strconv.FormatUint(h.Sum64(), 16)
}

// unreachableAt is when node, reporting now, will be shown unreachable if it does not
// report again (see nodeReady).
func (m *Master) unreachableAt(node string) (time.Time, bool) {
	m.obsMu.RLock()
	defer m.obsMu.RUnlock()
	t, ok := m.lastSeen[node]
	return t.Add(m.opts.NodeTimeout), ok
}
