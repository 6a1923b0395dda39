package proxy_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/meshblocks/meshblocks/proxy"
)

// connectEcho opens one HBONE tunnel as sleep to echo's proxy (node B)
// with authority and returns the CONNECT status (200 when it opened).
func connectEcho(t *testing.T, m *mesh, d *hbone.Dialer, authority string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.Dial(ctx, hbone.Route{Address: apOf(ipEcho, proxy.DefaultHBONEPort).String(), Authority: authority,
		Expected: []spiffeid.ID{m.ca.ID("ns/default/sa/echo")}})
	if err == nil {
		c.Close()
		return http.StatusOK
	}
	var ce *hbone.ConnectError
	require.ErrorAs(t, err, &ce)
	return ce.StatusCode
}

// TestInboundHBONESelfTargetRefused: a CONNECT whose target is one of the
// proxy's own ports, or the address of a listener it serves, is answered
// 503 before anything is dialled (§C.11 step 4). The State has no policy,
// so every peer is allowed everywhere: only this check stops the dial
// back into the proxy's own listeners.
func TestInboundHBONESelfTargetRefused(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{recordDials: true})
	st, err := proxy.NewState(meshWorkloads(), meshServices())
	require.NoError(t, err)
	m.state.Store(st)
	echoServer(t, apOf(ipEcho, 8080), "")
	// Node B also serves plaintext on an ordinary port of echo's address.
	pln := listen(t, apOf(ipEcho, 0))
	m.serve(func() error { return m.b.ServeInboundPlaintext(pln) })
	plainPort := pln.Addr().(*net.TCPAddr).AddrPort().Port()
	d := &hbone.Dialer{Source: m.ids.Source(m.ca.ID("ns/default/sa/sleep"))}
	defer d.Close()

	ports := append(proxy.DefaultReservedPorts(), plainPort)
	for _, port := range ports {
		authority := apOf(ipEcho, port).String()
		assert.Equal(t, http.StatusServiceUnavailable, connectEcho(t, m, d, authority), authority)
		l := m.logB.waitMatch(t, "connection complete", func(l map[string]any) bool { return l["dst.hbone_addr"] == authority })
		assert.Contains(t, l["error"], "addressed to the proxy itself", authority)
	}
	assert.Empty(t, m.dials.seen(), "nothing is dialled for a self target")
	// An ordinary port is still dialled.
	assert.Equal(t, http.StatusOK, connectEcho(t, m, d, "127.77.0.3:8080"))
	assert.Equal(t, []netip.AddrPort{apOf(ipEcho, 8080)}, m.dials.seen())
}

// TestInboundHBONEReservedPortsConfigurable: Config.ReservedPorts replaces
// the default set; the proxy's own listener addresses stay refused.
func TestInboundHBONEReservedPortsConfigurable(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{recordDials: true, reservedPorts: []uint16{8081}})
	echoServer(t, apOf(ipEcho, 8080), "")
	echoServer(t, apOf(ipEcho, 8081), "")
	d := &hbone.Dialer{Source: m.ids.Source(m.ca.ID("ns/default/sa/sleep"))}
	defer d.Close()
	tests := []struct {
		authority string
		status    int
	}{
		{"127.77.0.3:8081", http.StatusServiceUnavailable},  // reserved now, though policy allows it
		{"127.77.0.3:15008", http.StatusServiceUnavailable}, // the HBONE listener's own address
		{"127.77.0.3:15001", http.StatusUnauthorized},       // not reserved any more: policy decides
		{"127.77.0.3:8080", http.StatusOK},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.status, connectEcho(t, m, d, tc.authority), tc.authority)
	}
	assert.Equal(t, []netip.AddrPort{apOf(ipEcho, 8080)}, m.dials.seen())
}

// countingListener counts the connections it accepted.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestInboundPlaintextSelfLoopRefused: a plaintext connection whose
// destination is the proxy itself (not redirected, or redirected to one
// of its own ports) is reset instead of dialled back into the listener,
// where each dial would open another connection. With no policy in the
// State nothing else would stop the loop.
func TestInboundPlaintextSelfLoopRefused(t *testing.T) {
	leakcheck.Check(t)
	tests := []struct {
		name   string
		listen netip.AddrPort
		// redirect, if valid, is the original destination reported for
		// connections to the listener; otherwise it is the listener itself.
		redirect netip.AddrPort
	}{
		{"listener on a workload address, reserved port", apOf(ipEcho, 15006), netip.AddrPort{}},
		{"listener on a workload address, any port", apOf(ipEcho, 0), netip.AddrPort{}},
		{"redirected to the HBONE port", apOf(netip.MustParseAddr("127.77.1.2"), 0), apOf(ipEcho, proxy.DefaultHBONEPort)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t, meshOptions{recordDials: true})
			st, err := proxy.NewState(meshWorkloads(), meshServices()) // no policy
			require.NoError(t, err)
			m.state.Store(st)
			ln := &countingListener{Listener: listen(t, tc.listen)}
			la := ln.Addr().(*net.TCPAddr).AddrPort()
			if tc.redirect.IsValid() {
				m.mu.Lock()
				m.origDst[la] = tc.redirect
				m.mu.Unlock()
			}
			m.serve(func() error { return m.b.ServeInboundPlaintext(ln) })

			_, err = exchange(ipOutside, la, "loop?")
			assert.True(t, isReset(err), "want a reset, got %v", err)
			l := m.logB.waitLines(t, "connection complete", 1)
			assert.Contains(t, l[0]["error"], "addressed to the proxy itself")
			// The refusal is logged after the one accept: nothing came back.
			assert.Len(t, m.logB.lines("connection complete"), 1)
			assert.Equal(t, int32(1), ln.n.Load(), "one client connection, no looped ones")
			assert.Empty(t, m.dials.seen())
		})
	}
}

// TestInboundUnknownDestination covers §C.11's 503 for destinations the
// proxy cannot serve, and where an unknown address is refused instead.
func TestInboundUnknownDestination(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{recordDials: true})
	echoServer(t, apOf(ipEcho, 8080), "")
	d := &hbone.Dialer{Source: m.ids.Source(m.ca.ID("ns/default/sa/sleep"))}
	defer d.Close()

	t.Run("hostname authority", func(t *testing.T) {
		tests := []struct {
			authority string
			status    int
			logErr    string
		}{
			// A service hostname (as a network gateway forwards it) maps
			// the service port to echo's target port.
			{"echo.default.svc.cluster.local:80", http.StatusOK, ""},
			{"nope.default.svc.cluster.local:80", http.StatusServiceUnavailable, "backs no service nope.default.svc.cluster.local"},
			{"echo.default.svc.cluster.local:81", http.StatusServiceUnavailable, "service has no such port"},
		}
		for _, tc := range tests {
			assert.Equal(t, tc.status, connectEcho(t, m, d, tc.authority), tc.authority)
			if tc.logErr != "" {
				m.logB.waitMatch(t, "connection complete", func(l map[string]any) bool {
					e, _ := l["error"].(string)
					return strings.Contains(e, tc.logErr)
				})
				continue
			}
			l := m.logB.waitMatch(t, "connection complete", func(l map[string]any) bool { return l["error"] == nil })
			assert.Equal(t, "echo.default.svc.cluster.local", l["dst.service"])
			assert.Equal(t, "127.77.0.3:8080", l["dst.hbone_addr"])
		}
		assert.Equal(t, []netip.AddrPort{apOf(ipEcho, 8080)}, m.dials.seen(), "only the known port is dialled")
	})

	t.Run("workload removed after the handshake", func(t *testing.T) {
		// The first tunnel leaves a pooled connection whose handshake
		// presented echo's certificate; then echo leaves the State.
		require.Equal(t, http.StatusOK, connectEcho(t, m, d, "127.77.0.3:8080"))
		old := m.state.Load()
		var ws []proxy.Workload
		for _, w := range meshWorkloads() {
			if w.Name != "echo" {
				ws = append(ws, w)
			}
		}
		st, err := proxy.NewState(ws, nil)
		require.NoError(t, err)
		m.state.Store(st)
		defer m.state.Store(old)
		before := len(m.dials.seen())
		assert.Equal(t, http.StatusServiceUnavailable, connectEcho(t, m, d, "127.77.0.3:8080"))
		m.logB.waitMatch(t, "connection complete", func(l map[string]any) bool {
			e, _ := l["error"].(string)
			return strings.Contains(e, "unknown destination workload: 127.77.0.3")
		})
		assert.Len(t, m.dials.seen(), before, "nothing dialled")
	})

	t.Run("address not in the state", func(t *testing.T) {
		// The server certificate is the destination workload's (§A.3), so
		// for an address of no workload there is no certificate and the
		// TLS handshake fails before any CONNECT: the client sees a TLS
		// error, not a status.
		unknown := netip.MustParseAddr("127.77.0.7")
		ln := listen(t, apOf(unknown, proxy.DefaultHBONEPort))
		m.serve(func() error { return m.b.ServeInboundHBONE(ln) })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		before := len(m.dials.seen())
		_, err := d.Dial(ctx, hbone.Route{Address: apOf(unknown, proxy.DefaultHBONEPort).String(),
			Authority: apOf(unknown, 8080).String(), Expected: []spiffeid.ID{m.ca.ID("ns/default/sa/echo")}})
		require.Error(t, err)
		var ce *hbone.ConnectError
		assert.False(t, errors.As(err, &ce), "no CONNECT status without a handshake: %v", err)
		assert.ErrorContains(t, err, "tls")
		hs := m.logB.waitLines(t, "hbone: TLS handshake failed", 1)
		assert.Contains(t, hs[len(hs)-1]["err"], "unknown destination workload")
		assert.Len(t, m.dials.seen(), before, "nothing dialled")
	})
}
