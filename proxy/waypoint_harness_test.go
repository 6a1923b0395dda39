package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/meshblocks/meshblocks/proxy"
	"github.com/meshblocks/meshblocks/proxy/waypointconfig"
)

// The waypoint test mesh (testdata/waypoint/mesh.yaml) lives in
// 127.81.0.0/16, clear of the other tests' addresses.
var (
	wpIPSleep    = netip.MustParseAddr("127.81.0.2")
	wpIPCurl     = netip.MustParseAddr("127.81.0.3")
	wpIPWaypoint = netip.MustParseAddr("127.81.0.4")
	wpIPMirror   = netip.MustParseAddr("127.81.0.33")
	wpIPTCPEcho  = netip.MustParseAddr("127.81.0.41")
)

// wpLog collects JSON slog lines from several goroutines.
type wpLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *wpLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *wpLog) records(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(l.buf.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// wait waits (bounded) for a record with msg that satisfies match: a
// line is written once its request or connection has ended, just after
// the client saw the end.
func (l *wpLog) wait(t testing.TB, msg string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, r := range l.records(msg) {
			if match(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q log line matches; have %v", msg, l.records(msg))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wpApp is an HTTP app on one workload: it answers with what it saw.
type wpApp struct {
	name, version string
	mesh          *wpMesh
	mu            sync.Mutex
	seen          []appSeen
}

type appSeen struct {
	Name, Version, Method, Path, Host, Proto, Body string
	Header                                         http.Header
}

func (a *wpApp) requests() []appSeen {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]appSeen(nil), a.seen...)
}

func (a *wpApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s := appSeen{Name: a.name, Version: a.version, Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host,
		Proto: r.Proto, Body: string(body), Header: r.Header.Clone()}
	a.mu.Lock()
	a.seen = append(a.seen, s)
	a.mu.Unlock()
	p := r.URL.Path
	if r.Header.Get("Upgrade") == "echo" {
		// A protocol upgrade: switch, then echo lines.
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		io.Copy(c, brw)
		return
	}
	switch {
	case strings.HasPrefix(p, "/slow"):
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
			return
		}
	case strings.HasPrefix(p, "/hold"):
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
	case strings.HasPrefix(p, "/flaky"), strings.HasPrefix(p, "/fragile"):
		if a.mesh.failFirst(r.Header.Get("X-Key"), 2) {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "app unavailable")
			return
		}
	}
	w.Header().Set("X-App-Secret", "s3cr3t")
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(s)
}

// wpMesh is two node proxies (clients on n1, apps on n2) and a waypoint
// on loopback, sharing a CA, with the apps of testdata/waypoint/mesh.yaml
// and the rules of testdata/waypoint/istio.yaml.
type wpMesh struct {
	t      testing.TB
	ca     *identitytest.CA
	ids    *identity.Manager
	state  *proxy.StateHolder
	rules  proxy.WaypointRules
	a, b   *proxy.Proxy
	wp     *proxy.Waypoint
	wpDone chan error
	socks  netip.AddrPort
	vips   map[string]netip.Addr
	apps   map[string]*wpApp
	log    *wpLog

	mu      sync.Mutex
	infos   []proxy.RequestInfo
	conns   []proxy.ConnInfo
	fails   map[string]int
	serving []chan error
	stopped sync.Once
}

type wpMeshOptions struct {
	quiet    bool // no access logs (benchmarks)
	extAuthz func(ctx context.Context, provider string, r *http.Request) (bool, error)
}

func newWPMesh(t testing.TB, opt wpMeshOptions) *wpMesh {
	t.Helper()
	m := &wpMesh{t: t, ca: identitytest.NewCA(t, "cluster.local"), log: &wpLog{},
		vips: map[string]netip.Addr{}, apps: map[string]*wpApp{}, fails: map[string]int{}, wpDone: make(chan error, 1)}
	ids, err := identity.NewManager(identity.ManagerConfig{Fetcher: m.ca.Local()})
	require.NoError(t, err)
	m.ids = ids
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { ids.Run(ctx); close(runDone) }()
	t.Cleanup(func() { cancel(); <-runDone })

	data, err := os.ReadFile("testdata/waypoint/mesh.yaml")
	require.NoError(t, err)
	lc, err := proxy.ParseLocalConfig(data)
	require.NoError(t, err)
	st, err := proxy.NewState(lc.Workloads, lc.Services)
	require.NoError(t, err)
	m.state = &proxy.StateHolder{}
	m.state.Store(st)
	for _, s := range st.Services() {
		m.vips[s.Hostname] = s.Addresses[0]
	}
	data, err = os.ReadFile("testdata/waypoint/istio.yaml")
	require.NoError(t, err)
	res, err := waypointconfig.Parse(waypointconfig.Options{}, waypointconfig.File{Name: "istio.yaml", Data: data})
	require.NoError(t, err)
	m.rules = res.Rules

	var logger *slog.Logger
	if !opt.quiet {
		logger = slog.New(slog.NewJSONHandler(m.log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	mk := func(node string) *proxy.Proxy {
		p, err := proxy.New(proxy.Config{
			State:        m.state,
			Identity:     func(id spiffeid.ID) identity.Source { return ids.Source(id) },
			Node:         node,
			BindSourceIP: true,
		})
		require.NoError(t, err)
		return p
	}
	m.a, m.b = mk("n1"), mk("n2")

	// Apps, each behind node n2's HBONE listener on its address.
	for _, w := range st.Workloads() {
		if w.Node != "n2" {
			continue
		}
		ip := w.Addresses[0]
		ln := wpListen(t, netip.AddrPortFrom(ip, proxy.DefaultHBONEPort))
		m.serve(func() error { return m.b.ServeInboundHBONE(ln) })
		if ip == wpIPTCPEcho {
			wpEchoServer(t, netip.AddrPortFrom(ip, 9000))
			continue
		}
		app := &wpApp{name: w.Name, version: w.Labels["version"], mesh: m}
		m.apps[w.Name] = app
		wpHTTPServer(t, netip.AddrPortFrom(ip, 8080), app)
	}
	socks := wpListen(t, netip.AddrPortFrom(netip.MustParseAddr("127.81.1.1"), 0))
	m.socks = socks.Addr().(*net.TCPAddr).AddrPort()
	m.serve(func() error { return m.a.ServeSOCKS5(socks, "") })

	wpID := m.ca.ID("ns/default/sa/waypoint")
	m.wp, err = proxy.NewWaypoint(proxy.WaypointConfig{
		State:     m.state,
		Source:    ids.Source(wpID),
		Name:      "waypoint",
		Namespace: "default",
		Addresses: []netip.Addr{wpIPWaypoint},
		SourceIP:  wpIPWaypoint,
		ExtAuthz:  opt.extAuthz,
		Logger:    logger,
		Hooks: proxy.WaypointHooks{
			Request: func(ri *proxy.RequestInfo) { m.mu.Lock(); m.infos = append(m.infos, *ri); m.mu.Unlock() },
			Closed:  func(c *proxy.ConnInfo) { m.mu.Lock(); m.conns = append(m.conns, *c); m.mu.Unlock() },
		},
	})
	require.NoError(t, err)
	require.NoError(t, m.wp.SetRules(m.rules))
	wln := wpListen(t, netip.AddrPortFrom(wpIPWaypoint, proxy.DefaultHBONEPort))
	go func() { m.wpDone <- m.wp.Serve(wln) }()
	t.Cleanup(m.stop)
	return m
}

// failFirst reports whether the request with key is one of the first n.
func (m *wpMesh) failFirst(key string, n int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fails[key]++
	return m.fails[key] <= n
}

func (m *wpMesh) requestInfos() []proxy.RequestInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]proxy.RequestInfo(nil), m.infos...)
}

// waitInfo waits (bounded) for the hook's record of a request: the hook
// runs once the response is written.
func (m *wpMesh) waitInfo(t testing.TB, match func(*proxy.RequestInfo) bool) proxy.RequestInfo {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		infos := m.requestInfos()
		for i := range infos {
			if match(&infos[i]) {
				return infos[i]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no request info matches; have %d", len(infos))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (m *wpMesh) serve(f func() error) {
	done := make(chan error, 1)
	go func() { done <- f() }()
	m.mu.Lock()
	m.serving = append(m.serving, done)
	m.mu.Unlock()
}

func (m *wpMesh) stop() { m.stopped.Do(m.doStop) }

func (m *wpMesh) doStop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	assert.NoError(m.t, m.wp.Shutdown(ctx))
	if err := <-m.wpDone; !errors.Is(err, proxy.ErrWaypointClosed) {
		m.t.Errorf("waypoint serve: %v", err)
	}
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

// dial connects from src through node n1's SOCKS5 listener to target, as
// an app of the mesh does: the node proxy sends the connection to the
// waypoint of the target's Service.
func (m *wpMesh) dial(ctx context.Context, src netip.Addr, target netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", m.socks.String())
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	ip := target.Addr().As4()
	req := append([]byte{5, 1, 0, 5, 1, 0, 1}, ip[:]...)
	req = append(req, byte(target.Port()>>8), byte(target.Port()))
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	var reply [12]byte // method selection (2) + reply with an IPv4 address (10)
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("socks5 reply: %w", err)
	}
	if reply[1] != 0 || reply[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("socks5: method %d, reply %d", reply[1], reply[3])
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// client returns an HTTP client for an app at src: Service host names
// resolve to their VIPs, as cluster DNS would. h2 speaks HTTP/2 with prior
// knowledge.
func (m *wpMesh) client(src netip.Addr, h2 bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			vip, ok := m.vips[host]
			if ip, err := netip.ParseAddr(host); err == nil {
				vip, ok = ip, true // a workload addressed directly
			}
			if !ok {
				return nil, fmt.Errorf("no service %s", host)
			}
			p, _ := strconv.Atoi(port)
			return m.dial(ctx, src, netip.AddrPortFrom(vip, uint16(p)))
		},
		MaxIdleConnsPerHost: 16,
		DisableCompression:  true,
	}
	if h2 {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	m.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Timeout:       15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// wpResp is a response with its body read.
type wpResp struct {
	status int
	header http.Header
	body   string
	app    appSeen // the app's echo, when it answered
}

func (m *wpMesh) do(t testing.TB, c *http.Client, method, url string, header http.Header, body string) wpResp {
	t.Helper()
	r, err := m.try(c, method, url, header, body)
	require.NoError(t, err)
	return r
}

func (m *wpMesh) try(c *http.Client, method, url string, header http.Header, body string) (wpResp, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return wpResp{}, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return wpResp{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return wpResp{}, err
	}
	out := wpResp{status: resp.StatusCode, header: resp.Header, body: string(b)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		json.Unmarshal(b, &out.app)
	}
	return out, nil
}

func wpListen(t testing.TB, a netip.AddrPort) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", a.String())
	require.NoError(t, err)
	return ln
}

// wpHTTPServer serves h on addr with HTTP/1.1 and HTTP/2 prior knowledge.
func wpHTTPServer(t testing.TB, addr netip.AddrPort, h http.Handler) {
	t.Helper()
	ln := wpListen(t, addr)
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: protos}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
}

// wpEchoServer echoes each connection until the client half-closes.
func wpEchoServer(t testing.TB, addr netip.AddrPort) {
	t.Helper()
	ln := wpListen(t, addr)
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
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}
