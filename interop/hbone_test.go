package interop_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	istiohbone "istio.io/istio/pkg/hbone"
)

const (
	hboneServerPath = "ns/default/sa/server"
	hboneClientPath = "ns/default/sa/client"
)

func hboneCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestHBONEOurClientIstioServer tunnels through Istio's Go HBONE server
// with our Dialer: echo in both directions, client half-close, identity
// checks, and Istio's 200-before-dial quirk.
func TestHBONEOurClientIstioServer(t *testing.T) {
	leakcheck.Check(t)
	ca := identitytest.NewCA(t, "cluster.local")
	istioAddr := hboneIstioServer(t, ca, hboneServerPath)
	echo := hboneEchoUpstream(t)
	d := &hbone.Dialer{
		Source:   ca.Source(t, hboneClientPath),
		Expected: []spiffeid.ID{ca.ID(hboneServerPath)},
		Route: func(ctx context.Context, network, addr string) (hbone.Route, error) {
			return hbone.Route{Address: istioAddr}, nil
		},
	}
	defer d.Close()

	t.Run("echo with client half-close", func(t *testing.T) {
		for _, size := range []int{1, 1 << 10, 3<<20 + 7} {
			c, err := d.DialContext(hboneCtx(t), "tcp", echo)
			require.NoError(t, err)
			want := make([]byte, size)
			rand.Read(want)
			errc := make(chan error, 1)
			go func() {
				_, err := c.Write(want)
				if err == nil {
					// END_STREAM: Istio closes the request body, the
					// upstream sees EOF and ends its side, and we read EOF.
					err = c.(*hbone.Conn).CloseWrite()
				}
				errc <- err
			}()
			got, err := io.ReadAll(c)
			require.NoError(t, err)
			require.NoError(t, <-errc)
			require.True(t, bytes.Equal(want, got), "size %d: got %d bytes", size, len(got))
			c.Close()
		}
	})

	t.Run("concurrent streams share the pool", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Go(func() {
				c, err := d.DialContext(hboneCtx(t), "tcp", echo)
				if !assert.NoError(t, err) {
					return
				}
				defer c.Close()
				msg := bytes.Repeat([]byte{byte(i)}, 1000+i)
				if _, err := c.Write(msg); !assert.NoError(t, err) {
					return
				}
				buf := make([]byte, len(msg))
				_, err = io.ReadFull(c, buf)
				assert.NoError(t, err)
				assert.Equal(t, msg, buf)
			})
		}
		wg.Wait()
	})

	t.Run("wrong expected identity", func(t *testing.T) {
		bad := &hbone.Dialer{Source: d.Source, Expected: []spiffeid.ID{ca.ID("ns/default/sa/not-the-server")}}
		defer bad.Close()
		_, err := bad.Dial(hboneCtx(t), hbone.Route{Address: istioAddr, Authority: echo})
		require.Error(t, err)
	})

	t.Run("dead upstream reads as EOF after 200", func(t *testing.T) {
		// Istio's server flushes 200 before it dials (spec §1.13), so a dead
		// upstream is not a 503 but an immediately ended stream.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		dead := l.Addr().String()
		l.Close()
		c, err := d.DialContext(hboneCtx(t), "tcp", dead)
		if err != nil {
			var ce *hbone.ConnectError
			require.ErrorAs(t, err, &ce)
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, err = c.Read(make([]byte, 1))
		require.Error(t, err)
	})
}

// TestHBONEIstioClientOurServer tunnels Istio's Go HBONE dialer through
// our Server.
func TestHBONEIstioClientOurServer(t *testing.T) {
	leakcheck.Check(t)
	ca := identitytest.NewCA(t, "cluster.local")
	echo := hboneEchoUpstream(t)
	type seen struct {
		authority string
		peer      spiffeid.ID
		baggage   string
		userAgent string
	}
	seenc := make(chan seen, 100)
	halfc := make(chan string, 1)
	fwd := &hbone.Forwarder{}
	srv := &hbone.Server{
		Source: ca.Source(t, hboneServerPath),
		Handler: hbone.HandlerFunc(func(r *hbone.Request) {
			seenc <- seen{r.Authority, r.Peer, r.Header.Get("baggage"), r.Header.Get("user-agent")}
			if r.Authority == "half.close.test:1" {
				hboneServerHalfClose(r, halfc)
				return
			}
			fwd.ServeHBONE(r)
		}),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		require.ErrorIs(t, <-done, hbone.ErrServerClosed)
	}()

	d := istiohbone.NewDialer(istiohbone.Config{
		ProxyAddress: ln.Addr().String(),
		TLS:          identity.ClientTLSConfig(ca.Source(t, hboneClientPath), ca.ID(hboneServerPath)),
	})

	t.Run("echo", func(t *testing.T) {
		for _, size := range []int{1, 1 << 10, 2<<20 + 3} {
			c, err := d.DialContext(hboneCtx(t), "tcp", echo)
			require.NoError(t, err)
			s := <-seenc
			require.Equal(t, echo, s.authority)
			require.Equal(t, ca.ID(hboneClientPath), s.peer)
			require.Empty(t, s.baggage, "Istio's dialer sends no baggage")
			want := make([]byte, size)
			rand.Read(want)
			go c.Write(want)
			got := make([]byte, size)
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			_, err = io.ReadFull(c, got)
			require.NoError(t, err)
			require.True(t, bytes.Equal(want, got))
			c.Close()
		}
	})

	t.Run("server half-close", func(t *testing.T) {
		// Our server sends its bytes and END_STREAM while it keeps reading;
		// x/net's server cannot (spec §2.1). Istio's dialer reads EOF, but
		// then closes its whole net.Pipe (it has no CloseWrite, so its
		// copy loop falls back to Close), so the client direction ends
		// too: that is Istio's quirk, and the server sees it as EOF or a
		// reset rather than more data. Writing on after the server's
		// END_STREAM is covered with our own client in package hbone.
		c, err := d.DialContext(hboneCtx(t), "tcp", "half.close.test:1")
		require.NoError(t, err)
		defer c.Close()
		<-seenc
		c.SetDeadline(time.Now().Add(20 * time.Second))
		got, err := io.ReadAll(c)
		require.NoError(t, err)
		require.Equal(t, "hello", string(got))
		require.Contains(t, <-halfc, "read: ")
	})

	t.Run("upstream down is 503", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		dead := l.Addr().String()
		l.Close()
		_, err = d.DialContext(hboneCtx(t), "tcp", dead)
		require.ErrorContains(t, err, "503")
		<-seenc
	})

	t.Run("wrong server identity", func(t *testing.T) {
		bad := istiohbone.NewDialer(istiohbone.Config{
			ProxyAddress: ln.Addr().String(),
			TLS:          identity.ClientTLSConfig(ca.Source(t, hboneClientPath), ca.ID("ns/default/sa/other")),
		})
		_, err := bad.DialContext(hboneCtx(t), "tcp", echo)
		require.Error(t, err)
	})
}

// hboneServerHalfClose writes "hello", ends the server direction with
// END_STREAM, then reads the client's message and reports it on got.
func hboneServerHalfClose(r *hbone.Request, got chan<- string) {
	c, err := r.Accept(nil)
	if err != nil {
		got <- "accept: " + err.Error()
		return
	}
	defer c.Close()
	c.Write([]byte("hello"))
	c.CloseWrite()
	buf := make([]byte, len("after server EOF"))
	if _, err := io.ReadFull(c, buf); err != nil {
		got <- "read: " + err.Error()
		return
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, hbone.ErrWriteClosed) {
		got <- "write after CloseWrite did not fail"
		return
	}
	got <- string(buf)
}
