package hbone_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/hbone/hbonetest"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
)

const benchChunk = 256 << 10

// cpuTime returns the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure runs fn (which moves total bytes) with the timer and reports
// CPU seconds per GB and Gbit/s.
func measure(b *testing.B, total int64, fn func()) {
	b.ReportAllocs()
	runtime.GC()
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	fn()
	cpu := cpuTime() - cpu0
	el := time.Since(start)
	b.StopTimer()
	gb := float64(total) / 1e9
	b.ReportMetric(cpu.Seconds()/gb, "cpu-s/GB")
	b.ReportMetric(float64(total)*8/el.Seconds()/1e9, "Gbit/s")
}

// sinkThenAck reads exactly n bytes from c, then writes one byte.
func sinkThenAck(c io.ReadWriter, n int64) error {
	buf := make([]byte, benchChunk)
	var got int64
	for got < n {
		k, err := c.Read(buf[:min(int64(len(buf)), n-got)])
		got += int64(k)
		if err != nil {
			return err
		}
	}
	_, err := c.Write([]byte{1})
	return err
}

func push(b *testing.B, c io.ReadWriter, n int) {
	buf := make([]byte, benchChunk)
	for range n {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		b.Fatal(err)
	}
}

// tlsPair returns a client and server TLS 1.3 connection over loopback
// TCP with the same SPIFFE certificates HBONE uses.
func tlsPair(b *testing.B) (client, server *tls.Conn) {
	ca := identitytest.NewCA(b, "cluster.local")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	sc := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sc <- nil
			return
		}
		s := tls.Server(c, identity.ServerTLSConfig(ca.Source(b, hbonetest.ServerPath)))
		s.Handshake()
		sc <- s
	}()
	client, err = tls.Dial("tcp", ln.Addr().String(), identity.ClientTLSConfig(ca.Source(b, hbonetest.ClientPath), ca.ID(hbonetest.ServerPath)))
	if err != nil {
		b.Fatal(err)
	}
	server = <-sc
	b.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// BenchmarkThroughput moves 256 KiB writes over one connection: plain TLS
// 1.3 (the baseline) and one HBONE stream in each direction.
func BenchmarkThroughput(b *testing.B) {
	b.Run("tls", func(b *testing.B) {
		c, s := tlsPair(b)
		b.SetBytes(benchChunk)
		total := int64(b.N) * benchChunk
		errc := make(chan error, 1)
		go func() { errc <- sinkThenAck(s, total) }()
		measure(b, total, func() { push(b, c, b.N) })
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	})
	for _, dir := range []string{"upload", "download"} {
		b.Run("hbone/"+dir, func(b *testing.B) {
			b.SetBytes(benchChunk)
			total := int64(b.N) * benchChunk
			srvConn := make(chan *hbone.Conn, 1)
			p := hbonetest.NewPair(b, hbone.HandlerFunc(func(r *hbone.Request) {
				c, err := r.Accept(nil)
				if err != nil {
					return
				}
				srvConn <- c
			}))
			c, err := p.Dialer.DialContext(context.Background(), "tcp", "10.0.0.1:80")
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			s := <-srvConn
			defer s.Close()
			src, dst := io.ReadWriter(c), io.ReadWriter(s)
			if dir == "download" {
				src, dst = s, c
			}
			errc := make(chan error, 1)
			go func() { errc <- sinkThenAck(dst, total) }()
			measure(b, total, func() { push(b, src, b.N) })
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkRoundTrip1K measures a 1 KiB echo round trip.
func BenchmarkRoundTrip1K(b *testing.B) {
	rt := func(b *testing.B, c io.ReadWriter) {
		b.ReportAllocs()
		buf := make([]byte, 1024)
		b.ResetTimer()
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	echo := func(c io.ReadWriter) {
		buf := make([]byte, 1024)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
	b.Run("tls", func(b *testing.B) {
		c, s := tlsPair(b)
		go echo(s)
		rt(b, c)
	})
	b.Run("hbone", func(b *testing.B) {
		p := hbonetest.NewPair(b, hbone.HandlerFunc(func(r *hbone.Request) {
			c, err := r.Accept(nil)
			if err != nil {
				return
			}
			defer c.Close()
			echo(c)
		}))
		c, err := p.Dialer.DialContext(context.Background(), "tcp", "10.0.0.1:80")
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		rt(b, c)
	})
}

// BenchmarkConcurrentStreams8 uploads over 8 streams at once: plain TLS
// 1.3 over 8 connections (the baseline), and 8 HBONE streams from one
// Dialer, which spreads them over GOMAXPROCS connections.
func BenchmarkConcurrentStreams8(b *testing.B) {
	const streams = 8
	run := func(b *testing.B, conns []io.ReadWriter, perStream int) {
		total := int64(perStream*streams) * benchChunk
		measure(b, total, func() {
			var wg sync.WaitGroup
			for _, c := range conns {
				wg.Go(func() { push(b, c, perStream) })
			}
			wg.Wait()
		})
	}
	b.Run("tls", func(b *testing.B) {
		b.SetBytes(benchChunk)
		perStream := b.N/streams + 1
		conns := make([]io.ReadWriter, streams)
		errc := make(chan error, streams)
		for i := range conns {
			c, s := tlsPair(b)
			go func() { errc <- sinkThenAck(s, int64(perStream)*benchChunk) }()
			conns[i] = c
		}
		run(b, conns, perStream)
		for range streams {
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(streams, "conns")
	})
	b.Run("hbone", func(b *testing.B) {
		b.SetBytes(benchChunk)
		perStream := b.N/streams + 1
		p := hbonetest.NewPair(b, hbone.HandlerFunc(func(r *hbone.Request) {
			c, err := r.Accept(nil)
			if err != nil {
				return
			}
			defer c.Close()
			sinkThenAck(c, int64(perStream)*benchChunk)
		}))
		conns := make([]io.ReadWriter, streams)
		for i := range conns {
			c, err := p.Dialer.DialContext(context.Background(), "tcp", "10.0.0.1:80")
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			conns[i] = c
		}
		run(b, conns, perStream)
		b.ReportMetric(float64(p.Dialer.Stats().Conns), "conns")
	})
}

// holdListener accepts TCP connections and keeps them, without a
// goroutine per connection: an upstream of idle tunnels.
type holdListener struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  chan struct{}
}

func newHoldListener(b *testing.B) *holdListener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	h := &holdListener{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
		}
	}()
	b.Cleanup(func() { ln.Close(); <-h.done; h.reset() })
	return h
}

func (h *holdListener) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

func (h *holdListener) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.Close()
	}
	h.conns = nil
}

// BenchmarkIdleStreamMemory opens 1,000 idle tunnels and reports the
// memory they hold (Go heap plus goroutine stacks, client and server ends
// together) per tunnel. The tunnels use the default 100-stream cap, so
// they ride 10 connections; those are opened by a first round of 1,000
// tunnels that is closed before measuring, so the figure is the cost of
// the streams alone (the conns metric says how many connections carry
// them).
//
//   - hbone: the server's handler accepts and keeps the tunnel; nothing
//     else runs per tunnel.
//   - forwarder: the server runs hbone.Forwarder, as a node proxy does: per
//     tunnel a TCP connection to an upstream (which holds it) and two
//     relay goroutines. Kernel socket buffers are not included.
func BenchmarkIdleStreamMemory(b *testing.B) {
	const n = 1000
	for _, mode := range []string{"hbone", "forwarder"} {
		b.Run(mode, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				var mu sync.Mutex
				var srv []*hbone.Conn
				var h hbone.Handler = hbone.HandlerFunc(func(r *hbone.Request) {
					c, err := r.Accept(nil)
					if err != nil {
						return
					}
					mu.Lock()
					srv = append(srv, c)
					mu.Unlock()
				})
				authority := "10.0.0.1:80"
				var up *holdListener
				if mode == "forwarder" {
					up = newHoldListener(b)
					h = &hbone.Forwarder{}
					authority = up.ln.Addr().String()
				}
				served := func() int {
					if up != nil {
						return up.count()
					}
					mu.Lock()
					defer mu.Unlock()
					return len(srv)
				}
				var active atomic.Int64 // handlers running
				inner := h
				p := hbonetest.NewPair(b, hbone.HandlerFunc(func(r *hbone.Request) {
					active.Add(1)
					defer active.Add(-1)
					inner.ServeHBONE(r)
				}))
				open := func() []net.Conn {
					conns := make([]net.Conn, n)
					for i := range conns {
						var err error
						if conns[i], err = p.Dialer.DialContext(context.Background(), "tcp", authority); err != nil {
							b.Fatal(err)
						}
					}
					for served() < n {
						time.Sleep(time.Millisecond)
					}
					return conns
				}
				closeAll := func(conns []net.Conn) {
					for _, c := range conns {
						c.Close()
					}
					mu.Lock()
					for _, c := range srv {
						c.Close()
					}
					srv = nil
					mu.Unlock()
					if up != nil {
						up.reset()
					}
					for p.Dialer.Stats().Streams > 0 || active.Load() > 0 {
						time.Sleep(time.Millisecond)
					}
				}
				// Warm up: open the connections (and grow the pools).
				closeAll(open())
				conns0 := p.Dialer.Stats().Conns
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				g0 := runtime.NumGoroutine()
				b.StartTimer()
				conns := open()
				b.StopTimer()
				runtime.GC()
				runtime.ReadMemStats(&after)
				if st := p.Dialer.Stats(); st.Conns != conns0 || st.Streams != n {
					b.Fatalf("measured %+v, want the %d warm connections and %d streams", st, conns0, n)
				}
				used := int64(after.HeapAlloc+after.StackInuse) - int64(before.HeapAlloc+before.StackInuse)
				b.ReportMetric(float64(used)/n, "B/idle-tunnel")
				b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/n, "stack-B/idle-tunnel")
				b.ReportMetric(float64(runtime.NumGoroutine()-g0)/n, "goroutines/idle-tunnel")
				b.ReportMetric(float64(conns0), "conns")
				closeAll(conns)
				p.Dialer.Close()
				p.Server.Close()
			}
		})
	}
}
