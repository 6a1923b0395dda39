package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"testing/synctest"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	authzistio "github.com/meshblocks/meshblocks/authz/istio"
	"github.com/meshblocks/meshblocks/identity"
)

var (
	rcEcho   = netip.MustParseAddr("127.77.0.3")
	rcSleep  = netip.MustParseAddr("127.77.0.2")
	rcSleepI = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
)

func rcWorkloads() []Workload {
	return []Workload{
		{UID: "c//Pod/default/sleep", Name: "sleep", Namespace: "default", ServiceAccount: "sleep",
			Addresses: []netip.Addr{rcSleep}, Protocol: TunnelHBONE},
		{UID: "c//Pod/default/echo", Name: "echo", Namespace: "default", ServiceAccount: "echo",
			Addresses: []netip.Addr{rcEcho}, Protocol: TunnelHBONE, Labels: map[string]string{"app": "echo"}},
	}
}

// rcState is a State of rcWorkloads with the Istio policies in yaml
// (testdata/policies.yaml when empty) and any further policies.
func rcState(t testing.TB, yaml string, more ...authz.Policy) *State {
	t.Helper()
	if yaml == "" {
		data, err := os.ReadFile("testdata/policies.yaml")
		require.NoError(t, err)
		yaml = string(data)
	}
	pols, err := authzistio.Parse([]byte(yaml), authzistio.Options{})
	require.NoError(t, err)
	e, err := authz.New(authz.Config{}, append(pols, more...))
	require.NoError(t, err)
	st, err := NewState(rcWorkloads(), nil, WithAuthz(e))
	require.NoError(t, err)
	return st
}

const rcAllowNothing = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
`

// rcRelay starts relaying an inbound HBONE-like connection from sleep to
// echo:8080, authorized with st, over in-memory pipes. It returns the
// client's and the workload's ends and the relay's result.
func rcRelay(p *Proxy, st *State) (client, workload net.Conn, result <-chan error) {
	client, in := net.Pipe()
	up, workload := net.Pipe()
	dst, _ := st.WorkloadByAddr(rcEcho)
	info := &ConnInfo{Direction: Inbound, MTLS: true,
		SrcAddr: netip.AddrPortFrom(rcSleep, 40000), SrcIdentity: rcSleepI,
		DstWorkload: dst, HBONEAddr: netip.AddrPortFrom(rcEcho, 8080)}
	res := make(chan error, 1)
	go func() {
		_, _, err := p.relay(in, up, p.newLiveConn(st, info))
		res <- err
	}()
	return client, workload, res
}

func rcProxy(t testing.TB, h *StateHolder, disable bool) *Proxy {
	p, err := New(Config{State: h, Identity: func(spiffeid.ID) identity.Source { return nil }, DisablePolicyRecheck: disable})
	require.NoError(t, err)
	return p
}

// TestRecheckTrigger checks the watcher deterministically: in a synctest
// bubble every goroutine has settled after synctest.Wait, so "not closed"
// is a finding, not a race.
func TestRecheckTrigger(t *testing.T) {
	t.Run("swap that still allows keeps, swap that denies closes", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := &StateHolder{}
			s1 := rcState(t, "")
			h.Store(s1)
			p := rcProxy(t, h, false)
			client, workload, res := rcRelay(p, s1)
			synctest.Wait()
			h.Store(rcState(t, "")) // a new State with the same policies
			synctest.Wait()
			require.Empty(t, res, "an allowed connection is kept")
			go func() { io.WriteString(client, "hi") }()
			b := make([]byte, 2)
			_, err := io.ReadFull(workload, b)
			require.NoError(t, err)
			assert.Equal(t, "hi", string(b))

			h.Store(rcState(t, rcAllowNothing))
			synctest.Wait()
			require.Len(t, res, 1, "the denied connection is closed")
			err = <-res
			assert.ErrorIs(t, err, ErrPolicyChanged)
			assert.ErrorIs(t, err, ErrDenied)
			// Both ends see the close.
			_, err = client.Read(b)
			assert.ErrorIs(t, err, io.EOF)
			_, err = workload.Read(b)
			assert.ErrorIs(t, err, io.EOF)
			synctest.Wait()
			assert.Nil(t, p.live.watching, "the watcher exits with the last connection")
			p.Close()
		})
	})
	t.Run("swap between the decision and the relay", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := &StateHolder{}
			s1 := rcState(t, "")
			h.Store(s1)
			p := rcProxy(t, h, false)
			// The decision was made with s1; the deny lands before the
			// relay registers.
			h.Store(rcState(t, rcAllowNothing))
			client, workload, res := rcRelay(p, s1)
			synctest.Wait()
			require.Len(t, res, 1)
			assert.ErrorIs(t, <-res, ErrPolicyChanged)
			client.Close()
			workload.Close()
			p.Close()
		})
	})
	t.Run("a swap with no open connection starts nothing", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := &StateHolder{}
			h.Store(rcState(t, ""))
			p := rcProxy(t, h, false)
			h.Store(rcState(t, rcAllowNothing))
			synctest.Wait()
			assert.Nil(t, p.live.watching)
			p.Close()
		})
	})
	t.Run("DisablePolicyRecheck keeps the connection", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := &StateHolder{}
			s1 := rcState(t, "")
			h.Store(s1)
			p := rcProxy(t, h, true)
			client, workload, res := rcRelay(p, s1)
			synctest.Wait()
			h.Store(rcState(t, rcAllowNothing))
			synctest.Wait()
			require.Empty(t, res, "nothing re-checks the connection")
			assert.Nil(t, p.live.watching)
			client.Close()
			workload.Close()
			require.NoError(t, <-res)
			p.Close()
		})
	})
}

// TestReauthorizeDoesNotAllocate: an allowed re-check costs no allocation.
func TestReauthorizeDoesNotAllocate(t *testing.T) {
	h := &StateHolder{}
	st := rcState(t, "")
	h.Store(st)
	p := rcProxy(t, h, false)
	dst, _ := st.WorkloadByAddr(rcEcho)
	lc := p.newLiveConn(st, &ConnInfo{MTLS: true, SrcAddr: netip.AddrPortFrom(rcSleep, 1), SrcIdentity: rcSleepI,
		DstWorkload: dst, HBONEAddr: netip.AddrPortFrom(rcEcho, 8080)})
	require.NoError(t, p.reauthorize(st, lc))
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = p.reauthorize(st, lc) }))
}

// BenchmarkRecheck measures one re-check pass over 10,000 open inbound
// connections (all still allowed) after a State swap, with the echo
// policy alone and with 10,000 policies loaded.
func BenchmarkRecheck(b *testing.B) {
	const conns = 10000
	for _, npol := range []int{1, 10000} {
		b.Run(fmt.Sprintf("conns=%d/policies=%d", conns, npol), func(b *testing.B) {
			var more []authz.Policy
			for i := 1; i < npol; i++ {
				ns := fmt.Sprintf("ns-%d", i/10)
				more = append(more, authz.Policy{Namespace: ns, Name: fmt.Sprintf("p-%d", i), HasSelector: true,
					Selector: map[string]string{"app": fmt.Sprintf("app-%d", i%10)},
					Rules: []authz.Rule{{From: []*authz.Source{{Principals: []string{"cluster.local/ns/" + ns + "/sa/client"}}},
						To: []*authz.Operation{{Ports: []string{"8080"}}}}}})
			}
			states := [2]*State{rcState(b, "", more...), rcState(b, "", more...)}
			h := &StateHolder{}
			h.Store(states[0])
			p := rcProxy(b, h, false)
			dst, _ := states[0].WorkloadByAddr(rcEcho)
			p.live.conns = make(map[*liveConn]struct{}, conns)
			for i := range conns {
				src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 77, byte(i >> 8), byte(i)}), 40000)
				lc := p.newLiveConn(states[0], &ConnInfo{MTLS: true, SrcAddr: src, SrcIdentity: rcSleepI,
					DstWorkload: dst, HBONEAddr: netip.AddrPortFrom(rcEcho, 8080)})
				p.live.conns[lc] = struct{}{}
			}
			batch := make([]*liveConn, 0, conns)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				h.Store(states[i%2])
				batch = p.recheck(batch[:0])
			}
			for lc := range p.live.conns {
				if lc.err != nil {
					b.Fatalf("closed: %v", errors.Unwrap(lc.err))
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/conns, "ns/conn")
		})
	}
}
