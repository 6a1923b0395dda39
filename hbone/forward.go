package hbone

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/meshblocks/meshblocks/internal/netutil"
)

// Forwarder is a Handler that connects each tunnel to its :authority the
// way ztunnel's inbound does, minus policy: it dials the target first,
// answers 503 if that fails and 200 once it succeeded (so server-first
// protocols work), then relays bytes with half-close kept per direction.
type Forwarder struct {
	// Dial connects upstream. If nil, a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds the upstream connect. If zero, 10 s.
	Timeout time.Duration
}

// ServeHBONE implements Handler.
func (f *Forwarder) ServeHBONE(r *Request) {
	dial := f.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	ctx, cancel := context.WithTimeout(r.Context(), cmpOr(f.Timeout, DefaultConnectTimeout))
	up, err := dial(ctx, "tcp", r.Authority)
	cancel()
	if err != nil {
		r.Reject(http.StatusServiceUnavailable)
		return
	}
	c, err := r.Accept(nil)
	if err != nil {
		up.Close()
		return
	}
	Relay(c, up)
}

// Relay copies bytes between a tunnel and another connection in both
// directions until both have ended, ending each direction with
// CloseWrite when its source reaches EOF, and closes both. It returns the
// bytes copied each way.
func Relay(tunnel *Conn, other net.Conn) (toOther, toTunnel int64, err error) {
	return netutil.Join(tunnel, other)
}
