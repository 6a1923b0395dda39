package hbone_test

import (
	"context"
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"crypto/tls"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/hbone/hbonetest"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
)

// TestClientKeepalive runs our Dialer against a hand-written server over
// net.Pipe inside a synctest bubble and checks PING timing: the first
// PING 10 s after connecting, the next 10 s after each answer, and the
// connection closed 20 s after an unanswered PING.
func TestClientKeepalive(t *testing.T) {
	for _, answer := range []bool{true, false} {
		name := map[bool]string{true: "answered", false: "unanswered"}[answer]
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ca := identitytest.NewCA(t, "cluster.local")
				serverSrc := ca.Source(t, hbonetest.ServerPath)
				cEnd, sEnd := net.Pipe()
				d := &hbone.Dialer{
					Source:   ca.Source(t, hbonetest.ClientPath),
					Expected: []spiffeid.ID{ca.ID(hbonetest.ServerPath)},
					DialTCP: func(ctx context.Context, network, addr string) (net.Conn, error) {
						return cEnd, nil
					},
				}
				defer d.Close()
				start := time.Now()
				pings := make(chan time.Duration, 100)
				go func() {
					ts := tlsServer(sEnd, identity.ServerTLSConfig(serverSrc))
					if ts == nil {
						return
					}
					defer ts.Close()
					p := newRawPeer(t, ts)
					if p.serverHandshake() != nil {
						return
					}
					for {
						f, err := p.fr.ReadFrame()
						if err != nil {
							close(pings)
							return
						}
						switch f := f.(type) {
						case *http2.SettingsFrame:
							if !f.IsAck() {
								p.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
							}
						case *http2.MetaHeadersFrame:
							p.writeHeaders(f.StreamID, false, ":status", "200")
						case *http2.PingFrame:
							if f.IsAck() {
								continue
							}
							pings <- time.Since(start)
							if answer {
								p.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
							}
						}
					}
				}()
				c, err := d.Dial(t.Context(), hbone.Route{Address: "10.0.0.1:15008", Authority: "10.0.0.1:80"})
				require.NoError(t, err)
				defer c.Close()
				if answer {
					time.Sleep(65 * time.Second)
					synctest.Wait()
					var got []time.Duration
					for len(pings) > 0 {
						got = append(got, <-pings)
					}
					require.Equal(t, []time.Duration{10 * time.Second, 20 * time.Second, 30 * time.Second,
						40 * time.Second, 50 * time.Second, 60 * time.Second}, got)
					require.Equal(t, 1, d.Stats().Conns)
					return
				}
				_, err = c.Read(make([]byte, 1))
				require.ErrorIs(t, err, hbone.ErrKeepaliveTimeout)
				require.Equal(t, 30*time.Second, time.Since(start))
				require.Equal(t, 10*time.Second, <-pings)
			})
		})
	}
}

// TestServerKeepalive checks that our Server PINGs an idle client and,
// when the PING goes unanswered for 20 s, sends GOAWAY(NO_ERROR) and
// closes.
func TestServerKeepalive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := identitytest.NewCA(t, "cluster.local")
		srv := &hbone.Server{Source: ca.Source(t, hbonetest.ServerPath), Handler: hbone.HandlerFunc(hbonetest.Echo)}
		cEnd, sEnd := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- srv.ServeConn(sEnd) }()
		start := time.Now()
		tc := tls.Client(cEnd, identity.ClientTLSConfig(ca.Source(t, hbonetest.ClientPath), ca.ID(hbonetest.ServerPath)))
		require.NoError(t, tc.Handshake())
		p := newRawPeer(t, tc)
		p.clientHandshake()
		var ping, goaway time.Duration
		var code http2.ErrCode
		for {
			f, err := p.fr.ReadFrame()
			if err != nil {
				break
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					p.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
				}
			case *http2.PingFrame:
				ping = time.Since(start)
			case *http2.GoAwayFrame:
				goaway, code = time.Since(start), f.ErrCode
			}
		}
		require.Equal(t, 10*time.Second, ping)
		require.Equal(t, 30*time.Second, goaway)
		require.Equal(t, http2.ErrCodeNo, code)
		require.NoError(t, <-done)
		srv.Close()
		io.Copy(io.Discard, tc)
	})
}

// TestPoolIdleEviction checks that a pooled connection without streams is
// closed after the 5-minute idle timeout, and not before.
func TestPoolIdleEviction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := identitytest.NewCA(t, "cluster.local")
		srv := &hbone.Server{Source: ca.Source(t, hbonetest.ServerPath), Handler: hbone.HandlerFunc(hbonetest.Echo)}
		defer srv.Close()
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
		time.Sleep(10 * time.Minute) // busy streams are never evicted
		synctest.Wait()
		require.Equal(t, hbone.Stats{Conns: 1, Streams: 1, MaxConnStreams: 1}, d.Stats())
		require.NoError(t, c.Close())
		time.Sleep(5*time.Minute - time.Second)
		synctest.Wait()
		require.Equal(t, 1, d.Stats().Conns)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		require.Equal(t, hbone.Stats{}, d.Stats())
	})
}

// TestClientGoAway: after the peer's GOAWAY the pool opens new tunnels on
// a new connection, keeps the old tunnel working, and closes the old
// connection once its last stream ends.
func TestClientGoAway(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := identitytest.NewCA(t, "cluster.local")
		serverSrc := ca.Source(t, hbonetest.ServerPath)
		srv := &hbone.Server{Source: serverSrc, Handler: hbone.HandlerFunc(hbonetest.Echo)}
		defer srv.Close()
		dials := 0
		rawDone := make(chan struct{})
		d := &hbone.Dialer{
			Source:         ca.Source(t, hbonetest.ClientPath),
			Expected:       []spiffeid.ID{ca.ID(hbonetest.ServerPath)},
			MaxConnsPerKey: 1, // a second connection only because of GOAWAY
			DialTCP: func(ctx context.Context, network, addr string) (net.Conn, error) {
				cEnd, sEnd := net.Pipe()
				dials++
				if dials > 1 {
					go srv.ServeConn(sEnd)
					return cEnd, nil
				}
				// The first connection: a raw peer that accepts stream 1,
				// then sends GOAWAY and keeps echoing on stream 1.
				go func() {
					defer close(rawDone)
					ts := tlsServer(sEnd, identity.ServerTLSConfig(serverSrc))
					if ts == nil {
						return
					}
					defer ts.Close()
					p := newRawPeer(t, ts)
					if p.serverHandshake() != nil {
						return
					}
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
							p.writeHeaders(f.StreamID, false, ":status", "200")
							p.write(func(fr *http2.Framer) error { return fr.WriteGoAway(f.StreamID, http2.ErrCodeNo, nil) })
						case *http2.DataFrame:
							data := append([]byte(nil), f.Data()...)
							p.write(func(fr *http2.Framer) error { return fr.WriteData(f.StreamID, f.StreamEnded(), data) })
						}
					}
				}()
				return cEnd, nil
			},
		}
		defer d.Close()
		route := hbone.Route{Address: "10.0.0.1:15008", Authority: "10.0.0.1:80"}
		c1, err := d.Dial(t.Context(), route)
		require.NoError(t, err)
		// Let the background reader take the connection back (it does
		// after a millisecond idle) and read the GOAWAY.
		time.Sleep(10 * time.Millisecond)
		synctest.Wait()
		require.Equal(t, hbone.Stats{Conns: 1, Streams: 1, Draining: 1, MaxConnStreams: 1}, d.Stats())
		c2, err := d.Dial(t.Context(), route)
		require.NoError(t, err)
		require.Equal(t, 2, dials, "the second tunnel needed a new connection")
		require.Equal(t, hbone.Stats{Conns: 2, Streams: 2, Draining: 1, MaxConnStreams: 1}, d.Stats())
		for _, c := range []*hbone.Conn{c1, c2} {
			_, err := c.Write([]byte("x"))
			require.NoError(t, err)
			b := make([]byte, 1)
			_, err = io.ReadFull(c, b)
			require.NoError(t, err)
		}
		c1.Close()
		synctest.Wait()
		require.Equal(t, hbone.Stats{Conns: 1, Streams: 1, MaxConnStreams: 1}, d.Stats(), "the drained connection is closed")
		<-rawDone
		c2.Close()
	})
}
