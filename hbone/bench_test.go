package hbone_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"sync"
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

// BenchmarkConcurrentStreams8 uploads over 8 streams at once from one
// Dialer (which spreads them over GOMAXPROCS connections).
func BenchmarkConcurrentStreams8(b *testing.B) {
	const streams = 8
	b.SetBytes(benchChunk)
	perStream := b.N/streams + 1
	total := int64(perStream*streams) * benchChunk
	p := hbonetest.NewPair(b, hbone.HandlerFunc(func(r *hbone.Request) {
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		defer c.Close()
		sinkThenAck(c, int64(perStream)*benchChunk)
	}))
	conns := make([]net.Conn, streams)
	for i := range conns {
		c, err := p.Dialer.DialContext(context.Background(), "tcp", "10.0.0.1:80")
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	measure(b, total, func() {
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Go(func() { push(b, c, perStream) })
		}
		wg.Wait()
	})
	b.ReportMetric(float64(p.Dialer.Stats().Conns), "conns")
}

// BenchmarkIdleStreamMemory opens 1,000 idle tunnels and reports the heap
// they hold, client and server ends together, per tunnel.
func BenchmarkIdleStreamMemory(b *testing.B) {
	const n = 1000
	for range b.N {
		b.StopTimer()
		var mu sync.Mutex
		var srv []*hbone.Conn
		p := hbonetest.NewPair(b, hbone.HandlerFunc(func(r *hbone.Request) {
			c, err := r.Accept(nil)
			if err != nil {
				return
			}
			mu.Lock()
			srv = append(srv, c)
			mu.Unlock()
		}))
		// Warm up: one connection set up, so that only streams are counted.
		w, err := p.Dialer.DialContext(context.Background(), "tcp", "10.0.0.1:80")
		if err != nil {
			b.Fatal(err)
		}
		p.Dialer.MaxStreamsPerConn = n + 1
		p.Dialer.MaxConnsPerKey = 1
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		g0 := runtime.NumGoroutine()
		b.StartTimer()
		conns := make([]net.Conn, n)
		for i := range conns {
			if conns[i], err = p.Dialer.DialContext(context.Background(), "tcp", "10.0.0.1:80"); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		for {
			mu.Lock()
			k := len(srv)
			mu.Unlock()
			if k == n+1 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/n, "B/idle-tunnel")
		b.ReportMetric(float64(runtime.NumGoroutine()-g0)/n, "goroutines/idle-tunnel")
		for _, c := range conns {
			c.Close()
		}
		w.Close()
		p.Dialer.Close()
		p.Server.Close()
	}
}
