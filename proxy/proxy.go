package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/internal/netutil"
)

// Errors of the data path; match them with errors.Is.
var (
	// ErrUnknownSource: an outbound connection that needs a certificate
	// came from an address that is not a known workload.
	ErrUnknownSource = errors.New("proxy: unknown source workload")
	// ErrUnknownDestination: an inbound connection is for an address
	// that is not a known workload of this node.
	ErrUnknownDestination = errors.New("proxy: unknown destination workload")
	// ErrDenied: authorization policy rejected the connection.
	ErrDenied = errors.New("proxy: connection closed due to policy rejection")
	// ErrPlaintextRejected: PeerAuthentication STRICT rejected a
	// plaintext connection.
	ErrPlaintextRejected = errors.New("proxy: plaintext rejected by peer authentication")
	// ErrSelfConnect: a connection's destination is the proxy's own
	// listener (the traffic was not redirected).
	ErrSelfConnect = errors.New("proxy: connection addressed to the proxy itself")
	// ErrIdleTimeout: a relayed connection was closed because no byte
	// moved for Config.IdleTimeout (ConnInfo.Err; logged at Info).
	ErrIdleTimeout = errors.New("proxy: connection idle timeout")
	// ErrPolicyChanged: an open inbound connection was closed because the
	// State that replaced the one it was authorized with no longer allows
	// it (ConnInfo.Err, wrapping ErrDenied, ErrPlaintextRejected or
	// ErrUnknownDestination with the reason; see
	// Config.DisablePolicyRecheck).
	ErrPolicyChanged = errors.New("proxy: connection closed due to policy change")
	// ErrProxyClosed is returned by Serve methods after Shutdown or Close.
	ErrProxyClosed = errors.New("proxy: closed")
)

// Config configures a [Proxy]. The zero value of every field except State
// and Identity is a documented default.
type Config struct {
	// State is where the data path reads workloads, services and
	// policies. Required.
	State *StateHolder
	// Identity returns the certificate source of a workload identity (for
	// example identity.Manager.Source). Required.
	Identity func(id spiffeid.ID) identity.Source
	// Node is the name of this proxy's node. When set, inbound connections
	// are only accepted for workloads whose Node is this name.
	Node string
	// Balancer picks service endpoints. If nil, [ZtunnelBalancer].
	Balancer Balancer
	// OriginalDst recovers the destination of a redirected outbound or
	// inbound plaintext connection (inpod.OriginalDst in a pod). If nil,
	// the connection's local address.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	// DialWorkload connects inbound traffic to a local workload, inside
	// its network namespace when in-pod. src is the original client
	// address. If nil, a plain TCP dial to addr.
	DialWorkload func(ctx context.Context, dst *Workload, addr netip.AddrPort, src netip.AddrPort) (net.Conn, error)
	// DialPassthrough connects outbound traffic to destinations outside
	// the mesh (and to workloads that do not speak HBONE). src is the
	// source workload or nil. If nil, a plain TCP dial.
	DialPassthrough func(ctx context.Context, src *Workload, addr netip.AddrPort) (net.Conn, error)
	// DialHBONE opens the TCP connection under an HBONE tunnel from source
	// workload src (inside its network namespace when in-pod; see
	// hbone.Dialer.DialTCP). Tunnels are then pooled per source workload.
	// If nil, the hbone default from the proxy's own namespace.
	DialHBONE func(ctx context.Context, src *Workload, network, addr string) (net.Conn, error)
	// BindSourceIP binds outbound HBONE connections to the source
	// workload's address, so that the destination sees the real client IP
	// (as ztunnel does with in-pod redirection). Default false.
	BindSourceIP bool
	// PlaintextAllowed is PeerAuthentication for the inbound plaintext
	// listener: it reports whether dst accepts plaintext on port. If nil,
	// the State's PeerAuthn decides (see WithPeerAuthn); without one,
	// PERMISSIVE (plaintext is allowed).
	PlaintextAllowed func(dst *Workload, port uint16) bool
	// ReservedPorts are the proxy's own ports. An inbound connection (an
	// HBONE CONNECT target or a redirected plaintext destination) for one
	// of them on a local workload is refused, with 503 or a reset: the
	// proxy dials workloads with the mark that exempts its sockets from
	// redirection, so such a dial would land in its own listener and loop
	// (hbone.md §C.11 step 4, ztunnel's "illegal ports"). The address of
	// every listener this Proxy serves is refused too, whatever its port.
	// If nil, [DefaultReservedPorts]; an empty non-nil slice leaves only
	// the listeners' addresses.
	ReservedPorts []uint16
	// ConnectTimeout bounds connecting upstream (HBONE or TCP). If zero,
	// 10 s.
	ConnectTimeout time.Duration
	// IdleTimeout closes relayed connections on which no byte moved in
	// either direction for this long. If zero, none (as ztunnel).
	IdleTimeout time.Duration
	// Keepalive configures TCP keepalive on accepted and dialled sockets.
	// If zero, ztunnel's 180 s idle, 180 s interval, 9 probes.
	Keepalive net.KeepAliveConfig
	// DisablePolicyRecheck keeps open inbound connections when the State
	// changes. By default (false), as ztunnel does, every Store to the
	// StateHolder re-runs the inbound decision for each open inbound
	// connection (HBONE and plaintext) with the new State: the
	// destination must still be the same workload of this node,
	// PeerAuthentication (or PlaintextAllowed) must still accept a
	// plaintext one, and the L4 policies must still allow its peer,
	// source address and port. A connection now refused has both ends of
	// its relay closed (the client sees its tunnel or socket end), an
	// Info line "connection no longer allowed after a state update;
	// closing it", and its access-log line and Closed hook carry
	// ErrPolicyChanged. The re-check runs on one goroutine per Proxy (only
	// while inbound connections are open), never on the data path.
	// Outbound connections are not re-checked: the destination's proxy
	// decides, and its close reaches the client through the tunnel.
	DisablePolicyRecheck bool
	// Logger receives the access log ("connection complete" per
	// connection), "RBAC rejected" lines and the lines of connections
	// closed after a State change, and at Debug the HBONE server's
	// per-connection events (such as failed TLS handshakes) and a summary
	// of each re-check. If nil, discard.
	Logger *slog.Logger
	// Hooks are called for metrics. Nil funcs are skipped.
	Hooks Hooks
}

// DefaultReservedPorts returns the ports Config.ReservedPorts defaults
// to: ztunnel's data-path ports 15001 (outbound), 15006 (inbound
// plaintext), 15008 (HBONE) and 15080 (SOCKS5), which ztunnel refuses as
// targets, and its admin (15000), metrics (15020) and readiness (15021)
// ports, which Istio also reserves for itself.
func DefaultReservedPorts() []uint16 {
	return []uint16{15000, 15001, 15006, 15008, 15020, 15021, 15080}
}

// Hooks observe connections for metrics. They run on the data path and
// must not block.
type Hooks struct {
	// Opened is called when a connection is established end to end.
	Opened func(c *ConnInfo)
	// Closed is called when an opened connection ends.
	Closed func(c *ConnInfo)
}

// Direction of a connection.
type Direction string

// Directions, as in ztunnel's access log.
const (
	Outbound Direction = "outbound"
	Inbound  Direction = "inbound"
)

// ConnInfo describes one proxied connection for logs and metrics.
type ConnInfo struct {
	Direction Direction
	// SrcAddr is the client's address; DstAddr the address the proxy
	// connected to (ip:15008 for HBONE); HBONEAddr the tunnel's target.
	SrcAddr, DstAddr, HBONEAddr netip.AddrPort
	SrcWorkload, DstWorkload    *Workload
	SrcIdentity, DstIdentity    spiffeid.ID
	// DstService is the hostname of the destination service, if any.
	DstService string
	// MTLS is true when the connection was carried over HBONE.
	MTLS bool
	// Sent counts bytes sent towards the destination, Received bytes
	// received from it. Set when the connection closes.
	Sent, Received int64
	Start          time.Time
	Duration       time.Duration
	// Err is why the connection failed, or nil.
	Err error

	open bool
}

// Proxy is a node proxy's L4 data path. Create one with [New], then serve
// listeners with its Serve methods; Shutdown drains it.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	dialer *hbone.Dialer
	server *hbone.Server

	dialersMu sync.Mutex
	dialers   map[string]*hbone.Dialer // per source workload uid, with DialHBONE

	tlsMu  sync.Mutex
	tlsFor map[spiffeid.ID]*tls.Config

	reserved []uint16

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	// own counts the addresses of the listeners being served; wildcard
	// listeners are keyed by [::]:port.
	own   map[netip.AddrPort]int
	conns map[net.Conn]struct{} // accepted connections
	wg    sync.WaitGroup        // per accepted connection
	// relays holds both ends of every relay (the inbound HBONE ones run
	// on the hbone server's goroutines, outside conns), so that a forced
	// shutdown can end a relay whose accepted side already finished.
	relays    map[net.Conn]struct{}
	nrelays   int
	relayDone sync.Cond // on mu; signalled when nrelays drops to 0
	forced    bool      // Shutdown's grace period ended: close relays at once

	// live holds the open inbound connections re-checked on State swaps.
	live liveSet
}

// New checks cfg and returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	if cfg.State == nil {
		return nil, errors.New("proxy: Config.State is required")
	}
	if cfg.Identity == nil {
		return nil, errors.New("proxy: Config.Identity is required")
	}
	if cfg.Balancer == nil {
		cfg.Balancer = ZtunnelBalancer
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.Keepalive == (net.KeepAliveConfig{}) {
		cfg.Keepalive = net.KeepAliveConfig{Enable: true, Idle: 180 * time.Second, Interval: 180 * time.Second, Count: 9}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		cfg:       cfg,
		log:       log,
		tlsFor:    make(map[spiffeid.ID]*tls.Config),
		listeners: make(map[net.Listener]struct{}),
		own:       make(map[netip.AddrPort]int),
		conns:     make(map[net.Conn]struct{}),
		relays:    make(map[net.Conn]struct{}),
		reserved:  cfg.ReservedPorts,
	}
	if p.reserved == nil {
		p.reserved = DefaultReservedPorts()
	}
	p.relayDone.L = &p.mu
	p.dialer = &hbone.Dialer{ConnectTimeout: cfg.ConnectTimeout}
	p.dialers = make(map[string]*hbone.Dialer)
	p.server = &hbone.Server{
		TLSConfig: &tls.Config{
			MinVersion:         tls.VersionTLS13,
			NextProtos:         []string{identity.ALPN},
			GetConfigForClient: p.serverTLS,
		},
		Handler: hbone.HandlerFunc(p.serveHBONE),
		Logger:  cfg.Logger,
	}
	return p, nil
}

// serverTLS presents the certificate of the workload the client dialled:
// a node proxy terminates HBONE for every workload on its node.
func (p *Proxy) serverTLS(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	local := addrPortOf(hello.Conn.LocalAddr())
	st := p.cfg.State.Load()
	w, ok := st.WorkloadByAddr(local.Addr())
	if !ok {
		return nil, fmt.Errorf("proxy: TLS for %s: %w", local.Addr(), ErrUnknownDestination)
	}
	id := st.IdentityOf(w)
	p.tlsMu.Lock()
	defer p.tlsMu.Unlock()
	c, ok := p.tlsFor[id]
	if !ok {
		c = identity.ServerTLSConfig(p.cfg.Identity(id))
		p.tlsFor[id] = c
	}
	return c, nil
}

// ownKey is the key of a listener address in Proxy.own.
func ownKey(a netip.AddrPort) netip.AddrPort {
	if a.Addr().IsUnspecified() {
		return netip.AddrPortFrom(netip.IPv6Unspecified(), a.Port())
	}
	return a
}

// addOwn records (or, with d = -1, forgets) a listener's address.
func (p *Proxy) addOwn(ln net.Listener, d int) {
	k := ownKey(addrPortOf(ln.Addr()))
	if !k.IsValid() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.own[k] += d; p.own[k] <= 0 {
		delete(p.own, k)
	}
}

// selfTarget reports whether connecting to target, a local workload's
// address, would reach the proxy itself: a reserved port, or the address
// of a listener it serves (a wildcard listener takes its port on every
// address).
func (p *Proxy) selfTarget(target netip.AddrPort) bool {
	if slices.Contains(p.reserved, target.Port()) {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.own[target] > 0 || p.own[netip.AddrPortFrom(netip.IPv6Unspecified(), target.Port())] > 0
}

func (p *Proxy) local(w *Workload) bool {
	return p.cfg.Node == "" || w.Node == p.cfg.Node
}

// track registers a connection for draining; it returns false once the
// proxy is closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.wg.Done()
}

func (p *Proxy) serve(ln net.Listener, handle func(net.Conn)) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		ln.Close()
		return ErrProxyClosed
	}
	p.listeners[ln] = struct{}{}
	p.mu.Unlock()
	p.addOwn(ln, 1)
	defer func() {
		p.addOwn(ln, -1)
		p.mu.Lock()
		delete(p.listeners, ln)
		p.mu.Unlock()
	}()
	err := netutil.AcceptLoop(ln, func(c net.Conn) bool {
		if !p.track(c) {
			c.Close()
			return false
		}
		p.keepalive(c)
		go func() {
			defer p.untrack(c)
			handle(c)
		}()
		return true
	})
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed || errors.Is(err, netutil.ErrStopped) {
		return ErrProxyClosed
	}
	return fmt.Errorf("proxy: accept: %w", err)
}

func (p *Proxy) keepalive(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetKeepAliveConfig(p.cfg.Keepalive)
	}
}

// ServeOutbound accepts redirected outbound connections (port 15001) on
// ln. srcUID names the source workload when the listener serves one pod
// (in-pod mode); when empty the source is the workload that owns the
// client's address. It returns when ln fails or the proxy closes.
func (p *Proxy) ServeOutbound(ln net.Listener, srcUID string) error {
	return p.serve(ln, func(c net.Conn) {
		dst, err := p.originalDst(c)
		if err == nil && dst == addrPortOf(c.LocalAddr()) {
			// Not redirected: the app dialled the listener itself, and
			// passing it through would loop back here.
			err = ErrSelfConnect
		}
		if err != nil {
			p.reset(c)
			p.log.Warn("outbound: original destination", "src.addr", c.RemoteAddr().String(), "error", err)
			return
		}
		p.outbound(c, srcUID, dst, nil)
	})
}

// ServeSOCKS5 accepts SOCKS5 connections on ln (localhost:15080): each
// CONNECT request is sent through the mesh like a redirected outbound
// connection to its target. srcUID is as for ServeOutbound.
func (p *Proxy) ServeSOCKS5(ln net.Listener, srcUID string) error {
	return p.serve(ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(p.cfg.ConnectTimeout))
		t, err := ReadSOCKS5Request(c)
		if err != nil {
			c.Close() // ReadSOCKS5Request sent the failure reply
			p.log.Debug("socks5: bad request", "src.addr", c.RemoteAddr().String(), "error", err)
			return
		}
		dst := t.Addr
		if !dst.IsValid() {
			ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConnectTimeout)
			ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", t.Host)
			cancel()
			if err != nil || len(ips) == 0 {
				WriteSOCKS5Reply(c, SOCKS5HostUnreachable, netip.AddrPort{})
				c.Close()
				return
			}
			dst = netip.AddrPortFrom(ips[0].Unmap(), t.Port)
		}
		c.SetDeadline(time.Time{})
		p.outbound(c, srcUID, dst, func(err error, bound netip.AddrPort) error {
			return WriteSOCKS5Reply(c, socksReplyFor(err), bound)
		})
	})
}

func socksReplyFor(err error) SOCKS5Reply {
	var ce *hbone.ConnectError
	var ne *net.OpError
	switch {
	case err == nil:
		return SOCKS5Succeeded
	case errors.As(err, &ce) && ce.StatusCode == http.StatusUnauthorized:
		return SOCKS5NotAllowed
	case errors.As(err, &ce):
		return SOCKS5HostUnreachable
	case errors.Is(err, ErrUnknownSource):
		return SOCKS5NotAllowed
	case errors.Is(err, ErrNoHealthyEndpoint), errors.Is(err, ErrUnknownPort), errors.Is(err, ErrUnknownWaypoint):
		return SOCKS5HostUnreachable
	case errors.As(err, &ne) && ne.Op == "dial":
		return SOCKS5ConnectionRefused
	}
	return SOCKS5GeneralFailure
}

func (p *Proxy) originalDst(c net.Conn) (netip.AddrPort, error) {
	if p.cfg.OriginalDst != nil {
		return p.cfg.OriginalDst(c)
	}
	return addrPortOf(c.LocalAddr()), nil
}

// outbound sends client connection c to dst. reply, when set (SOCKS5), is
// told the outcome before any byte is relayed.
func (p *Proxy) outbound(c net.Conn, srcUID string, dst netip.AddrPort, reply func(error, netip.AddrPort) error) {
	st := p.cfg.State.Load()
	info := &ConnInfo{Direction: Outbound, SrcAddr: addrPortOf(c.RemoteAddr()), Start: time.Now()}
	var src *Workload
	if srcUID != "" {
		src, _ = st.WorkloadByUID(srcUID)
	} else {
		src, _ = st.WorkloadByAddr(info.SrcAddr.Addr())
	}
	if src != nil {
		info.SrcWorkload, info.SrcIdentity = src, st.IdentityOf(src)
	}
	up, err := p.dialOutbound(st, src, dst, info)
	if reply != nil {
		if rerr := reply(err, addrPortOf(c.LocalAddr())); err == nil && rerr != nil {
			err = rerr
			up.Close()
		}
	}
	if err != nil {
		info.Err = err
		info.HBONEAddr = cmpAddr(info.HBONEAddr, dst)
		if reply == nil {
			p.reset(c)
		} else {
			c.Close()
		}
		p.complete(info)
		return
	}
	p.opened(info)
	info.Sent, info.Received, info.Err = p.relay(c, up, nil)
	p.complete(info)
}

func cmpAddr(a, b netip.AddrPort) netip.AddrPort {
	if a.IsValid() {
		return a
	}
	return b
}

func (p *Proxy) dialOutbound(st *State, src *Workload, dst netip.AddrPort, info *ConnInfo) (net.Conn, error) {
	plan, err := st.Resolve(src, dst, p.cfg.Balancer)
	if err != nil {
		return nil, err
	}
	if plan.Service != nil {
		info.DstService = plan.Service.Hostname
	}
	info.DstWorkload = plan.Workload
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConnectTimeout)
	defer cancel()
	if plan.Kind == Passthrough {
		// Plain TCP: no peer certificate is checked, so no destination
		// identity is claimed in logs or metrics.
		info.DstAddr = plan.NextHop
		return p.dialTCP(ctx, src, plan.NextHop)
	}
	if plan.Workload != nil {
		info.DstIdentity = st.IdentityOf(plan.Workload)
	}
	if src == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownSource, info.SrcAddr.Addr())
	}
	info.DstAddr, info.HBONEAddr, info.MTLS = plan.NextHop, plan.Authority, true
	r := hbone.Route{
		Address:   plan.NextHop.String(),
		Authority: plan.Authority.String(),
		Source:    p.cfg.Identity(info.SrcIdentity),
		Expected:  plan.Expected,
	}
	if p.cfg.BindSourceIP && info.SrcAddr.Addr().IsValid() {
		r.SourceIP = info.SrcAddr.Addr()
	}
	// ztunnel's request headers: who is calling (baggage), the original
	// client and service (forwarded), and a fresh trace context.
	r.Header = http.Header{
		hbone.HeaderBaggage:     {baggageOf(src).String()},
		hbone.HeaderForwarded:   {hbone.Forwarded{For: info.SrcAddr, Host: info.DstService}.String()},
		hbone.HeaderTraceparent: {hbone.NewTraceparent().String()},
	}
	return p.dialerFor(src).Dial(ctx, r)
}

// dialerFor returns the tunnel pool for src: one shared pool, or one per
// source workload when the TCP dial depends on the source (in-pod).
func (p *Proxy) dialerFor(src *Workload) *hbone.Dialer {
	if p.cfg.DialHBONE == nil {
		return p.dialer
	}
	p.dialersMu.Lock()
	defer p.dialersMu.Unlock()
	d, ok := p.dialers[src.UID]
	if !ok {
		dial := p.cfg.DialHBONE
		d = &hbone.Dialer{
			ConnectTimeout: p.cfg.ConnectTimeout,
			DialTCP: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dial(ctx, src, network, addr)
			},
		}
		p.dialers[src.UID] = d
	}
	return d
}

func (p *Proxy) dialTCP(ctx context.Context, src *Workload, addr netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	var err error
	if p.cfg.DialPassthrough != nil {
		c, err = p.cfg.DialPassthrough(ctx, src, addr)
	} else {
		d := net.Dialer{KeepAliveConfig: p.cfg.Keepalive}
		c, err = d.DialContext(ctx, "tcp", addr.String())
	}
	if err != nil {
		return nil, err
	}
	p.keepalive(c)
	return c, nil
}

// reset closes c with an RST (SO_LINGER 0), the way ztunnel drops a
// connection it refuses: the client sees "connection reset by peer".
func (p *Proxy) reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// ServeInboundHBONE terminates HBONE on ln (port 15008) for the workloads
// of this node.
func (p *Proxy) ServeInboundHBONE(ln net.Listener) error {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		ln.Close()
		return ErrProxyClosed
	}
	p.addOwn(ln, 1)
	defer p.addOwn(ln, -1)
	err := p.server.Serve(ln)
	if errors.Is(err, hbone.ErrServerClosed) {
		return ErrProxyClosed
	}
	return err
}

func (p *Proxy) serveHBONE(r *hbone.Request) {
	st := p.cfg.State.Load()
	info := &ConnInfo{
		Direction: Inbound, MTLS: true, Start: time.Now(),
		SrcAddr:     addrPortOf(r.RemoteAddr),
		DstAddr:     addrPortOf(r.LocalAddr),
		SrcIdentity: r.Peer,
	}
	status, up, err := p.inboundUpstream(st, r, info)
	if err != nil {
		info.Err = err
		r.Reject(status)
		p.complete(info)
		return
	}
	tun, err := r.Accept(http.Header{hbone.HeaderBaggage: {baggageOf(info.DstWorkload).String()}})
	if err != nil {
		up.Close()
		info.Err = err
		p.complete(info)
		return
	}
	p.opened(info)
	// Received counts bytes from the destination: upstream -> tunnel.
	info.Sent, info.Received, info.Err = p.relay(tun, up, p.newLiveConn(st, info))
	p.complete(info)
}

// inboundUpstream checks an HBONE request in the order of hbone.md §C.11
// and connects to its target: 400 for a bad or mismatched authority, 503
// for an unknown destination, service or port or a target that is the
// proxy itself, 401 when policy denies, 503 when the connect fails.
//
// A destination address that is not a workload of the State never gets
// here: the TLS handshake already failed, because the server certificate
// is the destination workload's (serverTLS; §A.3). Only a workload removed
// between the handshake and the request, or one of another node, is a 503
// here.
func (p *Proxy) inboundUpstream(st *State, r *hbone.Request, info *ConnInfo) (int, net.Conn, error) {
	host, port, err := hbone.SplitAuthority(r.Authority)
	if err != nil {
		return http.StatusBadRequest, nil, err
	}
	local := info.DstAddr.Addr()
	ip, perr := netip.ParseAddr(host)
	if perr == nil {
		if ip = ip.Unmap(); ip != local {
			info.HBONEAddr = netip.AddrPortFrom(ip, port)
			return http.StatusBadRequest, nil, fmt.Errorf("proxy: authority %s does not match the dialled address %s", r.Authority, local)
		}
	}
	if src, ok := st.WorkloadByAddr(info.SrcAddr.Addr()); ok && st.IdentityOf(src) == r.Peer {
		info.SrcWorkload = src
	}
	// The target is always the dialled workload; the authority gives the
	// port, or the service and port when it is a hostname (a request that
	// came through a network gateway).
	target := netip.AddrPortFrom(local, port)
	info.HBONEAddr = target
	dst, ok := st.WorkloadByAddr(local)
	if !ok || !p.local(dst) {
		return http.StatusServiceUnavailable, nil, fmt.Errorf("%w: %s", ErrUnknownDestination, local)
	}
	info.DstWorkload, info.DstIdentity = dst, st.IdentityOf(dst)
	if perr != nil {
		svc, tport, err := inboundService(st, dst, host, port)
		if err != nil {
			return http.StatusServiceUnavailable, nil, err
		}
		target = netip.AddrPortFrom(local, tport)
		info.HBONEAddr, info.DstService = target, svc.Hostname
	} else if f, err := hbone.ParseForwarded(r.Header.Get(hbone.HeaderForwarded)); err == nil {
		// The client names the service it meant in forwarded's host (used
		// for attribution only, as ztunnel does).
		info.DstService = f.Host
	}
	if p.selfTarget(target) {
		return http.StatusServiceUnavailable, nil, fmt.Errorf("%w: %s", ErrSelfConnect, target)
	}
	if err := p.authorize(st, dst, info, identity.PrincipalFromID(r.Peer), target); err != nil {
		return http.StatusUnauthorized, nil, err
	}
	up, err := p.dialWorkload(r.Context(), dst, target, info.SrcAddr)
	if err != nil {
		return http.StatusServiceUnavailable, nil, err
	}
	return http.StatusOK, up, nil
}

// inboundService resolves a hostname authority: the service of that
// hostname that dst backs (one in dst's namespace first), and dst's target
// port for the service port.
func inboundService(st *State, dst *Workload, host string, port uint16) (*Service, uint16, error) {
	var svc *Service
	for key := range dst.Services {
		ns, h, _ := strings.Cut(key, "/")
		if h != host {
			continue
		}
		if s, ok := st.ServiceByKey(key); ok && (svc == nil || ns == dst.Namespace) {
			svc = s
		}
	}
	if svc == nil {
		return nil, 0, fmt.Errorf("%w: %s backs no service %s", ErrUnknownDestination, dst.UID, host)
	}
	for _, ep := range st.Endpoints(svc, port) {
		if ep.Workload == dst {
			return svc, ep.TargetPort, nil
		}
	}
	return nil, 0, fmt.Errorf("%w: %s port %d", ErrUnknownPort, svc.Key(), port)
}

func (p *Proxy) dialWorkload(ctx context.Context, dst *Workload, target, src netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	var c net.Conn
	var err error
	if p.cfg.DialWorkload != nil {
		c, err = p.cfg.DialWorkload(ctx, dst, target, src)
	} else {
		d := net.Dialer{KeepAliveConfig: p.cfg.Keepalive}
		c, err = d.DialContext(ctx, "tcp", target.String())
	}
	if err != nil {
		return nil, err
	}
	p.keepalive(c)
	return c, nil
}

// authorize evaluates the L4 policies of dst. principal is empty for
// plaintext.
func (p *Proxy) authorize(st *State, dst *Workload, info *ConnInfo, principal string, target netip.AddrPort) error {
	e := st.Authz()
	if e == nil {
		return nil
	}
	req := l4Request(dst, principal, info.SrcAddr.Addr(), target)
	d := e.Evaluate(&req)
	if d.Allowed {
		return nil
	}
	who := info.SrcAddr.Addr().String()
	if !info.SrcIdentity.IsZero() {
		who += "(" + info.SrcIdentity.String() + ")"
	}
	policy := ""
	if d.Policy != nil {
		policy = d.Policy.Namespace + "/" + d.Policy.Name
	}
	p.log.Info("RBAC rejected", "conn", who+"->"+target.String(), "policy", policy, "reason", d.String())
	return fmt.Errorf("%w: %s", ErrDenied, d)
}

// l4Request is the L4 authorization request of a connection from src
// (principal is empty for plaintext) to target on workload dst.
func l4Request(dst *Workload, principal string, src netip.Addr, target netip.AddrPort) authz.Request {
	return authz.Request{
		Layer: authz.L4,
		Workload: authz.Workload{
			Namespace:      dst.Namespace,
			Labels:         dst.Labels,
			ServiceAccount: dst.ServiceAccount,
		},
		Peer:     principal,
		SourceIP: src,
		DestIP:   target.Addr(),
		DestPort: target.Port(),
	}
}

// ServeInboundPlaintext accepts redirected plaintext connections to local
// workloads (port 15006), applying PeerAuthentication and the workload's
// policies with no peer identity.
func (p *Proxy) ServeInboundPlaintext(ln net.Listener) error {
	return p.serve(ln, p.inboundPlaintext)
}

func (p *Proxy) inboundPlaintext(c net.Conn) {
	st := p.cfg.State.Load()
	info := &ConnInfo{Direction: Inbound, SrcAddr: addrPortOf(c.RemoteAddr()), Start: time.Now()}
	target, err := p.originalDst(c)
	up, err := func() (net.Conn, error) {
		if err != nil {
			return nil, err
		}
		info.DstAddr, info.HBONEAddr = target, target
		if src, ok := st.WorkloadByAddr(info.SrcAddr.Addr()); ok {
			info.SrcWorkload = src
		}
		dst, ok := st.WorkloadByAddr(target.Addr())
		if !ok || !p.local(dst) {
			return nil, fmt.Errorf("%w: %s", ErrUnknownDestination, target.Addr())
		}
		info.DstWorkload, info.DstIdentity = dst, st.IdentityOf(dst)
		// Not redirected (the client dialled the listener itself), or
		// redirected to one of the proxy's own ports: dialling it would
		// come straight back here.
		if target == addrPortOf(c.LocalAddr()) || p.selfTarget(target) {
			return nil, fmt.Errorf("%w: %s", ErrSelfConnect, target)
		}
		if !p.plaintextAllowed(st, dst, target.Port()) {
			return nil, ErrPlaintextRejected
		}
		if err := p.authorize(st, dst, info, "", target); err != nil {
			return nil, err
		}
		return p.dialWorkload(context.Background(), dst, target, info.SrcAddr)
	}()
	if err != nil {
		info.Err = err
		p.reset(c)
		p.complete(info)
		return
	}
	p.opened(info)
	info.Received, info.Sent, info.Err = p.relay(up, c, p.newLiveConn(st, info))
	p.complete(info)
}

// plaintextAllowed applies PeerAuthentication: Config.PlaintextAllowed if
// set, else the State's PeerAuthn, else PERMISSIVE.
func (p *Proxy) plaintextAllowed(st *State, dst *Workload, port uint16) bool {
	if p.cfg.PlaintextAllowed != nil {
		return p.cfg.PlaintextAllowed(dst, port)
	}
	if pa := st.PeerAuthn(); pa != nil {
		return pa.Mode(&authz.Workload{Namespace: dst.Namespace, Labels: dst.Labels}, port).AllowsPlaintext()
	}
	return true
}

func (p *Proxy) opened(info *ConnInfo) {
	info.open = true
	if p.cfg.Hooks.Opened != nil {
		p.cfg.Hooks.Opened(info)
	}
}

// complete writes the access log line and calls the Closed hook (for
// connections that were opened).
func (p *Proxy) complete(info *ConnInfo) {
	info.Duration = time.Since(info.Start)
	if errors.Is(info.Err, io.EOF) || errors.Is(info.Err, net.ErrClosed) {
		info.Err = nil
	}
	level := slog.LevelInfo
	if info.Err != nil && !errors.Is(info.Err, ErrIdleTimeout) {
		level = slog.LevelError
	}
	ctx := context.Background()
	if p.log.Enabled(ctx, level) {
		attrs := make([]slog.Attr, 0, 16)
		attrs = append(attrs, slog.String("src.addr", info.SrcAddr.String()))
		if w := info.SrcWorkload; w != nil {
			attrs = append(attrs, slog.String("src.workload", w.Name), slog.String("src.namespace", w.Namespace))
		}
		if !info.SrcIdentity.IsZero() {
			attrs = append(attrs, slog.String("src.identity", info.SrcIdentity.String()))
		}
		attrs = append(attrs, slog.String("dst.addr", info.DstAddr.String()))
		if info.HBONEAddr.IsValid() {
			attrs = append(attrs, slog.String("dst.hbone_addr", info.HBONEAddr.String()))
		}
		if info.DstService != "" {
			attrs = append(attrs, slog.String("dst.service", info.DstService))
		}
		if w := info.DstWorkload; w != nil {
			attrs = append(attrs, slog.String("dst.workload", w.Name), slog.String("dst.namespace", w.Namespace))
		}
		if !info.DstIdentity.IsZero() {
			attrs = append(attrs, slog.String("dst.identity", info.DstIdentity.String()))
		}
		attrs = append(attrs,
			slog.String("direction", string(info.Direction)),
			slog.Int64("bytes_sent", info.Sent),
			slog.Int64("bytes_recv", info.Received),
			slog.String("duration", fmt.Sprintf("%dms", info.Duration.Milliseconds())),
		)
		if info.Err != nil {
			attrs = append(attrs, slog.String("error", info.Err.Error()))
		}
		p.log.LogAttrs(ctx, level, "connection complete", attrs...)
	}
	if p.cfg.Hooks.Closed != nil && info.open {
		p.cfg.Hooks.Closed(info)
	}
}

// Shutdown stops accepting, then waits for open connections to finish
// until ctx is done, when it closes them. It returns ctx's error if
// connections had to be closed.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	for ln := range p.listeners {
		ln.Close()
	}
	p.mu.Unlock()
	serr := p.server.Shutdown(ctx)
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		p.mu.Lock()
		for p.nrelays > 0 {
			p.relayDone.Wait()
		}
		p.mu.Unlock()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		p.closeConns()
		<-done
	}
	// No relay is left, so the re-check watcher is on its way out.
	p.live.wait()
	p.dialer.Close()
	p.dialersMu.Lock()
	for _, d := range p.dialers {
		d.Close()
	}
	p.dialersMu.Unlock()
	if err == nil && serr != nil && !errors.Is(serr, hbone.ErrServerClosed) {
		err = serr
	}
	return err
}

// Close stops the proxy at once, closing every connection.
func (p *Proxy) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.Shutdown(ctx)
	return nil
}

// closeConns ends every connection: the accepted ones and both ends of
// every relay (closing only the accepted end would leave a relay whose
// other direction waits on the upstream), and any relay starting later.
func (p *Proxy) closeConns() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forced = true
	for c := range p.conns {
		c.Close()
	}
	for c := range p.relays {
		c.Close()
	}
}

// baggageOf describes w as ztunnel's baggage header does.
func baggageOf(w *Workload) hbone.Baggage {
	if w == nil {
		return hbone.Baggage{}
	}
	return hbone.Baggage{
		Namespace: w.Namespace, WorkloadKind: "pod", WorkloadName: w.Name,
		ServiceName: cmpString(w.Labels["service.istio.io/canonical-name"], w.Labels["app"]),
		ServiceVer:  cmpString(w.Labels["service.istio.io/canonical-revision"], w.Labels["version"]),
		Region:      w.Locality.Region, Zone: w.Locality.Zone,
	}
}

func cmpString(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
