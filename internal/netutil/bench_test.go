package netutil_test

import (
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/internal/netutil"
)

// countingConn hides a connection's type behind a read counter, the way
// an idle watchdog that wraps connections does; Copy then can neither
// splice nor use the source's WriteTo. It is the baseline
// BenchmarkJoinTCP compares JoinIdle with.
type countingConn struct {
	net.Conn
	n *atomic.Uint64
}

func (c countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(uint64(n))
	return n, err
}

func (c countingConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkJoinTCP relays 1 MiB per iteration one way between two real
// TCP connections: plain Join (splice), JoinIdle (splice, the watchdog
// only counts) and Join over counting wrappers (a user-space copy). It
// reports throughput and the process CPU per GB (sender and receiver
// included). On loopback splice saves little: the three are within the
// noise of a shared machine; what JoinIdle must show is that it costs
// nothing over Join.
func BenchmarkJoinTCP(b *testing.B) {
	for _, tc := range []struct {
		name string
		join func(a, b net.Conn) (int64, int64, error)
	}{
		{"Join", netutil.Join},
		{"JoinIdle", func(a, b net.Conn) (int64, int64, error) { return netutil.JoinIdle(a, b, time.Minute) }},
		{"wrapped", func(a, b net.Conn) (int64, int64, error) {
			var n atomic.Uint64
			return netutil.Join(countingConn{a, &n}, countingConn{b, &n})
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			app, relayA := tcpPairB(b)
			relayB, upstream := tcpPairB(b)
			done := make(chan struct{})
			go func() { tc.join(relayA, relayB); close(done) }()
			got := make(chan int64, 1)
			go func() {
				n, _ := io.Copy(io.Discard, upstream)
				got <- n
			}()
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			c0 := cpuTime()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := app.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			app.CloseWrite()
			if n := <-got; n != int64(b.N)*int64(len(buf)) {
				b.Fatalf("relayed %d bytes, want %d", n, b.N*len(buf))
			}
			b.StopTimer()
			b.ReportMetric((cpuTime()-c0).Seconds()/(float64(b.N)*float64(len(buf))/1e9), "CPU-s/GB")
			upstream.Close()
			app.Close()
			<-done
		})
	}
}

func tcpPairB(b *testing.B) (*net.TCPConn, *net.TCPConn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	return c.(*net.TCPConn), s.(*net.TCPConn)
}
