package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Port is the HBONE port: the next hop listens for tunnels here.
const Port = 15008

// Defaults of Dialer and Server fields.
const (
	DefaultIdleTimeout       = 5 * time.Minute
	DefaultMaxStreamsPerConn = defaultPoolStreams
	DefaultConnectTimeout    = 10 * time.Second
	DefaultKeepaliveInterval = defaultPingInterval
	DefaultKeepaliveTimeout  = defaultPingTimeout
	// DefaultDrainTimeout is how long Server.Shutdown lets streams finish
	// when its context has no deadline (spec §B.8).
	DefaultDrainTimeout = 5 * time.Second
	// TCPKeepalive is the TCP keepalive idle time and probe interval set on
	// tunnel sockets, as ztunnel does (with 9 probes).
	TCPKeepalive = 180 * time.Second
)

// Route says where and as whom one tunnel is dialled.
type Route struct {
	// Address is the next hop, host:port: the destination pod, the
	// waypoint or the east-west gateway, normally on port 15008. If empty,
	// the host of Authority with port 15008 is used.
	Address string
	// Authority is the CONNECT :authority: ip:port, [v6]:port or
	// fqdn:port. DialContext sets it to its addr argument when empty.
	Authority string
	// Source is the workload identity the client presents. If nil,
	// Dialer.Source.
	Source identity.Source
	// Expected lists the identities the server may have; it is accepted
	// if one URI SAN of its certificate equals one of them. If empty,
	// Dialer.Expected.
	Expected []spiffeid.ID
	// SourceIP, if valid, is the local address the TCP connection is
	// bound to. Connections are pooled per source IP.
	SourceIP netip.Addr
	// Header holds optional request headers such as baggage, forwarded,
	// traceparent and x-forwarded-network. It is added to Dialer.Header.
	Header http.Header
}

// Dialer opens HBONE tunnels over pooled HTTP/2 connections. Connections
// are pooled per {source identity, expected identities, next-hop address,
// source IP}: at most one connection is being set up per key at a time,
// a connection carries at most min(MaxStreamsPerConn, the peer's
// MAX_CONCURRENT_STREAMS) streams, and busy keys spread their streams
// over up to MaxConnsPerKey connections so that throughput scales with
// cores. Until the server's SETTINGS arrive, a new connection carries only
// the tunnel that opened it: other dials wait for them, so the peer's
// limit is never exceeded even when it is below 100. The zero value is ready to use once Source and Expected are set
// (or every dial passes a Route). A Dialer must not be copied after first
// use. Close it to release its connections.
type Dialer struct {
	// Source is the default client identity.
	Source identity.Source
	// Expected is the default list of accepted server identities.
	Expected []spiffeid.ID
	// Route, if set, maps DialContext's address to a Route. Otherwise
	// DialContext dials Route{Authority: addr}, whose next hop is the
	// host of addr on port 15008.
	Route func(ctx context.Context, network, addr string) (Route, error)
	// Header is sent with every CONNECT; Route.Header adds to it.
	Header http.Header

	// MaxStreamsPerConn caps the streams of one connection. If zero, 100.
	// The peer's MAX_CONCURRENT_STREAMS lowers it further.
	MaxStreamsPerConn int
	// MaxConnsPerKey is how many connections a pool key spreads busy
	// streams over before it stacks streams on one connection. If zero,
	// runtime.GOMAXPROCS(0). More connections are opened regardless when
	// all are at their stream cap.
	MaxConnsPerKey int
	// IdleTimeout closes connections that carried no stream for this long.
	// If zero, 5 minutes; if negative, never.
	IdleTimeout time.Duration
	// ConnectTimeout bounds the TCP connect plus TLS handshake, and the
	// wait for the server's first SETTINGS after it (a connection without
	// them by then is closed). If zero, 10 s.
	ConnectTimeout time.Duration
	// KeepaliveInterval is the wait before each HTTP/2 PING (the first
	// after connecting, then after each answer). If zero, 10 s; if
	// negative, no PINGs are sent.
	KeepaliveInterval time.Duration
	// KeepaliveTimeout closes a connection whose PING is not answered in
	// time. If zero, 20 s.
	KeepaliveTimeout time.Duration
	// DialTCP opens the TCP connection to the next hop. If nil, a
	// net.Dialer with TCP keepalive 180 s/180 s/9 probes, bound to
	// Route.SourceIP when set. TCP_NODELAY is Go's default.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives per-connection events at Debug. If nil, discard.
	Logger *slog.Logger

	mu     sync.Mutex
	pools  map[poolKey]*pool
	closed bool
	// plainForTest skips TLS on dialled connections (fuzzing only).
	plainForTest bool
}

type poolKey struct {
	source   string
	expected string
	addr     string
	sourceIP netip.Addr
}

type pool struct {
	d       *Dialer
	key     poolKey
	tlsConf *tls.Config
	mu      sync.Mutex
	conns   []*conn
	idle    map[*conn]*time.Timer
	dialing *dialCall // non-nil while a connection is being set up
	// dead is set when the pool has left d.pools (its last connection
	// closed): callers holding it look the key up again.
	dead bool
}

// errPoolGone tells Dial that the pool it looked up was removed.
var errPoolGone = errors.New("hbone: pool removed")

// dialCall is one connection set-up that other dials wait for.
type dialCall struct {
	done chan struct{}
	err  error
}

// DialContext opens a tunnel to addr through the next hop chosen by
// d.Route (or addr's host on port 15008). network must be "tcp", "tcp4"
// or "tcp6". The returned net.Conn is a *Conn. It honours ctx until the
// server has answered 200.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("hbone: dial %s %s: network must be tcp, tcp4 or tcp6", network, addr)
	}
	r := Route{Authority: addr}
	if d.Route != nil {
		var err error
		if r, err = d.Route(ctx, network, addr); err != nil {
			return nil, fmt.Errorf("hbone: route %s: %w", addr, err)
		}
		if r.Authority == "" {
			r.Authority = addr
		}
	}
	c, err := d.Dial(ctx, r)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Dial opens a tunnel as described by r. A non-200 answer is a
// *ConnectError.
func (d *Dialer) Dial(ctx context.Context, r Route) (*Conn, error) {
	if r.Authority == "" {
		return nil, errors.New("hbone: Route.Authority is empty")
	}
	if _, _, err := SplitAuthority(r.Authority); err != nil {
		return nil, err
	}
	if r.Address == "" {
		host, _, _ := SplitAuthority(r.Authority)
		r.Address = net.JoinHostPort(host, strconv.Itoa(Port))
	}
	if r.Source == nil {
		r.Source = d.Source
	}
	if r.Source == nil {
		return nil, errors.New("hbone: no client identity: Route.Source and Dialer.Source are nil")
	}
	if len(r.Expected) == 0 {
		r.Expected = d.Expected
	}
	if len(r.Expected) == 0 {
		return nil, errors.New("hbone: no expected server identity: Route.Expected and Dialer.Expected are empty")
	}
	svid, err := r.Source.SVID(ctx)
	if err != nil {
		return nil, fmt.Errorf("hbone: client identity: %w", err)
	}
	exp := make([]string, len(r.Expected))
	for i, id := range r.Expected {
		exp[i] = id.String()
	}
	slices.Sort(exp)
	key := poolKey{source: svid.ID.String(), expected: strings.Join(exp, ","), addr: r.Address, sourceIP: r.SourceIP}
	hdr := r.Header
	if d.Header != nil {
		hdr = d.Header.Clone()
		for k, vs := range r.Header {
			hdr[k] = append(hdr[k], vs...)
		}
	}
	fields := connectFields(r.Authority, hdr)
	var lastErr error
	for attempt := 0; attempt < 3; {
		p, err := d.pool(key, r)
		if err != nil {
			return nil, err
		}
		c, err := p.get(ctx, r)
		if err == errPoolGone {
			continue
		}
		if err != nil {
			return nil, err
		}
		attempt++
		st, err := c.openStream(fields)
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		st.authority = r.Authority
		status, err := st.awaitResponse(ctx)
		if err == nil && status == http.StatusOK {
			return st, nil
		}
		st.Close()
		if err == nil {
			return nil, &ConnectError{StatusCode: status, Authority: r.Authority}
		}
		lastErr = err
		if !errors.Is(err, ErrGoAway) && !errors.Is(err, ErrRefused) || ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", r.Authority, r.Address, lastErr)
}

func (st *stream) awaitResponse(ctx context.Context) (int, error) {
	c := st.c
	answered := func() bool {
		select {
		case <-st.resp:
			return true
		case <-st.done:
			return true
		case <-ctx.Done():
			return true
		default:
			return false
		}
	}
	for !answered() {
		if c.tryAcquire(st) {
			stop := context.AfterFunc(ctx, func() { c.interruptRead(st) })
			c.readUntil(answered)
			stop()
			c.release()
			continue
		}
		idle, ok := c.tokenIdle()
		if !ok {
			continue
		}
		select {
		case <-st.resp:
		case <-st.done:
		case <-ctx.Done():
		case <-idle:
		}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.respShut {
		return st.status, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if st.rerr != nil {
		return 0, st.rerr
	}
	return 0, ErrConnClosed
}

func (d *Dialer) pool(key poolKey, r Route) (*pool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrDialerClosed
	}
	if p := d.pools[key]; p != nil {
		return p, nil
	}
	if d.pools == nil {
		d.pools = make(map[poolKey]*pool)
	}
	p := &pool{d: d, key: key, idle: make(map[*conn]*time.Timer),
		tlsConf: identity.ClientTLSConfig(r.Source, r.Expected...)}
	d.pools[key] = p
	return p, nil
}

// get returns a connection with a reserved stream slot.
func (p *pool) get(ctx context.Context, r Route) (*conn, error) {
	d := p.d
	limit := cmpOr(d.MaxStreamsPerConn, DefaultMaxStreamsPerConn)
	maxConns := cmpOr(d.MaxConnsPerKey, runtime.GOMAXPROCS(0))
	p.mu.Lock()
	for {
		d.mu.Lock()
		closed := d.closed
		d.mu.Unlock()
		if closed {
			p.mu.Unlock()
			return nil, ErrDialerClosed
		}
		if p.dead {
			p.mu.Unlock()
			return nil, errPoolGone
		}
		// Least-loaded usable connection.
		var best, pending *conn
		bestN, usable := 0, 0
		for _, c := range p.conns {
			if !c.usable() {
				continue
			}
			usable++
			if c.awaitingSettings() {
				pending = c
			}
			if n := c.activeStreams(); best == nil || n < bestN {
				best, bestN = c, n
			}
		}
		spread := best != nil && bestN > 0 && usable < maxConns
		if best != nil && (!spread || p.dialing != nil) {
			if best.reserve(limit) {
				p.mu.Unlock()
				return best, nil
			}
			// The least loaded may be waiting for its SETTINGS while
			// another has room.
			for _, c := range p.conns {
				if c != best && c.reserve(limit) {
					p.mu.Unlock()
					return c, nil
				}
			}
		}
		if call := p.dialing; call != nil {
			p.mu.Unlock()
			select {
			case <-call.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("hbone: dial %s: %w", p.key.addr, ctx.Err())
			}
			// Share the outcome of a failed set-up rather than queueing
			// another one behind it, unless it failed on its own context.
			if call.err != nil && !errors.Is(call.err, context.Canceled) && !errors.Is(call.err, context.DeadlineExceeded) {
				return nil, call.err
			}
			p.mu.Lock()
			continue
		}
		if pending != nil && !spread {
			// Every usable connection is full or still waiting for the
			// server's SETTINGS (whose MAX_CONCURRENT_STREAMS may be below
			// our cap). Wait for them rather than open yet another
			// connection; the connection's settingsTimeout bounds this.
			p.mu.Unlock()
			select {
			case <-pending.settingsCh:
			case <-pending.done:
				if pending.awaitingSettings() {
					// The set-up failed before SETTINGS: share the outcome
					// like a failed dial.
					return nil, fmt.Errorf("hbone: dial %s: %w", p.key.addr, pending.err())
				}
			case <-ctx.Done():
				return nil, fmt.Errorf("hbone: dial %s: waiting for the server's SETTINGS: %w", p.key.addr, ctx.Err())
			}
			p.mu.Lock()
			continue
		}
		call := &dialCall{done: make(chan struct{})}
		p.dialing = call
		p.mu.Unlock()
		c, err := p.dial(ctx, r)
		p.mu.Lock()
		p.dialing = nil
		call.err = err
		close(call.done)
		if err != nil {
			p.removeIfEmptyLocked()
			p.mu.Unlock()
			return nil, err
		}
		d.mu.Lock()
		closed = d.closed
		d.mu.Unlock()
		if closed {
			p.mu.Unlock()
			c.close()
			return nil, ErrDialerClosed
		}
		p.conns = append(p.conns, c)
		if c.reserve(limit) {
			p.mu.Unlock()
			return c, nil
		}
	}
}

func (p *pool) dial(ctx context.Context, r Route) (*conn, error) {
	d := p.d
	ctx, cancel := context.WithTimeout(ctx, cmpOr(d.ConnectTimeout, DefaultConnectTimeout))
	defer cancel()
	dialTCP := d.DialTCP
	if dialTCP == nil {
		nd := &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: TCPKeepalive, Interval: TCPKeepalive, Count: 9}}
		if r.SourceIP.IsValid() {
			nd.LocalAddr = &net.TCPAddr{IP: r.SourceIP.AsSlice()}
		}
		dialTCP = nd.DialContext
	}
	nc, err := dialTCP(ctx, "tcp", r.Address)
	if err != nil {
		return nil, fmt.Errorf("hbone: dial %s: %w", r.Address, err)
	}
	tc, err := p.handshake(ctx, nc, r.Address)
	if err != nil {
		return nil, err
	}
	c := newConn(tc, connConfig{
		client:       true,
		pingInterval: d.KeepaliveInterval,
		pingTimeout:  d.KeepaliveTimeout,
		logger:       d.Logger,
		onIdle:       p.onIdle,
		onClose:      p.remove,
		// A server sends SETTINGS first; one that does not within the
		// connect timeout is broken, and dials waiting on it give up.
		settingsTimeout: cmpOr(d.ConnectTimeout, DefaultConnectTimeout),
	})
	c.start()
	if l := d.Logger; l != nil {
		l.Debug("hbone: connected", "addr", r.Address, "source", p.key.source)
	}
	return c, nil
}

// handshake runs the TLS client handshake on nc and checks ALPN h2.
func (p *pool) handshake(ctx context.Context, nc net.Conn, addr string) (net.Conn, error) {
	if p.d.plainForTest {
		return nc, nil
	}
	tc := tls.Client(nc, p.tlsConf)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s: %w", addr, err)
	}
	if tc.ConnectionState().NegotiatedProtocol != "h2" {
		tc.Close()
		return nil, fmt.Errorf("hbone: %s: %w", addr, ErrNoALPN)
	}
	return tc, nil
}

// onIdle runs when a connection has no streams left.
func (p *pool) onIdle(c *conn) {
	c.mu.Lock()
	goingAway := c.goAwayRecv
	c.mu.Unlock()
	if goingAway {
		c.closeGracefully(nil)
		return
	}
	idle := p.d.IdleTimeout
	if idle == 0 {
		idle = DefaultIdleTimeout
	}
	if idle < 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !slices.Contains(p.conns, c) {
		return
	}
	if t := p.idle[c]; t != nil {
		t.Stop()
	}
	p.idle[c] = time.AfterFunc(idle, func() { c.retireIfIdle() })
}

// remove forgets a closed connection, and the pool itself with its last
// connection, so that keys which come and go do not pile up in d.pools.
func (p *pool) remove(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns = slices.DeleteFunc(p.conns, func(x *conn) bool { return x == c })
	if t := p.idle[c]; t != nil {
		t.Stop()
		delete(p.idle, c)
	}
	p.removeIfEmptyLocked()
}

// removeIfEmptyLocked drops the pool from d.pools if it has no connection
// and none is being set up. p.mu is held.
func (p *pool) removeIfEmptyLocked() {
	if p.dead || len(p.conns) > 0 || p.dialing != nil {
		return
	}
	p.dead = true
	d := p.d
	d.mu.Lock()
	if d.pools[p.key] == p {
		delete(d.pools, p.key)
	}
	d.mu.Unlock()
}

// Close closes every pooled connection (and with them their tunnels) and
// makes further dials fail with ErrDialerClosed.
func (d *Dialer) Close() error {
	d.mu.Lock()
	d.closed = true
	pools := d.pools
	d.pools = nil
	d.mu.Unlock()
	for _, p := range pools {
		p.mu.Lock()
		conns := slices.Clone(p.conns)
		p.mu.Unlock()
		for _, c := range conns {
			c.close()
		}
	}
	return nil
}

// Stats describes the pooled connections of a Dialer.
type Stats struct {
	// Conns is the number of open connections, draining ones included.
	Conns int
	// Streams is the number of open streams over all connections.
	Streams int
	// Draining is the number of open connections that received GOAWAY:
	// they finish their streams but take no new ones.
	Draining int
	// MaxConnStreams is the most streams open on any one connection; it
	// never exceeds the stream cap.
	MaxConnStreams int
}

// Stats reports the Dialer's pooled connections and streams.
func (d *Dialer) Stats() Stats {
	d.mu.Lock()
	pools := make([]*pool, 0, len(d.pools))
	for _, p := range d.pools {
		pools = append(pools, p)
	}
	d.mu.Unlock()
	var s Stats
	for _, p := range pools {
		p.mu.Lock()
		for _, c := range p.conns {
			if c.isClosed() {
				continue
			}
			n := c.activeStreams()
			s.Conns++
			s.Streams += n
			s.MaxConnStreams = max(s.MaxConnStreams, n)
			if c.draining() {
				s.Draining++
			}
		}
		p.mu.Unlock()
	}
	return s
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
