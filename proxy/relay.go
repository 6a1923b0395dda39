package proxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshblocks/meshblocks/internal/netutil"
)

// relay copies between a (towards the destination: a's bytes are "sent")
// and b until both directions end, keeping half-close per direction. It
// returns the bytes copied a->b and b->a. Plain TCP pairs are spliced by
// the kernel; with an IdleTimeout the connection closes once no byte moved
// either way for that long.
func (p *Proxy) relay(a, b net.Conn) (aToB, bToA int64, err error) {
	if p.cfg.IdleTimeout > 0 {
		return relayIdle(a, b, p.cfg.IdleTimeout)
	}
	return netutil.Join(a, b) // splices when both ends are TCP sockets
}

// activity counts reads on a connection so an idle watchdog can tell
// whether anything moved.
type activity struct {
	net.Conn
	n *atomic.Uint64
}

func (c activity) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.n.Add(1)
	}
	return n, err
}

func (c activity) CloseWrite() error {
	if cw, ok := c.Conn.(netutil.CloseWriter); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func relayIdle(a, b net.Conn, idle time.Duration) (aToB, bToA int64, err error) {
	var moved atomic.Uint64
	var last uint64
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	check := func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if now := moved.Load(); now != last {
			last = now
			t.Reset(idle)
			return
		}
		a.Close()
		b.Close()
	}
	mu.Lock()
	t = time.AfterFunc(idle, check)
	mu.Unlock()
	aToB, bToA, err = netutil.Join(activity{a, &moved}, activity{b, &moved})
	mu.Lock()
	stopped = true
	t.Stop()
	mu.Unlock()
	return aToB, bToA, err
}
