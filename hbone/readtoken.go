package hbone

import (
	"errors"
	"net"
	"time"
)

// Reading frames is a token passed between goroutines (leader/follower).
// A goroutine that needs something from the peer (a Read with no data
// buffered, a Write without flow-control credit, a dial awaiting its
// response) takes the token if nobody is reading and reads frames itself
// until it has what it wants. Frames for other streams are dispatched as
// usual. This saves a goroutine hand-off per message, which dominates
// small-message latency. The background reader (readLoop) holds the token
// whenever no application goroutine does, so PINGs, SETTINGS, GOAWAY and
// new streams are always served: it takes the token back once it has been
// idle for idleGrace, and gives it up after each frame while someone else
// waits for it.
//
// A goroutine blocked reading on behalf of the connection is interrupted
// (for its own Close, deadline or context) by a read deadline in the past.
// Interrupts only take effect at frame boundaries: retryReader clears the
// deadline and resumes if a frame is half read.

// idleGrace is how long the token may stay idle before the background
// reader takes it back: between one and two periods. A timer is not reset
// per release (timer changes wake the runtime's netpoller, which costs
// more than the hand-off saved); it fires once per period while
// application goroutines keep passing the token around.
const idleGrace = time.Millisecond

var (
	errInterrupted = errors.New("hbone: read interrupted")
	errConnDone    = errors.New("hbone: connection done")
)

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// retryReader reads from the connection, resuming a half-read frame after
// an interrupt.
type retryReader struct{ c *conn }

func (r retryReader) Read(p []byte) (int, error) {
	n, err := r.c.nc.Read(p)
	for n == 0 && err != nil && isTimeout(err) && r.c.midFrame.Load() && !r.c.isClosed() {
		r.c.rmu.Lock()
		r.c.nc.SetReadDeadline(time.Time{})
		r.c.rmu.Unlock()
		n, err = r.c.nc.Read(p)
	}
	return n, err
}

// tryAcquire makes the caller the active reader if nobody is reading.
func (c *conn) tryAcquire(owner *stream) bool {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.tokActive {
		return false
	}
	c.tokActive = true
	c.tokOwner = owner
	c.tokGen++
	return true
}

// release gives the token up and wakes goroutines waiting for it. The
// background reader takes it back after idleGrace unless someone else
// does first.
func (c *conn) release() {
	c.rmu.Lock()
	c.tokActive = false
	c.tokOwner = nil
	if c.tokWanted.Load() {
		c.tokWanted.Store(false)
		close(c.tokCh)
		c.tokCh = nil
	}
	if !c.timerArmed {
		c.timerArmed = true
		c.timerGen = c.tokGen
		if c.idleTimer == nil {
			c.idleTimer = time.AfterFunc(idleGrace, c.idleCheck)
		} else {
			c.idleTimer.Reset(idleGrace)
		}
	}
	c.rmu.Unlock()
}

// idleCheck wakes the background reader if the token stayed idle for a
// whole period.
func (c *conn) idleCheck() {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	switch {
	case c.tokActive:
		c.timerArmed = false // the next release re-arms
	case c.tokGen == c.timerGen:
		c.timerArmed = false
		c.wakeBG()
	default:
		c.timerGen = c.tokGen
		c.idleTimer.Reset(idleGrace)
	}
}

func (c *conn) wakeBG() {
	select {
	case c.bgWake <- struct{}{}:
	default:
	}
}

// tokenIdle returns a channel closed when the active reader releases the
// token, or ok=false if nobody is reading now (try to acquire again).
func (c *conn) tokenIdle() (ch <-chan struct{}, ok bool) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if !c.tokActive {
		return nil, false
	}
	if c.tokCh == nil {
		c.tokCh = make(chan struct{})
	}
	c.tokWanted.Store(true)
	return c.tokCh, true
}

// interruptRead stops the active reader if it reads on behalf of st, so
// that it can notice st's Close, deadline or context.
func (c *conn) interruptRead(st *stream) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.tokActive && c.tokOwner == st {
		c.interrupted.Store(true)
		c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

func (c *conn) clearInterrupt() {
	c.rmu.Lock()
	c.interrupted.Store(false)
	c.nc.SetReadDeadline(time.Time{})
	c.rmu.Unlock()
}

// readUntil reads frames as the active reader until done reports true,
// an interrupt arrives or the connection ends. The caller holds the token
// and releases it afterwards.
func (c *conn) readUntil(done func() bool) {
	for !done() {
		if err := c.readFrame(); err != nil {
			return
		}
	}
}

// readLoop is the background reader.
func (c *conn) readLoop() {
	defer c.wg.Done()
	for {
		if c.tryAcquire(nil) {
			for {
				err := c.readFrame()
				if err == errConnDone {
					c.release()
					return
				}
				if c.tokWanted.Load() {
					break
				}
			}
			c.release()
		}
		select {
		case <-c.bgWake:
		case <-c.done:
			return
		}
	}
}
