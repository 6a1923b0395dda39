package hbonetest_test

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/hbone/hbonetest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/stretchr/testify/require"
)

func TestNewPairEcho(t *testing.T) {
	leakcheck.Check(t)
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	c, err := p.Dialer.DialContext(context.Background(), "tcp", "10.0.0.1:80")
	require.NoError(t, err)
	defer c.Close()
	io.WriteString(c, "hi")
	require.NoError(t, c.(*hbone.Conn).CloseWrite())
	b, err := io.ReadAll(c)
	require.NoError(t, err)
	require.Equal(t, "hi", string(b))
	require.Equal(t, "spiffe://cluster.local/ns/default/sa/server", p.ServerID.String())
}

// In a test, NewPair gives a working client and server over real TLS in
// one line. (Not run: it needs the test's *testing.T.)
func ExampleNewPair() {
	var t testing.TB // the *testing.T of the test
	p := hbonetest.NewPair(t, hbone.HandlerFunc(hbonetest.Echo))
	conn, err := p.Dialer.DialContext(context.Background(), "tcp", "10.0.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "ping")
}
