package hbonetest

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Identity paths of the pair's workloads.
const (
	ServerPath = "ns/default/sa/server"
	ClientPath = "ns/default/sa/client"
)

// Pair is a running Server and a Dialer that sends every tunnel to it.
type Pair struct {
	CA       *identitytest.CA
	Server   *hbone.Server
	Dialer   *hbone.Dialer
	Addr     string // the server's listen address, 127.0.0.1:port
	ServerID spiffeid.ID
	ClientID spiffeid.ID
}

// NewPair starts a Server with handler h on a loopback port, with the
// identity spiffe://cluster.local/ns/default/sa/server, and returns it
// with a Dialer (identity .../sa/client) whose every dial goes to that
// port expecting the server's identity. Both are closed at test cleanup.
func NewPair(t testing.TB, h hbone.Handler) *Pair {
	t.Helper()
	ca := identitytest.NewCA(t, "cluster.local")
	p := &Pair{CA: ca, ServerID: ca.ID(ServerPath), ClientID: ca.ID(ClientPath)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("hbonetest: listen: %v", err)
	}
	p.Addr = ln.Addr().String()
	p.Server = &hbone.Server{Source: ca.Source(t, ServerPath), Handler: h}
	done := make(chan error, 1)
	go func() { done <- p.Server.Serve(ln) }()
	p.Dialer = &hbone.Dialer{
		Source:   ca.Source(t, ClientPath),
		Expected: []spiffeid.ID{p.ServerID},
		Route: func(ctx context.Context, network, addr string) (hbone.Route, error) {
			return hbone.Route{Address: p.Addr, Authority: addr}, nil
		},
	}
	t.Cleanup(func() {
		p.Dialer.Close()
		p.Server.Close()
		if err := <-done; !errors.Is(err, hbone.ErrServerClosed) {
			t.Errorf("hbonetest: Serve: %v", err)
		}
	})
	return p
}

// Echo accepts a tunnel and echoes its bytes back, ending its direction
// when the client ends its own. Use it as hbone.HandlerFunc(hbonetest.Echo).
func Echo(r *hbone.Request) {
	c, err := r.Accept(nil)
	if err != nil {
		return
	}
	defer c.Close()
	io.Copy(c, c)
	c.CloseWrite()
}
