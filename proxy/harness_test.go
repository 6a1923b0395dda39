package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	authzistio "github.com/meshblocks/meshblocks/authz/istio"
	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/meshblocks/meshblocks/proxy"
)

// Loopback addresses of the test mesh (127.77.0.0/16 keeps clear of other
// packages' tests).
var (
	ipSleep    = netip.MustParseAddr("127.77.0.2")
	ipEcho     = netip.MustParseAddr("127.77.0.3")
	ipWaypoint = netip.MustParseAddr("127.77.0.4")
	ipLegacy   = netip.MustParseAddr("127.77.0.5")
	ipGhost    = netip.MustParseAddr("127.77.0.6")
	ipOutside  = netip.MustParseAddr("127.77.0.9")
	vipEcho    = netip.MustParseAddr("127.77.10.1")
	vipEchoWP  = netip.MustParseAddr("127.77.10.2")
)

// logBuffer collects JSON slog lines from several goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the parsed log records with message msg.
func (b *logBuffer) lines(msg string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(b.buf.String(), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// waitLines waits (bounded) until n records with msg exist: log lines are
// written when connections finish, just after the client saw the end.
func (b *logBuffer) waitLines(t *testing.T, msg string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l := b.lines(msg)
		if len(l) >= n || time.Now().After(deadline) {
			require.GreaterOrEqual(t, len(l), n, "log lines %q", msg)
			return l
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitMatch waits (bounded) until a record with msg satisfies match, and
// returns it: lines of concurrent connections come in any order.
func (b *logBuffer) waitMatch(t *testing.T, msg string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, l := range b.lines(msg) {
			if match(l) {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q log line matches; have %v", msg, b.lines(msg))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func meshWorkloads() []proxy.Workload {
	return []proxy.Workload{
		{UID: "c//Pod/default/sleep", Name: "sleep", Namespace: "default", ServiceAccount: "sleep",
			Addresses: []netip.Addr{ipSleep}, Node: "n1", Protocol: proxy.TunnelHBONE},
		{UID: "c//Pod/default/echo", Name: "echo", Namespace: "default", ServiceAccount: "echo",
			Addresses: []netip.Addr{ipEcho}, Node: "n2", Protocol: proxy.TunnelHBONE,
			Labels: map[string]string{"app": "echo"},
			Services: map[string][]proxy.PortMapping{
				"default/echo.default.svc.cluster.local":    {{ServicePort: 80, TargetPort: 8080}},
				"default/echo-wp.default.svc.cluster.local": {{ServicePort: 80, TargetPort: 8080}},
			}},
		{UID: "c//Pod/default/waypoint", Name: "waypoint", Namespace: "default", ServiceAccount: "waypoint",
			Addresses: []netip.Addr{ipWaypoint}, Node: "n2", Protocol: proxy.TunnelHBONE},
		{UID: "c//Pod/default/legacy", Name: "legacy", Namespace: "default", ServiceAccount: "legacy",
			Addresses: []netip.Addr{ipLegacy}, Node: "n2", Protocol: proxy.TunnelNone},
		{UID: "c//Pod/default/ghost", Name: "ghost", Namespace: "default", ServiceAccount: "ghost",
			Addresses: []netip.Addr{ipGhost}, Node: "n3", Protocol: proxy.TunnelHBONE},
	}
}

func meshServices() []proxy.Service {
	return []proxy.Service{
		{Name: "echo", Namespace: "default", Hostname: "echo.default.svc.cluster.local",
			Addresses: []netip.Addr{vipEcho}, Ports: []proxy.ServicePort{{Port: 80, TargetPort: 8080}}},
		{Name: "echo-wp", Namespace: "default", Hostname: "echo-wp.default.svc.cluster.local",
			Addresses: []netip.Addr{vipEchoWP}, Ports: []proxy.ServicePort{{Port: 80, TargetPort: 8080}},
			Waypoint: &proxy.Gateway{Address: ipWaypoint}},
	}
}

// mesh is two node proxies on loopback (ztunnel "A" on node n1 for sleep,
// "B" on node n2 for echo) sharing a CA, plus the app servers.
type mesh struct {
	t       testing.TB
	ca      *identitytest.CA
	ids     *identity.Manager
	a, b    *proxy.Proxy
	logA    *logBuffer
	logB    *logBuffer
	state   *proxy.StateHolder
	mu      sync.Mutex
	origDst map[netip.AddrPort]netip.AddrPort // listener address -> original destination
	metrics *hookCounter                      // node A's hooks
	// metricsB counts node B's hooks.
	metricsB *hookCounter
	serving  []chan error
	dials    *dialLog // node B's workload dials, with meshOptions.recordDials
	stopped  sync.Once
}

// dialLog records the workload connections node B opens.
type dialLog struct {
	mu      sync.Mutex
	targets []netip.AddrPort
}

func (d *dialLog) dial(ctx context.Context, _ *proxy.Workload, addr, _ netip.AddrPort) (net.Conn, error) {
	d.mu.Lock()
	d.targets = append(d.targets, addr)
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", addr.String())
}

func (d *dialLog) seen() []netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]netip.AddrPort(nil), d.targets...)
}

type hookCounter struct {
	mu             sync.Mutex
	opened, closed int
	sent, received int64
	infos          []proxy.ConnInfo
}

func (h *hookCounter) hooks() proxy.Hooks {
	return proxy.Hooks{
		Opened: func(*proxy.ConnInfo) { h.mu.Lock(); h.opened++; h.mu.Unlock() },
		Closed: func(c *proxy.ConnInfo) {
			h.mu.Lock()
			h.closed++
			h.sent += c.Sent
			h.received += c.Received
			h.infos = append(h.infos, *c)
			h.mu.Unlock()
		},
	}
}

type meshOptions struct {
	strict      bool // PeerAuthentication STRICT for echo (testdata) in the State
	strictHook  bool // Config.PlaintextAllowed refuses everything on node B
	idleTimeout time.Duration
	quietLogs   bool
	// recordDials makes node B dial workloads through mesh.dials.
	recordDials bool
	// reservedPorts is node B's Config.ReservedPorts.
	reservedPorts []uint16
	// noRecheck sets Config.DisablePolicyRecheck on both nodes.
	noRecheck bool
}

func newMesh(t testing.TB, opt meshOptions) *mesh {
	t.Helper()
	ca := identitytest.NewCA(t, "cluster.local")
	ids, err := identity.NewManager(identity.ManagerConfig{Fetcher: ca.Local()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { ids.Run(ctx); close(runDone) }()
	t.Cleanup(func() { cancel(); <-runDone })

	data, err := os.ReadFile("testdata/policies.yaml")
	require.NoError(t, err)
	pols, err := authzistio.Parse(data, authzistio.Options{})
	require.NoError(t, err)
	engine, err := authz.New(authz.Config{}, pols)
	require.NoError(t, err)
	opts := []proxy.StateOption{proxy.WithAuthz(engine)}
	if opt.strict {
		data, err := os.ReadFile("testdata/peerauthn-strict.yaml")
		require.NoError(t, err)
		pas, err := authzistio.ParsePeerAuthentications(data, authzistio.Options{})
		require.NoError(t, err)
		pa, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{}, pas)
		require.NoError(t, err)
		opts = append(opts, proxy.WithPeerAuthn(pa))
	}
	st, err := proxy.NewState(meshWorkloads(), meshServices(), opts...)
	require.NoError(t, err)
	m := &mesh{t: t, ca: ca, ids: ids, logA: &logBuffer{}, logB: &logBuffer{},
		state: &proxy.StateHolder{}, origDst: map[netip.AddrPort]netip.AddrPort{}, metrics: &hookCounter{},
		metricsB: &hookCounter{}, dials: &dialLog{}}
	m.state.Store(st)

	mk := func(node string, lb *logBuffer, hooks proxy.Hooks) *proxy.Proxy {
		cfg := proxy.Config{
			State:                m.state,
			Identity:             func(id spiffeid.ID) identity.Source { return ids.Source(id) },
			Node:                 node,
			OriginalDst:          m.originalDst,
			BindSourceIP:         true,
			IdleTimeout:          opt.idleTimeout,
			DisablePolicyRecheck: opt.noRecheck,
			// Debug too: the HBONE server's handshake failures.
			Logger: slog.New(slog.NewJSONHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Hooks:  hooks,
		}
		if node == "n2" && opt.strictHook {
			cfg.PlaintextAllowed = func(*proxy.Workload, uint16) bool { return false }
		}
		if node == "n2" && opt.recordDials {
			cfg.DialWorkload = m.dials.dial
		}
		if node == "n2" {
			cfg.ReservedPorts = opt.reservedPorts
		}
		if opt.quietLogs {
			cfg.Logger = nil
		}
		p, err := proxy.New(cfg)
		require.NoError(t, err)
		return p
	}
	m.a = mk("n1", m.logA, m.metrics.hooks())
	m.b = mk("n2", m.logB, m.metricsB.hooks())
	for _, ip := range []netip.Addr{ipEcho, ipGhost} {
		ln := listen(t, netip.AddrPortFrom(ip, proxy.DefaultHBONEPort))
		m.serve(func() error { return m.b.ServeInboundHBONE(ln) })
	}
	t.Cleanup(m.stop)
	return m
}

func (m *mesh) serve(f func() error) {
	done := make(chan error, 1)
	go func() { done <- f() }()
	m.mu.Lock()
	m.serving = append(m.serving, done)
	m.mu.Unlock()
}

// stop shuts both proxies down and checks that every Serve returned
// ErrProxyClosed. Only the first call does anything.
func (m *mesh) stop() { m.stopped.Do(m.doStop) }

func (m *mesh) doStop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	assert.NoError(m.t, m.a.Shutdown(ctx))
	assert.NoError(m.t, m.b.Shutdown(ctx))
	m.mu.Lock()
	serving := m.serving
	m.mu.Unlock()
	for _, done := range serving {
		if err := <-done; !errors.Is(err, proxy.ErrProxyClosed) {
			m.t.Errorf("serve: %v", err)
		}
	}
}

func (m *mesh) originalDst(c net.Conn) (netip.AddrPort, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	la := c.LocalAddr().(*net.TCPAddr).AddrPort()
	if d, ok := m.origDst[la]; ok {
		return d, nil
	}
	return la, nil
}

// outboundTo starts an outbound listener on node A whose redirected
// connections have dst as their original destination, as iptables would
// report it. It returns the address apps connect to.
func (m *mesh) outboundTo(dst netip.AddrPort) netip.AddrPort {
	ln := listen(m.t, netip.AddrPortFrom(netip.MustParseAddr("127.77.1.1"), 0))
	la := ln.Addr().(*net.TCPAddr).AddrPort()
	m.mu.Lock()
	m.origDst[la] = dst
	m.mu.Unlock()
	m.serve(func() error { return m.a.ServeOutbound(ln, "") })
	return la
}

// plaintextTo starts node B's inbound plaintext listener for dst.
func (m *mesh) plaintextTo(dst netip.AddrPort) netip.AddrPort {
	ln := listen(m.t, netip.AddrPortFrom(netip.MustParseAddr("127.77.1.2"), 0))
	la := ln.Addr().(*net.TCPAddr).AddrPort()
	m.mu.Lock()
	m.origDst[la] = dst
	m.mu.Unlock()
	m.serve(func() error { return m.b.ServeInboundPlaintext(ln) })
	return la
}

func listen(t testing.TB, a netip.AddrPort) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", a.String())
	require.NoError(t, err)
	return ln
}

// dialFrom connects to addr from the source address src. It stops the
// test on failure, so only the test's goroutine may call it.
func dialFrom(t testing.TB, src netip.Addr, addr netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := dialTCP(src, addr)
	require.NoError(t, err)
	return c
}

// dialTCP connects to addr from the source address src; any goroutine may
// call it.
func dialTCP(src netip.Addr, addr netip.AddrPort) (*net.TCPConn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// app servers

// echoServer echoes each connection until the client half-closes, then
// half-closes back. banner, if set, is sent first (a server-first protocol).
func echoServer(t testing.TB, addr netip.AddrPort, banner string) {
	t.Helper()
	ln := listen(t, addr)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if banner != "" {
					if _, err := io.WriteString(c, banner); err != nil {
						return
					}
				}
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

// roundTrip writes msg, half-closes and reads everything back.
func roundTrip(c *net.TCPConn, msg string) (string, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	if err := c.CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}
func apOf(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

type wpSeen struct{ authority, peer, baggage, forwarded, traceparent string }

// waypoint is a minimal L4 waypoint: an HBONE server with its own identity
// that forwards each tunnel over HBONE to the echo workload.
type waypoint struct {
	mu   sync.Mutex
	reqs []wpSeen
}

func (w *waypoint) seen() []wpSeen {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]wpSeen(nil), w.reqs...)
}

func startWaypoint(t testing.TB, m *mesh) *waypoint {
	t.Helper()
	wp := &waypoint{}
	src := m.ids.Source(m.ca.ID("ns/default/sa/waypoint"))
	d := &hbone.Dialer{Source: src, Expected: []spiffeid.ID{m.ca.ID("ns/default/sa/echo")}}
	srv := &hbone.Server{Source: src, Handler: hbone.HandlerFunc(func(r *hbone.Request) {
		wp.mu.Lock()
		wp.reqs = append(wp.reqs, wpSeen{r.Authority, r.Peer.String(), r.Header.Get("baggage"), r.Header.Get("forwarded"), r.Header.Get("traceparent")})
		wp.mu.Unlock()
		up, err := d.Dial(r.Context(), hbone.Route{Address: "127.77.0.3:15008", Authority: "127.77.0.3:8080"})
		if err != nil {
			r.Reject(http.StatusServiceUnavailable)
			return
		}
		c, err := r.Accept(nil)
		if err != nil {
			up.Close()
			return
		}
		netutilJoin(c, up)
	})}
	ln := listen(t, apOf(ipWaypoint, proxy.DefaultHBONEPort))
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		d.Close()
	})
	return wp
}

func netutilJoin(a *hbone.Conn, b *hbone.Conn) { hbone.Relay(a, b) }

// isReset reports whether err is how a socket reports an RST from the
// peer: ECONNRESET on read or write, or, when the RST arrived before the
// client's own shutdown, ENOTCONN or EPIPE.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.EPIPE)
}

// exchange connects from src to addr, sends msg, half-closes and reads the
// answer. A refused connection may already be reset during the connect
// (the proxy can decide before the client's connect returns), so dial
// errors are returned, not fatal.
func exchange(src netip.Addr, addr netip.AddrPort, msg string) (string, error) {
	c, err := dialTCP(src, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return roundTrip(c, msg)
}
