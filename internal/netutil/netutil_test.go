package netutil_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/meshblocks/meshblocks/internal/netutil"
	"github.com/stretchr/testify/require"
)

func TestGetBuffer(t *testing.T) {
	tests := []struct{ n, cap int }{
		{0, 1 << 10}, {1, 1 << 10}, {1024, 1 << 10}, {1025, 4 << 10}, {16 << 10, 16 << 10},
		{100 << 10, 256 << 10}, {1 << 20, 1 << 20}, {1<<20 + 1, 1<<20 + 1},
	}
	for _, tc := range tests {
		b := netutil.GetBuffer(tc.n)
		require.Len(t, b, tc.n)
		require.Equal(t, tc.cap, cap(b), "n=%d", tc.n)
		netutil.PutBuffer(b)
	}
	netutil.PutBuffer(make([]byte, 10)) // not a class size: dropped, no panic
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	s, err := ln.Accept()
	require.NoError(t, err)
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestCopyGrows(t *testing.T) {
	data := make([]byte, 12<<20)
	rand.Read(data)
	var out bytes.Buffer
	n, err := netutil.Copy(&out, bytes.NewReader(data))
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), n)
	require.True(t, bytes.Equal(data, out.Bytes()))
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("boom") }

func TestCopyWriteError(t *testing.T) {
	_, err := netutil.Copy(failWriter{}, bytes.NewReader([]byte("x")))
	require.ErrorContains(t, err, "boom")
}

// TestJoinHalfClose relays between two TCP connections and checks that
// each direction ends on its own: the client half-closes, still receives
// the server's late reply, and then sees EOF.
func TestJoinHalfClose(t *testing.T) {
	leakcheck.Check(t)
	client, proxyIn := tcpPair(t)
	proxyOut, server := tcpPair(t)
	defer client.Close()
	defer server.Close()
	type result struct {
		a, b int64
		err  error
	}
	done := make(chan result, 1)
	go func() {
		a, b, err := netutil.Join(proxyIn, proxyOut)
		done <- result{a, b, err}
	}()
	_, err := client.Write([]byte("request"))
	require.NoError(t, err)
	require.NoError(t, client.CloseWrite())
	got, err := io.ReadAll(server)
	require.NoError(t, err)
	require.Equal(t, "request", string(got))
	_, err = server.Write([]byte("late reply"))
	require.NoError(t, err)
	require.NoError(t, server.CloseWrite())
	got, err = io.ReadAll(client)
	require.NoError(t, err)
	require.Equal(t, "late reply", string(got))
	r := <-done
	require.NoError(t, r.err)
	require.Equal(t, int64(len("request")), r.a)
	require.Equal(t, int64(len("late reply")), r.b)
}

func TestJoinWithoutHalfClose(t *testing.T) {
	leakcheck.Check(t)
	a1, a2 := net.Pipe()
	client, proxyIn := tcpPair(t)
	defer client.Close()
	done := make(chan error, 1)
	go func() { _, _, err := netutil.Join(proxyIn, a1); done <- err }()
	client.Write([]byte("x"))
	b := make([]byte, 1)
	_, err := io.ReadFull(a2, b)
	require.NoError(t, err)
	client.CloseWrite()
	// net.Pipe cannot half-close, so EOF from the client closes it fully.
	_, err = a2.Read(b)
	require.ErrorIs(t, err, io.EOF)
	a2.Close()
	require.NoError(t, <-done)
}
