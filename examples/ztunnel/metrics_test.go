package main

import (
	"bufio"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/proxy"
)

// family is one metric family read back from the text format.
type family struct {
	help, typ string
	samples   []sample
}

type sample struct {
	labels map[string]string
	value  float64
}

// parseExposition reads the Prometheus text format (version 0.0.4)
// strictly: every sample belongs to a family announced by HELP and TYPE
// lines, label values are quoted with \\, \" and \n escapes, label names
// are sorted and unique, no series repeats.
func parseExposition(text string) (map[string]*family, error) {
	out := map[string]*family{}
	var cur *family
	var curName string
	seen := map[string]bool{}
	for n, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		fail := func(format string, args ...any) error {
			return fmt.Errorf("line %d %q: %s", n+1, line, fmt.Sprintf(format, args...))
		}
		switch {
		case strings.HasPrefix(line, "# HELP "):
			name, help, ok := strings.Cut(line[len("# HELP "):], " ")
			if !ok || out[name] != nil {
				return nil, fail("HELP without text, or a second HELP")
			}
			help = strings.NewReplacer(`\\`, `\`, `\n`, "\n").Replace(help)
			cur, curName = &family{help: help}, name
			out[name] = cur
		case strings.HasPrefix(line, "# TYPE "):
			name, typ, _ := strings.Cut(line[len("# TYPE "):], " ")
			if cur == nil || name != curName || cur.typ != "" {
				return nil, fail("TYPE not right after its HELP")
			}
			cur.typ = typ
		case strings.HasPrefix(line, "#") || line == "":
			return nil, fail("unexpected comment or blank line")
		default:
			i := strings.IndexAny(line, "{ ")
			if i < 0 || line[:i] != curName || cur.typ == "" {
				return nil, fail("sample outside its family %q", curName)
			}
			s := sample{labels: map[string]string{}}
			rest := line[i:]
			if rest[0] == '{' {
				rest = rest[1:]
				last := ""
				for rest[0] != '}' {
					eq := strings.Index(rest, `="`)
					if eq < 0 {
						return nil, fail("bad label")
					}
					name := rest[:eq]
					if name <= last {
						return nil, fail("label %q not in sorted order", name)
					}
					last = name
					rest = rest[eq+2:]
					var v strings.Builder
					for {
						if rest == "" {
							return nil, fail("unterminated value")
						}
						c := rest[0]
						rest = rest[1:]
						if c == '"' {
							break
						}
						if c == '\\' {
							switch rest[0] {
							case '\\':
								v.WriteByte('\\')
							case '"':
								v.WriteByte('"')
							case 'n':
								v.WriteByte('\n')
							default:
								return nil, fail("bad escape")
							}
							rest = rest[1:]
							continue
						}
						v.WriteByte(c)
					}
					s.labels[name] = v.String()
					if rest[0] == ',' {
						rest = rest[1:]
					}
				}
				rest = rest[1:]
			}
			if rest == "" || rest[0] != ' ' {
				return nil, fail("no value")
			}
			val, err := strconv.ParseFloat(rest[1:], 64)
			if err != nil {
				return nil, fail("value: %v", err)
			}
			s.value = val
			key := line[:len(line)-len(rest)]
			if seen[key] {
				return nil, fail("repeated series")
			}
			seen[key] = true
			cur.samples = append(cur.samples, s)
		}
	}
	return out, nil
}

// find returns the value of the one sample whose labels include want.
func (f *family) find(want map[string]string) (float64, int) {
	var v float64
	n := 0
	for _, s := range f.samples {
		ok := true
		for k, x := range want {
			if s.labels[k] != x {
				ok = false
				break
			}
		}
		if ok {
			v += s.value
			n++
		}
	}
	return v, n
}

func TestMetricsExposition(t *testing.T) {
	holder := &proxy.StateHolder{}
	st, err := proxy.NewState(nil, []proxy.Service{{Name: "echo", Namespace: "default", Hostname: "echo.default.svc.cluster.local"}})
	require.NoError(t, err)
	holder.Store(st)
	m := newMetrics(holder)
	src := &proxy.Workload{Name: "sleep-1", Namespace: "default", WorkloadName: "sleep", CanonicalName: `sl"eep`,
		CanonicalRevision: "v1\nv2", ClusterID: `c\1`, Locality: proxy.Locality{Region: "r1"}}
	dst := &proxy.Workload{Name: "echo-1", Namespace: "default", WorkloadName: "echo"}
	c := &proxy.ConnInfo{
		Direction: proxy.Outbound, SrcWorkload: src, DstWorkload: dst, MTLS: true,
		SrcIdentity: spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"),
		DstIdentity: spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/echo"),
		DstService:  "echo.default.svc.cluster.local", SrcAddr: netip.MustParseAddrPort("127.0.0.2:4000"),
		Sent: 5, Received: 7,
	}
	h := m.hooks()
	for i := 0; i < 3; i++ {
		h.Opened(c)
		h.Closed(c)
	}
	in := &proxy.ConnInfo{Direction: proxy.Inbound} // nothing known
	h.Opened(in)

	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	assert.Equal(t, "text/plain; version=0.0.4; charset=utf-8", rec.Header().Get("Content-Type"))
	text := rec.Body.String()
	fams, err := parseExposition(text)
	require.NoError(t, err, "%s", text)
	require.Len(t, fams, 4)
	for name, f := range fams {
		assert.Equal(t, "counter", f.typ, name)
		assert.True(t, strings.HasSuffix(name, "_total"), name)
		assert.NotEmpty(t, f.help)
	}

	out := map[string]string{
		"reporter": "source", "source_workload": "sleep", "source_canonical_service": `sl"eep`, "source_app": `sl"eep`,
		"source_canonical_revision": "v1\nv2", "source_version": "v1\nv2", "source_cluster": `c\1`,
		"source_workload_namespace": "default", "source_principal": "spiffe://cluster.local/ns/default/sa/sleep",
		"destination_service": "echo.default.svc.cluster.local", "destination_service_name": "echo", "destination_service_namespace": "default",
		"destination_workload": "echo", "destination_workload_namespace": "default", "destination_canonical_service": "unknown",
		"destination_canonical_revision": "unknown", "destination_app": "unknown", "destination_version": "unknown", "destination_cluster": "unknown",
		"destination_principal": "spiffe://cluster.local/ns/default/sa/echo",
		"request_protocol":      "tcp", "response_flags": "-", "connection_security_policy": "mutual_tls",
		"source_region": "r1", "source_zone": "unknown", "destination_region": "unknown", "destination_zone": "unknown",
	}
	for name, want := range map[string]float64{
		"istio_tcp_connections_opened_total": 3, "istio_tcp_connections_closed_total": 3,
		"istio_tcp_sent_bytes_total": 21, "istio_tcp_received_bytes_total": 15,
	} {
		v, n := fams[name].find(out)
		assert.Equal(t, 1, n, name)
		assert.Equal(t, want, v, name)
		assert.Len(t, fams[name].samples[0].labels, tcpLabels+localityLabels, name)
	}

	// With no workload known, every value is "unknown" and there are no
	// locality labels, as in ztunnel.
	v, n := fams["istio_tcp_connections_opened_total"].find(map[string]string{"reporter": "destination", "source_workload": "unknown", "connection_security_policy": "unknown"})
	assert.Equal(t, 1, n)
	assert.Equal(t, float64(1), v)
	for _, s := range fams["istio_tcp_connections_opened_total"].samples {
		if s.labels["reporter"] == "destination" {
			assert.Len(t, s.labels, tcpLabels)
		}
	}

	// Stable output.
	rec2 := httptest.NewRecorder()
	m.ServeHTTP(rec2, httptest.NewRequest("GET", "/metrics", nil))
	assert.Equal(t, text, rec2.Body.String())
}

func TestMetricsEmpty(t *testing.T) {
	m := newMetrics(&proxy.StateHolder{})
	var b strings.Builder
	w := bufio.NewWriter(&b)
	m.write(w)
	w.Flush()
	fams, err := parseExposition(b.String())
	require.NoError(t, err, b.String())
	assert.Len(t, fams, 4)
	assert.Equal(t, "The total number of TCP connections opened", fams["istio_tcp_connections_opened_total"].help)
}

// ztunnel's label set: 23 labels on every series, plus source/destination
// region and zone once a workload is known.
const tcpLabels, localityLabels = 23, 4
