package netutil_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/meshblocks/meshblocks/internal/netutil"
)

// writerToConn is a connection whose reads are served by its own WriteTo,
// as a tunnel stream's are; it counts how often WriteTo was used.
type writerToConn struct {
	net.Conn
	calls *atomic.Int32
}

func (c writerToConn) WriteTo(w io.Writer) (int64, error) {
	c.calls.Add(1)
	buf := make([]byte, 512)
	var total int64
	for {
		n, err := c.Conn.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// TestJoinIdle: traffic in one direction only keeps both open past the
// idle timeout; after the last byte JoinIdle closes both sides within one
// to two periods and returns ErrIdleTimeout. A source with WriteTo keeps
// using it (the fast path of tunnel streams).
func TestJoinIdle(t *testing.T) {
	for _, tc := range []struct {
		name     string
		writerTo bool
	}{
		{"buffered copy", false},
		{"WriteTo source", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const idle = time.Minute
				client, a := net.Pipe()
				b, server := net.Pipe()
				var calls atomic.Int32
				var src net.Conn = a
				if tc.writerTo {
					src = writerToConn{a, &calls}
				}
				type result struct {
					aToB, bToA int64
					err        error
				}
				done := make(chan result, 1)
				go func() {
					ab, ba, err := netutil.JoinIdle(src, b, idle)
					done <- result{ab, ba, err}
				}()
				for i := 0; i < 5; i++ {
					time.Sleep(40 * time.Second)
					go client.Write([]byte("ping"))
					buf := make([]byte, 4)
					_, err := io.ReadFull(server, buf)
					require.NoError(t, err)
				}
				last := time.Now()
				synctest.Wait()
				select {
				case r := <-done:
					t.Fatalf("closed while active: %+v", r)
				default:
				}
				r := <-done
				require.ErrorIs(t, r.err, netutil.ErrIdleTimeout)
				assert.Equal(t, int64(20), r.aToB)
				assert.GreaterOrEqual(t, time.Since(last), idle)
				assert.LessOrEqual(t, time.Since(last), 2*idle)
				_, err := client.Read(make([]byte, 1))
				assert.Error(t, err)
				_, err = server.Read(make([]byte, 1))
				assert.Error(t, err)
				if tc.writerTo {
					assert.Equal(t, int32(1), calls.Load(), "WriteTo is used, once: the watchdog never interrupts it")
				}
			})
		})
	}
}

// TestJoinIdleSpliced runs JoinIdle between real TCP sockets, where the
// kernel splices and the watchdog has to interrupt the copy to learn what
// moved. A steady upload with a silent download spans many idle periods
// without being cut and without losing a byte; once it stops, the pair is
// closed for idleness.
func TestJoinIdleSpliced(t *testing.T) {
	leakcheck.Check(t)
	app, relayA := tcpPair(t)
	relayB, upstream := tcpPair(t)
	defer app.Close()
	defer upstream.Close()
	const idle = 300 * time.Millisecond
	type result struct {
		aToB int64
		err  error
	}
	done := make(chan result, 1)
	go func() {
		ab, _, err := netutil.JoinIdle(relayA, relayB, idle)
		done <- result{ab, err}
	}()
	data := make([]byte, 4<<20)
	rand.Read(data)
	app.SetDeadline(time.Now().Add(30 * time.Second))
	upstream.SetDeadline(time.Now().Add(30 * time.Second))
	// 128 chunks of 32 KiB, one every 20 ms: about 2.5 s, 8 periods.
	go func() {
		for off := 0; off < len(data); off += 32 << 10 {
			if _, err := app.Write(data[off : off+32<<10]); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	got := make([]byte, len(data))
	_, err := io.ReadFull(upstream, got)
	require.NoError(t, err, "the upload is not cut while it moves")
	require.True(t, bytes.Equal(data, got), "no byte is lost when the watchdog interrupts the splice")
	select {
	case r := <-done:
		t.Fatalf("JoinIdle returned while the upload was running: %v", r.err)
	default:
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("an idle pair is never closed")
	}
	require.ErrorIs(t, r.err, netutil.ErrIdleTimeout)
	require.Equal(t, int64(len(data)), r.aToB)
	_, err = upstream.Read(make([]byte, 1))
	assert.Error(t, err, "upstream sees the close")
}

// TestJoinIdleSplicedBlockedWriter: the upstream never reads, so the
// spliced copy ends up blocked in a write and cannot answer the watchdog;
// nothing moves, so the pair is closed for idleness all the same.
func TestJoinIdleSplicedBlockedWriter(t *testing.T) {
	leakcheck.Check(t)
	app, relayA := tcpPair(t)
	relayB, upstream := tcpPair(t)
	defer app.Close()
	defer upstream.Close()
	done := make(chan error, 1)
	go func() {
		_, _, err := netutil.JoinIdle(relayA, relayB, 200*time.Millisecond)
		done <- err
	}()
	// Fill the socket buffers: the writes stop making progress.
	app.SetWriteDeadline(time.Now().Add(30 * time.Second))
	go func() {
		buf := make([]byte, 1<<20)
		for {
			if _, err := app.Write(buf); err != nil {
				return
			}
		}
	}()
	select {
	case err := <-done:
		require.ErrorIs(t, err, netutil.ErrIdleTimeout)
	case <-time.After(20 * time.Second):
		t.Fatal("a pair stuck on a peer that does not read is never closed")
	}
}
