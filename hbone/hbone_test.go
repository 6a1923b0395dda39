package hbone_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/hbone/hbonetest"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestEchoBothDirections(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	for _, size := range []int{0, 1, 1000, 64 << 10, 5 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:8080")
			require.NoError(t, err)
			defer c.Close()
			want := randBytes(size)
			errc := make(chan error, 1)
			go func() {
				_, err := c.Write(want)
				if err == nil {
					err = c.(*hbone.Conn).CloseWrite()
				}
				errc <- err
			}()
			got, err := io.ReadAll(c)
			require.NoError(t, err)
			require.NoError(t, <-errc)
			require.True(t, bytes.Equal(want, got), "echoed %d bytes, want %d", len(got), len(want))
		})
	}
}

func TestRequestFields(t *testing.T) {
	leakcheck.Check(t)
	type seen struct {
		authority string
		header    http.Header
		peer      spiffeid.ID
	}
	got := make(chan seen, 1)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		got <- seen{r.Authority, r.Header, r.Peer}
		c, err := r.Accept(http.Header{"Baggage": {"k8s.namespace.name=server"}})
		if err == nil {
			c.Close()
		}
	}))
	tp := hbone.NewTraceparent()
	c, err := p.Dialer.Dial(ctxT(t), hbone.Route{
		Address:   p.Addr,
		Authority: "[fd00::1]:9090",
		Header: http.Header{
			"Baggage":     {hbone.Baggage{Namespace: "default", WorkloadKind: "deployment", WorkloadName: "client"}.String()},
			"Traceparent": {tp.String()},
			"X-Unknown":   {"ignored"},
		},
	})
	require.NoError(t, err)
	defer c.Close()
	s := <-got
	assert.Equal(t, "[fd00::1]:9090", s.authority)
	assert.Equal(t, p.ClientID, s.peer)
	b, err := hbone.ParseBaggage(s.header.Get("baggage"))
	require.NoError(t, err)
	assert.Equal(t, "client", b.WorkloadName)
	gotTP, err := hbone.ParseTraceparent(s.header.Get("traceparent"))
	require.NoError(t, err)
	assert.Equal(t, tp, gotTP)
	assert.Equal(t, "ignored", s.header.Get("x-unknown"))
	assert.Equal(t, "k8s.namespace.name=server", c.ResponseHeader().Get("baggage"))
}

// TestHalfClose checks that each direction ends independently: after one
// side's CloseWrite the other still delivers data in the open direction.
func TestHalfClose(t *testing.T) {
	leakcheck.Check(t)
	tests := []struct {
		name        string
		clientFirst bool
	}{
		{"client closes write first", true},
		{"server closes write first", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srvErr := make(chan error, 1)
			p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
				srvErr <- func() error {
					c, err := r.Accept(nil)
					if err != nil {
						return err
					}
					defer c.Close()
					if tc.clientFirst {
						// Read until the client's EOF, then answer.
						b, err := io.ReadAll(c)
						if err != nil {
							return err
						}
						if _, err := c.Write(append([]byte("got:"), b...)); err != nil {
							return err
						}
						return c.CloseWrite()
					}
					// Say something and end our direction, then read.
					if _, err := c.Write([]byte("bye")); err != nil {
						return err
					}
					if err := c.CloseWrite(); err != nil {
						return err
					}
					b, err := io.ReadAll(c)
					if err != nil {
						return err
					}
					if string(b) != "late data" {
						return fmt.Errorf("server read %q", b)
					}
					return nil
				}()
			}))
			conn, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
			require.NoError(t, err)
			c := conn.(*hbone.Conn)
			defer c.Close()
			if tc.clientFirst {
				_, err = c.Write([]byte("hello"))
				require.NoError(t, err)
				require.NoError(t, c.CloseWrite())
				_, err = c.Write([]byte("x"))
				require.ErrorIs(t, err, hbone.ErrWriteClosed)
				b, err := io.ReadAll(c)
				require.NoError(t, err)
				require.Equal(t, "got:hello", string(b))
			} else {
				b, err := io.ReadAll(c)
				require.NoError(t, err)
				require.Equal(t, "bye", string(b))
				_, err = c.Write([]byte("late data"))
				require.NoError(t, err)
				require.NoError(t, c.CloseWrite())
			}
			require.NoError(t, <-srvErr)
		})
	}
}

// TestServerFirst relays to an upstream that speaks first: the client
// reads its greeting without sending anything.
func TestServerFirst(t *testing.T) {
	leakcheck.Check(t)
	up, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer up.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		c, err := up.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte("220 ready\r\n"))
		io.Copy(io.Discard, c)
	})
	p := hbonetest.NewPair(t, &hbone.Forwarder{})
	c, err := p.Dialer.DialContext(ctxT(t), "tcp", up.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(c, buf, len("220 ready\r\n"))
	require.NoError(t, err)
	require.Equal(t, "220 ready\r\n", string(buf[:n]))
	require.NoError(t, c.(*hbone.Conn).CloseWrite())
	_, err = c.Read(buf)
	require.ErrorIs(t, err, io.EOF)
}

func TestForwarderUpstreamDown(t *testing.T) {
	leakcheck.Check(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := l.Addr().String()
	l.Close()
	p := hbonetest.NewPair(t, &hbone.Forwarder{})
	_, err = p.Dialer.DialContext(ctxT(t), "tcp", dead)
	var ce *hbone.ConnectError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, http.StatusServiceUnavailable, ce.StatusCode)
}

func TestRejectStatuses(t *testing.T) {
	leakcheck.Check(t)
	tests := []struct {
		name      string
		authority string
		want      int
	}{
		{"unauthorized", "10.0.0.1:401", http.StatusUnauthorized},
		{"unavailable", "10.0.0.1:503", http.StatusServiceUnavailable},
		{"bad request from handler", "10.0.0.1:400", http.StatusBadRequest},
		{"handler returned without answer", "10.0.0.1:1", http.StatusServiceUnavailable},
	}
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		_, port, _ := hbone.SplitAuthority(r.Authority)
		if port >= 400 {
			r.Reject(int(port))
		}
	}))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Dialer.DialContext(ctxT(t), "tcp", tc.authority)
			var ce *hbone.ConnectError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.want, ce.StatusCode)
			require.Equal(t, tc.authority, ce.Authority)
		})
	}
	// Rejected streams are gone from the connection.
	require.Eventually(t, func() bool { return p.Dialer.Stats().Streams == 0 }, 5*time.Second, 10*time.Millisecond)
}

func TestDialerValidation(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	tests := []struct {
		name string
		d    *hbone.Dialer
		addr string
		net  string
		want string
	}{
		{"no source", &hbone.Dialer{Expected: p.Dialer.Expected}, "10.0.0.1:80", "tcp", "Source"},
		{"no expected", &hbone.Dialer{Source: p.Dialer.Source}, "10.0.0.1:80", "tcp", "Expected"},
		{"bad network", p.Dialer, "10.0.0.1:80", "udp", "network"},
		{"bad authority", p.Dialer, "10.0.0.1", "tcp", "port"},
		{"ipv6 without brackets", p.Dialer, "fd00::1:80", "tcp", "authority"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.d.DialContext(ctxT(t), tc.net, tc.addr)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestWrongExpectedIdentity(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	d := &hbone.Dialer{
		Source:   p.Dialer.Source,
		Expected: []spiffeid.ID{p.CA.ID("ns/default/sa/somebody-else")},
	}
	defer d.Close()
	_, err := d.Dial(ctxT(t), hbone.Route{Address: p.Addr, Authority: "10.0.0.1:80"})
	require.Error(t, err)
	require.ErrorContains(t, err, "TLS handshake")

	// A client of another trust domain is refused by the server.
	other := hbonetestCA(t, "other.domain")
	d2 := &hbone.Dialer{Source: other.Source(t, "ns/default/sa/client"), Expected: p.Dialer.Expected}
	defer d2.Close()
	_, err = d2.Dial(ctxT(t), hbone.Route{Address: p.Addr, Authority: "10.0.0.1:80"})
	require.Error(t, err)
}

func TestPlaintextAndNoALPNRejected(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	t.Run("plaintext h2", func(t *testing.T) {
		c, err := net.Dial("tcp", p.Addr)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
		b, _ := io.ReadAll(c)
		// The server answers a TLS alert at most, never HTTP/2 SETTINGS.
		require.False(t, len(b) >= 9 && b[3] == 0x4, "server spoke HTTP/2 in plaintext: %x", b)
	})
	t.Run("TLS without h2", func(t *testing.T) {
		cfg := identity.ClientTLSConfig(p.Dialer.Source, p.ServerID)
		cfg.NextProtos = []string{"http/1.1"}
		cfg.VerifyConnection = nil
		c, err := tls.Dial("tcp", p.Addr, cfg)
		if err == nil {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = c.Read(make([]byte, 1))
		}
		require.Error(t, err)
	})
}

func TestDialContextCancelled(t *testing.T) {
	leakcheck.Check(t)
	acceptErr := make(chan error, 1)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		<-r.Context().Done() // the client gives up while we "connect upstream"
		_, err := r.Accept(nil)
		acceptErr <- err
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := p.Dialer.DialContext(ctx, "tcp", "10.0.0.1:80")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, <-acceptErr, "stream ended before the answer")
}

// TestManyConcurrentStreams opens 1,000 tunnels at once: every one works,
// and no connection carries more than the 100-stream cap, as counted both
// by the Dialer and by the server per client connection.
func TestManyConcurrentStreams(t *testing.T) {
	leakcheck.Check(t)
	var mu sync.Mutex
	perConn := map[string]int{} // accepted streams by client address
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		mu.Lock()
		perConn[r.RemoteAddr.String()]++
		mu.Unlock()
		hbonetest.Echo(r)
	}))
	const n = 1000
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	st := p.Dialer.Stats()
	require.Equal(t, n, st.Streams)
	require.LessOrEqual(t, st.MaxConnStreams, hbone.DefaultMaxStreamsPerConn, "streams on one connection")
	require.GreaterOrEqual(t, st.Conns, n/hbone.DefaultMaxStreamsPerConn)
	mu.Lock()
	total := 0
	for addr, k := range perConn {
		require.LessOrEqual(t, k, hbone.DefaultMaxStreamsPerConn, "streams the server saw on %s", addr)
		total += k
	}
	require.Equal(t, n, total)
	require.Equal(t, st.Conns, len(perConn))
	mu.Unlock()
	for i, c := range conns {
		wg.Go(func() {
			msg := []byte(fmt.Sprintf("stream %d", i))
			if _, err := c.Write(msg); err != nil {
				t.Error(err)
				return
			}
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, msg) {
				t.Errorf("stream %d: %q %v", i, buf, err)
			}
			c.Close()
		})
	}
	wg.Wait()
	require.Eventually(t, func() bool { return p.Dialer.Stats().Streams == 0 }, 10*time.Second, 10*time.Millisecond)
}

func TestPoolReuseAndKeys(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	p.Dialer.MaxConnsPerKey = 1
	for range 5 {
		c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
		require.NoError(t, err)
		c.Close()
	}
	require.Equal(t, 1, p.Dialer.Stats().Conns, "sequential tunnels share one connection")
	// Another source identity never shares the connection.
	c, err := p.Dialer.Dial(ctxT(t), hbone.Route{Address: p.Addr, Authority: "10.0.0.1:80", Source: p.CA.Source(t, "ns/other/sa/x")})
	require.NoError(t, err)
	defer c.Close()
	require.Equal(t, 2, p.Dialer.Stats().Conns)
}

func TestSpreadOverConnections(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	p.Dialer.MaxConnsPerKey = 4
	var conns []net.Conn
	for range 8 {
		c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
		require.NoError(t, err)
		conns = append(conns, c)
	}
	require.Equal(t, 4, p.Dialer.Stats().Conns)
	for _, c := range conns {
		c.Close()
	}
}

// TestGoAwayDrain: during Shutdown, live tunnels keep working; the
// draining server refuses new streams on its existing connections, and
// the Dialer opens new tunnels on a new connection instead.
func TestGoAwayDrain(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))

	// Where the Dialer goes once p's server drains: another server with
	// the same identity. Every TCP dial after the first is sent there.
	var nextServed atomic.Int32
	next := &hbone.Server{Source: p.CA.Source(t, hbonetest.ServerPath), Handler: hbone.HandlerFunc(func(r *hbone.Request) {
		nextServed.Add(1)
		hbonetest.Echo(r)
	})}
	nextLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	nextDone := make(chan error, 1)
	go func() { nextDone <- next.Serve(nextLn) }()
	defer func() {
		next.Close()
		require.ErrorIs(t, <-nextDone, hbone.ErrServerClosed)
	}()
	var dials atomic.Int32
	p.Dialer.MaxConnsPerKey = 1 // a second connection only because of GOAWAY
	p.Dialer.DialTCP = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dials.Add(1) > 1 {
			addr = nextLn.Addr().String()
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}

	c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
	require.NoError(t, err)
	rp := rawClient(t, p)
	rp.writeHeaders(1, false, ":method", "CONNECT", ":authority", "10.0.0.1:80")
	status, _ := rp.status(1)
	require.Equal(t, http.StatusOK, status)

	shutdown := make(chan error, 1)
	go func() { shutdown <- p.Server.Shutdown(ctxT(t)) }()

	// The raw client sees GOAWAY(NO_ERROR) naming stream 1 as processed;
	// a new stream on the same connection is refused, stream 1 still
	// echoes.
	for {
		f, err := rp.fr.ReadFrame()
		require.NoError(t, err)
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			require.Equal(t, http2.ErrCodeNo, ga.ErrCode)
			require.Equal(t, uint32(1), ga.LastStreamID)
			break
		}
	}
	rp.writeHeaders(3, false, ":method", "CONNECT", ":authority", "10.0.0.1:80")
	rp.write(func(fr *http2.Framer) error { return fr.WriteData(1, true, []byte("raw")) })
	var refused, echoed bool
	for !refused || !echoed {
		f, err := rp.fr.ReadFrame()
		require.NoError(t, err)
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			require.Equal(t, uint32(3), f.StreamID, "only the new stream is reset")
			require.Equal(t, http2.ErrCodeRefusedStream, f.ErrCode)
			refused = true
		case *http2.MetaHeadersFrame:
			t.Fatalf("draining server answered stream %d", f.StreamID)
		case *http2.DataFrame:
			if len(f.Data()) > 0 {
				require.Equal(t, "raw", string(f.Data()))
			}
			echoed = echoed || f.StreamEnded()
		}
	}

	// The Dialer's connection drains too: its live tunnel keeps working,
	// and a new tunnel goes over a new connection to the other server.
	require.Eventually(t, func() bool { return p.Dialer.Stats().Draining == 1 }, 10*time.Second, 5*time.Millisecond)
	_, err = c.Write([]byte("still here"))
	require.NoError(t, err)
	buf := make([]byte, 10)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, "still here", string(buf))
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned %v with a live stream", err)
	default:
	}
	c2, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
	require.NoError(t, err)
	require.Equal(t, int32(2), dials.Load(), "the new tunnel needed a new connection")
	require.Equal(t, int32(1), nextServed.Load())
	require.Equal(t, hbone.Stats{Conns: 2, Streams: 2, Draining: 1, MaxConnStreams: 1}, p.Dialer.Stats())
	c2.Close()

	require.NoError(t, c.(*hbone.Conn).CloseWrite())
	_, err = io.ReadAll(c)
	require.NoError(t, err)
	c.Close()
	require.NoError(t, <-shutdown)
}

// TestShutdownDeadline: when Shutdown's context ends with streams still
// open, the server closes their connections and the client's tunnels fail
// with ErrConnClosed, never a clean EOF.
func TestShutdownDeadline(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, p.Server.Shutdown(ctx), context.DeadlineExceeded)
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, hbone.ErrConnClosed)
	require.NotErrorIs(t, err, io.EOF, "a tunnel cut off by the server must not read as a clean end")
	_, err = c.Write([]byte("x"))
	require.ErrorIs(t, err, hbone.ErrConnClosed)
}

func TestDialerClosed(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
	require.NoError(t, err)
	require.NoError(t, p.Dialer.Close())
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, hbone.ErrConnClosed)
	_, err = p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
	require.ErrorIs(t, err, hbone.ErrDialerClosed)
}

func TestDeadlines(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, os_ErrDeadlineExceeded())
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout())
	// Clearing the deadline makes the stream usable again.
	require.NoError(t, c.SetReadDeadline(time.Time{}))
	_, err = c.Write([]byte("x"))
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = io.ReadFull(c, b)
	require.NoError(t, err)
}

// TestPendingReadUnblocks checks that Close, a read deadline and a write
// deadline each end a Read (or a Write waiting for credit) that is blocked
// on a quiet stream, whichever goroutine is reading the connection at the
// time.
func TestPendingReadUnblocks(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(io.Discard, c) // never writes back, never stops reading
	}))
	for i := range 20 {
		c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
		require.NoError(t, err)
		// A second, busy stream on the same connection keeps frames flowing.
		other, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
		require.NoError(t, err)
		go other.Write(make([]byte, 64<<10))

		errc := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 1))
			errc <- err
		}()
		if i%2 == 0 {
			time.Sleep(time.Millisecond) // let Read block; not a timing assertion
			c.Close()
			require.ErrorIs(t, <-errc, net.ErrClosed)
		} else {
			c.SetReadDeadline(time.Now().Add(2 * time.Millisecond))
			require.ErrorIs(t, <-errc, os_ErrDeadlineExceeded())
			// The stream still works after the deadline is cleared.
			c.SetReadDeadline(time.Time{})
			_, err := c.Write([]byte("x"))
			require.NoError(t, err)
			c.Close()
		}
		other.Close()
	}
}

// TestWriteDeadlineOnFlowControl blocks a writer on a peer that never
// reads (so the stream window runs out) and checks its write deadline.
func TestWriteDeadlineOnFlowControl(t *testing.T) {
	leakcheck.Check(t)
	release := make(chan struct{})
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		defer c.Close()
		<-release
	}))
	defer close(release)
	c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
	require.NoError(t, err)
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := c.Write(make([]byte, 8<<20))
	require.ErrorIs(t, err, os_ErrDeadlineExceeded())
	require.Equal(t, 4<<20, n, "exactly the 4 MiB stream window was sent")
}

// TestWriteSucceedsWhenPeerClosesRightAfter: a Write whose bytes were all
// sent succeeds even if the peer resets the stream right after reading
// them (a regression: the final credit check used to report the reset).
func TestWriteSucceedsWhenPeerClosesRightAfter(t *testing.T) {
	leakcheck.Check(t)
	const size = 256 << 10
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		io.ReadFull(c, make([]byte, size))
		c.Close() // RST_STREAM(CANCEL): the client never ended its side
	}))
	for range 50 {
		c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
		require.NoError(t, err)
		n, err := c.Write(make([]byte, size))
		require.NoError(t, err)
		require.Equal(t, size, n)
		_, err = c.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF, "CANCEL reads as EOF")
		c.Close()
	}
}

func TestWriteTo(t *testing.T) {
	leakcheck.Check(t)
	got := make(chan []byte, 1)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		defer c.Close()
		var buf bytes.Buffer
		if _, err := c.WriteTo(&buf); err != nil {
			got <- nil
			return
		}
		got <- buf.Bytes()
	}))
	c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
	require.NoError(t, err)
	defer c.Close()
	want := randBytes(3<<20 + 5)
	_, err = c.Write(want)
	require.NoError(t, err)
	require.NoError(t, c.(*hbone.Conn).CloseWrite())
	require.True(t, bytes.Equal(want, <-got))
}

// TestBidirectionalBulkSharedConn pushes data both ways on several
// streams of one connection at once, so stream and connection windows and
// socket buffers all fill up while goroutines hand frame reading around.
func TestBidirectionalBulkSharedConn(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	p.Dialer.MaxConnsPerKey = 1
	const streams, size = 4, 12 << 20
	var wg sync.WaitGroup
	for range streams {
		wg.Go(func() {
			c, err := p.Dialer.DialContext(ctxT(t), "tcp", "10.0.0.1:80")
			if !assert.NoError(t, err) {
				return
			}
			defer c.Close()
			want := randBytes(size)
			errc := make(chan error, 1)
			go func() {
				_, err := c.Write(want)
				if err == nil {
					err = c.(*hbone.Conn).CloseWrite()
				}
				errc <- err
			}()
			var got bytes.Buffer
			_, err = c.(*hbone.Conn).WriteTo(&got)
			assert.NoError(t, err)
			assert.NoError(t, <-errc)
			assert.True(t, bytes.Equal(want, got.Bytes()), "got %d bytes", got.Len())
		})
	}
	wg.Wait()
	require.Equal(t, 1, p.Dialer.Stats().Conns)
}
