package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	xproxy "golang.org/x/net/proxy"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/proxy"
)

// socks5Port is where each node proxy takes SOCKS5 connections from its
// node's apps, on the node's address 127.0.91.<n>.
const socks5Port = 15080

// node is one node proxy (a ztunnel): SOCKS5 for its apps, inbound HBONE
// on each of its pods' addresses.
type node struct {
	name   string
	socks  string
	holder *proxy.StateHolder
	ids    *identity.Manager
	px     *proxy.Proxy
	opened *connCounter
	pods   []string
}

// waypoint is the waypoint proxy of Gateway namespace/name.
type waypoint struct {
	gateway string
	addr    netip.Addr
	id      spiffeid.ID
	holder  *proxy.StateHolder
	ids     *identity.Manager
	wp      *proxy.Waypoint

	mu   sync.Mutex
	reqs []proxy.RequestInfo
}

func (w *waypoint) request(ri *proxy.RequestInfo) {
	w.mu.Lock()
	w.reqs = append(w.reqs, *ri)
	w.mu.Unlock()
}

// findRequest returns the first request the waypoint answered for which
// match is true.
func (w *waypoint) findRequest(match func(*proxy.RequestInfo) bool) (proxy.RequestInfo, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range w.reqs {
		if match(&w.reqs[i]) {
			return w.reqs[i], true
		}
	}
	return proxy.RequestInfo{}, false
}

func (w *waypoint) reset() {
	w.mu.Lock()
	w.reqs = nil
	w.mu.Unlock()
}

// mesh is everything the demo runs: a CA, the node proxies, the waypoint
// once a step creates it, the apps, and the clients.
type mesh struct {
	tap     *logTap
	ca      *identity.CA
	nodes   []*node
	wp      *waypoint
	apps    []*http.Server
	clients map[string]*client

	idsCtx  context.Context
	stopIDs context.CancelFunc
	wg      sync.WaitGroup // every goroutine the mesh starts
}

// listen opens a TCP listener, saying what it is for when it cannot.
func listen(addr, what string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (is another demo running?)", what, err)
	}
	return ln, nil
}

// go runs f on a goroutine the mesh waits for at shutdown.
func (m *mesh) goRun(f func()) {
	m.wg.Add(1)
	go func() { defer m.wg.Done(); f() }()
}

// startManager starts a certificate manager for ids, fetching from the CA.
func (m *mesh) startManager(component string, ids ...spiffeid.ID) (*identity.Manager, error) {
	mgr, err := identity.NewManager(identity.ManagerConfig{Fetcher: m.ca, Logger: m.tap.logger(component)})
	if err != nil {
		return nil, err
	}
	if err := mgr.Add(ids...); err != nil {
		return nil, err
	}
	m.goRun(func() { mgr.Run(m.idsCtx) })
	return mgr, nil
}

// isWaypointPod reports whether w runs a waypoint (its proxy is the
// waypoint itself, not the node's).
func isWaypointPod(w *proxy.Workload) bool { return w.Labels[labelGatewayName] != "" }

// start runs the node proxies and the apps of the topology, with st as
// their first state.
func (m *mesh) start(ctx context.Context, st *proxy.State) error {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	var err error
	if m.ca, err = identity.NewCA(identity.CAConfig{TrustDomain: td}); err != nil {
		return err
	}
	m.idsCtx, m.stopIDs = context.WithCancel(context.Background())
	var names []string
	for _, w := range st.Workloads() {
		if !slices.Contains(names, w.Node) {
			names = append(names, w.Node)
		}
	}
	slices.Sort(names)
	for i, name := range names {
		n := &node{name: name, socks: fmt.Sprintf("127.0.91.%d:%d", i+1, socks5Port), holder: &proxy.StateHolder{}}
		n.holder.Store(st)
		n.opened = newConnCounter(n.holder)
		var ids []spiffeid.ID
		var pods []*proxy.Workload
		ws := st.Workloads()
		for i := range ws {
			if w := &ws[i]; w.Node == name && !isWaypointPod(w) {
				ids = append(ids, st.IdentityOf(w))
				pods = append(pods, w)
			}
		}
		if n.ids, err = m.startManager(name, ids...); err != nil {
			return err
		}
		n.px, err = proxy.New(proxy.Config{
			State:        n.holder,
			Identity:     func(id spiffeid.ID) identity.Source { return n.ids.Source(id) },
			Node:         name,
			BindSourceIP: true,
			Logger:       m.tap.logger(name),
			Hooks:        proxy.Hooks{Opened: n.opened.opened},
		})
		if err != nil {
			return err
		}
		m.nodes = append(m.nodes, n)
		ln, err := listen(n.socks, name+" SOCKS5")
		if err != nil {
			return err
		}
		m.goRun(func() { n.px.ServeSOCKS5(ln, "") })
		for _, w := range pods {
			for _, a := range w.Addresses {
				addr := netip.AddrPortFrom(a, proxy.DefaultHBONEPort).String()
				ln, err := listen(addr, name+" inbound HBONE for "+w.Name)
				if err != nil {
					return err
				}
				n.pods = append(n.pods, addr)
				m.goRun(func() { n.px.ServeInboundHBONE(ln) })
			}
		}
	}
	if err := m.startApps(st); err != nil {
		return err
	}
	m.clients = map[string]*client{}
	ws := st.Workloads()
	for i := range ws {
		if app := ws[i].Labels["app"]; (app == "sleep" || app == "curl") && len(ws[i].Addresses) > 0 {
			m.clients[app] = m.newClient(app, &ws[i])
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for _, n := range m.nodes {
		if err := n.ids.WaitReady(wctx); err != nil {
			return fmt.Errorf("%s: certificates: %w", n.name, err)
		}
	}
	return nil
}

// startApps runs the in-process apps: echo answers with its pod name and
// the request line, purchase-history with its version.
func (m *mesh) startApps(st *proxy.State) error {
	for _, w := range st.Workloads() {
		var h http.HandlerFunc
		switch w.Labels["app"] {
		case "echo":
			h = func(rw http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				fmt.Fprintf(rw, "%s: %s %s\n", w.Name, r.Method, r.URL.Path)
			}
		case "purchase-history":
			h = func(rw http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				fmt.Fprintf(rw, "purchase-history-%s\n", w.Labels["version"])
			}
		default:
			continue
		}
		for _, ports := range w.Services {
			for _, p := range ports {
				port := p.TargetPort
				if port == 0 {
					port = p.ServicePort
				}
				ln, err := listen(netip.AddrPortFrom(w.Addresses[0], port).String(), w.Name)
				if err != nil {
					return err
				}
				srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
				m.apps = append(m.apps, srv)
				m.goRun(func() { srv.Serve(ln) })
			}
		}
	}
	return nil
}

// startWaypoint runs the proxy of waypoint gateway ("namespace/name") on
// its pod's address, with its own identity and the given rules.
func (m *mesh) startWaypoint(ctx context.Context, gateway string, st *proxy.State, rules proxy.WaypointRules) error {
	ns, name, _ := strings.Cut(gateway, "/")
	var self *proxy.Workload
	ws := st.Workloads()
	for i := range ws {
		if w := &ws[i]; w.Namespace == ns && w.Labels[labelGatewayName] == name && len(w.Addresses) > 0 {
			self = w
			break
		}
	}
	if self == nil {
		return fmt.Errorf("waypoint %s: no pod runs it", gateway)
	}
	wp := &waypoint{gateway: gateway, addr: self.Addresses[0], id: st.IdentityOf(self), holder: &proxy.StateHolder{}}
	wp.holder.Store(st)
	var err error
	if wp.ids, err = m.startManager("waypoint", wp.id); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := wp.ids.WaitReady(wctx); err != nil {
		return fmt.Errorf("waypoint: certificates: %w", err)
	}
	wp.wp, err = proxy.NewWaypoint(proxy.WaypointConfig{
		State:     wp.holder,
		Source:    wp.ids.Source(wp.id),
		Name:      name,
		Namespace: ns,
		Addresses: self.Addresses,
		SourceIP:  wp.addr,
		Logger:    m.tap.logger("waypoint"),
		Hooks:     proxy.WaypointHooks{Request: wp.request},
	})
	if err != nil {
		return err
	}
	if err := wp.wp.SetRules(rules); err != nil {
		return err
	}
	ln, err := listen(netip.AddrPortFrom(wp.addr, proxy.DefaultHBONEPort).String(), "waypoint")
	if err != nil {
		return err
	}
	m.wp = wp
	m.goRun(func() { wp.wp.Serve(ln) })
	return nil
}

// shutdown stops everything and waits for every goroutine the mesh
// started.
func (m *mesh) shutdown() {
	for _, c := range m.clients {
		c.close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	if m.wp != nil {
		wg.Add(1)
		go func() { defer wg.Done(); m.wp.wp.Shutdown(ctx) }()
	}
	for _, n := range m.nodes {
		if n.px != nil {
			wg.Add(1)
			go func() { defer wg.Done(); n.px.Shutdown(ctx) }()
		}
	}
	for _, srv := range m.apps {
		wg.Add(1)
		go func() { defer wg.Done(); srv.Shutdown(ctx) }()
	}
	wg.Wait()
	if m.stopIDs != nil {
		m.stopIDs()
	}
	m.wg.Wait()
}

// client is an app that reaches the mesh through its node's SOCKS5
// listener, from its own address (the node proxy knows it by that
// address), resolving Service names as the node's DNS proxy would.
type client struct {
	name   string
	ns     string
	addr   netip.Addr
	node   *node
	dialer xproxy.ContextDialer
	once   *http.Transport // one connection per request, as curl
	pooled *http.Transport // keep-alive
}

func (m *mesh) newClient(name string, w *proxy.Workload) *client {
	c := &client{name: name, ns: w.Namespace, addr: w.Addresses[0]}
	for _, n := range m.nodes {
		if n.name == w.Node {
			c.node = n
		}
	}
	fwd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: c.addr.AsSlice()}, Timeout: 5 * time.Second}
	d, _ := xproxy.SOCKS5("tcp", c.node.socks, nil, fwd) // only fails for an unknown network
	c.dialer = d.(xproxy.ContextDialer)
	c.once = &http.Transport{DialContext: c.dial, DisableKeepAlives: true}
	c.pooled = &http.Transport{DialContext: c.dial, MaxIdleConnsPerHost: 8}
	return c
}

func (c *client) close() {
	c.once.CloseIdleConnections()
	c.pooled.CloseIdleConnections()
}

// dial resolves host names to Service VIPs, then asks the node's SOCKS5
// listener for the address.
func (c *client) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if _, err := netip.ParseAddr(host); err != nil {
		vip, ok := c.resolve(host)
		if !ok {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		host = vip.String()
	}
	return c.dialer.DialContext(ctx, network, net.JoinHostPort(host, port))
}

// resolve finds a Service by name with the search path of a pod of the
// client's namespace.
func (c *client) resolve(host string) (netip.Addr, bool) {
	host = strings.TrimSuffix(host, ".")
	names := []string{host, host + "." + c.ns + ".svc.cluster.local", host + ".svc.cluster.local"}
	for _, s := range c.node.holder.Load().Services() {
		if slices.Contains(names, s.Hostname) && len(s.Addresses) > 0 {
			return s.Addresses[0], true
		}
	}
	return netip.Addr{}, false
}

// result is the outcome of one request.
type result struct {
	status int
	body   string
	err    error
}

func (r result) ok() bool { return r.err == nil && r.status == http.StatusOK }

// refused reports whether the mesh refused the connection: the node proxy
// answered the SOCKS5 request with "connection not allowed by ruleset"
// (its HBONE CONNECT was answered 401), or reset it.
func (r result) refused() bool {
	return r.err != nil && (strings.Contains(r.err.Error(), "connection not allowed by ruleset") ||
		errors.Is(r.err, syscall.ECONNRESET))
}

func (r result) String() string {
	switch {
	case r.err == nil:
		return fmt.Sprintf("%d %q", r.status, r.body)
	case strings.Contains(r.err.Error(), "connection not allowed by ruleset"):
		return `refused: SOCKS5 reply 2 "connection not allowed by ruleset" (curl --socks5: exit 97)`
	case errors.Is(r.err, syscall.ECONNRESET):
		return "refused: connection reset by peer (curl: exit 56)"
	}
	return "error: " + r.err.Error()
}

// do sends one request on tr.
func (c *client) do(ctx context.Context, tr *http.Transport, method, url string) result {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return result{err: err}
	}
	req.Header.Set("User-Agent", "curl/8.5.0 ("+c.name+")")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return result{status: resp.StatusCode, body: strings.TrimSpace(string(b)), err: err}
}
