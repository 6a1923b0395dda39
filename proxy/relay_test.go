package proxy_test

import (
	"io"
	"net"
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
		<-done
		assert.GreaterOrEqual(t, time.Since(start), 120*time.Second+time.Minute)
		assert.LessOrEqual(t, time.Since(start), 120*time.Second+2*time.Minute)
		_, err := client.Read(make([]byte, 1))
		assert.Error(t, err)
		_, err = server.Read(make([]byte, 1))
		assert.Error(t, err)
	})
}
