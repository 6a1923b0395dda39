package proxy

import (
	"errors"
	"net"
	"time"

	"github.com/meshblocks/meshblocks/internal/netutil"
)

// relay copies between a (towards the destination: a's bytes are "sent")
// and b until both directions end, keeping half-close per direction. It
// returns the bytes copied a->b and b->a. Plain TCP pairs are spliced by
// the kernel and tunnel streams hand over their buffers (netutil.Copy);
// with an IdleTimeout the connection closes once no byte moved either way
// for that long, without giving up those fast paths.
//
// The pair is registered so that Shutdown waits for it and, once its grace
// period is over, closes both ends.
func (p *Proxy) relay(a, b net.Conn) (aToB, bToA int64, err error) {
	p.mu.Lock()
	if p.forced {
		p.mu.Unlock()
		a.Close()
		b.Close()
		return 0, 0, ErrProxyClosed
	}
	p.relays[a] = struct{}{}
	p.relays[b] = struct{}{}
	p.nrelays++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.relays, a)
		delete(p.relays, b)
		if p.nrelays--; p.nrelays == 0 {
			p.relayDone.Broadcast()
		}
		p.mu.Unlock()
	}()
	return relayIdle(a, b, p.cfg.IdleTimeout)
}

// relayIdle is netutil.JoinIdle with the proxy's idle error.
func relayIdle(a, b net.Conn, idle time.Duration) (aToB, bToA int64, err error) {
	aToB, bToA, err = netutil.JoinIdle(a, b, idle)
	if errors.Is(err, netutil.ErrIdleTimeout) {
		err = ErrIdleTimeout
	}
	return aToB, bToA, err
}
