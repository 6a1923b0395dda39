package proxy_test

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/proxy"
)

func TestRelayIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, a := net.Pipe()
		b, server := net.Pipe()
		done := make(chan error, 1)
		start := time.Now()
		go func() {
			_, _, err := proxy.RelayIdle(a, b, time.Minute)
			done <- err
		}()
		// Traffic keeps the relay alive past the idle timeout.
		for i := 0; i < 3; i++ {
			time.Sleep(40 * time.Second)
			go client.Write([]byte("ping"))
			buf := make([]byte, 4)
			_, err := io.ReadFull(server, buf)
			require.NoError(t, err)
		}
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("relay closed while active")
		default:
		}
		// Then a quiet minute or two closes both sides.
		require.ErrorIs(t, <-done, proxy.ErrIdleTimeout)
		assert.GreaterOrEqual(t, time.Since(start), 120*time.Second+time.Minute)
		assert.LessOrEqual(t, time.Since(start), 120*time.Second+2*time.Minute)
		_, err := client.Read(make([]byte, 1))
		assert.Error(t, err)
		_, err = server.Read(make([]byte, 1))
		assert.Error(t, err)
	})
}

// streamConn is a connection whose reads are served by its own WriteTo,
// as hbone's tunnel streams are; it records that WriteTo was used.
type streamConn struct {
	net.Conn
	used *atomic.Bool
}

func (c streamConn) WriteTo(w io.Writer) (int64, error) {
	c.used.Store(true)
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

// TestRelayIdleKeepsWriteTo: with an idle timeout the relay still hands a
// tunnel stream's buffers over through its WriteTo instead of hiding the
// stream behind a counting wrapper.
func TestRelayIdleKeepsWriteTo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, a := net.Pipe()
		b, server := net.Pipe()
		var used atomic.Bool
		done := make(chan error, 1)
		go func() {
			_, _, err := proxy.RelayIdle(streamConn{a, &used}, b, time.Minute)
			done <- err
		}()
		go func() {
			client.Write([]byte("through WriteTo"))
			client.Close()
		}()
		got, err := io.ReadAll(server)
		require.NoError(t, err)
		assert.Equal(t, "through WriteTo", string(got))
		require.NoError(t, <-done)
		assert.True(t, used.Load(), "the source's WriteTo was bypassed")
	})
}
