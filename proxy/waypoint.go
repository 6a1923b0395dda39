package proxy

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/internal/netutil"
	"github.com/meshblocks/meshblocks/route"
)

var (
	// ErrWaypointClosed is returned by Waypoint.Serve after Shutdown or
	// Close.
	ErrWaypointClosed = errors.New("proxy: waypoint closed")
	// ErrRulesRejected is wrapped by a Waypoint.SetRules error that left
	// the previous rules in force (the routes do not build).
	ErrRulesRejected = errors.New("proxy: waypoint rules rejected, the previous rules stay in force")
	// ErrNotServed: an HBONE tunnel names a destination whose Service or
	// workload does not use this waypoint.
	ErrNotServed = errors.New("proxy: destination not served by this waypoint")
)

// WaypointConfig configures a [Waypoint]. The zero value of every field
// except State and Source is a documented default.
type WaypointConfig struct {
	// State holds the workloads and services the waypoint routes to (the
	// same State a node proxy reads, from ParseLocalConfig or xds).
	// Required.
	State *StateHolder
	// Source is the waypoint's own identity: the certificate presented to
	// clients on :15008 and to endpoints' node proxies upstream.
	// Required.
	Source identity.Source
	// Name and Namespace name the waypoint (its Gateway): policies with a
	// targetRef to this Gateway apply, VirtualServices in Namespace apply
	// to the Services it serves, and VirtualService sourceNamespace
	// matches compare with Namespace. Optional.
	Name, Namespace string
	// Addresses and Service identify this waypoint in the Waypoint field
	// of Services and workloads (by address, or by "namespace/hostname"
	// of its Service): tunnels for other destinations are refused with
	// 503. If both are empty, every destination that has a waypoint is
	// served.
	Addresses []netip.Addr
	Service   string
	// Locality is where the waypoint runs; locality-aware load balancing
	// is relative to it. The zero value disables locality preference.
	Locality route.Locality
	// SourceIP, if valid, is the local address of upstream connections
	// (the waypoint's pod IP when several addresses share a host).
	SourceIP netip.Addr
	// ExtAuthz decides the requests a CUSTOM policy with a known provider
	// (WaypointRules.Authz.Providers) sends to that provider. It returns
	// whether the request may go on; an error denies. If nil, such
	// requests are denied with 403 (response flag UAEX), as Envoy does
	// when its ext_authz service cannot be reached: fail closed.
	ExtAuthz func(ctx context.Context, provider string, r *http.Request) (bool, error)
	// ConnectTimeout bounds connecting to an endpoint (HBONE or TCP). If
	// zero, 10 s.
	ConnectTimeout time.Duration
	// SniffTimeout bounds the wait for the first bytes of a tunnel on a
	// port whose protocol is not declared: a stream still undecided then
	// is relayed as TCP (a server-first protocol). If zero, the waypoint
	// waits as long as it takes, as Istio's default
	// protocolDetectionTimeout of 0 does.
	SniffTimeout time.Duration
	// BufferLimit is how much of a request body is kept so that the
	// request can be retried, and how large a body can be mirrored. A
	// request whose body grows past it is not retried; a mirror of a
	// larger body is skipped. If zero, 64 KiB.
	BufferLimit int
	// MirrorTimeout bounds a mirrored request when its route sets no
	// timeout. If zero, 10 s.
	MirrorTimeout time.Duration
	// IdleTimeout closes downstream HTTP connections (tunnels) that
	// carried no request for this long. If zero, 1 hour (Envoy's HTTP
	// connection manager default).
	IdleTimeout time.Duration
	// Logger receives the access log ("request complete" per HTTP
	// request, "connection complete" per TCP tunnel) and "RBAC rejected"
	// lines, and at Debug per-connection events. If nil, discard.
	Logger *slog.Logger
	// Hooks are called for metrics. Nil funcs are skipped.
	Hooks WaypointHooks
}

// WaypointHooks observe a waypoint's traffic for metrics. They run on the
// data path and must not block.
type WaypointHooks struct {
	// Request is called when an HTTP request has been answered.
	Request func(r *RequestInfo)
	// Opened and Closed are called for tunnels relayed at L4 (TCP ports),
	// as [Hooks] are for a node proxy.
	Opened func(c *ConnInfo)
	Closed func(c *ConnInfo)
}

// waypointSelf is what the route table needs to know about the waypoint.
type waypointSelf struct {
	namespace string
	locality  route.Locality
}

// Waypoint is an L7 proxy in the style of Istio's ambient waypoint: it
// terminates HBONE on :15008 with its own identity, serves the HTTP/1.1 or
// HTTP/2 inside each tunnel with L7 authorization and routing, and sends
// requests on over HBONE to the chosen endpoints. Tunnels for ports whose
// protocol is TCP are authorized and relayed at L4. Create one with
// [NewWaypoint], install rules with SetRules, serve listeners with Serve;
// Shutdown drains it.
type Waypoint struct {
	cfg  WaypointConfig
	log  *slog.Logger
	self waypointSelf

	server  *hbone.Server
	httpSrv *http.Server
	queue   *connQueue
	rp      *httputil.ReverseProxy
	dialer  *hbone.Dialer
	h1, h2  *http.Transport

	rules  atomic.Pointer[wpRules]
	snap   atomic.Pointer[wpSnapshot]
	snapMu sync.Mutex

	// base is cancelled by a forced close: it ends mirrors.
	base       context.Context
	cancelBase context.CancelFunc

	mu          sync.Mutex
	closed      bool
	httpStarted bool
	httpDone    chan struct{}
	relays      map[net.Conn]struct{} // both ends of every L4 relay
	forced      bool
	wg          sync.WaitGroup // L4 relays and mirrors
}

// NewWaypoint checks cfg and returns a Waypoint with empty rules: every
// request is allowed and goes to its Service's endpoints.
func NewWaypoint(cfg WaypointConfig) (*Waypoint, error) {
	if cfg.State == nil {
		return nil, errors.New("proxy: WaypointConfig.State is required")
	}
	if cfg.Source == nil {
		return nil, errors.New("proxy: WaypointConfig.Source is required")
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.BufferLimit == 0 {
		cfg.BufferLimit = 64 << 10
	}
	if cfg.MirrorTimeout == 0 {
		cfg.MirrorTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = time.Hour
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	w := &Waypoint{
		cfg:      cfg,
		log:      lg,
		self:     waypointSelf{namespace: cfg.Namespace, locality: cfg.Locality},
		queue:    newConnQueue(),
		httpDone: make(chan struct{}),
		relays:   map[net.Conn]struct{}{},
	}
	w.base, w.cancelBase = context.WithCancel(context.Background())
	w.server = &hbone.Server{Source: cfg.Source, Handler: hbone.HandlerFunc(w.serveHBONE), Logger: cfg.Logger}
	w.dialer = &hbone.Dialer{Source: cfg.Source, ConnectTimeout: cfg.ConnectTimeout, Logger: cfg.Logger}
	w.h1 = w.newTransport(false)
	w.h2 = w.newTransport(true)
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	w.httpSrv = &http.Server{
		Handler:     w,
		Protocols:   protos,
		IdleTimeout: cfg.IdleTimeout,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*streamConn); ok {
				return context.WithValue(ctx, streamKey{}, sc.st)
			}
			return ctx
		},
		ErrorLog: log.New(debugWriter{lg}, "", 0),
	}
	w.rp = &httputil.ReverseProxy{
		Rewrite:        w.rewrite,
		Transport:      wpRoundTripper{w},
		ModifyResponse: w.modifyResponse,
		ErrorHandler:   w.upstreamError,
		ErrorLog:       log.New(debugWriter{lg}, "", 0),
		BufferPool:     bufferPool{},
	}
	r, _ := compileRules(WaypointRules{})
	w.rules.Store(r)
	return w, nil
}

// bufferPool lends the reverse proxy its copy buffers from the shared
// size-classed pools, instead of a new 32 KiB buffer per response.
type bufferPool struct{}

func (bufferPool) Get() []byte  { return netutil.GetBuffer(32 << 10) }
func (bufferPool) Put(b []byte) { netutil.PutBuffer(b) }

// debugWriter sends the standard library's log lines (http.Server,
// ReverseProxy) to the logger at Debug.
type debugWriter struct{ l *slog.Logger }

func (d debugWriter) Write(p []byte) (int, error) {
	d.l.Debug(string(trimNewline(p)))
	return len(p), nil
}

func trimNewline(p []byte) []byte {
	for len(p) > 0 && p[len(p)-1] == '\n' {
		p = p[:len(p)-1]
	}
	return p
}

// SetRules installs new rules. Requests that start afterwards see them
// all at once.
//
// When the routes do not build against the current State, nothing
// changes and the error wraps ErrRulesRejected (and the route errors,
// route.ErrInvalidConfig). Invalid authorization policies do not stop the
// update: as authz.New does, each denies every request in the scope it
// would have applied to (fail closed), and their errors are returned,
// wrapping authz.ErrInvalidPolicy.
func (w *Waypoint) SetRules(r WaypointRules) error {
	rules, aerr := compileRules(r)
	snap, err := buildSnapshot(w.cfg.State.Load(), rules, w.self)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRulesRejected, err)
	}
	w.snapMu.Lock()
	w.rules.Store(rules)
	w.snap.Store(snap)
	w.snapMu.Unlock()
	if aerr != nil {
		return fmt.Errorf("proxy: waypoint authorization policies: %w", aerr)
	}
	return nil
}

// snapshot returns the snapshot for the current State and rules,
// building it when either changed. If the routes no longer build against
// a new State, the previous snapshot stays in use.
func (w *Waypoint) snapshot() *wpSnapshot {
	st, rules := w.cfg.State.Load(), w.rules.Load()
	if s := w.snap.Load(); s != nil && s.stateKey == st && s.rulesKey == rules {
		return s
	}
	w.snapMu.Lock()
	defer w.snapMu.Unlock()
	st, rules = w.cfg.State.Load(), w.rules.Load()
	cur := w.snap.Load()
	if cur != nil && cur.stateKey == st && cur.rulesKey == rules {
		return cur
	}
	s, err := buildSnapshot(st, rules, w.self)
	switch {
	case err == nil:
	case cur != nil:
		// The previous snapshot goes on serving, now under the new key
		// so that the failing build is not retried on every request.
		w.log.Error("waypoint: routes do not build with the new state; keeping the previous one", "error", err)
		kept := *cur
		kept.stateKey, kept.rulesKey = st, rules
		s = &kept
	default:
		// The Services and their endpoints always build: serve them
		// without routes rather than not at all.
		w.log.Error("waypoint: routes do not build; serving without routes", "error", err)
		bare := &wpRules{l7: rules.l7, tcp: rules.tcp}
		if s, err = buildSnapshot(st, bare, w.self); err != nil {
			// Fail closed: a snapshot that knows no Service.
			empty, _ := NewState(nil, nil)
			s, _ = buildSnapshot(empty, bare, w.self)
		}
		s.stateKey, s.rulesKey = st, rules
	}
	w.snap.Store(s)
	return s
}

// Serve accepts HBONE connections on ln (port 15008) until Shutdown or
// Close, after which it returns ErrWaypointClosed. It closes ln.
func (w *Waypoint) Serve(ln net.Listener) error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		ln.Close()
		return ErrWaypointClosed
	}
	if !w.httpStarted {
		w.httpStarted = true
		go func() {
			defer close(w.httpDone)
			w.httpSrv.Serve(w.queue)
		}()
	}
	w.mu.Unlock()
	err := w.server.Serve(ln)
	if errors.Is(err, hbone.ErrServerClosed) {
		return ErrWaypointClosed
	}
	return err
}

// Shutdown stops accepting tunnels (GOAWAY), lets open requests and TCP
// relays finish, closes idle HTTP connections, and returns when all is
// done. If ctx ends first, what is left is closed and ctx's error is
// returned. A ctx without a deadline gets the HBONE drain deadline of 5 s
// (hbone.Server.Shutdown).
func (w *Waypoint) Shutdown(ctx context.Context) error {
	w.mu.Lock()
	w.closed = true
	started := w.httpStarted
	w.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, hbone.DefaultDrainTimeout)
		defer cancel()
	}
	errc := make(chan error, 2)
	go func() { errc <- w.server.Shutdown(ctx) }()
	go func() { errc <- w.httpSrv.Shutdown(ctx) }()
	err := errors.Join(<-errc, <-errc)
	w.queue.Close()
	if started {
		<-w.httpDone
	}
	if ctx.Err() != nil {
		w.httpSrv.Close()
	}
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		w.force()
		<-done
	}
	w.cancelBase()
	w.h1.CloseIdleConnections()
	w.h2.CloseIdleConnections()
	w.dialer.Close()
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Close stops the waypoint at once, closing every connection.
func (w *Waypoint) Close() error {
	w.mu.Lock()
	w.closed = true
	started := w.httpStarted
	w.mu.Unlock()
	w.server.Close()
	w.httpSrv.Close()
	w.queue.Close()
	if started {
		<-w.httpDone
	}
	w.force()
	w.wg.Wait()
	w.h1.CloseIdleConnections()
	w.h2.CloseIdleConnections()
	w.dialer.Close()
	return nil
}

// force ends every L4 relay and mirror.
func (w *Waypoint) force() {
	w.cancelBase()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.forced = true
	for c := range w.relays {
		c.Close()
	}
}

// track registers the ends of an L4 relay; it returns false once a forced
// close began.
func (w *Waypoint) track(cs ...net.Conn) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.forced {
		return false
	}
	for _, c := range cs {
		w.relays[c] = struct{}{}
	}
	w.wg.Add(1)
	return true
}

func (w *Waypoint) untrack(cs ...net.Conn) {
	w.mu.Lock()
	for _, c := range cs {
		delete(w.relays, c)
	}
	w.mu.Unlock()
	w.wg.Done()
}

// goBackground runs f as tracked background work (a mirror); it returns
// false, without running f, once the waypoint is closed.
func (w *Waypoint) goBackground(f func(ctx context.Context)) bool {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return false
	}
	w.wg.Add(1)
	w.mu.Unlock()
	go func() {
		defer w.wg.Done()
		f(w.base)
	}()
	return true
}

// serves reports whether g, a Service's or workload's waypoint, is this
// waypoint.
func (w *Waypoint) serves(g *Gateway) bool {
	if g == nil {
		return false
	}
	if len(w.cfg.Addresses) == 0 && w.cfg.Service == "" {
		return true
	}
	if g.Address.IsValid() && slices.Contains(w.cfg.Addresses, g.Address.Unmap()) {
		return true
	}
	return g.Service != "" && g.Service == w.cfg.Service
}

// wpStream is what one tunnel is for: who sent it and where it goes.
type wpStream struct {
	peer        spiffeid.ID
	principal   string
	src         netip.AddrPort
	srcWorkload *Workload
	start       time.Time
	dst         wpDest
	// workload is the authorization destination.
	workload authz.Workload
}

// wpDest is the destination of a tunnel: a Service port, or a workload
// addressed directly.
type wpDest struct {
	// addr is the tunnel's target (the Service VIP, or the workload's
	// address, and the port).
	addr netip.AddrPort
	// host is the Service's hostname, or the workload's IP.
	host      string
	svc       bool
	name, ns  string
	workload  *Workload
	proto     portProto
	authority string
}

type streamKey struct{}

func streamFrom(ctx context.Context) *wpStream {
	st, _ := ctx.Value(streamKey{}).(*wpStream)
	return st
}

// destination resolves a CONNECT authority: a Service VIP (or hostname)
// and port, or a workload address, that this waypoint serves.
func (w *Waypoint) destination(snap *wpSnapshot, authority string) (wpDest, int, error) {
	host, port, err := hbone.SplitAuthority(authority)
	if err != nil {
		return wpDest{}, http.StatusBadRequest, err
	}
	d := wpDest{authority: authority}
	var svc *Service
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		d.addr = netip.AddrPortFrom(ip, port)
		if s, ok := snap.state.ServiceByAddr(ip); ok {
			svc = s
		} else if wl, ok := snap.state.WorkloadByAddr(ip); ok {
			if !w.serves(wl.Waypoint) {
				return d, http.StatusServiceUnavailable, fmt.Errorf("%w: workload %s", ErrNotServed, wl.UID)
			}
			d.host, d.workload, d.proto, d.ns = ip.String(), wl, protoAuto, wl.Namespace
			return d, 0, nil
		} else {
			return d, http.StatusServiceUnavailable, fmt.Errorf("%w: %s", ErrUnknownDestination, ip)
		}
	} else if s, ok := snap.byHost[host]; ok {
		svc = s
		if len(s.Addresses) > 0 {
			d.addr = netip.AddrPortFrom(s.Addresses[0].Unmap(), port)
		}
	} else {
		return d, http.StatusServiceUnavailable, fmt.Errorf("%w: %s", ErrUnknownDestination, host)
	}
	if !w.serves(svc.Waypoint) {
		return d, http.StatusServiceUnavailable, fmt.Errorf("%w: service %s", ErrNotServed, svc.Key())
	}
	if !slices.ContainsFunc(svc.Ports, func(p ServicePort) bool { return p.Port == port }) {
		return d, http.StatusServiceUnavailable, fmt.Errorf("%w: %s port %d", ErrUnknownPort, svc.Key(), port)
	}
	d.host, d.svc, d.name, d.ns = svc.Hostname, true, svc.Name, svc.Namespace
	d.proto = snap.proto(svc.Hostname, port)
	return d, 0, nil
}

// serveHBONE handles one CONNECT: HTTP ports are accepted and served by
// the HTTP server, TCP ports are authorized and relayed, other ports are
// sniffed.
func (w *Waypoint) serveHBONE(r *hbone.Request) {
	snap := w.snapshot()
	st := &wpStream{peer: r.Peer, principal: identity.PrincipalFromID(r.Peer), src: addrPortOf(r.RemoteAddr), start: time.Now()}
	if sw, ok := snap.state.WorkloadByAddr(st.src.Addr()); ok && snap.state.IdentityOf(sw) == r.Peer {
		st.srcWorkload = sw
	}
	dst, status, err := w.destination(snap, r.Authority)
	if err != nil {
		r.Reject(status)
		w.connComplete(&ConnInfo{Direction: Inbound, MTLS: true, Start: st.start, SrcAddr: st.src,
			SrcWorkload: st.srcWorkload, SrcIdentity: st.peer, HBONEAddr: dst.addr, Err: err})
		return
	}
	st.dst = dst
	st.workload = w.authzWorkload(dst)
	switch dst.proto {
	case protoTCP, protoTLS:
		w.serveL4(snap, r, st, nil, nil)
	case protoHTTP, protoHTTP2, protoGRPC:
		tun, err := r.Accept(nil)
		if err != nil {
			return
		}
		w.queue.push(&streamConn{Conn: tun, st: st})
	default:
		tun, err := r.Accept(nil)
		if err != nil {
			return
		}
		kind, prefix, err := sniff(tun, w.cfg.SniffTimeout)
		if err != nil {
			tun.Close()
			w.log.Debug("waypoint: sniffing failed", "src.addr", st.src.String(), "dst.hbone_addr", dst.authority, "error", err)
			return
		}
		if kind == sniffTCP {
			w.serveL4(snap, nil, st, tun, prefix)
			return
		}
		w.queue.push(&streamConn{Conn: &prefixConn{Conn: tun, prefix: prefix}, st: st})
	}
}

// authzWorkload describes a destination for authorization: the Service
// (targetRefs kind Service) or the workload, and the waypoint itself
// (kind Gateway).
func (w *Waypoint) authzWorkload(d wpDest) authz.Workload {
	aw := authz.Workload{Namespace: d.ns, Waypoint: w.cfg.Name, WaypointNamespace: w.cfg.Namespace}
	if d.svc {
		aw.Services = []string{d.name}
	} else if d.workload != nil {
		aw.Labels, aw.ServiceAccount = d.workload.Labels, d.workload.ServiceAccount
	}
	return aw
}

// authzRequest is the authorization input common to L4 and L7.
func (st *wpStream) authzRequest() authz.Request {
	return authz.Request{
		Layer:    authz.L7,
		Workload: st.workload,
		Peer:     st.principal,
		SourceIP: st.src.Addr(),
		DestIP:   st.dst.addr.Addr(),
		DestPort: st.dst.addr.Port(),
	}
}

// serveL4 authorizes a TCP tunnel with the network RBAC semantics, picks
// an endpoint and relays bytes. r is set while the tunnel is not yet
// answered (a TCP port: failures are answered 401 or 503); otherwise tun
// was accepted (a sniffed port) and prefix holds the bytes sniffing read.
func (w *Waypoint) serveL4(snap *wpSnapshot, r *hbone.Request, st *wpStream, tun *hbone.Conn, prefix []byte) {
	info := &ConnInfo{
		Direction: Inbound, MTLS: true, Start: st.start,
		SrcAddr: st.src, SrcWorkload: st.srcWorkload, SrcIdentity: st.peer, HBONEAddr: st.dst.addr,
	}
	if st.dst.svc {
		info.DstService = st.dst.host
	}
	fail := func(status int, err error) {
		info.Err = err
		if r != nil {
			r.Reject(status)
		} else {
			tun.Close()
		}
		w.connComplete(info)
	}
	areq := st.authzRequest()
	d := snap.rules.tcp.Evaluate(&areq)
	if d.Allowed && d.Custom != "" {
		// The hook speaks HTTP; a TCP tunnel cannot be checked: fail
		// closed, as Envoy does without a reachable ext_authz.
		d.Allowed = false
	}
	if !d.Allowed {
		w.rbacRejected(st, d)
		fail(http.StatusUnauthorized, fmt.Errorf("%w: %s", ErrDenied, d))
		return
	}
	target := st.dst.addr
	if st.dst.svc {
		proto := route.TCP
		if st.dst.proto == protoTLS {
			proto = route.TLS
		}
		req := route.Request{Host: st.dst.host, Port: int(st.dst.addr.Port()), Protocol: proto, SourceIP: st.src.Addr().String()}
		res := snap.table.Pick(&req, nil)
		defer res.Done()
		if res.Kind != route.Forward || res.Endpoint == nil || res.Cluster == nil {
			fail(http.StatusServiceUnavailable, fmt.Errorf("%w: %s port %d", ErrNoHealthyEndpoint, st.dst.host, st.dst.addr.Port()))
			return
		}
		var err error
		if target, err = endpointTarget(res.Endpoint, res.Cluster.Port); err != nil {
			fail(http.StatusServiceUnavailable, err)
			return
		}
	}
	info.DstAddr = target
	ctx := context.Background()
	if r != nil {
		ctx = r.Context()
	}
	up, wl, err := w.dialUpstream(ctx, target)
	if wl != nil {
		info.DstWorkload, info.DstIdentity = wl, w.cfg.State.Load().IdentityOf(wl)
	}
	if err != nil {
		fail(http.StatusServiceUnavailable, err)
		return
	}
	if r != nil {
		if tun, err = r.Accept(nil); err != nil {
			up.Close()
			info.Err = err
			w.connComplete(info)
			return
		}
	}
	var down net.Conn = tun
	if len(prefix) > 0 {
		down = &prefixConn{Conn: tun, prefix: prefix}
	}
	if !w.track(down, up) {
		down.Close()
		up.Close()
		info.Err = ErrWaypointClosed
		w.connComplete(info)
		return
	}
	defer w.untrack(down, up)
	info.open = true
	if w.cfg.Hooks.Opened != nil {
		w.cfg.Hooks.Opened(info)
	}
	info.Sent, info.Received, info.Err = netutil.Join(down, up)
	w.connComplete(info)
}

// rbacRejected logs a denied tunnel or request the way ztunnel and the
// node proxy do.
func (w *Waypoint) rbacRejected(st *wpStream, d authz.Decision) {
	who := st.src.Addr().String()
	if !st.peer.IsZero() {
		who += "(" + st.peer.String() + ")"
	}
	policy := ""
	if d.Policy != nil {
		policy = d.Policy.Namespace + "/" + d.Policy.Name
	}
	w.log.Info("RBAC rejected", "conn", who+"->"+st.dst.authority, "policy", policy, "reason", d.String())
}

// dialUpstream connects to an endpoint: HBONE to its node proxy on
// ip:15008 with the waypoint's identity, expecting the workload's, when
// the workload is in the mesh; plain TCP otherwise.
func (w *Waypoint) dialUpstream(ctx context.Context, target netip.AddrPort) (net.Conn, *Workload, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.ConnectTimeout)
	defer cancel()
	st := w.cfg.State.Load()
	wl, ok := st.WorkloadByAddr(target.Addr())
	if ok && wl.Protocol == TunnelHBONE {
		c, err := w.dialer.Dial(ctx, hbone.Route{
			Address:   netip.AddrPortFrom(target.Addr(), DefaultHBONEPort).String(),
			Authority: target.String(),
			Expected:  []spiffeid.ID{st.IdentityOf(wl)},
			SourceIP:  w.cfg.SourceIP,
		})
		if err != nil {
			return nil, wl, err
		}
		return c, wl, nil
	}
	d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: hbone.TCPKeepalive, Interval: hbone.TCPKeepalive, Count: 9}}
	if w.cfg.SourceIP.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(w.cfg.SourceIP, 0))
	}
	c, err := d.DialContext(ctx, "tcp", target.String())
	if !ok {
		wl = nil
	}
	return c, wl, err
}

// connComplete writes the access log line of a tunnel and calls the
// Closed hook for tunnels that were relayed.
func (w *Waypoint) connComplete(info *ConnInfo) {
	info.Duration = time.Since(info.Start)
	if errors.Is(info.Err, net.ErrClosed) {
		info.Err = nil
	}
	level := slog.LevelInfo
	if info.Err != nil {
		level = slog.LevelError
	}
	ctx := context.Background()
	if w.log.Enabled(ctx, level) {
		attrs := make([]slog.Attr, 0, 14)
		attrs = append(attrs, slog.String("src.addr", info.SrcAddr.String()))
		if wl := info.SrcWorkload; wl != nil {
			attrs = append(attrs, slog.String("src.workload", wl.Name), slog.String("src.namespace", wl.Namespace))
		}
		if !info.SrcIdentity.IsZero() {
			attrs = append(attrs, slog.String("src.identity", info.SrcIdentity.String()))
		}
		if info.DstAddr.IsValid() {
			attrs = append(attrs, slog.String("dst.addr", info.DstAddr.String()))
		}
		attrs = append(attrs, slog.String("dst.hbone_addr", info.HBONEAddr.String()))
		if info.DstService != "" {
			attrs = append(attrs, slog.String("dst.service", info.DstService))
		}
		if wl := info.DstWorkload; wl != nil {
			attrs = append(attrs, slog.String("dst.workload", wl.Name), slog.String("dst.namespace", wl.Namespace))
		}
		if !info.DstIdentity.IsZero() {
			attrs = append(attrs, slog.String("dst.identity", info.DstIdentity.String()))
		}
		attrs = append(attrs,
			slog.String("direction", "waypoint"),
			slog.Int64("bytes_sent", info.Sent),
			slog.Int64("bytes_recv", info.Received),
			slog.String("duration", fmt.Sprintf("%dms", info.Duration.Milliseconds())),
		)
		if info.Err != nil {
			attrs = append(attrs, slog.String("error", info.Err.Error()))
		}
		w.log.LogAttrs(ctx, level, "connection complete", attrs...)
	}
	if w.cfg.Hooks.Closed != nil && info.open {
		w.cfg.Hooks.Closed(info)
	}
}
