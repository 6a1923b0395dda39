package hbone_test

import (
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
)

// TestDoubleHBONE runs a gateway that terminates the outer tunnel and
// serves the inner HBONE connection itself (standing in for the gateway
// forwarding the bytes to the destination's :15008), with real TLS at both
// layers.
func TestDoubleHBONE(t *testing.T) {
	leakcheck.Check(t)
	ca := identitytest.NewCA(t, "cluster.local")
	type seen struct {
		outerAuthority, innerAuthority, network string
		innerPeer                               spiffeid.ID
	}
	seenc := make(chan seen, 1)
	inner := &hbone.Server{Source: ca.Source(t, "ns/backend/sa/echo"), Handler: hbone.HandlerFunc(func(r *hbone.Request) {
		seenc <- seen{innerAuthority: r.Authority, network: r.Header.Get("x-forwarded-network"), innerPeer: r.Peer}
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
		c.CloseWrite()
	})}
	defer inner.Close()
	gateway := &hbone.Server{Source: ca.Source(t, "ns/istio-system/sa/eastwest"), Handler: hbone.HandlerFunc(func(r *hbone.Request) {
		if _, err := netipParseAddr(r.Authority); err == nil {
			r.Reject(http.StatusBadRequest) // hostnames only, like Istio's gateway
			return
		}
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		inner.ServeConn(c)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go gateway.Serve(ln)
	defer gateway.Close()
	d := &hbone.Dialer{Source: ca.Source(t, "ns/default/sa/client")}
	defer d.Close()

	c, err := d.DialDouble(ctxT(t), hbone.DoubleRoute{
		Outer: hbone.Route{
			Address:   ln.Addr().String(),
			Authority: "echo.backend.svc.cluster.local:8080",
			Expected:  []spiffeid.ID{ca.ID("ns/istio-system/sa/eastwest")},
		},
		InnerExpected: []spiffeid.ID{ca.ID("ns/backend/sa/echo")},
		Network:       "network-a",
	})
	require.NoError(t, err)
	s := <-seenc
	require.Equal(t, "echo.backend.svc.cluster.local:8080", s.innerAuthority)
	require.Equal(t, "network-a", s.network)
	require.Equal(t, ca.ID("ns/default/sa/client"), s.innerPeer)
	_, err = c.Write([]byte("through two layers"))
	require.NoError(t, err)
	require.NoError(t, c.CloseWrite())
	b, err := io.ReadAll(c)
	require.NoError(t, err)
	require.Equal(t, "through two layers", string(b))
	require.NoError(t, c.Close())

	// The inner handshake checks the final service's identity.
	_, err = d.DialDouble(ctxT(t), hbone.DoubleRoute{
		Outer: hbone.Route{
			Address:   ln.Addr().String(),
			Authority: "echo.backend.svc.cluster.local:8080",
			Expected:  []spiffeid.ID{ca.ID("ns/istio-system/sa/eastwest")},
		},
		InnerExpected: []spiffeid.ID{ca.ID("ns/backend/sa/someone-else")},
	})
	require.ErrorContains(t, err, "inner TLS handshake")
}
