package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/meshblocks/meshblocks/proxy"
)

// TestStateSwapUnderTraffic swaps the State back and forth while
// connections carry traffic through both proxies: the open connections
// keep working (they were resolved once, when they opened), and each new
// connection is resolved with the State current when it arrives.
func TestStateSwapUnderTraffic(t *testing.T) {
	leakcheck.Check(t)
	m := newMesh(t, meshOptions{})
	echoServer(t, apOf(ipEcho, 8080), "")
	vipEcho2 := netip.MustParseAddr("127.77.10.3")

	// s1 is the mesh as built; s2 adds a service echo2 backed by echo.
	s1 := m.state.Load()
	ws := meshWorkloads()
	for i := range ws {
		if ws[i].Name == "echo" {
			ws[i].Services["default/echo2.default.svc.cluster.local"] = []proxy.PortMapping{{ServicePort: 80, TargetPort: 8080}}
		}
	}
	svcs := append(meshServices(), proxy.Service{Name: "echo2", Namespace: "default", Hostname: "echo2.default.svc.cluster.local",
		Addresses: []netip.Addr{vipEcho2}, Ports: []proxy.ServicePort{{Port: 80, TargetPort: 8080}}})
	s2, err := proxy.NewState(ws, svcs, proxy.WithAuthz(s1.Authz()))
	require.NoError(t, err)

	// A connection opened under s2 to echo2's VIP, kept open across the
	// swaps (s1 does not know that VIP).
	m.state.Store(s2)
	pinned := dialFrom(t, ipSleep, m.outboundTo(apOf(vipEcho2, 80)))
	defer pinned.Close()
	pinned.SetDeadline(time.Now().Add(60 * time.Second))
	ping := func() error {
		if _, err := io.WriteString(pinned, "ping"); err != nil {
			return err
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(pinned, b); err != nil {
			return err
		}
		if string(b) != "ping" {
			return fmt.Errorf("echoed %q", b)
		}
		return nil
	}
	require.NoError(t, ping())

	// Traffic on 10 connections to echo's VIP while the State flips.
	addr := m.outboundTo(apOf(vipEcho, 80))
	const conns, rounds = 10, 200
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialTCP(ipSleep, addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			req := bytes.Repeat([]byte{byte(i)}, 1024)
			resp := make([]byte, len(req))
			for r := 0; r < rounds; r++ {
				if _, err := c.Write(req); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(req, resp) {
					errs <- fmt.Errorf("connection %d round %d: wrong echo", i, r)
					return
				}
			}
		}()
	}
	trafficDone := make(chan struct{})
	go func() { wg.Wait(); close(trafficDone) }()
	swaps := 0
swapping:
	for {
		select {
		case <-trafficDone:
			break swapping
		default:
		}
		if swaps%2 == 0 {
			m.state.Store(s1)
		} else {
			m.state.Store(s2)
		}
		swaps++
		time.Sleep(time.Millisecond)
	}
	close(errs)
	for err := range errs {
		t.Errorf("traffic during the swaps: %v", err)
	}
	t.Logf("%d swaps during the traffic", swaps)
	require.Greater(t, swaps, 1, "the State changed while the connections were open")

	// New connections see the State current when they arrive.
	m.state.Store(s2)
	got, err := exchange(ipSleep, m.outboundTo(apOf(vipEcho2, 80)), "via echo2")
	require.NoError(t, err)
	assert.Equal(t, "via echo2", got)
	l := m.logA.waitMatch(t, "connection complete", func(l map[string]any) bool {
		return l["dst.service"] == "echo2.default.svc.cluster.local"
	})
	assert.Equal(t, "127.77.0.3:8080", l["dst.hbone_addr"], "resolved through echo2's VIP to echo")

	m.state.Store(s1)
	// Under s1 echo2's VIP is no service: passed through as plain TCP to
	// an address where nothing listens.
	_, err = exchange(ipSleep, m.outboundTo(apOf(vipEcho2, 80)), "gone")
	require.Error(t, err)
	// The connection opened under s2 still works under s1.
	require.NoError(t, ping())
}

// TestStateHolderChanged: Changed is closed by the next Store, not an
// earlier one, and a fresh channel waits for the one after.
func TestStateHolderChanged(t *testing.T) {
	var h proxy.StateHolder
	c1 := h.Changed()
	assert.Equal(t, c1, h.Changed(), "one channel per generation")
	select {
	case <-c1:
		t.Fatal("closed before any Store")
	default:
	}
	s := &proxy.State{}
	h.Store(s)
	_, open := <-c1
	assert.False(t, open)
	assert.Same(t, s, h.Load())
	c2 := h.Changed()
	select {
	case <-c2:
		t.Fatal("a Store before Changed closed the new channel")
	default:
	}
}
