package proxy_test

import (
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	authzistio "github.com/meshblocks/meshblocks/authz/istio"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/meshblocks/meshblocks/proxy"
)

// Policies the tests swap in. allowNothing is Istio's "allow nothing" in
// the default namespace; sleepTo8080 lets sleep reach echo on 8080 only
// (and the outside client, as in testdata/policies.yaml).
const (
	allowNothing = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: default
spec: {}
`
	sleepTo8080 = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: sleep-8080
  namespace: default
spec:
  selector:
    matchLabels:
      app: echo
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        ipBlocks: ["127.77.0.9/32"]
    to:
    - operation:
        ports: ["8080"]
`
)

// stateWith builds a State of ws and the mesh's services with the Istio
// policies in policyYAML (testdata/policies.yaml when empty) and, if
// strict, testdata's STRICT PeerAuthentication for echo.
func stateWith(t *testing.T, ws []proxy.Workload, policyYAML string, strict bool) *proxy.State {
	t.Helper()
	if policyYAML == "" {
		data, err := os.ReadFile("testdata/policies.yaml")
		require.NoError(t, err)
		policyYAML = string(data)
	}
	pols, err := authzistio.Parse([]byte(policyYAML), authzistio.Options{})
	require.NoError(t, err)
	engine, err := authz.New(authz.Config{}, pols)
	require.NoError(t, err)
	opts := []proxy.StateOption{proxy.WithAuthz(engine)}
	if strict {
		data, err := os.ReadFile("testdata/peerauthn-strict.yaml")
		require.NoError(t, err)
		pas, err := authzistio.ParsePeerAuthentications(data, authzistio.Options{})
		require.NoError(t, err)
		pa, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{}, pas)
		require.NoError(t, err)
		opts = append(opts, proxy.WithPeerAuthn(pa))
	}
	st, err := proxy.NewState(ws, meshServices(), opts...)
	require.NoError(t, err)
	return st
}

// held is a long-lived client connection that echoes pings.
type held struct {
	t *testing.T
	c *net.TCPConn
}

func hold(t *testing.T, c *net.TCPConn) *held {
	t.Cleanup(func() { c.Close() })
	h := &held{t, c}
	require.NoError(t, h.ping(), "the connection works before the swap")
	return h
}

func (h *held) ping() error {
	h.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(h.c, "ping"); err != nil {
		return err
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(h.c, b); err != nil {
		return err
	}
	if string(b) != "ping" {
		return errors.New("echoed " + string(b))
	}
	return nil
}

// closedByProxy waits (bounded) for the proxy to end the connection: the
// client reads EOF or a reset, not its own deadline.
func (h *held) closedByProxy() {
	h.t.Helper()
	h.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := h.c.Read(make([]byte, 1))
	assert.Zero(h.t, n)
	var ne net.Error
	require.False(h.t, errors.As(err, &ne) && ne.Timeout(), "the proxy left the connection open")
	require.True(h.t, errors.Is(err, io.EOF) || isReset(err), "read: %v", err)
}

func hasError(sub string) func(map[string]any) bool {
	return func(l map[string]any) bool {
		s, _ := l["error"].(string)
		return strings.Contains(s, sub)
	}
}

// closedInfos waits (bounded) until node B's Closed hook has seen n
// connections and returns those that ended with ErrPolicyChanged.
func closedInfos(t *testing.T, m *mesh, n int) []proxy.ConnInfo {
	t.Helper()
	var out []proxy.ConnInfo
	require.Eventually(t, func() bool {
		m.metricsB.mu.Lock()
		defer m.metricsB.mu.Unlock()
		out = out[:0]
		for _, c := range m.metricsB.infos {
			if errors.Is(c.Err, proxy.ErrPolicyChanged) {
				out = append(out, c)
			}
		}
		return len(out) >= n
	}, 10*time.Second, 5*time.Millisecond)
	return out
}

// TestRecheckClosesDeniedHBONE: two long-lived HBONE connections from
// sleep to echo, on 8080 and 8081. A policy swap that allows sleep on 8080
// only closes the 8081 one (both ends, logged, counted) and keeps 8080
// working; a swap to allow-nothing then closes the other.
func TestRecheckClosesDeniedHBONE(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 8080), "")
	echoServer(t, apOf(ipEcho, 8081), "")
	c80 := hold(t, dialFrom(t, ipSleep, m.outboundTo(apOf(ipEcho, 8080))))
	c81 := hold(t, dialFrom(t, ipSleep, m.outboundTo(apOf(ipEcho, 8081))))

	m.state.Store(stateWith(t, meshWorkloads(), sleepTo8080, false))
	c81.closedByProxy()
	l := m.logB.waitMatch(t, "connection complete", hasError("policy change"))
	assert.Equal(t, "ERROR", l["level"])
	assert.Equal(t, "inbound", l["direction"])
	assert.Equal(t, "127.77.0.3:8081", l["dst.hbone_addr"])
	assert.Equal(t, "spiffe://cluster.local/ns/default/sa/sleep", l["src.identity"])
	assert.Contains(t, l["error"], "proxy: connection closed due to policy change")
	assert.Contains(t, l["error"], "DENY")
	why := m.logB.waitLines(t, "connection no longer allowed after a state update; closing it", 1)
	require.Len(t, why, 1)
	assert.Equal(t, "INFO", why[0]["level"])
	assert.Contains(t, why[0]["conn"], "(spiffe://cluster.local/ns/default/sa/sleep)->127.77.0.3:8081")
	assert.Contains(t, why[0]["reason"], "no ALLOW policy matched")
	// The pass is over once its summary is logged: 8080 was checked too.
	sum := m.logB.waitLines(t, "open connections re-checked after a state update", 1)
	assert.Equal(t, float64(2), sum[0]["checked"])
	assert.Equal(t, float64(1), sum[0]["closed"])
	require.NoError(t, c80.ping(), "the allowed connection is unaffected")
	// A new connection gets the same answer as the re-check.
	_, err := exchange(ipSleep, m.outboundTo(apOf(ipEcho, 8081)), "late")
	require.Error(t, err)

	m.state.Store(stateWith(t, meshWorkloads(), allowNothing, false))
	c80.closedByProxy()
	infos := closedInfos(t, m, 2)
	for _, c := range infos {
		assert.ErrorIs(t, c.Err, proxy.ErrDenied)
		assert.Equal(t, proxy.Inbound, c.Direction)
		assert.True(t, c.MTLS)
		assert.Positive(t, c.Sent, "bytes relayed before the close are counted")
	}
}

// TestRecheckPlaintextStrict: a plaintext connection allowed under
// PERMISSIVE is closed when PeerAuthentication turns STRICT; an HBONE
// connection to the same workload stays.
func TestRecheckPlaintextStrict(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 8080), "")
	plain := hold(t, dialFrom(t, ipOutside, m.plaintextTo(apOf(ipEcho, 8080))))
	mtls := hold(t, dialFrom(t, ipSleep, m.outboundTo(apOf(ipEcho, 8080))))

	m.state.Store(stateWith(t, meshWorkloads(), "", true))
	plain.closedByProxy()
	l := m.logB.waitMatch(t, "connection complete", hasError("policy change"))
	assert.Contains(t, l["error"], "plaintext rejected by peer authentication")
	assert.Equal(t, "127.77.0.9", strings.Split(l["src.addr"].(string), ":")[0])
	m.logB.waitLines(t, "open connections re-checked after a state update", 1)
	require.NoError(t, mtls.ping(), "STRICT keeps mutual TLS connections")
	infos := closedInfos(t, m, 1)
	assert.ErrorIs(t, infos[0].Err, proxy.ErrPlaintextRejected)
	assert.False(t, infos[0].MTLS)
}

// TestRecheckDestinationGone: a connection is closed when its destination
// workload is removed, moves to another node, or its address now belongs
// to another workload.
func TestRecheckDestinationGone(t *testing.T) {
	leakcheck.Check(t)
	change := map[string]func([]proxy.Workload) []proxy.Workload{
		"removed": func(ws []proxy.Workload) []proxy.Workload {
			out := ws[:0]
			for _, w := range ws {
				if w.Name != "echo" {
					out = append(out, w)
				}
			}
			return out
		},
		"moved to another node": func(ws []proxy.Workload) []proxy.Workload {
			for i := range ws {
				if ws[i].Name == "echo" {
					ws[i].Node = "n3"
				}
			}
			return ws
		},
		"address reused": func(ws []proxy.Workload) []proxy.Workload {
			for i := range ws {
				if ws[i].Name == "echo" {
					ws[i].UID, ws[i].Name = "c//Pod/default/echo-2", "echo-2"
				}
			}
			return ws
		},
	}
	for name, f := range change {
		t.Run(name, func(t *testing.T) {
			m := newMesh(t, meshOptions{})
			echoServer(t, apOf(ipEcho, 8080), "")
			c := hold(t, dialFrom(t, ipSleep, m.outboundTo(apOf(ipEcho, 8080))))
			m.state.Store(stateWith(t, f(meshWorkloads()), "", false))
			c.closedByProxy()
			l := m.logB.waitMatch(t, "connection complete", hasError("policy change"))
			assert.Contains(t, l["error"], "unknown destination workload: 127.77.0.3 (c//Pod/default/echo) is no longer a workload of this node")
			assert.ErrorIs(t, closedInfos(t, m, 1)[0].Err, proxy.ErrUnknownDestination)
		})
	}
}

// TestRecheckManySwaps: connections that stay allowed survive a burst of
// swaps (each re-checks them), and each is checked against the State
// current when the watcher runs, not a stale one.
func TestRecheckManySwaps(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 8080), "")
	addr := m.outboundTo(apOf(ipEcho, 8080))
	var cs []*held
	for range 5 {
		cs = append(cs, hold(t, dialFrom(t, ipSleep, addr)))
	}
	s1, s2 := m.state.Load(), stateWith(t, meshWorkloads(), sleepTo8080, false)
	for i := range 100 {
		if i%2 == 0 {
			m.state.Store(s2)
		} else {
			m.state.Store(s1)
		}
	}
	for _, c := range cs {
		require.NoError(t, c.ping())
	}
	m.state.Store(stateWith(t, meshWorkloads(), allowNothing, false))
	for _, c := range cs {
		c.closedByProxy()
	}
	assert.Len(t, closedInfos(t, m, 5), 5)
	m.logB.waitLines(t, "connection no longer allowed after a state update; closing it", 5)
	assert.Len(t, m.logB.lines("connection no longer allowed after a state update; closing it"), 5, "each connection is closed once")
}
