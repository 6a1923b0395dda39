//go:build linux

package inpod_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/meshblocks/meshblocks/inpod"
	"github.com/meshblocks/meshblocks/inpod/inpodtest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
)

func threadNetnsInode(t *testing.T) uint64 {
	var st unix.Stat_t
	require.NoError(t, unix.Stat("/proc/thread-self/ns/net", &st))
	return st.Ino
}

func TestDoEntersAndLeaves(t *testing.T) {
	leakcheck.Check(t)
	ns := inpodtest.NewNamespace(t)
	host, err := inpod.CurrentNetns()
	require.NoError(t, err)
	defer host.Close()
	require.False(t, host.Equal(ns.Netns), "a new namespace must differ from the host's")

	var inside uint64
	require.NoError(t, ns.Netns.Do(func() error { inside = threadNetnsInode(t); return nil }))
	require.Equal(t, ns.Netns.Inode(), inside, "Do must run f inside the namespace")

	// Many goroutines afterwards: none may find itself in the pod netns.
	errs := make(chan uint64, 200)
	for range 200 {
		go func() { var st unix.Stat_t; _ = unix.Stat("/proc/thread-self/ns/net", &st); errs <- st.Ino }()
	}
	for range 200 {
		require.NotEqual(t, ns.Netns.Inode(), <-errs, "a goroutine leaked into the pod netns")
	}
}

func TestOpenNetnsRejectsOrdinaryFile(t *testing.T) {
	f := t.TempDir() + "/not-a-netns"
	require.NoError(t, os.WriteFile(f, []byte("x"), 0o600))
	_, err := inpod.OpenNetns(f)
	require.ErrorContains(t, err, "is not a namespace file")
	_, err = inpod.OpenNetns(t.TempDir() + "/missing")
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestListenRequiresLiteral(t *testing.T) {
	ns := inpodtest.NewNamespace(t)
	_, err := ns.Netns.Listen(context.Background(), "tcp", "localhost:0", inpod.SocketOptions{})
	require.ErrorContains(t, err, `"localhost:0" must be an IP literal`)
}

// acceptOne accepts one connection and reports its original destination.
func acceptOne(t *testing.T, ln net.Listener) (netip.AddrPort, net.Conn) {
	t.Helper()
	c, err := ln.Accept()
	require.NoError(t, err)
	dst, err := inpod.OriginalDst(c)
	require.NoError(t, err)
	return dst, c
}

func TestOriginalDstAfterRedirect(t *testing.T) {
	leakcheck.Check(t)
	ns := inpodtest.NewNamespace(t)
	ns.Run("ip", "route", "add", "10.1.2.0/24", "dev", "lo")
	ns.Run("ip", "-6", "route", "add", "fd00:1::/64", "dev", "lo")
	// Let the proxy's own (marked) traffic through, redirect the rest, as the
	// in-pod rules do.
	for _, ipt := range []string{"iptables", "ip6tables"} {
		ns.Run(ipt, "-t", "nat", "-A", "OUTPUT", "-m", "mark", "--mark", "0x539/0xfff", "-j", "RETURN")
		ns.Run(ipt, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "!", "-o", "lo", "-j", "REDIRECT", "--to-ports", "15001")
		ns.Run(ipt, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-o", "lo", "!", "--dport", "15001", "-j", "REDIRECT", "--to-ports", "15001")
	}
	ctx := context.Background()
	ln, err := ns.Netns.Listen(ctx, "tcp", "[::]:15001", inpod.SocketOptions{Mark: inpod.PacketMark, ReusePort: true})
	require.NoError(t, err)
	defer ln.Close()

	tests := []struct {
		name, network, dial string
	}{
		{"ipv4 on dual-stack listener", "tcp4", "10.1.2.3:80"},
		{"ipv6", "tcp6", "[fd00:1::7]:8443"},
		{"ipv4 loopback other port", "tcp4", "127.0.0.1:9090"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ns.Netns.Dial(ctx, tc.network, tc.dial, netip.Addr{}, inpod.SocketOptions{})
			require.NoError(t, err)
			defer c.Close()
			dst, sc := acceptOne(t, ln)
			defer sc.Close()
			require.Equal(t, netip.MustParseAddrPort(tc.dial), dst)
		})
	}
}

func TestMarkedSocketBypassesRedirect(t *testing.T) {
	leakcheck.Check(t)
	ns := inpodtest.NewNamespace(t)
	ns.Run("iptables", "-t", "nat", "-A", "OUTPUT", "-m", "mark", "--mark", "0x539/0xfff", "-j", "RETURN")
	ns.Run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7000", "-j", "REDIRECT", "--to-ports", "15001")
	ctx := context.Background()
	proxy, err := ns.Netns.Listen(ctx, "tcp4", "127.0.0.1:15001", inpod.SocketOptions{})
	require.NoError(t, err)
	defer proxy.Close()
	app, err := ns.Netns.Listen(ctx, "tcp4", "127.0.0.1:7000", inpod.SocketOptions{})
	require.NoError(t, err)
	defer app.Close()

	// Unmarked: redirected to the proxy, which learns the original port.
	c, err := ns.Netns.Dial(ctx, "tcp4", "127.0.0.1:7000", netip.Addr{}, inpod.SocketOptions{})
	require.NoError(t, err)
	defer c.Close()
	dst, sc := acceptOne(t, proxy)
	sc.Close()
	require.Equal(t, netip.MustParseAddrPort("127.0.0.1:7000"), dst)

	// Marked (the proxy dialing the app): reaches the app directly.
	m, err := ns.Netns.Dial(ctx, "tcp4", "127.0.0.1:7000", netip.Addr{}, inpod.SocketOptions{Mark: inpod.PacketMark})
	require.NoError(t, err)
	defer m.Close()
	ac, err := app.Accept()
	require.NoError(t, err)
	defer ac.Close()
	dst, err = inpod.OriginalDst(ac)
	require.NoError(t, err)
	require.Equal(t, netip.MustParseAddrPort("127.0.0.1:7000"), dst, "no NAT: the local address")

	_, err = m.Write([]byte("hi"))
	require.NoError(t, err)
	require.NoError(t, ac.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 2)
	_, err = io.ReadFull(ac, buf)
	require.NoError(t, err)
	require.Equal(t, "hi", string(buf))
}

func TestSpoofedSourceDial(t *testing.T) {
	leakcheck.Check(t)
	ns := inpodtest.NewNamespace(t)
	ns.Run("ip", "route", "add", "local", "10.5.0.0/16", "dev", "lo")
	ctx := context.Background()
	app, err := ns.Netns.Listen(ctx, "tcp4", "127.0.0.1:7001", inpod.SocketOptions{})
	require.NoError(t, err)
	defer app.Close()
	src := netip.MustParseAddr("10.5.0.9")
	c, err := ns.Netns.Dial(ctx, "tcp4", "127.0.0.1:7001", src, inpod.SocketOptions{Mark: inpod.PacketMark, Transparent: true, FreeBind: true})
	require.NoError(t, err)
	defer c.Close()
	ac, err := app.Accept()
	require.NoError(t, err)
	defer ac.Close()
	require.Equal(t, src, ac.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(), "the app sees the spoofed client address")
}
