package proxy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	xproxy "golang.org/x/net/proxy"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
)

func TestOutboundAllowedOverHBONE(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 8080), "")
	tests := []struct {
		name    string
		dst     netip.AddrPort
		service string
	}{
		{"pod IP", apOf(ipEcho, 8080), ""},
		{"service VIP", apOf(vipEcho, 80), "echo.default.svc.cluster.local"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dialFrom(t, ipSleep, m.outboundTo(tc.dst))
			defer c.Close()
			msg := strings.Repeat("hello mesh ", 1000)
			got, err := roundTrip(c, msg)
			require.NoError(t, err)
			assert.Equal(t, msg, got)

			// Both ztunnels log the connection in ztunnel's style.
			out := m.logA.waitLines(t, "connection complete", i+1)
			l := out[i]
			assert.Equal(t, "outbound", l["direction"])
			assert.Equal(t, "sleep", l["src.workload"])
			assert.Equal(t, "spiffe://cluster.local/ns/default/sa/sleep", l["src.identity"])
			assert.Equal(t, "127.77.0.3:15008", l["dst.addr"])
			assert.Equal(t, "127.77.0.3:8080", l["dst.hbone_addr"])
			assert.Equal(t, "echo", l["dst.workload"])
			assert.Equal(t, "spiffe://cluster.local/ns/default/sa/echo", l["dst.identity"])
			assert.EqualValues(t, len(msg), l["bytes_sent"])
			assert.EqualValues(t, len(msg), l["bytes_recv"])
			assert.Equal(t, "INFO", l["level"])
			if tc.service != "" {
				assert.Equal(t, tc.service, l["dst.service"])
			}
			in := m.logB.waitLines(t, "connection complete", i+1)
			l = in[i]
			assert.Equal(t, "inbound", l["direction"])
			assert.Equal(t, "127.77.0.2", strings.Split(l["src.addr"].(string), ":")[0], "the client IP is kept")
			assert.Equal(t, "sleep", l["src.workload"])
			assert.Equal(t, "spiffe://cluster.local/ns/default/sa/sleep", l["src.identity"])
			assert.Equal(t, "127.77.0.3:8080", l["dst.hbone_addr"])
			assert.EqualValues(t, len(msg), l["bytes_sent"])
			if tc.service != "" {
				assert.Equal(t, tc.service, l["dst.service"], "from the forwarded header")
			}
		})
	}
	m.metrics.mu.Lock()
	defer m.metrics.mu.Unlock()
	assert.Equal(t, 2, m.metrics.opened)
	assert.Equal(t, 2, m.metrics.closed)
	assert.True(t, m.metrics.infos[0].MTLS)
}

func TestOutboundDeniedIsReset(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 9090), "")
	_, err := exchange(ipSleep, m.outboundTo(apOf(ipEcho, 9090)), "ping")
	require.Error(t, err)
	assert.True(t, isReset(err), "want a reset (curl exit 56), got %v", err)

	rej := m.logB.waitLines(t, "RBAC rejected", 1)
	assert.Equal(t, "127.77.0.2(spiffe://cluster.local/ns/default/sa/sleep)->127.77.0.3:9090", rej[0]["conn"])
	in := m.logB.waitLines(t, "connection complete", 1)
	assert.Equal(t, "ERROR", in[0]["level"])
	assert.Contains(t, in[0]["error"], "policy rejection")
	out := m.logA.waitLines(t, "connection complete", 1)
	assert.Contains(t, out[0]["error"], "401")
	m.metrics.mu.Lock()
	assert.Equal(t, 0, m.metrics.opened, "a refused connection is not opened")
	m.metrics.mu.Unlock()
}

func TestHalfCloseAndServerFirst(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 8081), "220 ready\r\n")
	c := dialFrom(t, ipSleep, m.outboundTo(apOf(ipEcho, 8081)))
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// The server speaks first: the banner arrives before the client sends.
	banner := make([]byte, len("220 ready\r\n"))
	_, err := io.ReadFull(c, banner)
	require.NoError(t, err)
	assert.Equal(t, "220 ready\r\n", string(banner))
	// After the client's FIN the server still sends its reply.
	got, err := roundTrip(c, "QUIT\r\n")
	require.NoError(t, err)
	assert.Equal(t, "QUIT\r\n", got)
}

func TestWaypointDetour(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 8080), "")
	wp := startWaypoint(t, m)
	c := dialFrom(t, ipSleep, m.outboundTo(apOf(vipEchoWP, 80)))
	defer c.Close()
	got, err := roundTrip(c, "via waypoint")
	require.NoError(t, err)
	assert.Equal(t, "via waypoint", got)
	seen := wp.seen()
	require.Len(t, seen, 1)
	assert.Equal(t, "127.77.10.2:80", seen[0].authority, "the waypoint gets the service VIP as authority")
	assert.Equal(t, "spiffe://cluster.local/ns/default/sa/sleep", seen[0].peer)
	// ztunnel's request headers describe the client.
	assert.Contains(t, seen[0].baggage, "k8s.pod.name=sleep")
	assert.Contains(t, seen[0].forwarded, `for="127.77.0.2:`)
	assert.Contains(t, seen[0].forwarded, "host=echo-wp.default.svc.cluster.local")
	_, err = hbone.ParseTraceparent(seen[0].traceparent)
	assert.NoError(t, err)
	out := m.logA.waitLines(t, "connection complete", 1)
	assert.Equal(t, "127.77.0.4:15008", out[0]["dst.addr"])
	assert.Equal(t, "waypoint", out[0]["dst.workload"])
	in := m.logB.waitLines(t, "connection complete", 1)
	assert.Equal(t, "spiffe://cluster.local/ns/default/sa/waypoint", in[0]["src.identity"])
}

func TestInboundHBONEStatus(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 8080), "")
	d := &hbone.Dialer{Source: m.ids.Source(m.ca.ID("ns/default/sa/sleep"))}
	defer d.Close()
	tests := []struct {
		name      string
		next      netip.AddrPort
		authority string
		expect    string
		status    int
	}{
		{"allowed", apOf(ipEcho, 15008), "127.77.0.3:8080", "echo", http.StatusOK},
		{"authority mismatch", apOf(ipEcho, 15008), "127.77.0.5:8080", "echo", http.StatusBadRequest},
		{"not a local workload", apOf(ipGhost, 15008), "127.77.0.6:8080", "ghost", http.StatusServiceUnavailable},
		{"upstream refused", apOf(ipEcho, 15008), "127.77.0.3:8081", "echo", http.StatusServiceUnavailable},
		{"policy denied", apOf(ipEcho, 15008), "127.77.0.3:9090", "echo", http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := d.Dial(ctx, hbone.Route{Address: tc.next.String(), Authority: tc.authority,
				Expected: []spiffeid.ID{m.ca.ID("ns/default/sa/" + tc.expect)}})
			if tc.status == http.StatusOK {
				require.NoError(t, err)
				c.Close()
				return
			}
			var ce *hbone.ConnectError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tc.status, ce.StatusCode)
		})
	}
}

// TestPlaintextToHBONEPortRejected: plaintext sent to the HBONE port is
// refused by the TLS server, which closes the connection at once (EOF or a
// reset, well before the client's deadline), and nothing is proxied.
func TestPlaintextToHBONEPortRejected(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{recordDials: true})
	echoServer(t, apOf(ipEcho, 8080), "")
	c := dialFrom(t, ipSleep, apOf(ipEcho, 15008))
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
	require.NoError(t, err)
	b, err := io.ReadAll(c)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server left the connection open: %v", err)
	if err != nil {
		require.True(t, isReset(err), "want EOF or a reset, got %v", err)
	}
	// At most a TLS alert, never application data.
	assert.NotContains(t, string(b), "HTTP/")
	// The proxy has logged the failed handshake: only then is "nothing
	// was proxied" a finding rather than a race.
	hs := m.logB.waitLines(t, "hbone: TLS handshake failed", 1)
	assert.Contains(t, hs[0]["err"], "does not look like a TLS handshake")
	assert.Empty(t, m.logB.lines("connection complete"), "nothing is proxied")
	assert.Empty(t, m.dials.seen(), "nothing is dialled")
}

func TestInboundPlaintext(t *testing.T) {
	leakcheck.Check(t)
	tests := []struct {
		name string
		opt  meshOptions
		src  netip.Addr
		ok   bool
	}{
		{"permissive, allowed by ipBlocks", meshOptions{}, ipOutside, true},
		{"permissive, no principal is denied by policy", meshOptions{}, ipSleep, false},
		{"PeerAuthentication STRICT rejects plaintext", meshOptions{strict: true}, ipOutside, false},
		{"PlaintextAllowed hook rejects plaintext", meshOptions{strictHook: true}, ipOutside, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t, tc.opt)
			echoServer(t, apOf(ipEcho, 8080), "")
			got, err := exchange(tc.src, m.plaintextTo(apOf(ipEcho, 8080)), "plain")
			if tc.ok {
				require.NoError(t, err)
				assert.Equal(t, "plain", got)
				return
			}
			require.True(t, isReset(err), "want reset, got %v", err)
			l := m.logB.waitLines(t, "connection complete", 1)
			assert.Equal(t, "inbound", l[0]["direction"])
			if tc.opt.strict || tc.opt.strictHook {
				assert.Contains(t, l[0]["error"], "plaintext rejected by peer authentication")
			} else {
				assert.Contains(t, l[0]["error"], "policy rejection")
			}
		})
	}
}

func TestPassthroughOutsideMesh(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipOutside, 7070), "")
	echoServer(t, apOf(ipLegacy, 7071), "")
	for i, dst := range []netip.AddrPort{apOf(ipOutside, 7070), apOf(ipLegacy, 7071)} {
		c := dialFrom(t, ipSleep, m.outboundTo(dst))
		got, err := roundTrip(c, "plain tcp")
		c.Close()
		require.NoError(t, err)
		assert.Equal(t, "plain tcp", got)
		m.logA.waitLines(t, "connection complete", i+1)
	}
	out := m.logA.waitLines(t, "connection complete", 2)
	assert.Equal(t, "127.77.0.9:7070", out[0]["dst.addr"])
	assert.Nil(t, out[0]["dst.identity"])
	assert.Equal(t, "legacy", out[1]["dst.workload"])
	// A known workload reached by plain TCP: no certificate was checked,
	// so no identity is claimed for it.
	assert.Nil(t, out[1]["dst.identity"])
}

func TestSOCKS5(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 8080), "")
	ln := listen(t, apOf(netip.MustParseAddr("127.0.0.1"), 0))
	m.serve(func() error { return m.a.ServeSOCKS5(ln, "c//Pod/default/sleep") })
	d, err := xproxy.SOCKS5("tcp", ln.Addr().String(), nil, &net.Dialer{Timeout: 5 * time.Second})
	require.NoError(t, err)

	c, err := d.Dial("tcp", "127.77.10.1:80")
	require.NoError(t, err)
	got, err := roundTrip(c.(*net.TCPConn), "over socks")
	c.Close()
	require.NoError(t, err)
	assert.Equal(t, "over socks", got)

	// A denied destination is refused in the SOCKS5 reply.
	_, err = d.Dial("tcp", "127.77.0.3:9090")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not allowed")
	out := m.logA.waitLines(t, "connection complete", 2)
	assert.Equal(t, "sleep", out[0]["src.workload"])
}

// TestShutdownGraceful: Shutdown stops accepting at once but lets an open
// connection finish within the grace period, through both proxies, and
// then returns nil.
func TestShutdownGraceful(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 8080), "")
	addr := m.outboundTo(apOf(ipEcho, 8080))
	c := dialFrom(t, ipSleep, addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := io.WriteString(c, "x")
	require.NoError(t, err)
	one := make([]byte, 1)
	_, err = io.ReadFull(c, one)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	results := make(chan error, 2)
	go func() { results <- m.a.Shutdown(ctx) }()
	go func() { results <- m.b.Shutdown(ctx) }()
	// New connections are refused once the listener is closed.
	require.Eventually(t, func() bool {
		_, err := exchange(ipSleep, addr, "late")
		return err != nil
	}, 10*time.Second, 10*time.Millisecond, "node A still accepts after Shutdown")
	select {
	case err := <-results:
		t.Fatalf("Shutdown returned %v while a connection was open", err)
	default:
	}
	// The open connection still works during the grace period.
	got, err := roundTrip(c, "finish")
	require.NoError(t, err)
	assert.Equal(t, "finish", got)
	for range 2 {
		select {
		case err := <-results:
			assert.NoError(t, err, "a drained proxy shuts down without error")
		case <-time.After(20 * time.Second):
			t.Fatal("Shutdown did not return after the last connection ended")
		}
	}
	// (A probe that got in before the listener closed logs a line too.)
	var drained []map[string]any
	for _, l := range m.logA.waitLines(t, "connection complete", 1) {
		if l["bytes_sent"] == float64(len("x")+len("finish")) {
			drained = append(drained, l)
		}
	}
	require.Len(t, drained, 1, "the drained connection's access log line")
	assert.Equal(t, "INFO", drained[0]["level"], "it completed normally")
}

// TestShutdownForcesClose: connections still open when the grace period
// ends are closed, and Shutdown reports the deadline. One of them is
// half-closed and waits on an upstream that neither answers nor closes,
// so only closing its upstream end ends the relay.
func TestShutdownForcesClose(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 8080), "")
	// A server that reads to EOF, then holds the connection open.
	hold := listen(t, apOf(ipEcho, 8081))
	release := make(chan struct{})
	held := make(chan struct{})
	go func() {
		c, err := hold.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(io.Discard, c)
		close(held)
		<-release
	}()
	defer func() { close(release); hold.Close() }()

	active := dialFrom(t, ipSleep, m.outboundTo(apOf(ipEcho, 8080)))
	defer active.Close()
	active.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := io.WriteString(active, "x")
	require.NoError(t, err)
	one := make([]byte, 1)
	_, err = io.ReadFull(active, one)
	require.NoError(t, err)

	halfClosed := dialFrom(t, ipSleep, m.outboundTo(apOf(ipEcho, 8081)))
	defer halfClosed.Close()
	halfClosed.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(halfClosed, "bye")
	require.NoError(t, err)
	require.NoError(t, halfClosed.CloseWrite())
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never saw the client's EOF")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	results := make(chan error, 2)
	go func() { results <- m.a.Shutdown(ctx) }()
	go func() { results <- m.b.Shutdown(ctx) }()
	for range 2 {
		select {
		case err := <-results:
			require.ErrorIs(t, err, context.DeadlineExceeded)
		case <-time.After(20 * time.Second):
			t.Fatal("Shutdown did not close the connections left after its deadline")
		}
	}
	for _, c := range []*net.TCPConn{active, halfClosed} {
		_, err := io.ReadAll(c)
		var ne net.Error
		assert.False(t, errors.As(err, &ne) && ne.Timeout(), "the client was left open: %v", err)
	}
}

func TestConfigDump(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := m.a.ConfigDump(ctx)
	assert.Len(t, d.Workloads, 5)
	assert.Len(t, d.Services, 2)
	require.Len(t, d.Policies, 1)
	assert.Equal(t, "echo-allow", d.Policies[0].Name)
	require.Len(t, d.Certificates, 1, "only node n1's workloads")
	assert.Equal(t, "spiffe://cluster.local/ns/default/sa/sleep", d.Certificates[0].Identity)
	assert.Equal(t, "Available", d.Certificates[0].State)
	assert.True(t, d.Certificates[0].NotAfter.After(time.Now()))
	assert.Equal(t, []string{"c//Pod/default/echo"}, d.Services[0].Endpoints)
}

func TestOutboundSelfConnectRefused(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	ln := listen(t, apOf(netip.MustParseAddr("127.77.1.3"), 0))
	m.serve(func() error { return m.a.ServeOutbound(ln, "") })
	// No original destination is registered: the destination is the
	// listener itself, which must not be proxied back to itself.
	_, err := exchange(ipSleep, ln.Addr().(*net.TCPAddr).AddrPort(), "loop?")
	require.True(t, isReset(err), "want reset, got %v", err)
}
