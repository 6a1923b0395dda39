// Package promtext writes metrics in the Prometheus text exposition format
// (version 0.0.4) for the example binaries, without the Prometheus client
// library: HELP and TYPE lines, label names sorted, series sorted by their
// labels, so that output is stable.
//
//	reqs := promtext.NewCounterVec("istio_requests_total", "Total requests.", "response_code")
//	reqs.Add(1, "200")
//	w := bufio.NewWriter(out)
//	reqs.Write(w)
//	w.Flush()
package promtext

import (
	"bufio"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// ContentType is the Content-Type of the text exposition format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Label is one label of a series.
type Label struct{ Name, Value string }

// LabelString renders labels as {name="value",...}, sorted by name, values
// escaped. It does not modify labels.
func LabelString(labels []Label) string {
	ls := slices.Clone(labels)
	slices.SortFunc(ls, func(a, b Label) int { return strings.Compare(a.Name, b.Name) })
	var b strings.Builder
	b.WriteByte('{')
	for i, l := range ls {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(l.Name)
		b.WriteString(`="`)
		b.WriteString(EscapeLabel(l.Value))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// EscapeLabel escapes a label value: backslash, double quote and newline.
func EscapeLabel(s string) string {
	if !strings.ContainsAny(s, "\\\"\n") {
		return s
	}
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// EscapeHelp escapes a HELP text: backslash and newline.
func EscapeHelp(s string) string {
	if !strings.ContainsAny(s, "\\\n") {
		return s
	}
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

// WriteHeader writes the HELP and TYPE lines of a family.
func WriteHeader(w *bufio.Writer, name, help, typ string) {
	w.WriteString("# HELP " + name + " " + EscapeHelp(help) + "\n")
	w.WriteString("# TYPE " + name + " " + typ + "\n")
}

// FormatValue formats a sample value: integers without a fraction,
// infinities as +Inf and -Inf.
func FormatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// key joins label values into a map key.
func key(values []string) string { return strings.Join(values, "\xff") }

// series returns the labels of a key.
func series(names []string, k string) []Label {
	values := strings.Split(k, "\xff")
	ls := make([]Label, len(names))
	for i, n := range names {
		ls[i] = Label{n, values[i]}
	}
	return ls
}

// CounterVec is a counter family with fixed label names. It is safe for
// concurrent use.
type CounterVec struct {
	name, help string
	names      []string
	mu         sync.Mutex
	values     map[string]float64
}

// NewCounterVec returns an empty counter family.
func NewCounterVec(name, help string, labelNames ...string) *CounterVec {
	return &CounterVec{name: name, help: help, names: labelNames, values: map[string]float64{}}
}

// Add adds v to the series with the label values (in labelNames order).
func (c *CounterVec) Add(v float64, values ...string) {
	k := key(values)
	c.mu.Lock()
	c.values[k] += v
	c.mu.Unlock()
}

// Write writes the family.
func (c *CounterVec) Write(w *bufio.Writer) {
	c.mu.Lock()
	lines := make([]string, 0, len(c.values))
	for k, v := range c.values {
		lines = append(lines, c.name+LabelString(series(c.names, k))+" "+FormatValue(v))
	}
	c.mu.Unlock()
	slices.Sort(lines)
	WriteHeader(w, c.name, c.help, "counter")
	for _, l := range lines {
		w.WriteString(l)
		w.WriteByte('\n')
	}
}

// HistogramVec is a histogram family with fixed label names and bucket
// bounds. It is safe for concurrent use.
type HistogramVec struct {
	name, help string
	names      []string
	bounds     []float64
	mu         sync.Mutex
	series     map[string]*histogram
}

type histogram struct {
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	n      uint64
}

// NewHistogramVec returns an empty histogram family with the given upper
// bounds (sorted ascending; +Inf is implied).
func NewHistogramVec(name, help string, bounds []float64, labelNames ...string) *HistogramVec {
	return &HistogramVec{name: name, help: help, names: labelNames, bounds: bounds, series: map[string]*histogram{}}
}

// Observe records v in the series with the label values.
func (h *HistogramVec) Observe(v float64, values ...string) {
	k := key(values)
	i, _ := slices.BinarySearch(h.bounds, v)
	h.mu.Lock()
	s := h.series[k]
	if s == nil {
		s = &histogram{counts: make([]uint64, len(h.bounds)+1)}
		h.series[k] = s
	}
	s.counts[i]++
	s.sum += v
	s.n++
	h.mu.Unlock()
}

// Write writes the family: per series the cumulative _bucket lines
// (le="..."), _sum and _count.
func (h *HistogramVec) Write(w *bufio.Writer) {
	type entry struct {
		labels []Label
		text   string
	}
	h.mu.Lock()
	var out []entry
	for k, s := range h.series {
		base := series(h.names, k)
		var b strings.Builder
		var cum uint64
		for i := range s.counts {
			cum += s.counts[i]
			le := "+Inf"
			if i < len(h.bounds) {
				le = FormatValue(h.bounds[i])
			}
			b.WriteString(h.name + "_bucket" + LabelString(append(slices.Clone(base), Label{"le", le})) + " " + strconv.FormatUint(cum, 10) + "\n")
		}
		ls := LabelString(base)
		b.WriteString(h.name + "_sum" + ls + " " + FormatValue(s.sum) + "\n")
		b.WriteString(h.name + "_count" + ls + " " + strconv.FormatUint(s.n, 10) + "\n")
		out = append(out, entry{base, b.String()})
	}
	h.mu.Unlock()
	slices.SortFunc(out, func(a, b entry) int { return strings.Compare(LabelString(a.labels), LabelString(b.labels)) })
	WriteHeader(w, h.name, h.help, "histogram")
	for _, e := range out {
		w.WriteString(e.text)
	}
}
