package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/proxy"
)

// benchMesh starts the two-proxy mesh with an echo app and returns the
// address apps dial for echo through the mesh, and the app's own address
// (the direct-TCP baseline).
func benchMesh(b *testing.B) (mesh, direct netip.AddrPort) {
	b.Helper()
	m := newMesh(b, meshOptions{quietLogs: true})
	echoServer(b, apOf(ipEcho, 8080), "")
	return m.outboundTo(apOf(ipEcho, 8080)), apOf(ipEcho, 8080)
}

// rtt measures n 1 KiB request/response exchanges on one connection and
// returns each exchange's latency.
func rtt(b *testing.B, addr netip.AddrPort, n int) []time.Duration {
	c := dialFrom(b, ipSleep, addr)
	defer c.Close()
	req := bytes.Repeat([]byte("x"), 1024)
	resp := make([]byte, 1024)
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	return lat
}

func pct(l []time.Duration, p float64) time.Duration {
	s := slices.Clone(l)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// BenchmarkLatency1KiB: 1 KiB request/response over a persistent
// connection, through the mesh (outbound proxy, HBONE mTLS, inbound proxy)
// and directly, in the same run. Reports p50/p99 of both and the overhead.
func BenchmarkLatency1KiB(b *testing.B) {
	meshAddr, directAddr := benchMesh(b)
	rtt(b, meshAddr, 100) // warm the tunnel pool and certificates
	b.ReportAllocs()
	b.SetBytes(2048)
	b.ResetTimer()
	direct := rtt(b, directAddr, b.N)
	mesh := rtt(b, meshAddr, b.N)
	b.StopTimer()
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(us(pct(direct, 0.5)), "direct-p50-µs")
	b.ReportMetric(us(pct(direct, 0.99)), "direct-p99-µs")
	b.ReportMetric(us(pct(mesh, 0.5)), "mesh-p50-µs")
	b.ReportMetric(us(pct(mesh, 0.99)), "mesh-p99-µs")
	b.ReportMetric(us(pct(mesh, 0.5)-pct(direct, 0.5)), "overhead-p50-µs")
	b.ReportMetric(us(pct(mesh, 0.99)-pct(direct, 0.99)), "overhead-p99-µs")
}

// stream sends n bytes one way on one connection and waits for the
// server's end, returning the elapsed time.
func stream(b *testing.B, addr netip.AddrPort, n int64) time.Duration {
	return streamFrom(b, ipSleep, addr, n)
}

// streamFrom is stream from the source address src.
func streamFrom(b *testing.B, src netip.Addr, addr netip.AddrPort, n int64) time.Duration {
	c := dialFrom(b, src, addr)
	defer c.Close()
	buf := make([]byte, 64<<10)
	start := time.Now()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(io.Discard, c)
	}()
	for sent := int64(0); sent < n; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	wg.Wait()
	return time.Since(start)
}

// BenchmarkThroughput: bulk transfer (echoed back, so bytes cross the mesh
// twice) through the mesh and directly; reports MB/s of both and the ratio.
func BenchmarkThroughput(b *testing.B) {
	meshAddr, directAddr := benchMesh(b)
	stream(b, meshAddr, 1<<20)
	const chunk = 1 << 20
	b.SetBytes(chunk)
	b.ResetTimer()
	d := stream(b, directAddr, int64(b.N)*chunk)
	m := stream(b, meshAddr, int64(b.N)*chunk)
	b.StopTimer()
	mbps := func(t time.Duration) float64 { return float64(b.N) * chunk / t.Seconds() / 1e6 }
	b.ReportMetric(mbps(d), "direct-MB/s")
	b.ReportMetric(mbps(m), "mesh-MB/s")
	b.ReportMetric(mbps(m)/mbps(d), "mesh/direct")
}

// BenchmarkThroughputIdleTimeout is BenchmarkThroughput with
// Config.IdleTimeout set on both proxies, so that the idle watchdog's cost
// shows: it must leave the relay its fast paths (the tunnel's WriteTo on
// the HBONE path, splice on the TCP-to-TCP plaintext path). Reports MB/s
// directly, through the mesh (outbound, HBONE, inbound) and through node
// B's inbound plaintext listener, all in the same run.
func BenchmarkThroughputIdleTimeout(b *testing.B) {
	m := newMesh(b, meshOptions{quietLogs: true, idleTimeout: time.Minute})
	echoServer(b, apOf(ipEcho, 8080), "")
	directAddr := apOf(ipEcho, 8080)
	meshAddr := m.outboundTo(directAddr)
	plainAddr := m.plaintextTo(directAddr)
	stream(b, meshAddr, 1<<20)
	// ipOutside is the source the test policy lets in over plaintext.
	streamFrom(b, ipOutside, plainAddr, 1<<20)
	const chunk = 1 << 20
	b.SetBytes(chunk)
	n := int64(b.N) * chunk
	// timed runs one transfer and returns its wall time and the process
	// CPU it cost (the test's own client and echo server included).
	timed := func(src netip.Addr, addr netip.AddrPort) (time.Duration, time.Duration) {
		c0 := cpuTime()
		wall := streamFrom(b, src, addr, n)
		return wall, cpuTime() - c0
	}
	b.ResetTimer()
	d, dc := timed(ipOutside, directAddr)
	h, hc := timed(ipSleep, meshAddr)
	p, pc := timed(ipOutside, plainAddr)
	b.StopTimer()
	mbps := func(t time.Duration) float64 { return float64(n) / t.Seconds() / 1e6 }
	// CPU-seconds per GB crossing the relay (echoed: 2n bytes).
	perGB := func(c time.Duration) float64 { return c.Seconds() / (2 * float64(n) / 1e9) }
	b.ReportMetric(mbps(d), "direct-MB/s")
	b.ReportMetric(mbps(h), "mesh-MB/s")
	b.ReportMetric(mbps(p), "plaintext-MB/s")
	b.ReportMetric(perGB(dc), "direct-CPU-s/GB")
	b.ReportMetric(perGB(hc), "mesh-CPU-s/GB")
	b.ReportMetric(perGB(pc), "plaintext-CPU-s/GB")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// drive sends rate 1 KiB request/response exchanges per second, spread
// over conns persistent connections, for dur; it returns the process CPU
// time used.
func drive(b *testing.B, addr netip.AddrPort, rate, conns int, dur time.Duration) time.Duration {
	cs := make([]*net.TCPConn, conns)
	for i := range cs {
		cs[i] = dialFrom(b, ipSleep, addr)
		defer cs[i].Close()
	}
	per := time.Second * time.Duration(conns) / time.Duration(rate)
	runtime.GC()
	start := cpuTime()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := bytes.Repeat([]byte("x"), 1024)
			resp := make([]byte, 1024)
			tick := time.NewTicker(per)
			defer tick.Stop()
			end := time.Now().Add(dur)
			for now := range tick.C {
				if now.After(end) {
					return
				}
				if _, err := c.Write(req); err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return cpuTime() - start
}

// BenchmarkCPUPer1000RPS drives 1,000 req/s (1 KiB each way, 10 persistent
// connections) for 5 s directly and then through the mesh, and reports
// the CPU of the two proxies per 1,000 req/s: (mesh CPU - direct CPU) /
// wall time. Run with -benchtime=1x.
func BenchmarkCPUPer1000RPS(b *testing.B) {
	meshAddr, directAddr := benchMesh(b)
	rtt(b, meshAddr, 100)
	const rate, conns = 1000, 10
	dur := 5 * time.Second
	b.ResetTimer()
	var direct, mesh time.Duration
	for i := 0; i < b.N; i++ {
		direct += drive(b, directAddr, rate, conns, dur)
		mesh += drive(b, meshAddr, rate, conns, dur)
	}
	b.StopTimer()
	wall := dur.Seconds() * float64(b.N)
	b.ReportMetric(direct.Seconds()/wall, "direct-vCPU")
	b.ReportMetric(mesh.Seconds()/wall, "mesh-vCPU")
	b.ReportMetric((mesh-direct).Seconds()/wall*1000/rate, "proxy-vCPU/1k-rps")
}

// BenchmarkState1000Workloads builds a State of 1,000 workloads and 100
// services and reports its heap size.
func BenchmarkState1000Workloads(b *testing.B) {
	ws, ss := bigState(1000, 100)
	b.ReportAllocs()
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	var keep []*proxy.State
	for i := 0; i < b.N; i++ {
		st, err := proxy.NewState(ws, ss)
		if err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			keep = append(keep, st)
			runtime.GC()
			runtime.ReadMemStats(&ms1)
		}
	}
	b.ReportMetric(float64(ms1.HeapAlloc-ms0.HeapAlloc)/1024, "state-KiB")
	runtime.KeepAlive(keep)
}

func bigState(nw, ns int) ([]proxy.Workload, []proxy.Service) {
	var ws []proxy.Workload
	var ss []proxy.Service
	for i := 0; i < ns; i++ {
		ss = append(ss, proxy.Service{
			Name: fmt.Sprintf("svc%d", i), Namespace: "ns", Hostname: fmt.Sprintf("svc%d.ns.svc.cluster.local", i),
			Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:     []proxy.ServicePort{{Port: 80, TargetPort: 8080}},
		})
	}
	for i := 0; i < nw; i++ {
		svc := ss[i%ns]
		ws = append(ws, proxy.Workload{
			UID: fmt.Sprintf("c//Pod/ns/w%d", i), Name: fmt.Sprintf("w%d", i), Namespace: "ns",
			ServiceAccount: fmt.Sprintf("sa%d", i%50), Node: fmt.Sprintf("node%d", i%30),
			Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})},
			Protocol:  proxy.TunnelHBONE, Labels: map[string]string{"app": svc.Name},
			Services: map[string][]proxy.PortMapping{svc.Key(): {{ServicePort: 80, TargetPort: 8080}}},
		})
	}
	return ws, ss
}

// BenchmarkResolveBalanced: resolving a service VIP with 100 endpoints,
// STANDARD (proxy's own pick) against FAILOVER (route's ranking, table
// cached per State).
func BenchmarkResolveBalanced(b *testing.B) {
	vip := netip.MustParseAddr("10.96.0.1")
	src := &proxy.Workload{Node: "n1", Locality: proxy.Locality{Region: "r", Zone: "z1"}}
	for _, tc := range []struct {
		name string
		lb   *proxy.LoadBalancing
	}{
		{"standard", nil},
		{"failover", &proxy.LoadBalancing{Mode: proxy.LBFailover, RoutingPreference: []string{"network", "region", "zone"}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var ws []proxy.Workload
			for i := 0; i < 100; i++ {
				ws = append(ws, proxy.Workload{UID: fmt.Sprint(i), Namespace: "d", ServiceAccount: "s",
					Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, 0, byte(i)})}, Protocol: proxy.TunnelHBONE,
					Node: fmt.Sprintf("n%d", i%10), Locality: proxy.Locality{Region: "r", Zone: fmt.Sprintf("z%d", i%3)},
					Services: map[string][]proxy.PortMapping{"d/s.d.svc.cluster.local": {{ServicePort: 80, TargetPort: 8080}}}})
			}
			st, err := proxy.NewState(ws, []proxy.Service{{Namespace: "d", Hostname: "s.d.svc.cluster.local",
				Addresses: []netip.Addr{vip}, Ports: []proxy.ServicePort{{Port: 80}}, LoadBalancing: tc.lb}})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				p, err := st.Resolve(src, netip.AddrPortFrom(vip, 80), proxy.ZtunnelBalancer)
				if err != nil {
					b.Fatal(err)
				}
				if tc.lb != nil && p.Workload.Locality.Zone != "z1" {
					b.Fatal("failover picked another zone")
				}
			}
		})
	}
}
