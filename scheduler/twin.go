package scheduler

import "fmt"

// PlaceTwin gives guestName, a twin guest recorded without a twin (none could be
// placed when its last one was lost, or when it was placed), a twin away from its
// node, found as EvacuateLost finds a lost twin's replacement, and records it there,
// holding its room. It returns the twin's node and a warning ("" for none), or an
// *Unplaceable that says why no node can take it; the guest's record is then
// unchanged.
func (s *Scheduler) PlaceTwin(guestName string) (string, string, error) {
	id, ok := s.findGuest(guestName)
	if !ok {
		return "", "", fmt.Errorf("twin of guest %q: %w", guestName, ErrInvalidGuest)
	}
	pg := *s.guest(id)
	if pg.twin >= 0 {
		return s.nodes[pg.twin].name, "", nil
	}
	g := pg.guest()
	if g.Failover != FailoverTwin {
		return "", "", fmt.Errorf("twin of guest %q: its failover policy is %s: %w", guestName, g.Failover, ErrInvalidGuest)
	}
	r := s.resolve(&g)
	t, level, warn := s.searchTwin(r, s.strategy(&g), int32(g.CPUs), g.MemoryBytes, pg.node)
	if t < 0 {
		return "", "", s.unplaceable(&g, r, pg.node, level)
	}
	a := Assignment{Guest: g, Node: s.nodes[pg.node].name, TwinNode: s.nodes[t].name, Stay: pg.stay}
	if pg.dest >= 0 {
		a.MoveTo = s.nodes[pg.dest].name
	}
	s.Release(guestName)
	if err := s.Assign(a); err != nil {
		// Put it back as it was: Assign changed nothing.
		a.TwinNode = ""
		if err2 := s.Assign(a); err2 != nil {
			return "", "", fmt.Errorf("twin of guest %q: %v (and recording it again: %v)", guestName, err, err2)
		}
		return "", "", err
	}
	return s.nodes[t].name, warn, nil
}
