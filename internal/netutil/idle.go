package netutil

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ErrIdleTimeout is the error JoinIdle returns when it closed the
// connections because no byte moved for the idle timeout.
var ErrIdleTimeout = errors.New("netutil: idle timeout")

// JoinIdle is [Join] with an idle timeout: once no byte has moved in
// either direction for idle, both connections are closed and JoinIdle
// returns ErrIdleTimeout. The close comes between idle and twice idle
// after the last byte. With idle <= 0 it is Join.
//
// The connections are copied as Join copies them (splice between TCP
// sockets, the source's WriteTo for tunnel streams), not through a
// wrapper that would hide their types. A watchdog checks the byte counts
// once per idle period. Buffered and WriteTo copies count as they write;
// a spliced copy only reports when it returns, so the watchdog ends it by
// setting a read deadline in the past (a "kick"): the splice returns what
// it moved, the copy clears the deadline and resumes, and the watchdog
// decides once every kicked copy has answered. A read deadline takes
// effect only between chunks, so a kick loses no byte. A spliced copy
// that does not answer within a period is blocked writing to a peer that
// does not read, and counts as idle.
func JoinIdle(a, b net.Conn, idle time.Duration) (aToB, bToA int64, err error) {
	if idle <= 0 {
		return Join(a, b)
	}
	w := &watchdog{idle: idle, src: [2]net.Conn{a, b}}
	w.spliced = [2]bool{spliced(b, a), spliced(a, b)}
	w.mu.Lock()
	w.timer = time.AfterFunc(idle, w.fire)
	w.mu.Unlock()
	aToB, bToA, err = join(a, b, w.copy)
	w.mu.Lock()
	w.stopped = true
	w.timer.Stop()
	idled := w.idled
	w.mu.Unlock()
	if idled {
		err = ErrIdleTimeout
	}
	return aToB, bToA, err
}

// aLongTimeAgo is a read deadline in the past: it wakes a blocked read at
// once.
var aLongTimeAgo = time.Unix(1, 0)

// watchdog closes a joined pair of connections once no byte moved for a
// period. Direction 0 copies src[0] (a) to b, direction 1 src[1] (b) to a.
type watchdog struct {
	idle    time.Duration
	src     [2]net.Conn
	spliced [2]bool
	count   [2]atomic.Uint64 // bytes moved per direction

	mu       sync.Mutex
	timer    *time.Timer
	last     uint64  // count total at the previous verdict
	kicked   [2]bool // the direction's read deadline is in the past
	pending  [2]bool // kicked for the current probe and not answered yet
	npending int
	probing  bool
	done     [2]bool // the direction ended
	idled    bool    // closed for idleness
	stopped  bool
}

// copy copies one direction, resuming after each kick.
func (w *watchdog) copy(dst, src net.Conn, dir int) (int64, error) {
	var total int64
	for {
		n, err := copyCounted(dst, src, &w.count[dir])
		total += n
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && w.resume(dir) {
			continue
		}
		w.mu.Lock()
		w.done[dir] = true
		w.answerLocked(dir)
		idled := w.idled
		w.mu.Unlock()
		if idled {
			// The other side of an idle close: whatever this direction
			// saw (EOF, use of a closed connection) was caused by it.
			return total, ErrIdleTimeout
		}
		return total, err
	}
}

// resume handles a copy interrupted by a read deadline: if the watchdog
// kicked it, it clears the deadline, answers the probe and reports true
// (continue copying).
func (w *watchdog) resume(dir int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.kicked[dir] || w.idled {
		return false // a deadline someone else set, or closed for idleness
	}
	w.kicked[dir] = false
	w.src[dir].SetReadDeadline(time.Time{})
	w.answerLocked(dir)
	return !w.idled
}

func (w *watchdog) answerLocked(dir int) {
	if !w.pending[dir] {
		return
	}
	w.pending[dir] = false
	w.npending--
	if w.npending == 0 && w.probing {
		w.verdictLocked()
	}
}

// verdictLocked ends a probe: the connections are idle if no byte moved
// since the previous verdict.
func (w *watchdog) verdictLocked() {
	w.probing = false
	moved := w.count[0].Load() + w.count[1].Load()
	if moved != w.last {
		w.last = moved
		return
	}
	if w.stopped || w.idled {
		return
	}
	w.idled = true
	w.src[0].Close()
	w.src[1].Close()
}

// fire runs once per idle period. It kicks every live spliced direction
// so that it reports its bytes, or decides at once when there is none.
func (w *watchdog) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped || w.idled {
		return
	}
	// A probe still open from the last period has a direction blocked in
	// a write: drop it; that direction counts as idle below.
	w.pending = [2]bool{}
	w.npending = 0
	w.probing = true
	for dir := range w.src {
		if w.done[dir] || !w.spliced[dir] || w.kicked[dir] {
			continue
		}
		w.pending[dir] = true
		w.npending++
		w.kicked[dir] = true
		w.src[dir].SetReadDeadline(aLongTimeAgo)
	}
	if w.npending == 0 {
		w.verdictLocked()
	}
	if !w.idled {
		w.timer.Reset(w.idle)
	}
}
