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

// The labels of Istio's TCP metrics, as ztunnel reports them
// (istio/ztunnel src/proxy/metrics.rs, CommonTrafficLabels). A value that
// is not known is "unknown", as ztunnel's DefaultedUnknown writes it.
var tcpLabelNames = [...]string{
	"reporter",
	"source_workload", "source_canonical_service", "source_canonical_revision",
	"source_workload_namespace", "source_principal", "source_app", "source_version", "source_cluster",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_canonical_service", "destination_canonical_revision",
	"destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy",
}

// ztunnel adds these once the source or the destination workload is known.
var localityLabelNames = [...]string{"source_region", "source_zone", "destination_region", "destination_zone"}

type seriesKey struct {
	values      [len(tcpLabelNames)]string
	locality    [len(localityLabelNames)]string
	hasLocality bool
}

// counterVec is one counter family.
type counterVec struct {
	name, help string
	mu         sync.Mutex
	series     map[seriesKey]uint64
}

func (c *counterVec) add(k *seriesKey, v uint64) {
	c.mu.Lock()
	c.series[*k] += v
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
		c := &counterVec{name: name, help: help, series: map[seriesKey]uint64{}}
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

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// key returns the label values of c in tcpLabelNames order.
func (m *metrics) key(c *proxy.ConnInfo) *seriesKey {
	k := &seriesKey{}
	v := &k.values
	v[0] = "source"
	if c.Direction == proxy.Inbound {
		v[0] = "destination"
	}
	if w := c.SrcWorkload; w != nil {
		v[1], v[2], v[3], v[4] = w.WorkloadName, w.CanonicalName, w.CanonicalRevision, w.Namespace
		v[6], v[7], v[8] = w.CanonicalName, w.CanonicalRevision, w.ClusterID
		k.locality[0], k.locality[1] = w.Locality.Region, w.Locality.Zone
		k.hasLocality = true
	}
	if !c.SrcIdentity.IsZero() {
		v[5] = c.SrcIdentity.String()
	}
	v[9] = c.DstService
	if s := m.service(c.DstService); s != nil {
		v[10], v[11] = s.Namespace, s.Name
	}
	if w := c.DstWorkload; w != nil {
		v[12], v[13], v[14], v[15] = w.WorkloadName, w.CanonicalName, w.CanonicalRevision, w.Namespace
		v[17], v[18], v[19] = w.CanonicalName, w.CanonicalRevision, w.ClusterID
		k.locality[2], k.locality[3] = w.Locality.Region, w.Locality.Zone
		k.hasLocality = true
	}
	if !c.DstIdentity.IsZero() {
		v[16] = c.DstIdentity.String()
	}
	v[20], v[21], v[22] = "tcp", "-", "unknown"
	if c.MTLS {
		v[22] = "mutual_tls"
	}
	for i := range v {
		v[i] = orUnknown(v[i])
	}
	for i := range k.locality {
		if k.hasLocality {
			k.locality[i] = orUnknown(k.locality[i])
		}
	}
	return k
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
			lines = append(lines, labelString(&k)+" "+strconv.FormatUint(v, 10))
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

// labelString renders {name="value",...} with the names sorted.
func labelString(k *seriesKey) string {
	labels := make([]promtext.Label, 0, len(tcpLabelNames)+len(localityLabelNames))
	for i, n := range tcpLabelNames {
		labels = append(labels, promtext.Label{Name: n, Value: k.values[i]})
	}
	if k.hasLocality {
		for i, n := range localityLabelNames {
			labels = append(labels, promtext.Label{Name: n, Value: k.locality[i]})
		}
	}
	return promtext.LabelString(labels)
}
