package scheduler

import (
	"encoding/binary"
	"math/bits"
)

// cpuBuckets is how many free-CPU buckets each memory class has; bucket b holds nodes with
// exactly b free CPUs, the last one nodes with cpuBuckets-1 or more.
const cpuBuckets = 64

// headBlock is how many buckets' heads are allocated together: those of 16 memory
// classes, 4 KB. A node fills up through a few classes of the thousands (at 10 000 nodes
// a fourth of the blocks ever holds a node), so an index whose heads were allocated
// whole would cost the garbage collector 2 MB it mostly never touches.
const headBlock = 16 * cpuBuckets

// capIndex orders the nodes of one pool (all accepting nodes, or those carrying one
// label) by free capacity, so the best-fitting node is found without looking at the
// others. A node sits in one bucket (memory class, CPU bucket): the memory class is its
// free memory shifted right by shift, so classes are ordered by free memory. Each class
// has a 64-bit mask of its non-empty CPU buckets and a top byte (its highest non-empty
// bucket + 1, 0 when empty).
//
// "The first class at or above m with a node of at least c free CPUs" is answered by a
// tree of tops: level 0 is the classes' tops, and each byte of level k+1 is the maximum
// of eight bytes (one word) of level k, up to a level of one word. A search compares the
// eight bytes of one word at a time (see atLeast): upwards from m's word until a word
// holds a byte high enough, then down that byte's words, one word a level (5 levels
// over 8192 classes). The tree is kept exact, so a search never visits a word in vain on
// its way down; a class whose top changes updates its ancestors until one is unchanged.
//
// Every operation is O(log8 classes) word operations; nothing depends on the number of
// nodes except the walk along one bucket's list, which only continues past nodes that
// fail a filter the pool does not cover.
type capIndex struct {
	shift   uint
	classes int
	mask    []uint64 // per class: bit b set when bucket (class, b) is non-empty
	// tops[0][c] is class c's highest non-empty bucket + 1 (0: none); tops[k+1][i] is the
	// maximum of tops[k][8i:8i+8]. Every level is padded with zeros to whole words; the
	// last is one word.
	tops [][]byte
	// The first node+1 of each bucket (class*cpuBuckets+b), 0 = empty, by blocks of
	// headBlock buckets allocated when a node first enters one (see head).
	heads []*[headBlock]int32
	links []nodeLink
	size  int // nodes indexed
	// A pool's index lags behind: the nodes that moved since it last caught up, and a
	// flag per node for being among them (see Scheduler.catchUp).
	lateNodes []int32
	late      []bool
}

// nodeLink is a node's place in its bucket's list, kept together so moving a node
// touches one cache line of its own.
type nodeLink struct {
	next, prev int32 // node+1 in the same bucket, 0 = none
	at         int32 // bucket+1, 0 = not in this index
}

func newCapIndex(nodes, classes int, shift uint) *capIndex {
	var tops [][]byte
	for n := classes; ; n = (n + 7) / 8 {
		tops = append(tops, make([]byte, (n+7)/8*8))
		if n <= 8 {
			break
		}
	}
	return &capIndex{
		shift:   shift,
		classes: classes,
		mask:    make([]uint64, classes),
		tops:    tops,
		heads:   make([]*[headBlock]int32, (classes*cpuBuckets+headBlock-1)/headBlock),
		links:   make([]nodeLink, nodes),
		late:    make([]bool, nodes),
	}
}

func (x *capIndex) class(freeMem int64) int {
	c := int(freeMem >> x.shift)
	if c >= x.classes {
		c = x.classes - 1
	}
	return c
}

func cpuBucket(freeCPU int32) int {
	if freeCPU >= cpuBuckets-1 {
		return cpuBuckets - 1
	}
	return int(freeCPU)
}

// put indexes node n under its free capacity, moving it if it was indexed elsewhere, and
// says whether it moved (or went in or out). A node that cannot take even the smallest
// guest (1 CPU, 1 byte) is left out.
func (x *capIndex) put(n int32, freeCPU int32, freeMem int64) (moved bool) {
	if freeCPU < 1 || freeMem < 1 {
		return x.remove(n)
	}
	if x.links[n].at == int32(x.class(freeMem)*cpuBuckets+cpuBucket(freeCPU))+1 {
		return false
	}
	x.putFirst(n, freeCPU, freeMem)
	return true
}

// putFirst is put, but the node goes first in its bucket even when it is there already.
func (x *capIndex) putFirst(n int32, freeCPU int32, freeMem int64) {
	if freeCPU < 1 || freeMem < 1 {
		x.remove(n)
		return
	}
	c := x.class(freeMem)
	b := cpuBucket(freeCPU)
	bucket := int32(c*cpuBuckets + b)
	l := &x.links[n]
	from := l.at
	emptied := x.unlink(n)
	// Most nodes move into an empty bucket: the mask says so without reading its head,
	// whose array (a few MB) is mostly out of cache.
	var h int32
	if x.mask[c]&(1<<b) != 0 {
		h = x.head(bucket)
	}
	l.next, l.prev, l.at = h, 0, bucket+1
	if h != 0 {
		x.links[h-1].prev = n + 1
	}
	x.setHead(bucket, n+1)
	x.size++
	if x.mask[c]&(1<<b) == 0 {
		x.mask[c] |= 1 << b
		if byte(b+1) > x.tops[0][c] {
			x.setTop(c, byte(b+1))
		}
	}
	// The old bucket is settled after the new one: a top falling there then stops at
	// the first ancestor the new place shares, instead of going up and back.
	if emptied && from != bucket+1 {
		x.settle(from - 1)
	}
}

// head returns the first node+1 of bucket, 0 if it is empty.
func (x *capIndex) head(bucket int32) int32 {
	if blk := x.heads[bucket/headBlock]; blk != nil {
		return blk[bucket%headBlock]
	}
	return 0
}

func (x *capIndex) setHead(bucket, first int32) {
	blk := x.heads[bucket/headBlock]
	if blk == nil {
		blk = new([headBlock]int32)
		x.heads[bucket/headBlock] = blk
	}
	blk[bucket%headBlock] = first
}

// remove takes node n out of the index and says whether it was in.
func (x *capIndex) remove(n int32) bool {
	at := x.links[n].at
	if at == 0 {
		return false
	}
	if x.unlink(n) {
		x.settle(at - 1)
	}
	return true
}

// addNode makes room for one more node, not indexed.
func (x *capIndex) addNode() {
	x.links = append(x.links, nodeLink{})
	x.late = append(x.late, false)
}

// mark notes that node n moved since the index took it in (see Scheduler.catchUp).
func (x *capIndex) mark(n int32) {
	if !x.late[n] {
		x.late[n] = true
		x.lateNodes = append(x.lateNodes, n)
	}
}

// unlink takes node n out of its bucket's list and says whether that left the bucket
// empty; the bucket's mask bit and its class's top are left to settle.
func (x *capIndex) unlink(n int32) (emptied bool) {
	l := &x.links[n]
	if l.at == 0 {
		return false
	}
	p, nx := l.prev, l.next
	if p != 0 {
		x.links[p-1].next = nx
	} else {
		x.setHead(l.at-1, nx)
	}
	if nx != 0 {
		x.links[nx-1].prev = p
	}
	*l = nodeLink{}
	x.size--
	return p == 0 && nx == 0
}

// settle clears the mask bit of a bucket a node left empty and lowers its class's top.
func (x *capIndex) settle(bucket int32) {
	c := int(bucket) / cpuBuckets
	b := int(bucket) % cpuBuckets
	x.mask[c] &^= 1 << b
	x.setTop(c, byte(bits.Len64(x.mask[c])))
}

// setTop records class c's top and updates its ancestors in the tree of tops, up to
// the first that does not change: a rise only raises them, a fall recomputes a parent
// only when no byte of the child's word still reaches the parent's old maximum. Each level is read and written a word at a
// time, and the word just written is carried to the next level in a register: reading a
// word back right after writing one of its bytes would stall on the store.
func (x *capIndex) setTop(c int, v byte) {
	w, old := setByte(x.tops[0], c, v)
	for k := 1; k < len(x.tops) && v != old; k++ {
		c >>= 3
		parent := x.tops[k][c]
		switch {
		case v > old && v <= parent, v < old && (old < parent || atLeast(w, old) != 0):
			// Risen, but not above the parent; or fallen, but the parent's maximum is
			// still reached (by another child, or in the child's word).
			return
		case v < old && w == 0: // the child's word emptied: common where nodes are sparse
			v = 0
		case v < old:
			v = maxByte(w)
		}
		w, old = setByte(x.tops[k], c, v)
	}
}

// setByte sets b[i] to v and returns the word of b holding it, as written, and the
// byte's old value.
func setByte(b []byte, i int, v byte) (w uint64, old byte) {
	at, shift := i&^7, 8*uint(i&7)
	w = word(b, at)
	old = byte(w >> shift)
	w = w&^(0xff<<shift) | uint64(v)<<shift
	binary.LittleEndian.PutUint64(b[at:], w)
	return w, old
}

// maxByte returns the largest byte of w, whose bytes are all below 128.
func maxByte(w uint64) byte {
	w = maxBytes(w, w>>32)
	w = maxBytes(w, w>>16)
	return byte(maxBytes(w, w>>8))
}

// maxBytes returns the bytewise maximum of a and b, whose bytes are all below 128: a
// byte of (a|128) - b keeps its high bit exactly when a's byte >= b's, and never borrows
// from the next.
func maxBytes(a, b uint64) uint64 {
	ge := ((a | highBytes) - b) & highBytes
	m := (ge >> 7) * 0xff
	return a&m | b&^m
}

const (
	lowBytes  = 0x0101010101010101
	highBytes = 0x8080808080808080
)

// atLeast returns the bytes of w (eight tops, each at most cpuBuckets) that are >= v
// (1 <= v <= cpuBuckets) as their high bits: adding 128-v to a byte sets its high bit
// exactly when it is >= v, and no byte carries into the next (64+127 < 256).
func atLeast(w uint64, v byte) uint64 {
	return (w + uint64(0x80-v)*lowBytes) & highBytes
}

func word(b []byte, i int) uint64 { return binary.LittleEndian.Uint64(b[i:]) }

// nextClass returns the first class >= lo holding a node with CPU bucket >= need, or -1.
func (x *capIndex) nextClass(lo int, need int8) int {
	if lo < 0 {
		lo = 0
	}
	if lo >= x.classes {
		return -1
	}
	v := byte(max(need, 0)) + 1
	i := lo
	for k, level := range x.tops {
		// The bytes of i's word from i on; the rest of the level is under the parent
		// bytes after i's.
		if m := atLeast(word(level, i&^7), v) &^ (1<<(8*(i&7)) - 1); m != 0 {
			i = i&^7 + bits.TrailingZeros64(m)/8
			for k--; k >= 0; k-- {
				i = i*8 + bits.TrailingZeros64(atLeast(word(x.tops[k], i*8), v))/8
			}
			return i
		}
		if i = i>>3 + 1; k+1 < len(x.tops) && i >= len(x.tops[k+1]) {
			return -1
		}
	}
	return -1
}

// prevClass returns the last class <= hi holding a node with CPU bucket >= need, or -1.
func (x *capIndex) prevClass(hi int, need int8) int {
	if hi >= x.classes {
		hi = x.classes - 1
	}
	if hi < 0 {
		return -1
	}
	v := byte(max(need, 0)) + 1
	i := hi
	for k, level := range x.tops {
		// The bytes of i's word up to i; the rest of the level is under the parent
		// bytes before i's.
		m := atLeast(word(level, i&^7), v)
		if j := i & 7; j < 7 {
			m &= 1<<(8*(j+1)) - 1
		}
		if m != 0 {
			i = i&^7 + (63-bits.LeadingZeros64(m))/8
			for k--; k >= 0; k-- {
				i = i*8 + (63-bits.LeadingZeros64(atLeast(word(x.tops[k], i*8), v)))/8
			}
			return i
		}
		if i = i>>3 - 1; i < 0 {
			return -1
		}
	}
	return -1
}
