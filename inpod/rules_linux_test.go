//go:build linux

package inpod_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/inpod"
	"github.com/meshblocks/meshblocks/inpod/inpodtest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
)

// lab is a pod namespace (10.77.0.2, fd77::2) linked by a veth pair to a
// peer namespace (10.77.0.1, fd77::1) that stands for the rest of the
// network.
type lab struct {
	pod, peer *inpodtest.Namespace
}

const (
	podIP   = "10.77.0.2"
	peerIP  = "10.77.0.1"
	podIP6  = "fd77::2"
	peerIP6 = "fd77::1"
)

func newLab(t *testing.T) *lab {
	t.Helper()
	pod, peer := inpodtest.NewNamespace(t), inpodtest.NewNamespace(t)
	a, b := pod.Link(peer, podIP+"/24", peerIP+"/24")
	pod.Run("ip", "addr", "add", podIP6+"/64", "dev", a, "nodad")
	peer.Run("ip", "addr", "add", peerIP6+"/64", "dev", b, "nodad")
	pod.Run("ip", "route", "add", "default", "via", peerIP)
	return &lab{pod: pod, peer: peer}
}

// listen opens a listener in ns and closes it when the test ends.
func listen(t *testing.T, ns *inpod.Netns, addr string, opts inpod.SocketOptions) net.Listener {
	t.Helper()
	ln, err := ns.Listen(context.Background(), "tcp", addr, opts)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// accept waits up to 5 s for a connection on ln.
func accept(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	select {
	case r := <-ch:
		require.NoError(t, r.err)
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(5 * time.Second):
		ln.Close()
		if r := <-ch; r.c != nil {
			r.c.Close()
		}
		t.Fatalf("no connection on %s", ln.Addr())
		return nil
	}
}

func dial(t *testing.T, ns *inpod.Netns, addr string, src netip.Addr, opts inpod.SocketOptions) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp", addr, src, opts)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// echoOnce checks that bytes written on a reach b and back.
func roundTrip(t *testing.T, a, b net.Conn) {
	t.Helper()
	a.SetDeadline(time.Now().Add(5 * time.Second))
	b.SetDeadline(time.Now().Add(5 * time.Second))
	_, err := a.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(b, buf)
	require.NoError(t, err)
	_, err = b.Write([]byte("pong"))
	require.NoError(t, err)
	_, err = io.ReadFull(a, buf)
	require.NoError(t, err)
	require.Equal(t, "pong", string(buf))
}

func remoteAddr(c net.Conn) netip.Addr {
	return c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
}

var proxyOpts = inpod.SocketOptions{Mark: inpod.PacketMark, ReusePort: true}

// TestRulesRedirect applies the in-pod rules and checks each path of
// traffic through real sockets, for both backends.
func TestRulesRedirect(t *testing.T) {
	for _, backend := range []inpod.Backend{inpod.IPTables, inpod.NFTables} {
		t.Run(backend.String(), func(t *testing.T) {
			leakcheck.Check(t)
			l := newLab(t)
			rules := &inpod.Rules{Backend: backend}
			ctx := context.Background()
			require.NoError(t, rules.Apply(ctx, l.pod.Netns))
			t.Cleanup(func() { rules.Remove(ctx, l.pod.Netns) })

			pod, peer := l.pod.Netns, l.peer.Netns
			outbound := listen(t, pod, "[::]:15001", proxyOpts)
			inbound := listen(t, pod, "[::]:15006", proxyOpts)
			hbone := listen(t, pod, "[::]:15008", proxyOpts)
			podApp := listen(t, pod, "[::]:9090", inpod.SocketOptions{})
			peerApp := listen(t, peer, "[::]:8080", inpod.SocketOptions{})

			t.Run("outbound is redirected to 15001", func(t *testing.T) {
				for _, dst := range []string{peerIP + ":8080", "[" + peerIP6 + "]:8080", "10.99.1.1:443"} {
					c := dial(t, pod, dst, netip.Addr{}, inpod.SocketOptions{})
					sc := accept(t, outbound)
					got, err := inpod.OriginalDst(sc)
					require.NoError(t, err)
					require.Equal(t, netip.MustParseAddrPort(dst), got)
					roundTrip(t, c, sc)
				}
			})
			t.Run("the proxy's mark bypasses capture", func(t *testing.T) {
				c := dial(t, pod, peerIP+":8080", netip.Addr{}, inpod.SocketOptions{Mark: inpod.PacketMark})
				sc := accept(t, peerApp)
				require.Equal(t, netip.MustParseAddr(podIP), remoteAddr(sc))
				roundTrip(t, c, sc)
			})
			t.Run("inbound plaintext is redirected to 15006", func(t *testing.T) {
				for _, dst := range []string{podIP + ":9090", "[" + podIP6 + "]:9090"} {
					c := dial(t, peer, dst, netip.Addr{}, inpod.SocketOptions{})
					sc := accept(t, inbound)
					got, err := inpod.OriginalDst(sc)
					require.NoError(t, err)
					require.Equal(t, netip.MustParseAddrPort(dst), got)
					roundTrip(t, c, sc)
				}
			})
			t.Run("15008 is not redirected", func(t *testing.T) {
				c := dial(t, peer, podIP+":15008", netip.Addr{}, inpod.SocketOptions{})
				sc := accept(t, hbone)
				got, err := inpod.OriginalDst(sc)
				require.NoError(t, err)
				require.Equal(t, netip.MustParseAddrPort(podIP+":15008"), got, "no NAT: the local address")
				roundTrip(t, c, sc)
			})
			t.Run("probe source is not captured", func(t *testing.T) {
				l.peer.Run("ip", "addr", "replace", inpod.DefaultProbeSNAT+"/32", "dev", "lo")
				l.pod.Run("ip", "route", "replace", inpod.DefaultProbeSNAT+"/32", "via", peerIP)
				c := dial(t, peer, podIP+":9090", netip.MustParseAddr(inpod.DefaultProbeSNAT), inpod.SocketOptions{})
				sc := accept(t, podApp)
				require.Equal(t, netip.MustParseAddr(inpod.DefaultProbeSNAT), remoteAddr(sc))
				roundTrip(t, c, sc)
			})
			t.Run("pod to its own address is not captured", func(t *testing.T) {
				c := dial(t, pod, podIP+":9090", netip.Addr{}, inpod.SocketOptions{})
				sc := accept(t, podApp)
				roundTrip(t, c, sc)
			})
			t.Run("original source replies return to the proxy", func(t *testing.T) {
				// The proxy connects to the app with the client's address as
				// source; the app's replies must come back to it, not leave
				// for the real client.
				spoof := inpod.SocketOptions{Mark: inpod.PacketMark, Transparent: true, FreeBind: true}
				c := dial(t, pod, podIP+":9090", netip.MustParseAddr(peerIP), spoof)
				sc := accept(t, podApp)
				require.Equal(t, netip.MustParseAddr(peerIP), remoteAddr(sc))
				roundTrip(t, c, sc)

				// Without the ip rule the replies are routed to the peer, and
				// the connection never completes.
				l.pod.Run("ip", "rule", "del", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
				dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
				defer cancel()
				bad, err := pod.Dial(dctx, "tcp", podIP+":9090", netip.MustParseAddr(peerIP), spoof)
				if err == nil {
					bad.Close()
				}
				require.Error(t, err, "the handshake must not complete without the fwmark rule")
				// Apply puts it back.
				require.NoError(t, rules.Apply(ctx, pod))
				c = dial(t, pod, podIP+":9090", netip.MustParseAddr(peerIP), spoof)
				roundTrip(t, c, accept(t, podApp))
			})
		})
	}
}

// TestRulesDNS checks the DNS capture of UDP and TCP port 53.
func TestRulesDNS(t *testing.T) {
	for _, backend := range []inpod.Backend{inpod.IPTables, inpod.NFTables} {
		t.Run(backend.String(), func(t *testing.T) {
			leakcheck.Check(t)
			l := newLab(t)
			rules := &inpod.Rules{Backend: backend, CaptureDNS: true}
			ctx := context.Background()
			require.NoError(t, rules.Apply(ctx, l.pod.Netns))
			pod := l.pod.Netns
			tcpDNS := listen(t, pod, "127.0.0.1:15053", proxyOpts)
			var udp net.PacketConn
			require.NoError(t, pod.Do(func() error {
				var err error
				udp, err = net.ListenPacket("udp4", "127.0.0.1:15053")
				return err
			}))
			defer udp.Close()

			c := dial(t, pod, peerIP+":53", netip.Addr{}, inpod.SocketOptions{})
			sc := accept(t, tcpDNS)
			got, err := inpod.OriginalDst(sc)
			require.NoError(t, err)
			require.Equal(t, netip.MustParseAddrPort(peerIP+":53"), got)
			roundTrip(t, c, sc)

			var uc net.Conn
			require.NoError(t, pod.Do(func() error {
				var err error
				uc, err = net.Dial("udp4", peerIP+":53")
				return err
			}))
			defer uc.Close()
			_, err = uc.Write([]byte("query"))
			require.NoError(t, err)
			udp.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 16)
			n, _, err := udp.ReadFrom(buf)
			require.NoError(t, err)
			require.Equal(t, "query", string(buf[:n]))
			require.NoError(t, rules.Remove(ctx, pod))
		})
	}
}

// TestRulesFailClosed: with the rules in and no proxy listening, the
// pod's outbound connections are refused rather than sent uncaptured.
func TestRulesFailClosed(t *testing.T) {
	leakcheck.Check(t)
	l := newLab(t)
	rules := &inpod.Rules{}
	require.NoError(t, rules.Apply(context.Background(), l.pod.Netns))
	listen(t, l.peer.Netns, "[::]:8080", inpod.SocketOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := l.pod.Netns.Dial(ctx, "tcp", peerIP+":8080", netip.Addr{}, inpod.SocketOptions{})
	require.ErrorContains(t, err, "connection refused")
	require.NoError(t, rules.Remove(context.Background(), l.pod.Netns))
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// netState is everything Apply may touch in ns, normalised for comparison.
func netState(ns *inpodtest.Namespace) string {
	var b strings.Builder
	for _, args := range [][]string{
		{"iptables-save"}, {"ip6tables-save"}, {"nft", "-s", "list", "ruleset"},
		{"ip", "rule", "show"}, {"ip", "-6", "rule", "show"},
		{"ip", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
	} {
		b.WriteString("## " + strings.Join(args, " ") + "\n")
		for _, line := range strings.Split(ns.Run(args...), "\n") {
			if strings.HasPrefix(line, "#") {
				continue // iptables-save's dated comments
			}
			if strings.Contains(line, "fe80::") {
				// The kernel adds an interface's IPv6 link-local
				// address (and its local route) on its own schedule,
				// after the link comes up; the rules never touch it.
				continue
			}
			b.WriteString(counters.ReplaceAllString(line, "") + "\n")
		}
	}
	return b.String()
}

// TestRulesIdempotentAndRemove applies the rules repeatedly, repairs
// drift, switches DNS capture on and off, and removes them, comparing the
// full packet-filter and routing state at each step. Unrelated rules in
// the same tables survive.
func TestRulesIdempotentAndRemove(t *testing.T) {
	for _, backend := range []inpod.Backend{inpod.IPTables, inpod.NFTables} {
		t.Run(backend.String(), func(t *testing.T) {
			leakcheck.Check(t)
			l := newLab(t)
			ns := l.pod
			ctx := context.Background()
			// Someone else's rules, in every table the in-pod rules use.
			for _, ipt := range []string{"iptables", "ip6tables"} {
				for _, table := range []string{"nat", "mangle", "raw"} {
					ns.Run(ipt, "-t", table, "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT")
					ns.Run(ipt, "-t", table, "-A", "PREROUTING", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT")
				}
			}
			ns.Run("ip", "rule", "add", "fwmark", "0x5", "lookup", "200")
			before := netState(ns)

			rules := &inpod.Rules{Backend: backend}
			require.NoError(t, rules.Apply(ctx, ns.Netns))
			once := netState(ns)
			require.NotEqual(t, before, once)
			if backend == inpod.IPTables {
				require.Contains(t, once, "-A OUTPUT -j ISTIO_OUTPUT")
				require.NotContains(t, once, "istio-ambient")
			} else {
				require.Contains(t, once, "table inet istio-ambient-nat")
				require.NotContains(t, once, "ISTIO_")
			}
			require.Contains(t, once, "32764:\tfrom all fwmark 0x111/0xfff lookup 100")
			require.Contains(t, once, "local default dev lo table 100")

			require.NoError(t, rules.Apply(ctx, ns.Netns))
			require.Equal(t, once, netState(ns), "a second Apply must change nothing")

			// Drift: a lost jump (or table) and a lost ip rule.
			if backend == inpod.IPTables {
				ns.Run("iptables", "-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT")
				ns.Run("ip6tables", "-t", "mangle", "-F", "ISTIO_PRERT")
			} else {
				ns.Run("nft", "delete", "table", "inet", "istio-ambient-mangle")
			}
			ns.Run("ip", "rule", "del", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
			require.NotEqual(t, once, netState(ns))
			require.NoError(t, rules.Apply(ctx, ns.Netns))
			require.Equal(t, once, netState(ns), "Apply must repair drift")

			// DNS capture on adds the raw table's rules; off again removes them.
			dns := *rules
			dns.CaptureDNS = true
			require.NoError(t, dns.Apply(ctx, ns.Netns))
			withDNS := netState(ns)
			require.NotEqual(t, once, withDNS)
			require.Contains(t, withDNS, "15053")
			require.NoError(t, rules.Apply(ctx, ns.Netns))
			require.Equal(t, once, netState(ns))

			require.NoError(t, rules.Remove(ctx, ns.Netns))
			require.Equal(t, before, netState(ns), "Remove must restore the state before Apply")
			require.NoError(t, rules.Remove(ctx, ns.Netns), "Remove of nothing succeeds")
			require.Equal(t, before, netState(ns))

			// Removing a set that was applied with DNS capture removes the
			// raw table's chains too.
			require.NoError(t, dns.Apply(ctx, ns.Netns))
			require.NoError(t, rules.Remove(ctx, ns.Netns))
			require.Equal(t, before, netState(ns))
		})
	}
}

func TestRulesApplyErrors(t *testing.T) {
	l := inpodtest.NewNamespace(t)
	err := (&inpod.Rules{PacketMark: 0x2000}).Apply(context.Background(), l.Netns)
	require.True(t, errors.Is(err, inpod.ErrInvalidRules), "%v", err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = (&inpod.Rules{}).Apply(ctx, l.Netns)
	require.ErrorContains(t, err, "inpod: apply iptables rules in /var/run/netns/"+l.Name)
}
