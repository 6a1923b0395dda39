package netutil_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/meshblocks/meshblocks/internal/netutil"
)

// TestJoinTCPSpliceHalfClose relays between two real TCP connections (the
// kernel splice path): several MiB each way, and each direction's EOF
// arrives while the other direction is still open.
func TestJoinTCPSpliceHalfClose(t *testing.T) {
	leakcheck.Check(t)
	app, relayA := tcpPair(t)
	relayB, upstream := tcpPair(t)
	done := make(chan [2]int64, 1)
	go func() {
		ab, ba, err := netutil.Join(relayA, relayB)
		if err != nil {
			t.Errorf("Join: %v", err)
		}
		done <- [2]int64{ab, ba}
	}()
	up := make([]byte, 3<<20)
	down := make([]byte, 5<<20)
	rand.Read(up)
	rand.Read(down)
	deadline := time.Now().Add(20 * time.Second)
	app.SetDeadline(deadline)
	upstream.SetDeadline(deadline)

	// app -> upstream, then app half-closes.
	go func() {
		app.Write(up)
		app.CloseWrite()
	}()
	got, err := io.ReadAll(upstream)
	require.NoError(t, err, "upstream sees app's EOF after all of its bytes")
	require.True(t, bytes.Equal(up, got), "upstream got %d bytes, want %d", len(got), len(up))

	// The other direction still works after that half-close.
	go func() {
		upstream.Write(down)
		upstream.CloseWrite()
	}()
	got, err = io.ReadAll(app)
	require.NoError(t, err)
	require.True(t, bytes.Equal(down, got), "app got %d bytes, want %d", len(got), len(down))

	n := <-done
	require.Equal(t, [2]int64{int64(len(up)), int64(len(down))}, n)
	app.Close()
	upstream.Close()
}
