package route

import "sync/atomic"

// Holder publishes immutable snapshots (usually *Table) to readers without
// locks. The zero value holds nil. Readers Load on every request; a writer
// builds a new snapshot and Stores it, so a reader always sees one complete
// snapshot.
type Holder[T any] struct {
	p atomic.Pointer[T]
}

// Load returns the current snapshot, or nil before the first Store.
func (h *Holder[T]) Load() *T { return h.p.Load() }

// Store publishes v.
func (h *Holder[T]) Store(v *T) { h.p.Store(v) }

// Update builds a new snapshot and publishes it only if build succeeds, so
// invalid configuration leaves the previous snapshot in force. It returns
// build's error.
func (h *Holder[T]) Update(build func() (*T, error)) error {
	v, err := build()
	if err != nil {
		return err
	}
	h.p.Store(v)
	return nil
}

// Weighted is an immutable weighted choice over items, applied as Envoy
// applies weighted clusters: the total is the sum of the weights (no
// normalisation), a random value modulo the total selects a point, and the
// items own consecutive intervals in list order. Zero weights own nothing.
type Weighted[T any] struct {
	items []T
	cum   []uint64
	total uint64
}

// NewWeighted builds a Weighted from items and their weights.
func NewWeighted[T any](items []T, weights []uint32) Weighted[T] {
	w := Weighted[T]{items: items, cum: make([]uint64, len(items))}
	for i := range items {
		w.total += uint64(weights[i])
		w.cum[i] = w.total
	}
	return w
}

// Total is the sum of the weights.
func (w *Weighted[T]) Total() uint64 { return w.total }

// Len is the number of items.
func (w *Weighted[T]) Len() int { return len(w.items) }

// Pick chooses with the random value r. It returns the index, or -1 when
// the total is zero.
func (w *Weighted[T]) Pick(r uint64) int {
	if w.total == 0 {
		return -1
	}
	sel := r % w.total
	// Linear for the usual handful of items, binary search otherwise.
	if len(w.cum) <= 8 {
		for i, c := range w.cum {
			if sel < c {
				return i
			}
		}
		return len(w.cum) - 1
	}
	lo, hi := 0, len(w.cum)-1
	for lo < hi {
		m := (lo + hi) / 2
		if sel < w.cum[m] {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// Item returns item i.
func (w *Weighted[T]) Item(i int) T { return w.items[i] }
