package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/meshblocks/meshblocks/proxy"
)

// record is one log line of a component, kept for the checks.
type record struct {
	component string
	msg       string
	attrs     map[string]string
}

// line renders the record with the given attributes, in that order.
func (r *record) line(keys ...string) string {
	var b strings.Builder
	b.WriteString(r.msg)
	for _, k := range keys {
		if v := r.attrs[k]; v != "" {
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	return b.String()
}

// logTap keeps the Info lines of every component (proxies, waypoint,
// certificate managers) so that the checks can look for access-log and
// "RBAC rejected" lines, and shows them on a writer with -v.
type logTap struct {
	mu   sync.Mutex
	recs []record
	out  slog.Handler // nil: not shown
}

func (t *logTap) logger(component string) *slog.Logger {
	return slog.New(&tapHandler{tap: t, component: component})
}

// reset forgets the lines kept so far.
func (t *logTap) reset() {
	t.mu.Lock()
	t.recs = nil
	t.mu.Unlock()
}

// find returns the first line of component with message msg for which
// match is true (match may be nil).
func (t *logTap) find(component, msg string, match func(map[string]string) bool) (record, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range t.recs {
		if r.component == component && r.msg == msg && (match == nil || match(r.attrs)) {
			return r, true
		}
	}
	return record{}, false
}

type tapHandler struct {
	tap       *logTap
	component string
	attrs     []slog.Attr
	group     string
}

func (h *tapHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *tapHandler) Handle(ctx context.Context, r slog.Record) error {
	rec := record{component: h.component, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[h.group+a.Key] = a.Value.String()
		return true
	})
	h.tap.mu.Lock()
	h.tap.recs = append(h.tap.recs, rec)
	h.tap.mu.Unlock()
	if out := h.tap.out; out != nil {
		nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
		nr.AddAttrs(slog.String("component", h.component))
		nr.AddAttrs(h.attrs...)
		r.Attrs(func(a slog.Attr) bool {
			a.Key = h.group + a.Key
			nr.AddAttrs(a)
			return true
		})
		return out.Handle(ctx, nr)
	}
	return nil
}

func (h *tapHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = slices.Clone(h.attrs)
	for _, a := range attrs {
		a.Key = h.group + a.Key
		c.attrs = append(c.attrs, a)
	}
	return &c
}

func (h *tapHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.group = h.group + name + "."
	return &c
}

// series is one labelled counter.
type series struct {
	labels []proxy.MetricLabel
	value  int
}

func (s *series) get(name string) string {
	for _, l := range s.labels {
		if l.Name == name {
			return l.Value
		}
	}
	return ""
}

// matches reports whether every label of want has that value.
func (s *series) matches(want map[string]string) bool {
	for k, v := range want {
		if s.get(k) != v {
			return false
		}
	}
	return true
}

// String renders the series as a Prometheus sample with the labels
// named, or all of them.
func (s *series) String(name string, only ...string) string {
	var parts []string
	for _, l := range s.labels {
		if len(only) == 0 || slices.Contains(only, l.Name) {
			parts = append(parts, fmt.Sprintf("%s=%q", l.Name, l.Value))
		}
	}
	return fmt.Sprintf("%s{%s} %d", name, strings.Join(parts, ","), s.value)
}

// connCounter is istio_tcp_connections_opened_total of one proxy, fed by
// its Opened hook with Istio's labels (proxy.ConnInfo.Labels).
type connCounter struct {
	state  *proxy.StateHolder
	mu     sync.Mutex
	series map[string]*series
}

func newConnCounter(state *proxy.StateHolder) *connCounter {
	return &connCounter{state: state, series: map[string]*series{}}
}

func (c *connCounter) opened(ci *proxy.ConnInfo) {
	var svc *proxy.Service
	if ci.DstService != "" {
		for _, s := range c.state.Load().Services() {
			if s.Hostname == ci.DstService {
				svc = &s
				break
			}
		}
	}
	labels := ci.Labels(svc)
	var key strings.Builder
	for _, l := range labels {
		key.WriteString(l.Name + "=" + l.Value + ",")
	}
	c.mu.Lock()
	s := c.series[key.String()]
	if s == nil {
		s = &series{labels: labels}
		c.series[key.String()] = s
	}
	s.value++
	c.mu.Unlock()
}

// sum adds up the series that match want, and returns one of them.
func (c *connCounter) sum(want map[string]string) (int, *series) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	var one *series
	for _, s := range c.series {
		if s.matches(want) {
			n += s.value
			cp := *s
			one = &cp
		}
	}
	return n, one
}
