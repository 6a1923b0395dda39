package proxy_test

import (
	"io"
	"net/http"
	"slices"
	"testing"
	"time"
)

// wpLatencies sends n GETs one after another on a keep-alive connection
// and returns each one's latency.
func wpLatencies(b *testing.B, c *http.Client, url string, n int) []time.Duration {
	lat := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("%s: status %d", url, resp.StatusCode)
		}
		lat = append(lat, time.Since(start))
	}
	return lat
}

func wpPct(l []time.Duration, p float64) time.Duration {
	s := slices.Clone(l)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// BenchmarkWaypointLatency: one HTTP/1.1 GET at a time on a keep-alive
// connection, in the same run: straight to the app (direct), through the
// two node proxies (L4 mesh: a Service without waypoint), and through node
// proxy -> waypoint -> node proxy (L7: the echo Service, routed by its
// VirtualService, authorized with policies loaded). Reports p50/p99 of
// each and the waypoint's overhead over the L4 mesh and over direct.
func BenchmarkWaypointLatency(b *testing.B) {
	m := newWPMesh(b, wpMeshOptions{quiet: true})
	mesh := m.client(wpIPSleep, false)
	tr := &http.Transport{}
	b.Cleanup(tr.CloseIdleConnections)
	direct := &http.Client{Transport: tr}
	const (
		directURL = "http://127.81.0.31:8080/bench"
		l4URL     = "http://echo-mirror.default.svc.cluster.local/bench"
		l7URL     = "http://echo.default.svc.cluster.local/bench"
	)
	// Warm pools and certificates.
	wpLatencies(b, direct, directURL, 200)
	wpLatencies(b, mesh, l4URL, 200)
	wpLatencies(b, mesh, l7URL, 200)
	b.ReportAllocs()
	b.ResetTimer()
	d := wpLatencies(b, direct, directURL, b.N)
	l4 := wpLatencies(b, mesh, l4URL, b.N)
	l7 := wpLatencies(b, mesh, l7URL, b.N)
	b.StopTimer()
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	for _, r := range []struct {
		name string
		l    []time.Duration
	}{{"direct", d}, {"l4", l4}, {"waypoint", l7}} {
		b.ReportMetric(us(wpPct(r.l, 0.5)), r.name+"-p50-µs")
		b.ReportMetric(us(wpPct(r.l, 0.99)), r.name+"-p99-µs")
	}
	b.ReportMetric(us(wpPct(l7, 0.5)-wpPct(l4, 0.5)), "waypoint-over-l4-p50-µs")
	b.ReportMetric(us(wpPct(l7, 0.5)-wpPct(d, 0.5)), "waypoint-over-direct-p50-µs")
}
