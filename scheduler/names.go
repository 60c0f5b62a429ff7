package scheduler

import "hash/maphash"

// guestNames maps guest names to guest ids. Every Place looks a name up (it must be new)
// and records it, so this is on the hot path: a Go map of strings cost a third of Place,
// in hashing twice, rehashing every name each time it grew, and giving the garbage
// collector a pointer per guest to scan. Here the names stay in the guest records; the
// table holds, per slot, 32 bits of the name's hash and the id, so it has no pointers,
// growing reads no name, and a probe compares a name only when those 32 bits match.
// Open addressing with linear probing, at most half full; deletion shifts the following
// entries back instead of leaving tombstones, so a lookup never walks past dead slots.
type guestNames struct {
	seed  maphash.Seed // set by New
	slots []uint64     // hash<<32 | id+1; 0 = empty
	n     int
	// The last name hashed and its hash: Place looks a name up, then records it.
	lastName string
	lastHash uint32
}

func (t *guestNames) hash(name string) uint32 {
	if name != t.lastName || t.lastName == "" {
		t.lastName, t.lastHash = name, uint32(maphash.String(t.seed, name))
	}
	return t.lastHash
}

// findGuest returns the id of the guest named name.
func (s *Scheduler) findGuest(name string) (int32, bool) {
	return s.finishFind(name, s.names.startFind(name))
}

// nameProbe is a lookup begun by startFind: the name's hash, and its home slot as read.
type nameProbe struct {
	h    uint32
	home uint64
}

// startFind begins looking name up: it reads the name's home slot, which misses the
// cache more often than not (100 000 names fill 2 MB), so that the caller can do work
// that does not depend on the answer while the read is under way. The table must not
// change before finishFind.
func (t *guestNames) startFind(name string) nameProbe {
	if t.n == 0 {
		return nameProbe{}
	}
	h := t.hash(name)
	return nameProbe{h: h, home: t.slots[h&uint32(len(t.slots)-1)]}
}

// finishFind ends the lookup pr of name: the id of the guest named name.
func (s *Scheduler) finishFind(name string, pr nameProbe) (int32, bool) {
	t := &s.names
	if t.n == 0 {
		return -1, false
	}
	mask := uint32(len(t.slots) - 1)
	i, e := pr.h&mask, pr.home
	for e != 0 {
		if uint32(e>>32) == pr.h {
			if id := int32(uint32(e)) - 1; s.guest(id).name == name {
				return id, true
			}
		}
		i = (i + 1) & mask
		e = t.slots[i]
	}
	return -1, false
}

// insert records name as guest id; the name must not be recorded already.
func (t *guestNames) insert(name string, id int32) {
	if 2*(t.n+1) > len(t.slots) {
		t.grow()
	}
	t.put(uint64(t.hash(name))<<32 | uint64(uint32(id+1)))
	t.n++
}

func (t *guestNames) put(e uint64) {
	mask := uint32(len(t.slots) - 1)
	i := uint32(e>>32) & mask
	for t.slots[i] != 0 {
		i = (i + 1) & mask
	}
	t.slots[i] = e
}

func (t *guestNames) grow() {
	old := t.slots
	t.slots = make([]uint64, max(2*len(old), 64))
	for _, e := range old {
		if e != 0 {
			t.put(e)
		}
	}
}

// remove forgets guest id, recorded under name.
func (t *guestNames) remove(name string, id int32) {
	if t.n == 0 {
		return
	}
	mask := uint32(len(t.slots) - 1)
	h := t.hash(name)
	want := uint64(h)<<32 | uint64(uint32(id+1))
	i := h & mask
	for t.slots[i] != want {
		if t.slots[i] == 0 {
			return
		}
		i = (i + 1) & mask
	}
	t.n--
	// Shift back every following entry of the run that the hole would cut off from its
	// home slot, so lookups can stop at the first empty slot.
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		e := t.slots[j]
		if e == 0 {
			break
		}
		home := uint32(e>>32) & mask
		// The entry at j may move to the hole at i unless its home lies cyclically in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			t.slots[i] = e
			i = j
		}
	}
	t.slots[i] = 0
}
