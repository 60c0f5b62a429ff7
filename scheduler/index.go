package scheduler

import (
	"encoding/binary"
	"math/bits"
)

// cpuBuckets is how many free-CPU buckets each memory class has; bucket b holds nodes with
// exactly b free CPUs, the last one nodes with cpuBuckets-1 or more.
const cpuBuckets = 64

// classBlock is how many memory classes share one summary byte: a block's tops are one
// 64-byte cache line.
const classBlock = 64

// capIndex orders the nodes of one pool (all accepting nodes, or those carrying one
// label) by free capacity, so the best-fitting node is found without looking at the
// others. A node sits in one bucket (memory class, CPU bucket): the memory class is its
// free memory shifted right by shift, so classes are ordered by free memory. Each class
// has a 64-bit mask of its non-empty CPU buckets and a top byte (its highest non-empty
// bucket + 1, 0 when empty); each block of 64 classes has a bound on the tops of its
// classes (their maximum, or more until a search finds the block stale and fixes it). "The first class at or above m with a node of at least c free CPUs" compares
// eight tops at a time (see atLeast) within m's block, then the block tops, then within
// the block found: a few cache lines, where a binary tree over 8192 classes walked up to
// 13 levels and missed the cache at most of them, on every update too.
//
// Every operation is O(classes/64/8) word compares at worst, O(1) cache lines in
// practice; nothing depends on the number of nodes except the walk along one bucket's
// list, which only continues past nodes that fail a filter the pool does not cover.
type capIndex struct {
	shift    uint
	classes  int
	mask     []uint64 // per class: bit b set when bucket (class, b) is non-empty
	top      []byte   // per class, padded to whole blocks: highest non-empty bucket + 1, 0 = none
	blockTop []byte   // per block, padded to 8: at least the highest top of its classes
	head     []int32  // per bucket (class*cpuBuckets+b): first node+1, 0 = empty
	links    []nodeLink
	size     int // nodes indexed
}

// nodeLink is a node's place in its bucket's list, kept together so moving a node
// touches one cache line of its own.
type nodeLink struct {
	next, prev int32 // node+1 in the same bucket, 0 = none
	at         int32 // bucket+1, 0 = not in this index
}

func newCapIndex(nodes, classes int, shift uint) *capIndex {
	blocks := (classes + classBlock - 1) / classBlock
	return &capIndex{
		shift:    shift,
		classes:  classes,
		mask:     make([]uint64, classes),
		top:      make([]byte, blocks*classBlock),
		blockTop: make([]byte, (blocks+7)/8*8),
		head:     make([]int32, classes*cpuBuckets),
		links:    make([]nodeLink, nodes),
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

// put indexes node n under its free capacity, moving it if it was indexed elsewhere. A
// node that cannot take even the smallest guest (1 CPU, 1 byte) is left out.
func (x *capIndex) put(n int32, freeCPU int32, freeMem int64) {
	if freeCPU < 1 || freeMem < 1 {
		x.remove(n)
		return
	}
	c := x.class(freeMem)
	b := cpuBucket(freeCPU)
	bucket := int32(c*cpuBuckets + b)
	l := &x.links[n]
	if l.at == bucket+1 {
		return
	}
	x.remove(n)
	h := x.head[bucket]
	l.next, l.prev, l.at = h, 0, bucket+1
	if h != 0 {
		x.links[h-1].prev = n + 1
	}
	x.head[bucket] = n + 1
	x.size++
	if x.mask[c]&(1<<b) == 0 {
		x.mask[c] |= 1 << b
		if byte(b+1) > x.top[c] {
			x.setTop(c, byte(b+1))
		}
	}
}

func (x *capIndex) remove(n int32) {
	l := &x.links[n]
	if l.at == 0 {
		return
	}
	bucket := l.at - 1
	p, nx := l.prev, l.next
	if p != 0 {
		x.links[p-1].next = nx
	} else {
		x.head[bucket] = nx
	}
	if nx != 0 {
		x.links[nx-1].prev = p
	}
	*l = nodeLink{}
	x.size--
	if x.head[bucket] == 0 {
		c := int(bucket) / cpuBuckets
		b := int(bucket) % cpuBuckets
		x.mask[c] &^= 1 << b
		x.setTop(c, byte(bits.Len64(x.mask[c])))
	}
}

// setTop records class c's top. Its block's top is only raised here: when the class
// goes down, the block's top stays an upper bound until a search finds nothing in the
// block (see fixBlock). Most blocks a node leaves on its way down are not searched again
// before another node arrives, so they are not recomputed on every move.
func (x *capIndex) setTop(c int, v byte) {
	x.top[c] = v
	if blk := c / classBlock; v > x.blockTop[blk] {
		x.blockTop[blk] = v
	}
}

// fixBlock sets block blk's top to the highest top of its classes.
func (x *capIndex) fixBlock(blk int) {
	tops := x.top[blk*classBlock : (blk+1)*classBlock]
	// Pairwise, so the eight words are not one long chain of dependent steps.
	m := maxBytes(
		maxBytes(maxBytes(word(tops, 0), word(tops, 8)), maxBytes(word(tops, 16), word(tops, 24))),
		maxBytes(maxBytes(word(tops, 32), word(tops, 40)), maxBytes(word(tops, 48), word(tops, 56))))
	m = maxBytes(m, m>>32)
	m = maxBytes(m, m>>16)
	m = maxBytes(m, m>>8)
	x.blockTop[blk] = byte(m)
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

// firstAtLeast returns the index of the first byte of b at or after from that is >= v,
// or -1; len(b) is a multiple of 8.
func firstAtLeast(b []byte, from int, v byte) int {
	if from >= len(b) {
		return -1
	}
	i := from &^ 7
	m := atLeast(word(b, i), v) &^ (1<<(8*(from&7)) - 1)
	for m == 0 {
		if i += 8; i >= len(b) {
			return -1
		}
		m = atLeast(word(b, i), v)
	}
	return i + bits.TrailingZeros64(m)/8
}

// lastAtLeast returns the index of the last byte of b at or before to that is >= v, or
// -1; len(b) is a multiple of 8.
func lastAtLeast(b []byte, to int, v byte) int {
	i := to &^ 7
	m := atLeast(word(b, i), v)
	if k := to & 7; k < 7 {
		m &= 1<<(8*(k+1)) - 1
	}
	for m == 0 {
		if i -= 8; i < 0 {
			return -1
		}
		m = atLeast(word(b, i), v)
	}
	return i + (63-bits.LeadingZeros64(m))/8
}

// nextClass returns the first class >= lo holding a node with CPU bucket >= need, or -1.
func (x *capIndex) nextClass(lo int, need int8) int {
	if lo < 0 {
		lo = 0
	}
	if lo >= x.classes {
		return -1
	}
	v := byte(max(need, 0)) + 1
	blk := lo / classBlock
	if c := firstAtLeast(x.top[blk*classBlock:(blk+1)*classBlock], lo%classBlock, v); c >= 0 {
		return blk*classBlock + c
	}
	for {
		if blk = firstAtLeast(x.blockTop, blk+1, v); blk < 0 {
			return -1
		}
		if c := firstAtLeast(x.top[blk*classBlock:(blk+1)*classBlock], 0, v); c >= 0 {
			return blk*classBlock + c
		}
		x.fixBlock(blk) // its top was stale: now below v
	}
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
	blk := hi / classBlock
	if c := lastAtLeast(x.top[blk*classBlock:(blk+1)*classBlock], hi%classBlock, v); c >= 0 {
		return blk*classBlock + c
	}
	for blk > 0 {
		if blk = lastAtLeast(x.blockTop, blk-1, v); blk < 0 {
			return -1
		}
		if c := lastAtLeast(x.top[blk*classBlock:(blk+1)*classBlock], classBlock-1, v); c >= 0 {
			return blk*classBlock + c
		}
		x.fixBlock(blk)
	}
	return -1
}
