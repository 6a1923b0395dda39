package interop_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	istiohbone "istio.io/istio/pkg/hbone"
)

const hboneBenchChunk = 256 << 10

// hboneBenchServe implements the benchmark upstream protocol on c: a
// command byte and a big-endian uint64 n, then 'u' reads n bytes and
// answers one byte, 'd' writes n bytes, 'e' echoes n-byte messages.
func hboneBenchServe(c io.ReadWriteCloser) {
	defer c.Close()
	var hdr [9]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	n := int64(binary.BigEndian.Uint64(hdr[1:]))
	buf := make([]byte, hboneBenchChunk)
	switch hdr[0] {
	case 'u':
		if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, n), buf); err == nil {
			c.Write([]byte{1})
		}
	case 'd':
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := c.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
		io.Copy(io.Discard, c)
	case 'e':
		msg := buf[:n]
		for {
			if _, err := io.ReadFull(c, msg); err != nil {
				return
			}
			if _, err := c.Write(msg); err != nil {
				return
			}
		}
	}
}

func hboneBenchUpstream(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { hboneBenchServe(c) })
		}
	})
	return ln.Addr().String()
}

// hboneBenchDialers returns a dial function per implementation, each
// reaching an upstream speaking the benchmark protocol.
func hboneBenchDialers(b *testing.B) map[string]func() net.Conn {
	ca := identitytest.NewCA(b, "cluster.local")
	up := hboneBenchUpstream(b)
	clientCfg := identity.ClientTLSConfig(ca.Source(b, hboneClientPath), ca.ID(hboneServerPath))

	// Plain TLS 1.3, same certificates, upstream logic in the TLS server
	// itself (no extra TCP hop).
	tln, err := tls.Listen("tcp", "127.0.0.1:0", identity.ServerTLSConfig(ca.Source(b, hboneServerPath)))
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	b.Cleanup(func() { tln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := tln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { hboneBenchServe(c) })
		}
	})

	// Our HBONE: Dialer -> Server with Forwarder -> upstream.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &hbone.Server{Source: ca.Source(b, hboneServerPath), Handler: &hbone.Forwarder{}}
	go srv.Serve(ln)
	d := &hbone.Dialer{Source: ca.Source(b, hboneClientPath), Expected: []spiffeid.ID{ca.ID(hboneServerPath)}}
	b.Cleanup(func() { d.Close(); srv.Close() })

	// Istio's Go HBONE: dialer -> server -> upstream.
	istioAddr := hboneIstioServer(b, ca, hboneServerPath)
	id := istiohbone.NewDialer(istiohbone.Config{ProxyAddress: istioAddr, TLS: clientCfg})

	must := func(c net.Conn, err error) net.Conn {
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	return map[string]func() net.Conn{
		"tls": func() net.Conn { return must(tls.Dial("tcp", tln.Addr().String(), clientCfg)) },
		"hbone": func() net.Conn {
			return must(d.Dial(context.Background(), hbone.Route{Address: ln.Addr().String(), Authority: up}))
		},
		"istio": func() net.Conn { return must(id.DialContext(context.Background(), "tcp", up)) },
	}
}

func hboneCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func hboneCmd(c net.Conn, cmd byte, n int64) {
	var hdr [9]byte
	hdr[0] = cmd
	binary.BigEndian.PutUint64(hdr[1:], uint64(n))
	c.Write(hdr[:])
}

// BenchmarkHBONEInterop compares plain TLS 1.3, our HBONE and Istio's Go
// HBONE on one stream: upload and download throughput with CPU seconds per
// GB (whole process: client, server and upstream), and 1 KiB round trips.
func BenchmarkHBONEInterop(b *testing.B) {
	for _, impl := range []string{"tls", "hbone", "istio"} {
		for _, op := range []string{"upload", "download"} {
			b.Run(impl+"/"+op, func(b *testing.B) {
				dial := hboneBenchDialers(b)[impl]
				c := dial()
				defer c.Close()
				total := int64(b.N) * hboneBenchChunk
				b.SetBytes(hboneBenchChunk)
				b.ReportAllocs()
				buf := make([]byte, hboneBenchChunk)
				runtime.GC()
				b.ResetTimer()
				start, cpu0 := time.Now(), hboneCPU()
				if op == "upload" {
					hboneCmd(c, 'u', total)
					for range b.N {
						if _, err := c.Write(buf); err != nil {
							b.Fatal(err)
						}
					}
					if _, err := io.ReadFull(c, buf[:1]); err != nil {
						b.Fatal(err)
					}
				} else {
					hboneCmd(c, 'd', total)
					if _, err := io.ReadFull(c, make([]byte, 0)); err != nil {
						b.Fatal(err)
					}
					var got int64
					for got < total {
						n, err := c.Read(buf)
						got += int64(n)
						if err != nil {
							b.Fatal(err)
						}
					}
				}
				cpu, el := hboneCPU()-cpu0, time.Since(start)
				b.StopTimer()
				b.ReportMetric(cpu.Seconds()/(float64(total)/1e9), "cpu-s/GB")
				b.ReportMetric(float64(total)*8/el.Seconds()/1e9, "Gbit/s")
			})
		}
		b.Run(impl+"/rr1k", func(b *testing.B) {
			dial := hboneBenchDialers(b)[impl]
			c := dial()
			defer c.Close()
			hboneCmd(c, 'e', 1024)
			msg := make([]byte, 1024)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
