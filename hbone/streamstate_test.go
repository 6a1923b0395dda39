package hbone_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/hbone/hbonetest"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
)

// nextFrame reads frames until one that is not SETTINGS, a SETTINGS ACK,
// PING or WINDOW_UPDATE (answering SETTINGS and PINGs) and returns it.
func (p *rawPeer) nextFrame() (http2.Frame, error) {
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				p.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				p.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		case *http2.WindowUpdateFrame:
		default:
			return f, nil
		}
	}
}

// expectGoAway reads until GOAWAY and checks its code, then expects the
// connection to end.
func (p *rawPeer) expectGoAway(t *testing.T, code http2.ErrCode) {
	t.Helper()
	for {
		f, err := p.nextFrame()
		require.NoError(t, err, "connection ended without GOAWAY")
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			require.Equal(t, code, ga.ErrCode, "GOAWAY %q", ga.DebugData())
			break
		}
	}
	for {
		if _, err := p.fr.ReadFrame(); err != nil {
			return
		}
	}
}

// expectRST reads until RST_STREAM and checks its stream and code.
func (p *rawPeer) expectRST(t *testing.T, id uint32, code http2.ErrCode) {
	t.Helper()
	for {
		f, err := p.nextFrame()
		require.NoError(t, err)
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			require.Equal(t, id, f.StreamID)
			require.Equal(t, code, f.ErrCode)
			return
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v %q instead of RST_STREAM", f.ErrCode, f.DebugData())
		}
	}
}

// TestServerStreamStates sends frames on idle, closed and half-closed
// streams to our Server (RFC 9113 §5.1): DATA on a stream never opened is
// a connection error (GOAWAY PROTOCOL_ERROR); DATA on a closed stream, or
// after the peer's END_STREAM, is a stream error (RST_STREAM
// STREAM_CLOSED) and the connection goes on.
func TestServerStreamStates(t *testing.T) {
	leakcheck.Check(t)
	halfClosed := make(chan error, 1)
	gotEOF := make(chan struct{}, 1)
	proceed := make(chan struct{})
	p := hbonetest.NewPair(t, hbone.HandlerFunc(func(r *hbone.Request) {
		if r.Authority != "10.0.0.1:7" {
			hbonetest.Echo(r)
			return
		}
		// Hold the stream half-closed (remote) after the client's EOF.
		c, err := r.Accept(nil)
		if err != nil {
			halfClosed <- err
			return
		}
		defer c.Close()
		io.Copy(io.Discard, c)
		gotEOF <- struct{}{}
		<-proceed
		_, err = c.Write([]byte("too late"))
		halfClosed <- err
	}))
	connect := func(rp *rawPeer, id uint32, authority string) {
		rp.writeHeaders(id, false, ":method", "CONNECT", ":authority", authority)
		status, _ := rp.status(id)
		require.Equal(t, http.StatusOK, status)
	}

	t.Run("DATA on idle stream", func(t *testing.T) {
		for _, id := range []uint32{5, 2} {
			rp := rawClient(t, p)
			if id == 5 {
				connect(rp, 1, "10.0.0.1:80") // 3 and 5 stay idle
			}
			rp.write(func(fr *http2.Framer) error { return fr.WriteData(id, false, []byte("x")) })
			rp.expectGoAway(t, http2.ErrCodeProtocol)
		}
	})
	t.Run("RST_STREAM and WINDOW_UPDATE on idle stream", func(t *testing.T) {
		rp := rawClient(t, p)
		rp.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(9, http2.ErrCodeCancel) })
		rp.expectGoAway(t, http2.ErrCodeProtocol)
		rp = rawClient(t, p)
		rp.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(9, 10) })
		rp.expectGoAway(t, http2.ErrCodeProtocol)
	})
	t.Run("DATA on closed stream", func(t *testing.T) {
		rp := rawClient(t, p)
		connect(rp, 1, "10.0.0.1:80")
		rp.write(func(fr *http2.Framer) error { return fr.WriteData(1, true, []byte("hi")) })
		// The echo ends its direction too: the stream is closed.
		for ended := false; !ended; {
			f, err := rp.nextFrame()
			require.NoError(t, err)
			if df, ok := f.(*http2.DataFrame); ok {
				ended = df.StreamEnded()
			}
		}
		rp.write(func(fr *http2.Framer) error { return fr.WriteData(1, false, []byte("late")) })
		rp.expectRST(t, 1, http2.ErrCodeStreamClosed)
		connect(rp, 3, "10.0.0.1:80") // the connection is still good
	})
	t.Run("DATA after END_STREAM", func(t *testing.T) {
		rp := rawClient(t, p)
		connect(rp, 1, "10.0.0.1:7")
		rp.write(func(fr *http2.Framer) error { return fr.WriteData(1, true, []byte("a")) })
		<-gotEOF
		rp.write(func(fr *http2.Framer) error { return fr.WriteData(1, false, []byte("b")) })
		rp.expectRST(t, 1, http2.ErrCodeStreamClosed)
		close(proceed)
		var se *hbone.StreamError
		require.ErrorAs(t, <-halfClosed, &se, "the server's side of the stream was reset")
		require.Equal(t, http2.ErrCodeStreamClosed, se.Code)
		connect(rp, 3, "10.0.0.1:80")
	})
}

// TestClientStreamStates: frames from the server on streams the client
// never opened end the connection with GOAWAY(PROTOCOL_ERROR), and the
// client's open tunnel fails with a *ProtocolError.
func TestClientStreamStates(t *testing.T) {
	leakcheck.Check(t)
	tests := []struct {
		name string
		send func(fr *http2.Framer) error
	}{
		{"DATA on stream 3, not opened yet", func(fr *http2.Framer) error { return fr.WriteData(3, false, []byte("x")) }},
		{"DATA on even stream 2", func(fr *http2.Framer) error { return fr.WriteData(2, false, []byte("x")) }},
		{"RST_STREAM on stream 5", func(fr *http2.Framer) error { return fr.WriteRSTStream(5, http2.ErrCodeCancel) }},
		{"WINDOW_UPDATE on stream 7", func(fr *http2.Framer) error { return fr.WriteWindowUpdate(7, 1) }},
	}
	ca := hbonetestCA(t, "cluster.local")
	serverCfg := identity.ServerTLSConfig(ca.Source(t, hbonetest.ServerPath))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer ln.Close()
			d := &hbone.Dialer{Source: ca.Source(t, hbonetest.ClientPath), Expected: []spiffeid.ID{ca.ID(hbonetest.ServerPath)}}
			defer d.Close()
			type result struct {
				c   *hbone.Conn
				err error
			}
			dialed := make(chan result, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				c, err := d.Dial(ctx, hbone.Route{Address: ln.Addr().String(), Authority: "10.0.0.1:80"})
				dialed <- result{c, err}
			}()
			nc, err := ln.Accept()
			require.NoError(t, err)
			sc := tls.Server(nc, serverCfg)
			defer sc.Close()
			sc.SetDeadline(time.Now().Add(15 * time.Second))
			rp := newRawPeer(t, sc)
			require.NoError(t, rp.serverHandshake())
			for {
				f, err := rp.nextFrame()
				require.NoError(t, err)
				if _, ok := f.(*http2.MetaHeadersFrame); ok {
					break
				}
			}
			rp.writeHeaders(1, false, ":status", "200")
			res := <-dialed
			require.NoError(t, res.err)
			defer res.c.Close()
			rp.write(tc.send)
			rp.expectGoAway(t, http2.ErrCodeProtocol)
			_, err = res.c.Read(make([]byte, 1))
			var pe *hbone.ProtocolError
			require.ErrorAs(t, err, &pe)
			require.ErrorIs(t, err, hbone.ErrConnClosed)
		})
	}
}
