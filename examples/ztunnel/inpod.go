package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"

	"github.com/meshblocks/meshblocks/inpod"
	"github.com/meshblocks/meshblocks/proxy"
)

// Pod is one workload served in-pod: the proxy listens on 15001, 15006
// and 15008 inside the pod's network namespace, and connects from/to the
// pod inside it.
type Pod struct {
	UID   string // workload uid in the local config
	Netns string // path of the namespace, e.g. /var/run/netns/pod-1
}

// podFlag parses repeated -pod uid=path flags.
type podFlag struct{ pods *[]Pod }

func (f podFlag) String() string { return "" }

func (f podFlag) Set(v string) error {
	uid, path, ok := strings.Cut(v, "=")
	if !ok || uid == "" || path == "" {
		return fmt.Errorf("want uid=/path/to/netns, got %q", v)
	}
	*f.pods = append(*f.pods, Pod{UID: uid, Netns: path})
	return nil
}

// inPod holds the namespaces of the pods this proxy serves in-pod: the
// ones named by -pod flags, opened at start, and the ones a node agent
// hands over ZDS (-zds), which come and go.
type inPod struct {
	mu sync.Mutex
	ns map[string]*inpod.Netns // by workload uid
	// spoof lists the workloads (by uid) whose namespaces have the full
	// in-pod rule set from a node agent, including the ip rule that routes
	// replies back to the proxy: the proxy connects to them with the
	// client's address as source (original source), as ztunnel does.
	spoof map[string]bool

	zds    *inpod.Client
	strict bool               // ZDS: a workload without a namespace here is not served
	zdsPod map[string]*zdsPod // by ZDS (Kubernetes pod) uid
	px     *proxy.Proxy
	state  *proxy.StateHolder
	node   string
	log    *slog.Logger
}

// zdsPod is a pod served over ZDS: its workload and listeners.
type zdsPod struct {
	workload string
	lns      []*trackingListener
	wg       sync.WaitGroup // the Serve calls
}

// trackingListener remembers the connections it accepted, so that a
// deleted pod's connections can be closed with its listeners. It hands
// out the connections unwrapped (the proxy needs *net.TCPConn for
// keepalive, half-close and SO_ORIGINAL_DST), and forgets closed ones as
// it accepts new ones.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for old := range l.conns {
		if isClosed(old) {
			delete(l.conns, old)
		}
	}
	l.conns[c] = struct{}{}
	return c, nil
}

// closeConns closes every connection accepted and not yet closed.
func (l *trackingListener) closeConns() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		c.Close()
	}
	clear(l.conns)
}

func isClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	return err != nil || rc.Control(func(uintptr) {}) != nil
}

func openPods(pods []Pod) (*inPod, error) {
	ip := &inPod{ns: make(map[string]*inpod.Netns), spoof: make(map[string]bool), zdsPod: make(map[string]*zdsPod)}
	for _, p := range pods {
		n, err := inpod.OpenNetns(p.Netns)
		if err != nil {
			ip.close()
			return nil, fmt.Errorf("pod %s: %w", p.UID, err)
		}
		ip.ns[p.UID] = n
	}
	return ip, nil
}

// close closes the namespaces of the -pod flags (ZDS pods' namespaces
// belong to the ZDS client).
func (ip *inPod) close() {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	for uid, n := range ip.ns {
		if !ip.spoof[uid] {
			n.Close()
		}
	}
}

// lookup returns the namespace of a workload, and whether to spoof the
// client's address when connecting to it.
func (ip *inPod) lookup(uid string) (*inpod.Netns, bool, bool) {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	n, ok := ip.ns[uid]
	return n, ip.spoof[uid], ok
}

var markOpts = inpod.SocketOptions{Mark: inpod.PacketMark}

// listenIn opens a listener on port inside the pod's namespace, on [::]
// when the namespace has IPv6, else on 0.0.0.0.
func listenIn(ctx context.Context, n *inpod.Netns, port int) (net.Listener, error) {
	return listenInOpts(ctx, n, port, markOpts)
}

func listenInOpts(ctx context.Context, n *inpod.Netns, port int, opts inpod.SocketOptions) (net.Listener, error) {
	ln, err := n.Listen(ctx, "tcp", fmt.Sprintf("[::]:%d", port), opts)
	if err != nil {
		ln, err = n.Listen(ctx, "tcp", fmt.Sprintf("0.0.0.0:%d", port), opts)
	}
	return ln, err
}

func (ip *inPod) isStrict() bool {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	return ip.strict
}

// wire sets the proxy's dial hooks so that connections leave from, and
// arrive in, the pods' namespaces. Workloads without a namespace here use
// the proxy's own, except with ZDS, where they are refused: the pod is not
// (or no longer) served, and dialling from the node would bypass it.
func (ip *inPod) wire(cfg *proxy.Config) {
	cfg.OriginalDst = inpod.OriginalDst
	var d net.Dialer
	cfg.DialWorkload = func(ctx context.Context, dst *proxy.Workload, addr, src netip.AddrPort) (net.Conn, error) {
		n, spoof, ok := ip.lookup(dst.UID)
		if !ok && ip.isStrict() {
			return nil, fmt.Errorf("workload %s is not served in-pod here", dst.UID)
		}
		if ok {
			if spoof && src.IsValid() && !src.Addr().IsLoopback() && src.Addr() != addr.Addr() {
				return n.Dial(ctx, "tcp", addr.String(), src.Addr(),
					inpod.SocketOptions{Mark: inpod.PacketMark, Transparent: true, FreeBind: true})
			}
			return n.Dial(ctx, "tcp", addr.String(), netip.Addr{}, markOpts)
		}
		return d.DialContext(ctx, "tcp", addr.String())
	}
	cfg.DialPassthrough = func(ctx context.Context, src *proxy.Workload, addr netip.AddrPort) (net.Conn, error) {
		if src != nil {
			n, _, ok := ip.lookup(src.UID)
			if ok {
				return n.Dial(ctx, "tcp", addr.String(), netip.Addr{}, markOpts)
			}
			if ip.isStrict() {
				return nil, fmt.Errorf("workload %s is not served in-pod here", src.UID)
			}
		}
		return d.DialContext(ctx, "tcp", addr.String())
	}
	cfg.DialHBONE = func(ctx context.Context, src *proxy.Workload, network, addr string) (net.Conn, error) {
		n, _, ok := ip.lookup(src.UID)
		if ok {
			return n.Dial(ctx, network, addr, netip.Addr{}, markOpts)
		}
		if ip.isStrict() {
			return nil, fmt.Errorf("workload %s is not served in-pod here", src.UID)
		}
		return d.DialContext(ctx, network, addr)
	}
}

// runZDS connects to the node agent's ZDS socket at path and serves the
// pods it hands over until ctx is done: for each pod, listeners on 15001,
// 15006 and 15008 inside its namespace (with the proxy's mark and
// SO_REUSEPORT, so that an old and a new ztunnel can overlap), closed
// again when the agent deletes the pod. It returns the client's error: nil
// on cancellation, an error if the agent broke the protocol.
func (ip *inPod) runZDS(ctx context.Context, path string, px *proxy.Proxy, state *proxy.StateHolder, node string, log *slog.Logger) error {
	ip.mu.Lock()
	ip.px, ip.state, ip.node, ip.log, ip.strict = px, state, node, log.With("scope", "zds"), true
	ip.mu.Unlock()
	c, err := inpod.NewClient(inpod.ClientConfig{Path: path, Handler: ip, Logger: log.With("scope", "zds")})
	if err != nil {
		return err
	}
	ip.mu.Lock()
	ip.zds = c
	ip.mu.Unlock()
	return c.Run(ctx)
}

// zdsReady reports whether the ZDS client (if any) has its snapshot and
// serves every pod in it. ip may be nil.
func (ip *inPod) zdsReady() bool {
	if ip == nil {
		return true
	}
	ip.mu.Lock()
	defer ip.mu.Unlock()
	return ip.zds == nil || ip.zds.Ready()
}

// findWorkload finds a pod's workload by its ZDS info, as ztunnel does:
// name, namespace and service account, among this node's workloads.
func (ip *inPod) findWorkload(info inpod.WorkloadInfo) (*proxy.Workload, error) {
	st := ip.state.Load()
	for _, w := range st.Workloads() {
		if w.Name == info.Name && w.Namespace == info.Namespace && w.ServiceAccount == info.ServiceAccount &&
			(ip.node == "" || w.Node == ip.node) {
			return &w, nil
		}
	}
	return nil, fmt.Errorf("no workload %s/%s (service account %s) on this node", info.Namespace, info.Name, info.ServiceAccount)
}

// AddPod implements inpod.Handler: it opens the pod's listeners and
// serves them.
func (ip *inPod) AddPod(ctx context.Context, uid string, info inpod.WorkloadInfo, ns *inpod.Netns) error {
	w, err := ip.findWorkload(info)
	if err != nil {
		return err
	}
	opts := inpod.SocketOptions{Mark: inpod.PacketMark, ReusePort: true}
	p := &zdsPod{workload: w.UID}
	serves := []func(net.Listener) error{
		func(l net.Listener) error { return ip.px.ServeOutbound(l, w.UID) },
		ip.px.ServeInboundPlaintext,
		ip.px.ServeInboundHBONE,
	}
	for _, port := range []int{inpod.OutboundPort, inpod.InboundPlaintextPort, inpod.InboundHBONEPort} {
		l, err := listenInOpts(ctx, ns, port, opts)
		if err != nil {
			for _, l := range p.lns {
				l.Close()
			}
			return fmt.Errorf("listener %d: %w", port, err)
		}
		p.lns = append(p.lns, &trackingListener{Listener: l, conns: make(map[net.Conn]struct{})})
	}
	ip.mu.Lock()
	if _, ok := ip.ns[w.UID]; ok && !ip.spoof[w.UID] {
		// A -pod flag already serves this workload.
		ip.mu.Unlock()
		for _, l := range p.lns {
			l.Close()
		}
		return fmt.Errorf("workload %s is already served by -pod", w.UID)
	}
	ip.ns[w.UID] = ns
	ip.spoof[w.UID] = true
	ip.zdsPod[uid] = p
	ip.mu.Unlock()
	for i, l := range p.lns {
		p.wg.Go(func() {
			if err := serves[i](l); err != nil && !errors.Is(err, proxy.ErrProxyClosed) && !errors.Is(err, net.ErrClosed) {
				ip.log.Warn("pod listener failed", "uid", uid, "addr", l.Addr().String(), "error", err)
			}
		})
	}
	ip.log.Info("serving pod in-pod", "uid", uid, "workload", w.UID)
	return nil
}

// DelPod implements inpod.Handler: it closes the pod's listeners and the
// connections they accepted (the pod is going away; its sockets would
// otherwise keep its namespace alive), and waits for their Serve calls to
// return.
func (ip *inPod) DelPod(uid string) {
	ip.mu.Lock()
	p := ip.zdsPod[uid]
	delete(ip.zdsPod, uid)
	if p != nil {
		delete(ip.ns, p.workload)
		delete(ip.spoof, p.workload)
	}
	ip.mu.Unlock()
	if p == nil {
		return
	}
	for _, l := range p.lns {
		l.Close()
	}
	p.wg.Wait()
	for _, l := range p.lns {
		l.closeConns()
	}
	ip.log.Info("stopped serving pod", "uid", uid, "workload", p.workload)
}
