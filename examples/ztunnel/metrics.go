package main

import (
	"bufio"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/meshblocks/meshblocks/examples/internal/promtext"
	"github.com/meshblocks/meshblocks/proxy"
)

// counterVec is one counter family.
type counterVec struct {
	name, help string
	mu         sync.Mutex
	series     map[string]uint64 // by rendered label set
}

func (c *counterVec) add(k string, v uint64) {
	c.mu.Lock()
	c.series[k] += v
	c.mu.Unlock()
}

// metrics counts connections and bytes per label set and writes them in
// the Prometheus text exposition format (version 0.0.4): HELP and TYPE
// lines, then one sample per label set, label names sorted, series sorted
// by their labels, so that output is stable.
type metrics struct {
	state                          *proxy.StateHolder
	families                       []*counterVec
	opened, closed, sent, received *counterVec
	services                       atomic.Pointer[serviceIndex]
}

// serviceIndex finds a Service of one State by hostname.
type serviceIndex struct {
	st     *proxy.State
	byHost map[string]*proxy.Service
}

func newMetrics(state *proxy.StateHolder) *metrics {
	m := &metrics{state: state}
	counter := func(name, help string) *counterVec {
		c := &counterVec{name: name, help: help, series: map[string]uint64{}}
		m.families = append(m.families, c)
		return c
	}
	m.opened = counter("istio_tcp_connections_opened_total", "The total number of TCP connections opened")
	m.closed = counter("istio_tcp_connections_closed_total", "The total number of TCP connections closed")
	m.received = counter("istio_tcp_received_bytes_total", "The size of total bytes received during request in case of a TCP connection")
	m.sent = counter("istio_tcp_sent_bytes_total", "The size of total bytes sent during response in case of a TCP connection")
	return m
}

func (m *metrics) service(host string) *proxy.Service {
	if host == "" {
		return nil
	}
	st := m.state.Load()
	idx := m.services.Load()
	if idx == nil || idx.st != st {
		idx = &serviceIndex{st: st, byHost: map[string]*proxy.Service{}}
		svcs := st.Services()
		for i := range svcs {
			idx.byHost[svcs[i].Hostname] = &svcs[i]
		}
		m.services.Store(idx)
	}
	return idx.byHost[host]
}

// key renders the labels of c (proxy.ConnInfo.Labels: ztunnel's label set,
// "unknown" where a value is not known) as the series key.
func (m *metrics) key(c *proxy.ConnInfo) string {
	ls := c.Labels(m.service(c.DstService))
	labels := make([]promtext.Label, len(ls))
	for i, l := range ls {
		labels[i] = promtext.Label{Name: l.Name, Value: l.Value}
	}
	return promtext.LabelString(labels)
}

func (m *metrics) hooks() proxy.Hooks {
	return proxy.Hooks{
		Opened: func(c *proxy.ConnInfo) { m.opened.add(m.key(c), 1) },
		Closed: func(c *proxy.ConnInfo) {
			k := m.key(c)
			m.closed.add(k, 1)
			// Istio: "sent" is the response direction (from the
			// destination), "received" the request direction.
			m.sent.add(k, uint64(max(c.Received, 0)))
			m.received.add(k, uint64(max(c.Sent, 0)))
		},
	}
}

// ServeHTTP writes every family in the text exposition format.
func (m *metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", promtext.ContentType)
	bw := bufio.NewWriter(w)
	m.write(bw)
	bw.Flush()
}

func (m *metrics) write(w *bufio.Writer) {
	for _, f := range m.families {
		f.mu.Lock()
		lines := make([]string, 0, len(f.series))
		for k, v := range f.series {
			lines = append(lines, k+" "+strconv.FormatUint(v, 10))
		}
		f.mu.Unlock()
		slices.Sort(lines)
		promtext.WriteHeader(w, f.name, f.help, "counter")
		for _, l := range lines {
			w.WriteString(f.name)
			w.WriteString(l)
			w.WriteByte('\n')
		}
	}
}
