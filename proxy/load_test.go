package proxy_test

import (
	"bytes"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/internal/leakcheck"
)

// TestLoad runs 200 concurrent connections through two proxies (outbound
// on node A, HBONE, inbound on node B) for 20 s (2 s with -short), each
// doing 1 KiB request/response exchanges, and requires zero errors and no
// goroutine left behind: once the clients are done and the proxies have
// drained, the goroutine count is back to what it was before the load.
func TestLoad(t *testing.T) {
	leakcheck.Check(t)
	const conns = 200
	dur := 20 * time.Second
	if testing.Short() {
		dur = 2 * time.Second
	}
	m := newMesh(t, meshOptions{quietLogs: true})
	echoServer(t, apOf(ipEcho, 8080), "")
	addr := m.outboundTo(apOf(vipEcho, 80))
	before := runtime.NumGoroutine()

	var exchanges, failures atomic.Int64
	var firstErr error
	var once sync.Once
	fail := func(err error) {
		failures.Add(1)
		once.Do(func() { firstErr = err })
	}
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialTCP(ipSleep, addr)
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			req := bytes.Repeat([]byte{byte(i)}, 1024)
			resp := make([]byte, 1024)
			for time.Now().Before(deadline) {
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := c.Write(req); err != nil {
					fail(err)
					return
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					fail(err)
					return
				}
				if !bytes.Equal(req, resp) {
					fail(io.ErrUnexpectedEOF)
					return
				}
				exchanges.Add(1)
			}
			if err := c.CloseWrite(); err != nil {
				fail(err)
				return
			}
			if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
				fail(err)
			}
		}()
	}
	wg.Wait()
	atEnd := runtime.NumGoroutine()
	require.Zero(t, failures.Load(), "first error: %v", firstErr)
	require.Greater(t, exchanges.Load(), int64(conns))

	// Drain both proxies (this also closes the pooled tunnels the load
	// opened), then wait, bounded, for the count to reach the baseline.
	m.stop()
	after := runtime.NumGoroutine()
	for deadline := time.Now().Add(10 * time.Second); after > before && time.Now().Before(deadline); after = runtime.NumGoroutine() {
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%d connections, %d exchanges in %v (%.0f/s), goroutines: before %d, clients done %d, proxies stopped %d",
		conns, exchanges.Load(), dur, float64(exchanges.Load())/dur.Seconds(), before, atEnd, after)
	if after > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines left over the %d before the load:\n%s", after-before, before, buf[:runtime.Stack(buf, true)])
	}
}
