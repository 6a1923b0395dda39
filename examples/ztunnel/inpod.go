package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

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

// inPod holds the namespaces of the pods this proxy serves in-pod.
type inPod struct {
	ns map[string]*inpod.Netns // by workload uid
}

func openPods(pods []Pod) (*inPod, error) {
	ip := &inPod{ns: make(map[string]*inpod.Netns)}
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

func (ip *inPod) close() {
	for _, n := range ip.ns {
		n.Close()
	}
}

var markOpts = inpod.SocketOptions{Mark: inpod.PacketMark}

// listen opens a listener on port inside the pod's namespace, on [::]
// when the namespace has IPv6, else on 0.0.0.0.
func listenIn(ctx context.Context, n *inpod.Netns, port int) (net.Listener, error) {
	ln, err := n.Listen(ctx, "tcp", fmt.Sprintf("[::]:%d", port), markOpts)
	if err != nil {
		ln, err = n.Listen(ctx, "tcp", fmt.Sprintf("0.0.0.0:%d", port), markOpts)
	}
	return ln, err
}

// wire sets the proxy's dial hooks so that connections leave from, and
// arrive in, the pods' namespaces. Workloads without a namespace here use
// the proxy's own.
func (ip *inPod) wire(cfg *proxy.Config) {
	cfg.OriginalDst = inpod.OriginalDst
	var d net.Dialer
	cfg.DialWorkload = func(ctx context.Context, dst *proxy.Workload, addr, _ netip.AddrPort) (net.Conn, error) {
		if n, ok := ip.ns[dst.UID]; ok {
			return n.Dial(ctx, "tcp", addr.String(), netip.Addr{}, markOpts)
		}
		return d.DialContext(ctx, "tcp", addr.String())
	}
	cfg.DialPassthrough = func(ctx context.Context, src *proxy.Workload, addr netip.AddrPort) (net.Conn, error) {
		if src != nil {
			if n, ok := ip.ns[src.UID]; ok {
				return n.Dial(ctx, "tcp", addr.String(), netip.Addr{}, markOpts)
			}
		}
		return d.DialContext(ctx, "tcp", addr.String())
	}
	cfg.DialHBONE = func(ctx context.Context, src *proxy.Workload, network, addr string) (net.Conn, error) {
		if n, ok := ip.ns[src.UID]; ok {
			return n.Dial(ctx, network, addr, netip.Addr{}, markOpts)
		}
		return d.DialContext(ctx, network, addr)
	}
}
