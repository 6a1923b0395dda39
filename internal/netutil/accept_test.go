package netutil_test

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/internal/netutil"
)

// flakyListener fails its first Accept with a timeout, as Accept does when
// the process is out of file descriptors, then behaves normally.
type flakyListener struct {
	net.Listener
	failed atomic.Bool
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if !l.failed.Swap(true) {
		return nil, os.ErrDeadlineExceeded // a net.Error with Timeout() == true
	}
	return l.Listener.Accept()
}

func TestAcceptLoop(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	fl := &flakyListener{Listener: ln}
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()

	var got net.Conn
	err = netutil.AcceptLoop(fl, func(sc net.Conn) bool { got = sc; return false })
	require.ErrorIs(t, err, netutil.ErrStopped, "handle returning false stops the loop")
	require.True(t, fl.failed.Load(), "the timeout was retried, not returned")
	require.NotNil(t, got)
	got.Close()

	ln.Close()
	err = netutil.AcceptLoop(ln, func(net.Conn) bool { return true })
	require.True(t, errors.Is(err, net.ErrClosed), "a closed listener ends the loop with its error, got %v", err)
}
