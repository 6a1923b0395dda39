package hbone_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/hbone/hbonetest"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
)

// rawClient dials p's server over real TLS with the client identity and
// returns a raw HTTP/2 peer after the preface and SETTINGS.
func rawClient(t *testing.T, p *hbonetest.Pair, settings ...http2.Setting) *rawPeer {
	t.Helper()
	cfg := identity.ClientTLSConfig(p.Dialer.Source, p.ServerID)
	c, err := tls.Dial("tcp", p.Addr, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(15 * time.Second)) // a missing frame fails the test, not hangs it
	rp := newRawPeer(t, c)
	rp.wmu.Lock()
	c.Write([]byte(http2.ClientPreface))
	rp.fr.WriteSettings(settings...)
	rp.wmu.Unlock()
	return rp
}

func TestServerRequestValidation(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	tests := []struct {
		name string
		kv   []string
		want int
	}{
		{"GET", []string{":method", "GET", ":scheme", "https", ":path", "/", ":authority", "10.0.0.1:80"}, http.StatusBadRequest},
		{"POST", []string{":method", "POST", ":scheme", "https", ":path", "/", ":authority", "10.0.0.1:80"}, http.StatusBadRequest},
		{"CONNECT with path", []string{":method", "CONNECT", ":authority", "10.0.0.1:80", ":path", "/x", ":scheme", "https"}, http.StatusBadRequest},
		{"extended CONNECT", []string{":method", "CONNECT", ":authority", "10.0.0.1:80", ":protocol", "websocket", ":path", "/", ":scheme", "https"}, http.StatusBadRequest},
		{"authority without port", []string{":method", "CONNECT", ":authority", "10.0.0.1"}, http.StatusBadRequest},
		{"authority with bad port", []string{":method", "CONNECT", ":authority", "10.0.0.1:99999"}, http.StatusBadRequest},
		{"authority with bad host", []string{":method", "CONNECT", ":authority", "bad host:80"}, http.StatusBadRequest},
		{"IPv4", []string{":method", "CONNECT", ":authority", "10.0.0.1:80"}, http.StatusOK},
		{"IPv6", []string{":method", "CONNECT", ":authority", "[fd00::1]:80"}, http.StatusOK},
		{"FQDN", []string{":method", "CONNECT", ":authority", "echo.default.svc.cluster.local:80"}, http.StatusOK},
		{"Go client headers", []string{":method", "CONNECT", ":authority", "10.0.0.1:80", "accept-encoding", "gzip", "user-agent", "Go-http-client/2.0"}, http.StatusOK},
	}
	rp := rawClient(t, p)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := uint32(2*i + 1)
			rp.writeHeaders(id, false, tc.kv...)
			status, end := rp.status(id)
			require.Equal(t, tc.want, status)
			require.Equal(t, tc.want != http.StatusOK, end, "errors carry END_STREAM")
		})
	}
}

func TestServerMaxConcurrentStreams(t *testing.T) {
	leakcheck.Check(t)
	release := make(chan struct{})
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer close(release)
	rp := rawClient(t, p)
	const n = 201
	for i := range n {
		rp.writeHeaders(uint32(2*i+1), false, ":method", "CONNECT", ":authority", "10.0.0.1:80")
	}
	var maxStreams uint32
	for {
		f, err := rp.fr.ReadFrame()
		require.NoError(t, err)
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			maxStreams, _ = sf.Value(http2.SettingMaxConcurrentStreams)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			require.Equal(t, uint32(2*(n-1)+1), rst.StreamID)
			require.Equal(t, http2.ErrCodeRefusedStream, rst.ErrCode)
			break
		}
	}
	require.Equal(t, uint32(200), maxStreams)
}

// TestServerHonoursPeerSettings checks that DATA respects the peer's
// MAX_FRAME_SIZE (16 KiB, as x/net clients advertise) and its windows.
func TestServerHonoursPeerSettings(t *testing.T) {
	leakcheck.Check(t)
	const total = 100 << 10
	const window = 1000
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(make([]byte, total))
		c.CloseWrite()
		c.Read(make([]byte, 1))
	}))
	rp := rawClient(t, p, http2.Setting{ID: http2.SettingInitialWindowSize, Val: window})
	rp.writeHeaders(1, false, ":method", "CONNECT", ":authority", "10.0.0.1:80")
	got, pinged := 0, false
	for {
		f, err := rp.fr.ReadFrame()
		require.NoError(t, err)
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				v, _ := f.Value(http2.SettingMaxFrameSize)
				require.Equal(t, uint32(1<<20), v)
				rp.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.DataFrame:
			require.LessOrEqual(t, len(f.Data()), 16384)
			got += len(f.Data())
			if !pinged {
				require.LessOrEqual(t, got, window, "server overran the stream window")
				if got == window {
					// Everything the window allows has arrived; a PING
					// round trip proves nothing more is on its way.
					pinged = true
					rp.write(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{1}) })
				}
			}
			if f.StreamEnded() {
				require.Equal(t, total, got)
				return
			}
		case *http2.PingFrame:
			if f.IsAck() {
				require.Equal(t, window, got)
				rp.write(func(fr *http2.Framer) error {
					fr.WriteWindowUpdate(0, 1<<20)
					return fr.WriteWindowUpdate(1, 1<<20)
				})
			} else {
				rp.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		}
	}
}

func TestServerConfigErrors(t *testing.T) {
	leakcheck.Check(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	err = (&hbone.Server{Handler: hbone.HandlerFunc(hbonetest.Echo)}).Serve(ln)
	require.ErrorContains(t, err, "Source")
	err = (&hbone.Server{}).Serve(ln)
	require.ErrorContains(t, err, "Handler")
	require.False(t, errors.Is(err, hbone.ErrServerClosed))
}

func TestCheckDestination(t *testing.T) {
	leakcheck.Check(t)
	errs := make(chan error, 1)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		err := r.CheckDestination()
		errs <- err
		if err != nil {
			r.Reject(http.StatusBadRequest)
			return
		}
		hbonetest.Echo(r)
	}))
	for _, tc := range []struct {
		authority string
		ok        bool
	}{
		{"127.0.0.1:8080", true}, // the server listens on 127.0.0.1
		{"10.0.0.9:8080", false},
		{"echo.default.svc.cluster.local:80", true},
	} {
		c, err := p.Dialer.DialContext(ctxT(t), "tcp", tc.authority)
		cerr := <-errs
		if tc.ok {
			require.NoError(t, err, tc.authority)
			require.NoError(t, cerr)
			c.Close()
			continue
		}
		require.ErrorIs(t, cerr, hbone.ErrDestinationMismatch)
		var ce *hbone.ConnectError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, http.StatusBadRequest, ce.StatusCode)
	}
}

// TestShutdownDrainDeadline: Shutdown with a context that has no deadline
// closes connections whose streams are still open after DrainTimeout (5 s
// by default); a context deadline takes precedence.
func TestShutdownDrainDeadline(t *testing.T) {
	tests := []struct {
		name     string
		drain    time.Duration
		deadline time.Duration // of Shutdown's context; 0: none
		want     time.Duration
	}{
		{"default", 0, 0, 5 * time.Second},
		{"DrainTimeout", 2 * time.Second, 0, 2 * time.Second},
		{"context deadline earlier", 0, time.Second, time.Second},
		{"context deadline later", 0, 30 * time.Second, 30 * time.Second},
		{"negative DrainTimeout waits for the context", -1, 40 * time.Second, 40 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ca := identitytest.NewCA(t, "cluster.local")
				srv := &hbone.Server{Source: ca.Source(t, hbonetest.ServerPath), Handler: hbone.HandlerFunc(hbonetest.Echo),
					DrainTimeout: tc.drain}
				d := &hbone.Dialer{
					Source:   ca.Source(t, hbonetest.ClientPath),
					Expected: []spiffeid.ID{ca.ID(hbonetest.ServerPath)},
					DialTCP: func(ctx context.Context, network, addr string) (net.Conn, error) {
						cEnd, sEnd := net.Pipe()
						go srv.ServeConn(sEnd)
						return cEnd, nil
					},
				}
				defer d.Close()
				c, err := d.Dial(t.Context(), hbone.Route{Address: "10.0.0.1:15008", Authority: "10.0.0.1:80"})
				require.NoError(t, err)
				defer c.Close()
				ctx := context.Background()
				if tc.deadline > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tc.deadline)
					defer cancel()
				}
				start := time.Now()
				err = srv.Shutdown(ctx)
				require.ErrorIs(t, err, context.DeadlineExceeded)
				require.Equal(t, tc.want, time.Since(start))
				_, err = c.Read(make([]byte, 1))
				require.ErrorIs(t, err, hbone.ErrConnClosed)
			})
		})
	}
}
