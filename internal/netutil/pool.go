package netutil

import "sync"

// Buffer size classes. GetBuffer rounds a request up to the next class;
// requests above the largest class are allocated and not pooled.
var classes = [...]int{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20}

// MaxPooled is the largest buffer size the pools keep.
const MaxPooled = 1 << 20

type bufPool struct{ p sync.Pool }

// pools is indexed like classes. It holds no mutable package state of its
// own beyond sync.Pool caches, which the runtime may drop at any time.
var pools [len(classes)]bufPool

func classOf(n int) int {
	for i, c := range classes {
		if n <= c {
			return i
		}
	}
	return -1
}

// GetBuffer returns a slice of length n whose capacity is n rounded up to a
// size class. Return it with PutBuffer when done.
func GetBuffer(n int) []byte {
	i := classOf(n)
	if i < 0 {
		return make([]byte, n)
	}
	if v := pools[i].p.Get(); v != nil {
		b := *(v.(*[]byte))
		return b[:n]
	}
	return make([]byte, n, classes[i])
}

// PutBuffer returns a buffer obtained from GetBuffer. Buffers whose capacity
// is not exactly a size class are dropped.
func PutBuffer(b []byte) {
	c := cap(b)
	i := classOf(c)
	if i < 0 || classes[i] != c {
		return
	}
	b = b[:c]
	pools[i].p.Put(&b)
}
