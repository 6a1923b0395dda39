package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshblocks/meshblocks/proxy"
)

// Istio's standard TCP metric labels, as ztunnel reports them.
var tcpLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_service", "request_protocol", "connection_security_policy",
}

type metrics struct {
	opened, closed, sent, received *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	counter := func(name, help string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, tcpLabels)
		reg.MustRegister(c)
		return c
	}
	return &metrics{
		opened:   counter("istio_tcp_connections_opened_total", "The total number of TCP connections opened"),
		closed:   counter("istio_tcp_connections_closed_total", "The total number of TCP connections closed"),
		sent:     counter("istio_tcp_sent_bytes_total", "The size of total bytes sent during response in case of a TCP connection"),
		received: counter("istio_tcp_received_bytes_total", "The size of total bytes received during request in case of a TCP connection"),
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// labels returns the label values of c in tcpLabels order.
func labels(c *proxy.ConnInfo) []string {
	reporter := "source"
	if c.Direction == proxy.Inbound {
		reporter = "destination"
	}
	var sw, sns, dw, dns string
	if w := c.SrcWorkload; w != nil {
		sw, sns = w.Name, w.Namespace
	}
	if w := c.DstWorkload; w != nil {
		dw, dns = w.Name, w.Namespace
	}
	sp, dp := "", ""
	if !c.SrcIdentity.IsZero() {
		sp = c.SrcIdentity.String()
	}
	if !c.DstIdentity.IsZero() {
		dp = c.DstIdentity.String()
	}
	sec := "unknown"
	if c.MTLS {
		sec = "mutual_tls"
	}
	return []string{
		reporter,
		orUnknown(sw), orUnknown(sns), orUnknown(sp),
		orUnknown(dw), orUnknown(dns), orUnknown(dp),
		orUnknown(c.DstService), "tcp", sec,
	}
}

func (m *metrics) hooks() proxy.Hooks {
	return proxy.Hooks{
		Opened: func(c *proxy.ConnInfo) { m.opened.WithLabelValues(labels(c)...).Inc() },
		Closed: func(c *proxy.ConnInfo) {
			l := labels(c)
			m.closed.WithLabelValues(l...).Inc()
			// Istio: "sent" is the response direction (from the
			// destination), "received" the request direction.
			m.sent.WithLabelValues(l...).Add(float64(c.Received))
			m.received.WithLabelValues(l...).Add(float64(c.Sent))
		},
	}
}
