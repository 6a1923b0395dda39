package netutil

import (
	"errors"
	"net"
	"time"
)

// ErrStopped is returned by AcceptLoop when handle asked it to stop.
var ErrStopped = errors.New("netutil: accept loop stopped")

// AcceptLoop accepts connections from ln and passes each to handle, which
// must not block (start a goroutine for the connection) and returns false
// to stop the loop; the connection is then already the caller's to close.
// Accept timeouts (such as EMFILE surfacing as a temporary error) back off
// from 5 ms doubling to 1 s and are retried. AcceptLoop returns
// ErrStopped, or the first other Accept error; callers decide whether that
// error means "closed by Shutdown" or a real failure.
func AcceptLoop(ln net.Listener, handle func(net.Conn) bool) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if !handle(c) {
			return ErrStopped
		}
	}
}
