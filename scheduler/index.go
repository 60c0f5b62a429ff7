package scheduler

import "math/bits"

// cpuBuckets is how many free-CPU buckets each memory class has; bucket b holds nodes with
// exactly b free CPUs, the last one nodes with cpuBuckets-1 or more.
const cpuBuckets = 64

// capIndex orders the nodes of one pool (all accepting nodes, or those carrying one
// label) by free capacity, so the best-fitting node is found without looking at the
// others. A node sits in one bucket (memory class, CPU bucket): the memory class is its
// free memory shifted right by shift, so classes are ordered by free memory. Each class
// has a 64-bit mask of its non-empty CPU buckets, and a max segment tree over the classes
// holds the highest non-empty CPU bucket below each tree node, so "the first class at or
// above m with a node of at least c free CPUs" is one descent of the tree.
//
// Every operation is O(log classes) or O(1); nothing depends on the number of nodes except
// the walk along one bucket's list, which only continues past nodes that fail a filter
// the pool does not cover.
type capIndex struct {
	shift   uint
	classes int
	leaves  int      // power of two >= classes
	mask    []uint64 // per class: bit b set when bucket (class, b) is non-empty
	top     []int8   // segment tree, leaves at [leaves+class]: highest non-empty bucket, -1 none
	head    []int32  // per bucket (class*cpuBuckets+b): first node+1, 0 = empty
	next    []int32  // per node: next node+1 in its bucket
	prev    []int32  // per node: previous node+1 in its bucket
	at      []int32  // per node: bucket+1, 0 = not in this index
	size    int      // nodes indexed
}

func newCapIndex(nodes, classes int, shift uint) *capIndex {
	leaves := 1
	for leaves < classes {
		leaves <<= 1
	}
	x := &capIndex{
		shift:   shift,
		classes: classes,
		leaves:  leaves,
		mask:    make([]uint64, classes),
		top:     make([]int8, 2*leaves),
		head:    make([]int32, classes*cpuBuckets),
		next:    make([]int32, nodes),
		prev:    make([]int32, nodes),
		at:      make([]int32, nodes),
	}
	for i := range x.top {
		x.top[i] = -1
	}
	return x
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
	if x.at[n] == bucket+1 {
		return
	}
	x.remove(n)
	h := x.head[bucket]
	x.next[n] = h
	x.prev[n] = 0
	if h != 0 {
		x.prev[h-1] = n + 1
	}
	x.head[bucket] = n + 1
	x.at[n] = bucket + 1
	x.size++
	if x.mask[c]&(1<<b) == 0 {
		x.mask[c] |= 1 << b
		if int8(b) > x.top[x.leaves+c] {
			x.setTop(c, int8(b))
		}
	}
}

func (x *capIndex) remove(n int32) {
	a := x.at[n]
	if a == 0 {
		return
	}
	bucket := a - 1
	p, nx := x.prev[n], x.next[n]
	if p != 0 {
		x.next[p-1] = nx
	} else {
		x.head[bucket] = nx
	}
	if nx != 0 {
		x.prev[nx-1] = p
	}
	x.at[n] = 0
	x.size--
	if x.head[bucket] == 0 {
		c := int(bucket) / cpuBuckets
		b := int(bucket) % cpuBuckets
		x.mask[c] &^= 1 << b
		x.setTop(c, int8(bits.Len64(x.mask[c])-1))
	}
}

func (x *capIndex) setTop(c int, v int8) {
	i := x.leaves + c
	x.top[i] = v
	for i > 1 {
		i >>= 1
		l, r := x.top[2*i], x.top[2*i+1]
		if r > l {
			l = r
		}
		if x.top[i] == l {
			return
		}
		x.top[i] = l
	}
}

// nextClass returns the first class >= lo holding a node with CPU bucket >= need, or -1.
func (x *capIndex) nextClass(lo int, need int8) int {
	if lo < 0 {
		lo = 0
	}
	if lo >= x.classes {
		return -1
	}
	top := x.top
	i := x.leaves + lo
	if top[i] < need {
		for {
			for i&1 == 1 {
				i >>= 1
			}
			if i == 0 {
				return -1
			}
			i++
			if top[i] >= need {
				break
			}
		}
		for i < x.leaves {
			i <<= 1
			if top[i] < need {
				i++
			}
		}
	}
	return i - x.leaves
}

// prevClass returns the last class <= hi holding a node with CPU bucket >= need, or -1.
func (x *capIndex) prevClass(hi int, need int8) int {
	if hi >= x.classes {
		hi = x.classes - 1
	}
	if hi < 0 {
		return -1
	}
	top := x.top
	i := x.leaves + hi
	if top[i] < need {
		for {
			for i&1 == 0 {
				i >>= 1
			}
			if i == 1 {
				return -1
			}
			i--
			if top[i] >= need {
				break
			}
		}
		for i < x.leaves {
			i = i<<1 | 1
			if top[i] < need {
				i--
			}
		}
	}
	return i - x.leaves
}
