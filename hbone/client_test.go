package hbone_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/hbone/hbonetest"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
)

// capPeer is a raw HTTP/2 server that advertises MAX_CONCURRENT_STREAMS
// limit only after settingsDelay, answers 200 to CONNECTs within the
// limit, refuses the others, and records the most streams the client had
// open at once.
type capPeer struct {
	limit         uint32
	settingsDelay time.Duration

	mu       sync.Mutex
	sent     bool     // SETTINGS sent
	queued   []uint32 // CONNECTs received before SETTINGS
	open     int
	maxOpen  int
	refused  int
	accepted int
}

func (cp *capPeer) serve(t *testing.T, nc net.Conn, src identity.Source) {
	ts := tlsServer(nc, identity.ServerTLSConfig(src))
	if ts == nil {
		return
	}
	defer ts.Close()
	p := newRawPeer(t, ts)
	buf := make([]byte, len(http2.ClientPreface))
	if _, err := readFull(ts, buf); err != nil {
		return
	}
	answer := func(id uint32) {
		// Called with cp.mu held.
		if cp.open > int(cp.limit) {
			cp.refused++
			cp.open--
			p.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
			return
		}
		cp.accepted++
		p.writeHeaders(id, false, ":status", "200")
	}
	timer := time.AfterFunc(cp.settingsDelay, func() {
		cp.mu.Lock()
		defer cp.mu.Unlock()
		p.write(func(fr *http2.Framer) error {
			return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: cp.limit})
		})
		cp.sent = true
		for _, id := range cp.queued {
			answer(id)
		}
		cp.queued = nil
	})
	defer timer.Stop()
	closed := map[uint32]bool{}
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				p.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.MetaHeadersFrame:
			cp.mu.Lock()
			cp.open++
			cp.maxOpen = max(cp.maxOpen, cp.open)
			if cp.sent {
				answer(f.StreamID)
			} else {
				cp.queued = append(cp.queued, f.StreamID)
			}
			cp.mu.Unlock()
		case *http2.RSTStreamFrame:
			cp.mu.Lock()
			if !closed[f.StreamID] {
				closed[f.StreamID] = true
				cp.open--
			}
			cp.mu.Unlock()
		}
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// TestStreamCapBeforeSettings dials several tunnels at once to a server
// whose SETTINGS (MAX_CONCURRENT_STREAMS 2) arrive late: the client must
// never have more streams open on one connection than the server allows,
// and spreads the rest over new connections.
func TestStreamCapBeforeSettings(t *testing.T) {
	for _, limit := range []uint32{1, 2, 3} {
		t.Run(string(rune('0'+limit)), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ca := identitytest.NewCA(t, "cluster.local")
				serverSrc := ca.Source(t, hbonetest.ServerPath)
				const dials = 6
				var mu sync.Mutex
				var peers []*capPeer
				var wg sync.WaitGroup
				d := &hbone.Dialer{
					Source:            ca.Source(t, hbonetest.ClientPath),
					Expected:          []spiffeid.ID{ca.ID(hbonetest.ServerPath)},
					MaxConnsPerKey:    1,
					KeepaliveInterval: -1,
					DialTCP: func(ctx context.Context, network, addr string) (net.Conn, error) {
						cEnd, sEnd := net.Pipe()
						cp := &capPeer{limit: limit, settingsDelay: 20 * time.Millisecond}
						mu.Lock()
						peers = append(peers, cp)
						mu.Unlock()
						wg.Go(func() { cp.serve(t, sEnd, serverSrc) })
						return cEnd, nil
					},
				}
				route := hbone.Route{Address: "10.0.0.1:15008", Authority: "10.0.0.1:80"}
				conns := make([]*hbone.Conn, dials)
				var dialers sync.WaitGroup
				for i := range dials {
					dialers.Go(func() {
						c, err := d.Dial(t.Context(), route)
						if assert.NoError(t, err) {
							conns[i] = c
						}
					})
				}
				dialers.Wait()
				synctest.Wait()
				mu.Lock()
				for i, cp := range peers {
					cp.mu.Lock()
					assert.LessOrEqual(t, cp.maxOpen, int(limit), "connection %d: streams open at once", i)
					assert.Zero(t, cp.refused, "connection %d: refused streams", i)
					cp.mu.Unlock()
				}
				require.Len(t, peers, (dials+int(limit)-1)/int(limit), "connections for %d tunnels at %d each", dials, limit)
				mu.Unlock()
				require.Equal(t, dials, d.Stats().Streams)
				for _, c := range conns {
					if c != nil {
						c.Close()
					}
				}
				d.Close()
				wg.Wait()
			})
		})
	}
}

// TestNoSettingsTimeout: a server that never sends SETTINGS fails the
// dial (and the dials waiting for its SETTINGS) after the connect timeout.
func TestNoSettingsTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := identitytest.NewCA(t, "cluster.local")
		serverSrc := ca.Source(t, hbonetest.ServerPath)
		var wg sync.WaitGroup
		d := &hbone.Dialer{
			Source:            ca.Source(t, hbonetest.ClientPath),
			Expected:          []spiffeid.ID{ca.ID(hbonetest.ServerPath)},
			MaxConnsPerKey:    1,
			KeepaliveInterval: -1,
			ConnectTimeout:    3 * time.Second,
			DialTCP: func(ctx context.Context, network, addr string) (net.Conn, error) {
				cEnd, sEnd := net.Pipe()
				wg.Go(func() {
					ts := tlsServer(sEnd, identity.ServerTLSConfig(serverSrc))
					if ts == nil {
						return
					}
					defer ts.Close()
					readAll(ts) // silent: no SETTINGS, no answers
				})
				return cEnd, nil
			},
		}
		defer wg.Wait()
		defer d.Close()
		start := time.Now()
		route := hbone.Route{Address: "10.0.0.1:15008", Authority: "10.0.0.1:80"}
		errs := make(chan error, 3)
		for range 3 {
			go func() {
				_, err := d.Dial(t.Context(), route)
				errs <- err
			}()
		}
		for range 3 {
			err := <-errs
			var pe *hbone.ProtocolError
			require.ErrorAs(t, err, &pe)
			require.Contains(t, pe.Reason, "no SETTINGS")
		}
		require.Equal(t, 3*time.Second, time.Since(start))
	})
}

func readAll(c net.Conn) {
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// TestSettingsOnTheWire reads the first bytes each side sends after the
// TLS handshake and compares them with spec §B.6, byte for byte: the
// SETTINGS frame (values in this order) and the WINDOW_UPDATE on stream 0
// that raises the connection window from 65,535 to 16 MiB.
func TestSettingsOnTheWire(t *testing.T) {
	leakcheck.Check(t)
	const windowUpdate = "000004" + "08" + "00" + "00000000" + "00ff0001" // +16,711,681
	tests := []struct {
		role string
		want string // hex, after the client preface for the client
	}{
		{"client", "000018" + "04" + "00" + "00000000" +
			"0002" + "00000000" + // ENABLE_PUSH 0
			"0004" + "00400000" + // INITIAL_WINDOW_SIZE 4 MiB
			"0005" + "00100000" + // MAX_FRAME_SIZE 1 MiB
			"0006" + "00004000" + // MAX_HEADER_LIST_SIZE 16 KiB
			windowUpdate},
		{"server", "000018" + "04" + "00" + "00000000" +
			"0003" + "000000c8" + // MAX_CONCURRENT_STREAMS 200
			"0004" + "00400000" + // INITIAL_WINDOW_SIZE 4 MiB
			"0005" + "00100000" + // MAX_FRAME_SIZE 1 MiB
			"0006" + "00010000" + // MAX_HEADER_LIST_SIZE 64 KiB
			windowUpdate},
	}
	for _, tc := range tests {
		t.Run(tc.role, func(t *testing.T) {
			want, err := hex.DecodeString(tc.want)
			require.NoError(t, err)
			p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
			var got []byte
			if tc.role == "server" {
				c, err := tls.Dial("tcp", p.Addr, identity.ClientTLSConfig(p.Dialer.Source, p.ServerID))
				require.NoError(t, err)
				defer c.Close()
				_, err = c.Write([]byte(http2.ClientPreface))
				require.NoError(t, err)
				got = make([]byte, len(want))
				_, err = io.ReadFull(c, got)
				require.NoError(t, err)
			} else {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				defer ln.Close()
				d := &hbone.Dialer{Source: p.Dialer.Source, Expected: p.Dialer.Expected}
				defer d.Close()
				dialErr := make(chan error, 1)
				go func() {
					_, err := d.Dial(ctxT(t), hbone.Route{Address: ln.Addr().String(), Authority: "10.0.0.1:80"})
					dialErr <- err
				}()
				nc, err := ln.Accept()
				require.NoError(t, err)
				c := tls.Server(nc, identity.ServerTLSConfig(p.CA.Source(t, hbonetest.ServerPath)))
				defer c.Close()
				got = make([]byte, len(http2.ClientPreface)+len(want))
				_, err = io.ReadFull(c, got)
				require.NoError(t, err)
				require.Equal(t, http2.ClientPreface, string(got[:len(http2.ClientPreface)]))
				got = got[len(http2.ClientPreface):]
				c.Close()
				require.Error(t, <-dialErr)
			}
			require.Equal(t, hex.EncodeToString(want), hex.EncodeToString(got))
		})
	}
}

// TestSingleFlightDial starts many dials to one key while the first TCP
// connect is held up: only one connection set-up runs at a time, and with
// MaxConnsPerKey 1 the whole burst shares exactly one connection.
func TestSingleFlightDial(t *testing.T) {
	tests := []struct {
		maxConns  int
		wantDials int // exact when > 0
	}{
		{maxConns: 1, wantDials: 1},
		{maxConns: 4},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint("MaxConnsPerKey=", tc.maxConns), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ca := identitytest.NewCA(t, "cluster.local")
				srv := &hbone.Server{Source: ca.Source(t, hbonetest.ServerPath), Handler: hbone.HandlerFunc(hbonetest.Echo), KeepaliveInterval: -1}
				defer srv.Close()
				gate := make(chan struct{})
				var mu sync.Mutex
				dials, inFlight, maxInFlight := 0, 0, 0
				d := &hbone.Dialer{
					Source:            ca.Source(t, hbonetest.ClientPath),
					Expected:          []spiffeid.ID{ca.ID(hbonetest.ServerPath)},
					MaxConnsPerKey:    tc.maxConns,
					KeepaliveInterval: -1,
					DialTCP: func(ctx context.Context, network, addr string) (net.Conn, error) {
						mu.Lock()
						dials++
						first := dials == 1
						inFlight++
						maxInFlight = max(maxInFlight, inFlight)
						mu.Unlock()
						if first {
							<-gate
						}
						mu.Lock()
						inFlight--
						mu.Unlock()
						cEnd, sEnd := net.Pipe()
						go srv.ServeConn(sEnd)
						return cEnd, nil
					},
				}
				defer d.Close()
				const n = 50
				route := hbone.Route{Address: "10.0.0.1:15008", Authority: "10.0.0.1:80"}
				conns := make([]*hbone.Conn, n)
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() {
						c, err := d.Dial(t.Context(), route)
						if assert.NoError(t, err) {
							conns[i] = c
						}
					})
				}
				synctest.Wait() // every dial is blocked: one in DialTCP, the rest behind it
				mu.Lock()
				require.Equal(t, 1, dials, "TCP dials while the first is in progress")
				mu.Unlock()
				close(gate)
				wg.Wait()
				mu.Lock()
				require.Equal(t, 1, maxInFlight, "connection set-ups at once")
				if tc.wantDials > 0 {
					require.Equal(t, tc.wantDials, dials)
				} else {
					require.LessOrEqual(t, dials, tc.maxConns)
				}
				mu.Unlock()
				st := d.Stats()
				require.Equal(t, n, st.Streams)
				for _, c := range conns {
					if c != nil {
						c.Close()
					}
				}
			})
		})
	}
}

// TestPoolRemovedWithLastConn churns through many pool keys: once their
// connections are gone (idle eviction, or a dial that failed) the keys are
// forgotten, and a key that comes back gets a fresh pool.
func TestPoolRemovedWithLastConn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := identitytest.NewCA(t, "cluster.local")
		srv := &hbone.Server{Source: ca.Source(t, hbonetest.ServerPath), Handler: hbone.HandlerFunc(hbonetest.Echo), KeepaliveInterval: -1}
		defer srv.Close()
		d := &hbone.Dialer{
			Source:            ca.Source(t, hbonetest.ClientPath),
			KeepaliveInterval: -1,
			DialTCP: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if addr == "10.0.0.9:15008" {
					return nil, errors.New("no route to host")
				}
				cEnd, sEnd := net.Pipe()
				go srv.ServeConn(sEnd)
				return cEnd, nil
			},
		}
		defer d.Close()
		// Every route has its own expected-identity set, hence its own key.
		route := func(i int) hbone.Route {
			return hbone.Route{Address: "10.0.0.1:15008", Authority: "10.0.0.1:80",
				Expected: []spiffeid.ID{ca.ID(hbonetest.ServerPath), ca.ID(fmt.Sprintf("ns/churn/sa/k%d", i))}}
		}
		const keys = 20
		for i := range keys {
			c, err := d.Dial(t.Context(), route(i))
			require.NoError(t, err)
			require.NoError(t, c.Close())
		}
		require.Equal(t, keys, hbone.PoolsForTest(d))
		time.Sleep(hbone.DefaultIdleTimeout + time.Second)
		synctest.Wait()
		require.Equal(t, hbone.Stats{}, d.Stats())
		require.Zero(t, hbone.PoolsForTest(d), "pools of keys whose connections were evicted")

		// A key that returns works with a new pool.
		c, err := d.Dial(t.Context(), route(0))
		require.NoError(t, err)
		require.Equal(t, 1, hbone.PoolsForTest(d))
		_, err = c.Write([]byte("x"))
		require.NoError(t, err)
		_, err = io.ReadFull(c, make([]byte, 1))
		require.NoError(t, err)
		c.Close()

		// A dial that fails leaves no pool behind.
		for i := range keys {
			r := route(i)
			r.Address = "10.0.0.9:15008"
			_, err := d.Dial(t.Context(), r)
			require.ErrorContains(t, err, "no route to host")
		}
		require.Equal(t, 1, hbone.PoolsForTest(d))
	})
}

// TestPoolChurnRace dials, uses and closes tunnels from many goroutines
// while connections are evicted almost at once, so pools are removed and
// recreated under the dials. Every tunnel must work, and Close must leave
// no connection behind (leakcheck).
func TestPoolChurnRace(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	p.Dialer.IdleTimeout = time.Microsecond
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 {
				c, err := p.Dialer.Dial(ctxT(t), hbone.Route{Address: p.Addr, Authority: "10.0.0.1:80",
					Expected: []spiffeid.ID{p.ServerID, p.CA.ID(fmt.Sprintf("ns/churn/sa/k%d", (g+i)%3))}})
				if !assert.NoError(t, err) {
					return
				}
				_, err = c.Write([]byte{byte(i)})
				assert.NoError(t, err)
				b := make([]byte, 1)
				_, err = io.ReadFull(c, b)
				assert.NoError(t, err)
				assert.Equal(t, byte(i), b[0])
				c.Close()
			}
		})
	}
	wg.Wait()
	require.NoError(t, p.Dialer.Close())
	require.Equal(t, hbone.Stats{}, p.Dialer.Stats())
	require.Zero(t, hbone.PoolsForTest(p.Dialer))
}
