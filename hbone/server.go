package hbone

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
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/internal/netutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Handler answers CONNECT requests. ServeHBONE runs on its own goroutine
// per request and must call Accept or Reject. Per spec, it should connect
// upstream first and Accept only once that succeeded, so that
// server-first protocols work and failures become 503. If it returns
// without answering, the request is rejected with 503.
type Handler interface {
	ServeHBONE(r *Request)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(r *Request)

// ServeHBONE calls f(r).
func (f HandlerFunc) ServeHBONE(r *Request) { f(r) }

// Request is one CONNECT request received by a Server.
type Request struct {
	// Authority is the CONNECT :authority, checked by SplitAuthority.
	Authority string
	// Header holds the regular request headers (baggage, forwarded,
	// traceparent, ...); unknown ones are kept but have no meaning here.
	Header http.Header
	// Peer is the client identity: the first URI SAN of its verified
	// certificate.
	Peer spiffeid.ID
	// RemoteAddr and LocalAddr are the addresses of the TLS connection;
	// LocalAddr is the IP the client dialled.
	RemoteAddr, LocalAddr net.Addr
	// TLS is the state of the carrying TLS connection.
	TLS *tls.ConnectionState

	st       *stream
	answered atomic.Bool
}

// Context returns a context that is cancelled when the stream ends
// before it is answered (the client gave up or the connection closed).
func (r *Request) Context() context.Context {
	return &streamContext{st: r.st}
}

// Accept answers 200, with optional extra response headers (for example
// a baggage header describing the destination), and returns the tunnel.
func (r *Request) Accept(h http.Header) (*Conn, error) {
	if !r.answered.CompareAndSwap(false, true) {
		return nil, ErrAlreadyAnswered
	}
	select {
	case <-r.st.done:
		// The client reset the stream or the connection closed while the
		// handler was connecting upstream.
		r.st.mu.Lock()
		err := r.st.rerr
		r.st.mu.Unlock()
		if err == nil || err == io.EOF {
			err = ErrConnClosed
		}
		r.st.Close()
		return nil, fmt.Errorf("hbone: accept %s: stream ended before the answer: %w", r.Authority, err)
	default:
	}
	fields := appendHeader([]hpack.HeaderField{statusField(http.StatusOK)}, h)
	if err := r.st.c.writeHeaders(r.st.id, fields, false); err != nil {
		r.st.Close()
		return nil, fmt.Errorf("hbone: accept %s: %w", r.Authority, err)
	}
	return r.st, nil
}

// Reject answers status (for example 400, 401 or 503) with END_STREAM
// and ends the stream.
func (r *Request) Reject(status int) error {
	if status < 100 || status > 999 || status == http.StatusOK {
		return fmt.Errorf("hbone: reject: status %d is not an error status", status)
	}
	if !r.answered.CompareAndSwap(false, true) {
		return ErrAlreadyAnswered
	}
	rejectStream(r.st, status, true)
	return nil
}

// rejectStream sends status with END_STREAM, tells the client to stop
// sending with RST_STREAM(NO_ERROR), and forgets the stream.
func rejectStream(st *stream, status int, inline bool) {
	c := st.c
	fields := []hpack.HeaderField{statusField(status)}
	c.mu.Lock()
	st.wclosed = true
	if st.werr == nil {
		st.werr = net.ErrClosed
	}
	needRST := !st.recvDone
	c.mu.Unlock()
	c.cmu.Lock()
	c.encodeHeadersLocked(st.id, fields, true)
	if needRST {
		c.cfr.WriteRSTStream(st.id, http2.ErrCodeNo)
	}
	c.cmu.Unlock()
	if inline {
		c.flushInline()
	} else {
		c.signal()
	}
	st.mu.Lock()
	st.closed = true
	for _, b := range st.rq {
		putBuf(b)
	}
	st.rq = nil
	st.shutDoneLocked()
	st.mu.Unlock()
	c.removeStream(st)
}

type streamContext struct{ st *stream }

func (s *streamContext) Deadline() (time.Time, bool) { return time.Time{}, false }
func (s *streamContext) Done() <-chan struct{}       { return s.st.done }
func (s *streamContext) Err() error {
	select {
	case <-s.st.done:
		return context.Canceled
	default:
		return nil
	}
}
func (s *streamContext) Value(any) any { return nil }

// Server terminates HBONE: it accepts TLS connections that negotiate ALPN
// h2, verifies client certificates against the mesh bundle, and hands
// each CONNECT stream to Handler. Non-CONNECT requests and bad
// authorities get 400. It advertises MAX_CONCURRENT_STREAMS 200, 4 MiB
// stream and 16 MiB connection windows and 1 MiB frames.
type Server struct {
	// Source is the server's workload identity. Required unless
	// TLSConfig is set.
	Source identity.Source
	// TLSConfig, if set, replaces identity.ServerTLSConfig(Source). It
	// must offer ALPN h2; peers that do not negotiate h2 are dropped.
	TLSConfig *tls.Config
	// Handler answers CONNECT requests. Required.
	Handler Handler
	// HandshakeTimeout bounds the TLS handshake and the client preface.
	// If zero, 10 s.
	HandshakeTimeout time.Duration
	// KeepaliveInterval is the wait before each PING. If zero, 10 s; if
	// negative, none.
	KeepaliveInterval time.Duration
	// KeepaliveTimeout closes a connection (after GOAWAY) whose PING is
	// not answered in time. If zero, 20 s.
	KeepaliveTimeout time.Duration
	// DrainTimeout bounds Shutdown when its context has no deadline:
	// streams get this long after GOAWAY to finish before their
	// connections are closed (spec §B.8). If zero, 5 s; if negative,
	// Shutdown waits as long as its context allows.
	DrainTimeout time.Duration
	// Logger receives per-connection events at Debug. If nil, discard.
	Logger *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	raw       map[net.Conn]struct{}
	conns     map[*conn]struct{}
	shutdown  bool
	drained   chan struct{}
	wg        sync.WaitGroup
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (s *Server) tlsConfig() (*tls.Config, error) {
	if s.TLSConfig != nil {
		return s.TLSConfig, nil
	}
	if s.Source == nil {
		return nil, errors.New("hbone: Server.Source and Server.TLSConfig are both nil")
	}
	return identity.ServerTLSConfig(s.Source), nil
}

// Serve accepts connections on ln until Shutdown or Close, after which
// it returns ErrServerClosed. It closes ln.
func (s *Server) Serve(ln net.Listener) error {
	if s.Handler == nil {
		return errors.New("hbone: Server.Handler is nil")
	}
	cfg, err := s.tlsConfig()
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	err = netutil.AcceptLoop(ln, func(nc net.Conn) bool {
		if !s.track(nc) {
			nc.Close()
			return false
		}
		go func() {
			defer s.wg.Done()
			s.serve(nc, cfg)
		}()
		return true
	})
	s.mu.Lock()
	down := s.shutdown
	s.mu.Unlock()
	if down || errors.Is(err, netutil.ErrStopped) {
		return ErrServerClosed
	}
	return fmt.Errorf("hbone: accept: %w", err)
}

// ServeConn serves one already accepted connection (TLS is done here) and
// returns when it closes. Use it for connections that do not come from a
// listener, such as net.Pipe in tests.
func (s *Server) ServeConn(nc net.Conn) error {
	if s.Handler == nil {
		return errors.New("hbone: Server.Handler is nil")
	}
	cfg, err := s.tlsConfig()
	if err != nil {
		return err
	}
	if !s.track(nc) {
		nc.Close()
		return ErrServerClosed
	}
	defer s.wg.Done()
	return s.serve(nc, cfg)
}

func (s *Server) track(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	if s.raw == nil {
		s.raw = make(map[net.Conn]struct{})
	}
	s.raw[nc] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) serve(nc net.Conn, cfg *tls.Config) error {
	defer func() {
		s.mu.Lock()
		delete(s.raw, nc)
		s.checkDrainedLocked()
		s.mu.Unlock()
		nc.Close()
	}()
	log := s.logger()
	if tcp, ok := nc.(*net.TCPConn); ok {
		// As ztunnel: TCP keepalive 180 s idle, 180 s interval, 9 probes.
		tcp.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: TCPKeepalive, Interval: TCPKeepalive, Count: 9})
		tcp.SetNoDelay(true)
	}
	tc := tls.Server(nc, cfg)
	hto := cmpOr(s.HandshakeTimeout, DefaultConnectTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), hto)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		log.Debug("hbone: TLS handshake failed", "remote", nc.RemoteAddr(), "err", err)
		return fmt.Errorf("hbone: TLS handshake with %v: %w", nc.RemoteAddr(), err)
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != "h2" {
		log.Debug("hbone: client did not negotiate h2", "remote", nc.RemoteAddr(), "alpn", cs.NegotiatedProtocol)
		return fmt.Errorf("hbone: %v: %w", nc.RemoteAddr(), ErrNoALPN)
	}
	peer, _ := identity.PeerID(cs)
	tc.SetReadDeadline(time.Now().Add(hto))
	return s.serveH2(tc, peer, &cs, func() { tc.SetReadDeadline(time.Time{}) })
}

// serveH2 runs the HTTP/2 server engine on an established connection
// (TLS already verified by the caller). afterPreface runs once the client
// preface has been read.
func (s *Server) serveH2(nc net.Conn, peer spiffeid.ID, cs *tls.ConnectionState, afterPreface func()) error {
	log := s.logger()
	c := newConn(nc, connConfig{
		pingInterval: s.KeepaliveInterval,
		pingTimeout:  s.KeepaliveTimeout,
		logger:       s.Logger,
	})
	if err := readPreface(c.br); err != nil {
		log.Debug("hbone: bad preface", "remote", nc.RemoteAddr(), "err", err)
		return err
	}
	afterPreface()
	c.cfg.newStream = func(st *stream, f *http2.MetaHeadersFrame) { s.newStream(c, st, f, peer, cs) }
	c.cfg.onIdle = s.connIdle
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	log.Debug("hbone: connection", "remote", nc.RemoteAddr(), "peer", peer)
	c.start()
	<-c.done
	c.wg.Wait()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	return nil
}

func (s *Server) newStream(c *conn, st *stream, f *http2.MetaHeadersFrame, peer spiffeid.ID, cs *tls.ConnectionState) {
	method := f.PseudoValue("method")
	authority := f.PseudoValue("authority")
	if method != http.MethodConnect || f.PseudoValue("path") != "" || f.PseudoValue("scheme") != "" || f.PseudoValue("protocol") != "" {
		s.logger().Debug("hbone: not a CONNECT request", "method", method, "path", f.PseudoValue("path"))
		rejectStream(st, http.StatusBadRequest, false)
		return
	}
	if _, _, err := SplitAuthority(authority); err != nil {
		s.logger().Debug("hbone: bad authority", "err", err)
		rejectStream(st, http.StatusBadRequest, false)
		return
	}
	h := make(http.Header, len(f.RegularFields()))
	for _, hf := range f.RegularFields() {
		h.Add(hf.Name, hf.Value)
	}
	st.authority = authority
	r := &Request{
		Authority:  authority,
		Header:     h,
		Peer:       peer,
		RemoteAddr: c.nc.RemoteAddr(),
		LocalAddr:  c.nc.LocalAddr(),
		TLS:        cs,
		st:         st,
	}
	go func() {
		defer func() {
			if r.answered.CompareAndSwap(false, true) {
				rejectStream(st, http.StatusServiceUnavailable, true)
			}
		}()
		s.Handler.ServeHBONE(r)
	}()
}

func (s *Server) connIdle(c *conn) {
	s.mu.Lock()
	down := s.shutdown
	s.mu.Unlock()
	if down {
		c.closeGracefully(ErrServerClosed)
	}
}

func (s *Server) checkDrainedLocked() {
	if s.shutdown && s.drained != nil && len(s.raw) == 0 {
		select {
		case <-s.drained:
		default:
			close(s.drained)
		}
	}
}

// Shutdown stops accepting, sends GOAWAY(NO_ERROR) on every connection,
// waits for their streams to finish and closes them. If ctx ends first,
// the remaining connections are closed at once and ctx's error is
// returned. A ctx without a deadline gets the drain deadline of
// DrainTimeout (5 s by default, as ztunnel's); when it passes, the error
// wraps context.DeadlineExceeded. Serve returns ErrServerClosed.
func (s *Server) Shutdown(ctx context.Context) error {
	var drain time.Duration
	if _, ok := ctx.Deadline(); !ok {
		if drain = cmpOr(s.DrainTimeout, DefaultDrainTimeout); drain > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, drain)
			defer cancel()
		}
	}
	s.mu.Lock()
	s.shutdown = true
	if s.drained == nil {
		s.drained = make(chan struct{})
	}
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.checkDrainedLocked()
	drained := s.drained
	s.mu.Unlock()
	for _, c := range conns {
		c.sendGoAway()
		if c.activeStreams() == 0 {
			c.closeGracefully(ErrServerClosed)
		}
	}
	// Connections still in the handshake are not carrying streams yet.
	s.mu.Lock()
	for nc := range s.raw {
		if !s.hasConnLocked(nc) {
			nc.Close()
		}
	}
	s.mu.Unlock()
	select {
	case <-drained:
		s.wg.Wait()
		return nil
	case <-ctx.Done():
		s.Close()
		if drain > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("hbone: shutdown: streams still open after the %v drain deadline: %w", drain, ctx.Err())
		}
		return ctx.Err()
	}
}

func (s *Server) hasConnLocked(nc net.Conn) bool {
	for c := range s.conns {
		if tc, ok := c.nc.(*tls.Conn); ok && tc.NetConn() == nc {
			return true
		}
	}
	return false
}

// Close closes the listeners and every connection at once, and waits for
// the connection goroutines to end. Handlers see their tunnels fail.
func (s *Server) Close() error {
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	for nc := range s.raw {
		nc.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeWithError(ErrServerClosed)
	}
	s.wg.Wait()
	return nil
}

// ErrDestinationMismatch is returned by Request.CheckDestination.
var ErrDestinationMismatch = errors.New("hbone: authority IP is not the address the client dialled")

// CheckDestination applies ztunnel's destination check (spec §C.11 step
// 3): when the authority is an IP address it must equal the local IP the
// client connected to; hostname authorities pass. Handlers answer 400 on
// error, unless an application-tunnel or waypoint exception applies.
func (r *Request) CheckDestination() error {
	host, _, err := SplitAuthority(r.Authority)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil // a hostname
	}
	local, err := netip.ParseAddrPort(r.LocalAddr.String())
	if err != nil {
		return fmt.Errorf("hbone: local address %v: %w", r.LocalAddr, err)
	}
	if ip.Unmap() != local.Addr().Unmap() {
		return fmt.Errorf("%w: authority %s, dialled %s", ErrDestinationMismatch, r.Authority, local.Addr())
	}
	return nil
}
