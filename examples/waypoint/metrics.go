package main

import (
	"bufio"
	"net/http"

	"github.com/meshblocks/meshblocks/examples/internal/promtext"
	"github.com/meshblocks/meshblocks/proxy"
)

// durationBuckets are Istio's buckets for istio_request_duration_milliseconds.
var durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// metrics holds Istio's request metrics and TCP metrics as a waypoint
// reports them (reporter "waypoint"), with the labels of
// proxy.RequestInfo.Labels.
type metrics struct {
	requests, tcpOpened, tcpClosed, tcpSent, tcpReceived *promtext.CounterVec
	duration                                             *promtext.HistogramVec
}

// requestLabelNames are the names of RequestInfo.Labels, in order.
func requestLabelNames() []string {
	var names []string
	for _, l := range (&proxy.RequestInfo{}).Labels() {
		names = append(names, l.Name)
	}
	return names
}

// tcpLabelNames are the request labels without the HTTP ones.
func tcpLabelNames() []string {
	var names []string
	for _, n := range requestLabelNames() {
		if n != "response_code" && n != "grpc_response_status" {
			names = append(names, n)
		}
	}
	return names
}

func newMetrics() *metrics {
	rl, tl := requestLabelNames(), tcpLabelNames()
	return &metrics{
		requests: promtext.NewCounterVec("istio_requests_total", "Total requests handled by an Istio proxy", rl...),
		duration: promtext.NewHistogramVec("istio_request_duration_milliseconds", "Request duration in milliseconds",
			durationBuckets, rl...),
		tcpOpened:   promtext.NewCounterVec("istio_tcp_connections_opened_total", "The total number of TCP connections opened", tl...),
		tcpClosed:   promtext.NewCounterVec("istio_tcp_connections_closed_total", "The total number of TCP connections closed", tl...),
		tcpSent:     promtext.NewCounterVec("istio_tcp_sent_bytes_total", "The size of total bytes sent during response in case of a TCP connection", tl...),
		tcpReceived: promtext.NewCounterVec("istio_tcp_received_bytes_total", "The size of total bytes received during request in case of a TCP connection", tl...),
	}
}

func values(ls []proxy.MetricLabel) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.Value
	}
	return out
}

// tcpValues labels a TCP tunnel as RequestInfo.Labels labels a request.
func tcpValues(c *proxy.ConnInfo) []string {
	ri := proxy.RequestInfo{SrcWorkload: c.SrcWorkload, SrcIdentity: c.SrcIdentity, DstService: c.DstService,
		DstWorkload: c.DstWorkload, DstIdentity: c.DstIdentity}
	var out []string
	for _, l := range ri.Labels() {
		switch l.Name {
		case "response_code", "grpc_response_status":
			continue
		case "request_protocol":
			l.Value = "tcp"
		}
		out = append(out, l.Value)
	}
	return out
}

func (m *metrics) hooks() proxy.WaypointHooks {
	return proxy.WaypointHooks{
		Request: func(ri *proxy.RequestInfo) {
			v := values(ri.Labels())
			m.requests.Add(1, v...)
			m.duration.Observe(float64(ri.Duration.Microseconds())/1000, v...)
		},
		Opened: func(c *proxy.ConnInfo) { m.tcpOpened.Add(1, tcpValues(c)...) },
		Closed: func(c *proxy.ConnInfo) {
			v := tcpValues(c)
			m.tcpClosed.Add(1, v...)
			// Istio: "sent" is the response direction (from the
			// destination), "received" the request direction.
			m.tcpSent.Add(float64(max(c.Received, 0)), v...)
			m.tcpReceived.Add(float64(max(c.Sent, 0)), v...)
		},
	}
}

// ServeHTTP writes every family in the text exposition format.
func (m *metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", promtext.ContentType)
	bw := bufio.NewWriter(w)
	m.requests.Write(bw)
	m.duration.Write(bw)
	m.tcpOpened.Write(bw)
	m.tcpClosed.Write(bw)
	m.tcpSent.Write(bw)
	m.tcpReceived.Write(bw)
	bw.Flush()
}
