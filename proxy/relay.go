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
func (p *Proxy) relay(a, b net.Conn) (aToB, bToA int64, err error) {
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
