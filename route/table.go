package route

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net"
	"net/textproto"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-multierror"
)

// Rand is the randomness source of a pick. *math/rand/v2.Rand satisfies
// it; pass a seeded one for reproducible results. A Rand is used by one
// goroutine at a time.
type Rand interface{ Uint64() uint64 }

type globalRand struct{}

func (globalRand) Uint64() uint64 { return rand.Uint64() }

// Table is an immutable routing snapshot built from a Config. It is safe for
// concurrent use; Pick takes no locks and does not allocate.
type Table struct {
	domain   string
	services map[string]*service
	vips     map[string]*service
	pods     map[string]*Endpoint
	vhosts   map[hostPort]*VirtualHost
}

type hostPort struct {
	host string
	port int
}

type service struct {
	Service
	ns, wpNS string
	clusters map[Destination]*Cluster
	// ztunnel
	strict, failover []string
	allowAll         bool
	vhosts           map[int]*VirtualHost
}

// Destination names an Envoy cluster: a Service port, optionally a subset.
type Destination struct {
	Host   string
	Subset string
	Port   int
}

func (d Destination) String() string {
	if d.Subset == "" {
		return fmt.Sprintf("%s:%d", d.Host, d.Port)
	}
	return fmt.Sprintf("%s:%d/%s", d.Host, d.Port, d.Subset)
}

// Cluster is a set of endpoints with a load-balancing policy.
type Cluster struct {
	Destination
	// Endpoints are the healthy endpoints selected (best locality first).
	Endpoints []*Endpoint
	LB        LB
	ring      []ringEntry
	rr        atomic.Uint64
	active    []atomic.Int64
}

// VirtualHost is the compiled routing for one (Service, port).
type VirtualHost struct {
	Service  string
	Port     int
	Protocol Protocol
	// Configured reports whether route configuration applies; without it
	// requests go to the Service's endpoints and with it an unmatched
	// request gets 404.
	Configured bool
	// Rules are the emitted routes, one per match block, in match order.
	Rules []*Rule
	L4    []*L4Rule
	def   *Cluster
	index pathIndex
}

// Rule is one compiled route: a single match block of an HTTPRoute.
type Rule struct {
	// Route is the HTTPRoute the rule came from.
	Route *HTTPRoute
	// Match is the match block, nil for a catch-all rule.
	Match *Match
	// Origin is "<Kind> <namespace>/<name>" of the RouteConfig.
	Origin string
	// GatewayAPI rules come from Gateway API routes.
	GatewayAPI bool
	m          cmatch
	backends   Weighted[int]
	clusters   []*Cluster // per Route.Backends index; nil = missing
	mirrors    []*Cluster
	hash       []HashKey // per backend
	rewriteRE  *regexp.Regexp
	rewriteSub string
}

// L4Rule is one compiled TCP or TLS rule.
type L4Rule struct {
	Route    *L4Route
	Origin   string
	TLS      bool
	backends Weighted[int]
	clusters []*Cluster
}

// Build validates cfg and compiles it into a Table. Errors are aggregated
// (go-multierror) and each wraps ErrInvalidConfig.
func Build(cfg Config) (*Table, error) {
	var errs *multierror.Error
	t := &Table{
		domain:   cmp.Or(cfg.Domain, "cluster.local"),
		services: map[string]*service{},
		vips:     map[string]*service{},
		pods:     map[string]*Endpoint{},
		vhosts:   map[hostPort]*VirtualHost{},
	}
	bad := func(obj, field, format string, a ...any) {
		errs = multierror.Append(errs, &FieldError{Object: obj, Field: field, Msg: fmt.Sprintf(format, a...)})
	}
	for i := range cfg.Services {
		s := &service{Service: cfg.Services[i], clusters: map[Destination]*Cluster{}, vhosts: map[int]*VirtualHost{}}
		obj := "Service " + s.Host
		f := fmt.Sprintf("services[%d]", i)
		if s.Host == "" {
			bad("", f+".host", "required")
			continue
		}
		if _, dup := t.services[s.Host]; dup {
			bad(obj, f+".host", "duplicate service")
			continue
		}
		s.ns = s.Namespace
		if s.ns == "" {
			if parts := strings.Split(s.Host, "."); len(parts) >= 2 {
				s.ns = parts[1]
			}
		}
		s.wpNS = cmp.Or(s.WaypointNamespace, s.ns)
		if len(s.Ports) == 0 {
			bad(obj, f+".ports", "at least one port is required")
		}
		for j, p := range s.Ports {
			if p.Port <= 0 || p.Port > 65535 {
				bad(obj, fmt.Sprintf("%s.ports[%d].port", f, j), "must be in 1..65535, got %d", p.Port)
			}
		}
		s.Endpoints = slices.Clone(s.Endpoints)
		for j := range s.Endpoints {
			ep := &s.Endpoints[j]
			if net.ParseIP(ep.IP) == nil {
				bad(obj, fmt.Sprintf("%s.endpoints[%d].ip", f, j), "not an IP address: %q", ep.IP)
			}
			if ep.Capacity == 0 {
				ep.Capacity = 1
			}
			t.pods[ep.IP] = ep
		}
		switch {
		case s.InternalTrafficPolicy == "Local":
			s.strict = []string{"node"}
		case s.TrafficDistribution == "PreferClose" || s.TrafficDistribution == "PreferSameZone":
			s.failover = []string{"network", "region", "zone"}
		case s.TrafficDistribution == "PreferSameNode":
			s.failover = []string{"network", "region", "zone", "subzone", "node"}
		case s.TrafficDistribution != "":
			bad(obj, f+".trafficDistribution", "unknown value %q", s.TrafficDistribution)
		}
		s.allowAll = s.PublishNotReadyAddresses
		t.services[s.Host] = s
		if s.VIP != "" {
			t.vips[s.VIP] = s
		}
	}

	policies := map[string]*Policy{}
	for i := range cfg.Policies {
		p := &cfg.Policies[i]
		if _, ok := policies[p.Host]; !ok {
			policies[p.Host] = p
		}
	}

	// Order the route configurations as Istio imports them.
	routes := make([]*RouteConfig, len(cfg.Routes))
	for i := range cfg.Routes {
		routes[i] = &cfg.Routes[i]
	}

	for _, host := range sortedKeys(t.services) {
		s := t.services[host]
		var applicable []*RouteConfig
		for _, rc := range routes {
			if !appliesToMesh(rc.Gateways) {
				continue
			}
			if rc.Namespace != s.ns && rc.Namespace != s.wpNS {
				continue // ambient: only the Service's or waypoint's namespace
			}
			if !hostsMatch(rc.Hosts, s.Host) || !visible(rc, s.wpNS) {
				continue
			}
			applicable = append(applicable, rc)
		}
		sort.SliceStable(applicable, func(i, j int) bool {
			a, b := applicable[i], applicable[j]
			if ba, bb := exportBucket(a), exportBucket(b); ba != bb {
				return ba < bb
			}
			ag := a.GatewayAPI && a.Namespace == s.wpNS
			bg := b.GatewayAPI && b.Namespace == s.wpNS
			if ag != bg {
				return ag
			}
			if !a.Created.Equal(b.Created) {
				return a.Created.Before(b.Created)
			}
			if a.Name != b.Name {
				return a.Name < b.Name
			}
			return a.Namespace < b.Namespace
		})
		for _, p := range s.Ports {
			vh := &VirtualHost{Service: s.Host, Port: p.Port, Protocol: portProtocol(p)}
			vh.def = t.cluster(s, Destination{Host: s.Host, Port: p.Port}, policies, cfg.WaypointLocality)
			for _, rc := range applicable {
				origin := rc.Kind + " " + rc.Namespace + "/" + rc.Name
			rules:
				for ri := range rc.HTTP {
					hr := &rc.HTTP[ri]
					field := cmp.Or(hr.Field, fmt.Sprintf("spec.http[%d]", ri))
					if len(hr.Matches) == 0 {
						if r := t.rule(s, p.Port, hr, nil, origin, rc.GatewayAPI, field, policies, cfg.WaypointLocality, bad); r != nil {
							vh.Rules = append(vh.Rules, r)
						}
						break rules
					}
					for mi := range hr.Matches {
						m := &hr.Matches[mi]
						if m.Port != 0 && m.Port != p.Port {
							continue
						}
						if len(m.SourceLabels) > 0 {
							continue // never match in a waypoint
						}
						if m.SourceNamespace != "" && m.SourceNamespace != s.wpNS {
							continue
						}
						if len(m.Gateways) > 0 && !slices.Contains(m.Gateways, "mesh") {
							continue
						}
						r := t.rule(s, p.Port, hr, m, origin, rc.GatewayAPI, fmt.Sprintf("%s.match[%d]", field, mi), policies, cfg.WaypointLocality, bad)
						if r == nil {
							continue
						}
						vh.Rules = append(vh.Rules, r)
						if isCatchAll(m) {
							break rules
						}
					}
				}
			}
			// L4: first configuration with a usable TLS rule, else first with a TCP rule.
			vh.L4 = t.l4(s, p.Port, applicable, true, policies, cfg.WaypointLocality)
			if vh.L4 == nil {
				vh.L4 = t.l4(s, p.Port, applicable, false, policies, cfg.WaypointLocality)
			}
			vh.Configured = len(vh.Rules) > 0
			vh.index = buildIndex(vh.Rules)
			s.vhosts[p.Port] = vh
			t.vhosts[hostPort{s.Host, p.Port}] = vh
		}
	}
	if errs != nil {
		errs.ErrorFormat = listFormat
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, errs)
	}
	return t, nil
}

func listFormat(es []error) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

// visible reports whether a waypoint in namespace ns sees rc.
func visible(rc *RouteConfig, ns string) bool {
	if len(rc.ExportTo) == 0 {
		return true
	}
	for _, e := range rc.ExportTo {
		switch e {
		case "*":
			return true
		case ".":
			if rc.Namespace == ns {
				return true
			}
		default:
			if e == ns {
				return true
			}
		}
	}
	return false
}

// exportBucket is Istio's import order: exported to "." first, then to
// listed namespaces, then public.
func exportBucket(rc *RouteConfig) int {
	switch {
	case slices.Contains(rc.ExportTo, "."):
		return 0
	case len(rc.ExportTo) > 0 && !slices.Contains(rc.ExportTo, "*"):
		return 1
	}
	return 2
}

func appliesToMesh(gws []string) bool { return len(gws) == 0 || slices.Contains(gws, "mesh") }

func hostsMatch(hosts []string, fqdn string) bool {
	for _, h := range hosts {
		if h == fqdn || h == "*" {
			return true
		}
		if suf, ok := strings.CutPrefix(h, "*"); ok && strings.HasSuffix(fqdn, suf) {
			return true
		}
	}
	return false
}

func portProtocol(p Port) Protocol {
	name := strings.ToLower(cmp.Or(p.AppProtocol, p.Name))
	switch {
	case name == "grpc" || strings.HasPrefix(name, "grpc-"):
		return GRPC
	case name == "http" || name == "http2" || name == "h2c" || strings.HasPrefix(name, "http-") || strings.HasPrefix(name, "http2-") || strings.HasPrefix(name, "kubernetes.io/h2c"):
		return HTTP
	case name == "tcp" || strings.HasPrefix(name, "tcp-") || name == "mongo" || name == "mysql" || name == "redis":
		return TCP
	case name == "tls" || name == "https" || strings.HasPrefix(name, "tls-") || strings.HasPrefix(name, "https-"):
		return TLS
	}
	return "" // sniffed
}

func isCatchAll(m *Match) bool {
	return m.PathKind == PathPrefix && m.Path == "/" && !m.IgnoreCase && len(m.Headers) == 0 && len(m.Query) == 0 &&
		m.Method == nil && m.Authority == nil && m.Scheme == nil
}

// cluster returns (creating once) the cluster for d, or nil when it cannot
// exist: unknown host, unknown port or undefined subset.
func (t *Table) cluster(from *service, d Destination, policies map[string]*Policy, wl Locality) *Cluster {
	s := t.services[d.Host]
	if s == nil {
		return nil
	}
	if d.Port == 0 {
		return nil
	}
	if !slices.ContainsFunc(s.Ports, func(p Port) bool { return p.Port == d.Port }) {
		return nil
	}
	if c, ok := s.clusters[d]; ok {
		return c
	}
	pol := policies[d.Host]
	var sub *Subset
	if d.Subset != "" {
		if pol != nil {
			for i := range pol.Subsets {
				if pol.Subsets[i].Name == d.Subset {
					sub = &pol.Subsets[i]
				}
			}
		}
		if sub == nil {
			s.clusters[d] = nil
			return nil
		}
	}
	c := &Cluster{Destination: d, LB: effectiveLB(pol, sub, d.Port)}
	if len(c.LB.Failover) == 0 && (s.TrafficDistribution == "PreferClose" || s.TrafficDistribution == "PreferSameZone") {
		c.LB.Failover = []string{"network", "region", "zone"}
	}
	if len(c.LB.Failover) == 0 && s.TrafficDistribution == "PreferSameNode" {
		c.LB.Failover = []string{"network", "region", "zone", "subzone", "node"}
	}
	best := -1
	for i := range s.Endpoints {
		ep := &s.Endpoints[i]
		if ep.Unhealthy {
			continue
		}
		if sub != nil && !labelsContain(ep.Labels, sub.Labels) {
			continue
		}
		rank := 0
		if wl != (Locality{}) {
			rank = localityRank(c.LB.Failover, wl, ep.Locality)
		}
		if rank > best {
			best = rank
			c.Endpoints = c.Endpoints[:0]
		}
		if rank == best {
			c.Endpoints = append(c.Endpoints, ep)
		}
	}
	c.active = make([]atomic.Int64, len(c.Endpoints))
	if c.LB.Kind == ConsistentHash {
		c.ring = buildRing(c.Endpoints, c.LB.RingSize)
	}
	s.clusters[d] = c
	return c
}

func effectiveLB(pol *Policy, sub *Subset, port int) LB {
	// Istio's MergeSubsetTrafficPolicy: a port-level setting replaces its
	// level wholesale; then the subset's fields override the parent's.
	if pol == nil {
		return LB{}
	}
	level := func(tp TrafficPolicy) *LB {
		if lb, ok := tp.Ports[port]; ok {
			return lb
		}
		return tp.LB
	}
	if sub != nil {
		if lb := level(sub.Policy); lb != nil {
			return *lb
		}
	}
	if lb := level(pol.Policy); lb != nil {
		return *lb
	}
	return LB{}
}

func labelsContain(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

func (t *Table) destPort(b Backend, arrived int) int {
	if b.Port != 0 {
		return b.Port
	}
	if s := t.services[b.Host]; s != nil && len(s.Ports) == 1 {
		return s.Ports[0].Port
	}
	return arrived
}

func (t *Table) rule(s *service, port int, hr *HTTPRoute, m *Match, origin string, gw bool, field string,
	policies map[string]*Policy, wl Locality, bad func(obj, field, format string, a ...any)) *Rule {
	r := &Rule{Route: hr, Match: m, Origin: origin, GatewayAPI: gw}
	if m != nil {
		cm, err := compileMatch(m)
		if err != nil {
			bad(origin, field, "%v", err)
			return nil
		}
		r.m = cm
	}
	n := 0
	if hr.Redirect != nil {
		n++
	}
	if hr.DirectResponse != nil {
		n++
	}
	if len(hr.Backends) > 0 {
		n++
	}
	if n > 1 {
		bad(origin, field, "only one of route, redirect and directResponse may be set")
		return nil
	}
	if hr.Rewrite != nil && hr.Rewrite.Kind == RewriteRegex {
		re, err := regexp.Compile(hr.Rewrite.Pattern)
		if err != nil {
			bad(origin, field+".rewrite.uriRegexRewrite.match", "invalid RE2: %v", err)
			return nil
		}
		r.rewriteRE, r.rewriteSub = re, envoySubst(hr.Rewrite.Substitution)
	}
	idx := make([]int, 0, len(hr.Backends))
	weights := make([]uint32, 0, len(hr.Backends))
	r.clusters = make([]*Cluster, len(hr.Backends))
	r.hash = make([]HashKey, len(hr.Backends))
	for i, b := range hr.Backends {
		if !b.Invalid {
			c := t.cluster(s, Destination{Host: b.Host, Subset: b.Subset, Port: t.destPort(b, port)}, policies, wl)
			r.clusters[i] = c
			if c != nil {
				r.hash[i] = c.LB.Hash
			}
		}
		w := b.Weight
		if len(hr.Backends) == 1 && !gw {
			w = 1 // a single VirtualService destination ignores its weight
		}
		if w == 0 {
			continue
		}
		idx = append(idx, i)
		weights = append(weights, w)
	}
	r.backends = NewWeighted(idx, weights)
	for _, mr := range hr.Mirrors {
		r.mirrors = append(r.mirrors, t.cluster(s, Destination{Host: mr.Host, Subset: mr.Subset, Port: t.destPort(Backend{Host: mr.Host, Port: mr.Port}, port)}, policies, wl))
	}
	return r
}

func (t *Table) l4(s *service, port int, rcs []*RouteConfig, tls bool, policies map[string]*Policy, wl Locality) []*L4Rule {
	for _, rc := range rcs {
		list := rc.TCP
		if tls {
			list = rc.TLS
		}
		var out []*L4Rule
		for i := range list {
			lr := &list[i]
			if lr.Port != 0 && lr.Port != port {
				continue
			}
			if len(lr.SourceLabels) > 0 {
				continue
			}
			if tls && !(len(lr.SNIHosts) == 1 && lr.SNIHosts[0] == s.Host) {
				continue
			}
			r := &L4Rule{Route: lr, Origin: rc.Kind + " " + rc.Namespace + "/" + rc.Name, TLS: tls}
			var idx []int
			var w []uint32
			r.clusters = make([]*Cluster, len(lr.Backends))
			for j, b := range lr.Backends {
				if !b.Invalid {
					r.clusters[j] = t.cluster(s, Destination{Host: b.Host, Subset: b.Subset, Port: t.destPort(b, port)}, policies, wl)
				}
				wt := b.Weight
				if len(lr.Backends) == 1 && !rc.GatewayAPI {
					wt = 1
				}
				if wt > 0 {
					idx = append(idx, j)
					w = append(w, wt)
				}
			}
			r.backends = NewWeighted(idx, w)
			out = append(out, r)
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// Service reports the Service with host, if known.
func (t *Table) Service(host string) (Service, bool) {
	s, ok := t.services[host]
	if !ok {
		return Service{}, false
	}
	return s.Service, true
}

// VirtualHost returns the compiled routes for a Service port, or nil.
func (t *Table) VirtualHost(host string, port int) *VirtualHost {
	return t.vhosts[hostPort{host, port}]
}

// Lookup resolves the destination a client dialled (Service FQDN, VIP or
// pod IP) to the Service host, or to an endpoint for a pod IP.
func (t *Table) lookup(host string) (*service, *Endpoint) {
	if s, ok := t.services[host]; ok {
		return s, nil
	}
	if s, ok := t.vips[host]; ok {
		return s, nil
	}
	if ep, ok := t.pods[host]; ok {
		return nil, ep
	}
	return nil, nil
}

// ---- matching ----

type cstring struct {
	kind  StringKind
	value string
	re    *regexp.Regexp
}

func (c *cstring) match(v string) bool {
	switch c.kind {
	case Present:
		return true
	case Exact:
		return v == c.value
	case Prefix:
		return strings.HasPrefix(v, c.value)
	case Regex:
		return c.re.MatchString(v)
	}
	return false
}

type cheader struct {
	name   string // canonical
	invert bool
	cstring
}

type cquery struct {
	name string
	cstring
}

type cmatch struct {
	pathKind  PathKind
	path      string
	lower     bool
	re        *regexp.Regexp
	headers   []cheader
	query     []cquery
	method    *cstring
	authority *cstring
	scheme    *cstring
}

func compileString(s StringMatch, what string) (cstring, error) {
	c := cstring{kind: s.Kind, value: s.Value}
	if s.Kind == Regex {
		re, err := regexp.Compile(`^(?:` + s.Value + `)$`)
		if err != nil {
			return c, fmt.Errorf("%s: invalid RE2 %q: %w", what, s.Value, err)
		}
		c.re = re
	}
	return c, nil
}

func compileMatch(m *Match) (cmatch, error) {
	c := cmatch{pathKind: m.PathKind, path: m.Path, lower: m.IgnoreCase}
	switch m.PathKind {
	case PathRegex:
		re, err := regexp.Compile(`^(?:` + m.Path + `)$`)
		if err != nil {
			return c, fmt.Errorf("uri.regex: invalid RE2 %q: %w", m.Path, err)
		}
		c.re = re
	case PathSegmentPrefix:
		c.path = strings.TrimSuffix(m.Path, "/")
	}
	for _, h := range m.Headers {
		cs, err := compileString(h.StringMatch, "headers."+h.Name)
		if err != nil {
			return c, err
		}
		c.headers = append(c.headers, cheader{name: textproto.CanonicalMIMEHeaderKey(h.Name), invert: h.Invert, cstring: cs})
	}
	for _, q := range m.Query {
		cs, err := compileString(q.StringMatch, "queryParams."+q.Name)
		if err != nil {
			return c, err
		}
		c.query = append(c.query, cquery{name: q.Name, cstring: cs})
	}
	for _, x := range []struct {
		in  *StringMatch
		out **cstring
		n   string
	}{{m.Method, &c.method, "method"}, {m.Authority, &c.authority, "authority"}, {m.Scheme, &c.scheme, "scheme"}} {
		if x.in != nil {
			cs, err := compileString(*x.in, x.n)
			if err != nil {
				return c, err
			}
			*x.out = &cs
		}
	}
	return c, nil
}

func splitQuery(p string) (path, query string) {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		return p[:i], p[i+1:]
	}
	return p, ""
}

func (c *cmatch) matches(req *Request, path, pathNoQuery, rawQuery string) bool {
	switch c.pathKind {
	case PathExact:
		if c.lower {
			if !strings.EqualFold(pathNoQuery, c.path) {
				return false
			}
		} else if pathNoQuery != c.path {
			return false
		}
	case PathPrefix:
		if len(path) < len(c.path) {
			return false
		}
		if c.lower {
			if !strings.EqualFold(path[:len(c.path)], c.path) {
				return false
			}
		} else if path[:len(c.path)] != c.path {
			return false
		}
	case PathSegmentPrefix:
		if !segmentPrefix(pathNoQuery, c.path) {
			return false
		}
	case PathRegex:
		if !c.re.MatchString(pathNoQuery) {
			return false
		}
	}
	if c.method != nil && !c.method.match(cmp.Or(req.Method, "GET")) {
		return false
	}
	if c.authority != nil && !c.authority.match(req.authority()) {
		return false
	}
	if c.scheme != nil && !c.scheme.match(cmp.Or(req.Scheme, "http")) {
		return false
	}
	for i := range c.headers {
		h := &c.headers[i]
		vals, ok := req.Header[h.name]
		var v string
		switch len(vals) {
		case 0:
		case 1:
			v = vals[0]
		default:
			v = strings.Join(vals, ",")
		}
		if h.invert {
			if h.kind == Present {
				if ok {
					return false
				}
				continue
			}
			if h.match(v) {
				return false
			}
			continue
		}
		if !ok || !h.match(v) {
			return false
		}
	}
	for i := range c.query {
		q := &c.query[i]
		v, ok := queryValue(rawQuery, q.name)
		if !ok || !q.match(v) {
			return false
		}
	}
	return true
}

func segmentPrefix(p, prefix string) bool {
	if prefix == "" {
		return true
	}
	if !strings.HasPrefix(p, prefix) {
		return false
	}
	return len(p) == len(prefix) || p[len(prefix)] == '/'
}

// queryValue returns the first value of key in a raw query string.
func queryValue(raw, key string) (string, bool) {
	for raw != "" {
		var kv string
		if i := strings.IndexByte(raw, '&'); i >= 0 {
			kv, raw = raw[:i], raw[i+1:]
		} else {
			kv, raw = raw, ""
		}
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		if strings.ContainsAny(k, "%+") {
			k = unescape(k)
		}
		if k != key {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			v = unescape(v)
		}
		return v, true
	}
	return "", false
}

func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s):
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
			} else {
				b.WriteByte(c)
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// pathIndex narrows the rules a path can match: literal exact and prefix
// paths are looked up by value, the rest are scanned in order.
type pathIndex struct {
	exact   map[string][]int32
	prefix  map[string][]int32
	pLens   []int
	segment map[string][]int32
	sLens   []int
	// hdr indexes rules the path cannot narrow by one exact header value:
	// canonical name -> value -> rules.
	hdr      map[string]map[string][]int32
	hdrNames []string
	generic  []int32
	useIndex bool
}

// exactHeader returns the first non-inverted exact header match of m.
func (m *cmatch) exactHeader() (name, value string, ok bool) {
	for _, h := range m.headers {
		if !h.invert && h.kind == Exact {
			return h.name, h.value, true
		}
	}
	return "", "", false
}

func buildIndex(rules []*Rule) pathIndex {
	ix := pathIndex{exact: map[string][]int32{}, prefix: map[string][]int32{}, segment: map[string][]int32{}}
	if len(rules) < 16 {
		return ix
	}
	ix.useIndex = true
	for i, r := range rules {
		id := int32(i)
		literal := r.Match != nil && !r.m.lower && (r.m.pathKind == PathExact || r.m.pathKind == PathPrefix || r.m.pathKind == PathSegmentPrefix)
		if !literal && r.Match != nil {
			if name, value, ok := r.m.exactHeader(); ok {
				if ix.hdr == nil {
					ix.hdr = map[string]map[string][]int32{}
				}
				if ix.hdr[name] == nil {
					ix.hdr[name] = map[string][]int32{}
					ix.hdrNames = append(ix.hdrNames, name)
				}
				ix.hdr[name][value] = append(ix.hdr[name][value], id)
				continue
			}
		}
		switch {
		case r.Match == nil || r.m.lower:
			ix.generic = append(ix.generic, id)
		case r.m.pathKind == PathExact:
			ix.exact[r.m.path] = append(ix.exact[r.m.path], id)
		case r.m.pathKind == PathPrefix:
			if !slices.Contains(ix.pLens, len(r.m.path)) {
				ix.pLens = append(ix.pLens, len(r.m.path))
			}
			ix.prefix[r.m.path] = append(ix.prefix[r.m.path], id)
		case r.m.pathKind == PathSegmentPrefix:
			if !slices.Contains(ix.sLens, len(r.m.path)) {
				ix.sLens = append(ix.sLens, len(r.m.path))
			}
			ix.segment[r.m.path] = append(ix.segment[r.m.path], id)
		default:
			ix.generic = append(ix.generic, id)
		}
	}
	slices.Sort(ix.pLens)
	slices.Sort(ix.sLens)
	return ix
}

// Match returns the first rule matching req, or nil (404).
func (vh *VirtualHost) Match(req *Request) *Rule {
	path := req.Path
	if path == "" {
		path = "/"
	}
	pnq, rq := splitQuery(path)
	if !vh.index.useIndex {
		for _, r := range vh.Rules {
			if r.Match == nil || r.m.matches(req, path, pnq, rq) {
				return r
			}
		}
		return nil
	}
	best := int32(len(vh.Rules))
	try := func(list []int32) {
		for _, id := range list {
			if id >= best {
				return
			}
			r := vh.Rules[id]
			if r.Match == nil || r.m.matches(req, path, pnq, rq) {
				best = id
				return
			}
		}
	}
	ix := &vh.index
	try(ix.generic)
	for _, name := range ix.hdrNames {
		vals, ok := req.Header[name]
		if !ok {
			continue
		}
		v := ""
		if len(vals) == 1 {
			v = vals[0]
		} else {
			v = strings.Join(vals, ",")
		}
		if l, ok := ix.hdr[name][v]; ok {
			try(l)
		}
	}
	if l, ok := ix.exact[pnq]; ok {
		try(l)
	}
	for _, n := range ix.pLens {
		if n > len(path) {
			break
		}
		if l, ok := ix.prefix[path[:n]]; ok {
			try(l)
		}
	}
	for _, n := range ix.sLens {
		if n > len(pnq) {
			break
		}
		if l, ok := ix.segment[pnq[:n]]; ok {
			try(l)
		}
	}
	if int(best) == len(vh.Rules) {
		return nil
	}
	return vh.Rules[best]
}

// ---- picking ----

// Request is what the waypoint (or ztunnel) sees of a request.
type Request struct {
	// Host is what the client dialled: a Service FQDN, a VIP or a pod IP.
	Host string
	// Port is the Service port.
	Port int
	// Protocol of the request; empty means HTTP.
	Protocol Protocol
	// Method defaults to GET, Scheme to http.
	Method, Scheme string
	// Path includes the query string; empty means "/".
	Path string
	// Authority is the Host header; empty means Host.
	Authority string
	// Header holds request headers with canonical keys (as net/http).
	Header map[string][]string
	// SourceIP is the client address (consistent hashing).
	SourceIP string
	// Source is the client's locality (ztunnel balancing).
	Source Locality
}

func (r *Request) authority() string {
	if r.Authority != "" {
		return r.Authority
	}
	return r.Host
}

// Kind is what a pick decided.
type Kind int

// Pick outcomes.
const (
	// Forward: send to Result.Endpoint (through Result.Cluster).
	Forward Kind = iota
	// Local: answered by the proxy with Result.Status (404 no route,
	// 503/500 no cluster, 503 no healthy upstream, direct responses,
	// aborts).
	Local
	// RedirectResponse: answer with a redirect (Result.Rule.Route.Redirect).
	RedirectResponse
	// Refused: the connection is refused (L4).
	Refused
)

// Reason explains a Local or Refused result.
type Reason int

// Reasons.
const (
	ReasonNone Reason = iota
	ReasonNoRoute
	ReasonNoCluster
	ReasonNoHealthy
	ReasonDirect
	ReasonAbort
	ReasonNoBackend
	ReasonUnknownHost
)

// Result is the outcome of a pick. Pointers refer into the Table.
type Result struct {
	Kind   Kind
	Reason Reason
	// Status for Local results (HTTP); GRPCStatus for gRPC aborts.
	Status     int
	GRPCStatus int
	// Via is the virtual host used (nil for pod IPs).
	Via *VirtualHost
	// Rule is the HTTP rule matched, L4Rule the TCP/TLS rule.
	Rule   *Rule
	L4Rule *L4Rule
	// Backend is the route backend chosen (index into Rule.Route.Backends).
	Backend int
	// Cluster and Endpoint are set for Forward.
	Cluster  *Cluster
	Endpoint *Endpoint
	// Delay is an injected fault delay.
	Delay time.Duration
	// Mirrors has bit i set when Rule.Route.Mirrors[i] gets a copy.
	Mirrors uint64
	// Waypoint is false when ztunnel balanced the connection alone.
	Waypoint bool
	slot     int
}

// Pick routes one request (or connection). r supplies randomness; if nil a
// goroutine-safe global source is used. Pick never blocks and does not
// allocate for the common cases. Call Done when a Forward request ends so
// least-request balancing sees it finish.
func (t *Table) Pick(req *Request, r Rand) Result {
	if r == nil {
		r = globalRand{}
	}
	s, pod := t.lookup(req.Host)
	if s == nil {
		if pod != nil {
			return Result{Kind: Forward, Endpoint: pod, slot: -1}
		}
		return Result{Kind: Refused, Reason: ReasonUnknownHost, slot: -1}
	}
	vh := s.vhosts[req.Port]
	if vh == nil {
		return Result{Kind: Refused, Reason: ReasonUnknownHost, slot: -1}
	}
	if s.NoWaypoint {
		return t.ztunnel(s, req, r)
	}
	l4 := vh.Protocol == TCP || vh.Protocol == TLS || (vh.Protocol == "" && (req.Protocol == TCP || req.Protocol == TLS))
	if l4 {
		return t.pickL4(vh, req, r)
	}
	res := Result{Via: vh, Waypoint: true, slot: -1}
	if !vh.Configured {
		return pickEndpoint(res, vh.def, HashKey{}, req, r)
	}
	rule := vh.Match(req)
	if rule == nil {
		res.Kind, res.Reason, res.Status = Local, ReasonNoRoute, 404
		return res
	}
	res.Rule = rule
	hr := rule.Route
	res.Backend = -1
	if f := hr.Fault; f != nil {
		if f.DelayPerMillion > 0 && r.Uint64()%1000000 < uint64(f.DelayPerMillion) {
			res.Delay = f.Delay
		}
		if f.HasAbort && f.AbortPerMillion > 0 && r.Uint64()%1000000 < uint64(f.AbortPerMillion) {
			res.Kind, res.Reason = Local, ReasonAbort
			if f.AbortGRPC != 0 || f.AbortStatus == 0 {
				res.Status, res.GRPCStatus = 200, f.AbortGRPC
			} else {
				res.Status = f.AbortStatus
			}
			return res
		}
	}
	for i, c := range rule.mirrors {
		if c != nil && i < 64 && r.Uint64()%1000000 < uint64(hr.Mirrors[i].PerMillion) {
			res.Mirrors |= 1 << i
		}
	}
	switch {
	case hr.DirectResponse != nil:
		res.Kind, res.Reason, res.Status = Local, ReasonDirect, hr.DirectResponse.Status
		return res
	case hr.Redirect != nil:
		res.Kind, res.Status = RedirectResponse, cmp.Or(hr.Redirect.Status, 301)
		return res
	case hr.NoBackendStatus != 0:
		res.Kind, res.Reason, res.Status = Local, ReasonNoBackend, hr.NoBackendStatus
		return res
	}
	i := rule.backends.Pick(r.Uint64())
	if i < 0 {
		res.Kind, res.Reason, res.Status = Local, ReasonNoBackend, cmp.Or(hr.MissingBackendStatus, 503)
		return res
	}
	bi := rule.backends.Item(i)
	res.Backend = bi
	c := rule.clusters[bi]
	if c == nil {
		res.Kind, res.Reason, res.Status = Local, ReasonNoCluster, cmp.Or(hr.MissingBackendStatus, 503)
		return res
	}
	return pickEndpoint(res, c, rule.hash[bi], req, r)
}

func (t *Table) pickL4(vh *VirtualHost, req *Request, r Rand) Result {
	res := Result{Via: vh, Waypoint: true, slot: -1, Backend: -1}
	if len(vh.L4) == 0 {
		return pickEndpoint(res, vh.def, HashKey{}, req, r)
	}
	lr := vh.L4[0]
	res.L4Rule = lr
	if lr.Route.Reject {
		res.Kind, res.Reason = Refused, ReasonNoBackend
		return res
	}
	i := lr.backends.Pick(r.Uint64())
	if i < 0 {
		res.Kind, res.Reason = Refused, ReasonNoBackend
		return res
	}
	bi := lr.backends.Item(i)
	res.Backend = bi
	c := lr.clusters[bi]
	if c == nil {
		res.Kind, res.Reason = Refused, ReasonNoCluster
		return res
	}
	return pickEndpoint(res, c, c.LB.Hash, req, r)
}

func pickEndpoint(res Result, c *Cluster, hash HashKey, req *Request, r Rand) Result {
	res.Cluster = c
	n := len(c.Endpoints)
	if n == 0 {
		res.Kind, res.Reason, res.Status = Local, ReasonNoHealthy, 503
		if res.L4Rule != nil || (res.Via != nil && res.Rule == nil && (req.Protocol == TCP || req.Protocol == TLS)) {
			res.Kind = Refused
		}
		return res
	}
	res.Kind = Forward
	idx := -1
	switch c.LB.Kind {
	case ConsistentHash:
		if h, ok := hashRequest(hash, req); ok {
			idx = ringLookup(c.ring, h)
		} else {
			idx = int(r.Uint64() % uint64(n))
		}
	case RoundRobin:
		idx = int((c.rr.Add(1) - 1) % uint64(n))
	case Random, Passthrough:
		idx = int(r.Uint64() % uint64(n))
	default: // least request, power of two choices
		a := int(r.Uint64() % uint64(n))
		b := int(r.Uint64() % uint64(n))
		idx = a
		if c.active[b].Load() < c.active[a].Load() {
			idx = b
		}
	}
	c.active[idx].Add(1)
	res.slot = idx
	res.Endpoint = c.Endpoints[idx]
	return res
}

// Done records the end of a Forward request picked from a cluster.
func (res *Result) Done() {
	if res.Cluster != nil && res.slot >= 0 {
		res.Cluster.active[res.slot].Add(-1)
		res.slot = -1
	}
}

// ---- consistent hashing ----

type ringEntry struct {
	hash uint64
	ep   int
}

func fnv(s string, h uint64) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

const fnvOffset = 14695981039346656037

func mix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

func buildRing(eps []*Endpoint, size int) []ringEntry {
	if size <= 0 {
		size = 1024
	}
	if len(eps) == 0 {
		return nil
	}
	per := (size + len(eps) - 1) / len(eps)
	ring := make([]ringEntry, 0, per*len(eps))
	for i, ep := range eps {
		for j := 0; j < per; j++ {
			ring = append(ring, ringEntry{hash: mix(fnv(strconv.Itoa(j), fnv(ep.IP+"_", fnvOffset))), ep: i})
		}
	}
	sort.Slice(ring, func(a, b int) bool { return ring[a].hash < ring[b].hash })
	return ring
}

func ringLookup(ring []ringEntry, h uint64) int {
	i := sort.Search(len(ring), func(i int) bool { return ring[i].hash >= h })
	if i == len(ring) {
		i = 0
	}
	return ring[i].ep
}

func hashRequest(k HashKey, req *Request) (uint64, bool) {
	switch {
	case k.Header != "":
		v, ok := req.Header[textproto.CanonicalMIMEHeaderKey(k.Header)]
		if !ok || len(v) == 0 {
			return 0, false
		}
		return mix(fnv(v[0], fnvOffset)), true
	case k.Cookie != "":
		for _, line := range req.Header["Cookie"] {
			for line != "" {
				var part string
				part, line, _ = strings.Cut(line, ";")
				name, val, _ := strings.Cut(strings.TrimSpace(part), "=")
				if name == k.Cookie {
					return mix(fnv(val, fnvOffset)), true
				}
			}
		}
		return 0, false
	case k.SourceIP:
		if req.SourceIP == "" {
			return 0, false
		}
		return mix(fnv(req.SourceIP, fnvOffset)), true
	case k.Query != "":
		_, q := splitQuery(req.Path)
		v, ok := queryValue(q, k.Query)
		if !ok {
			return 0, false
		}
		return mix(fnv(v, fnvOffset)), true
	}
	return 0, false
}

// ---- locality ----

func scopeMatch(scope string, a, b Locality) bool {
	switch scope {
	case "network":
		return a.Network == b.Network
	case "region":
		return a.Region == b.Region
	case "zone":
		return a.Region == b.Region && a.Zone == b.Zone
	case "subzone":
		return a.Region == b.Region && a.Zone == b.Zone && a.Subzone == b.Subzone
	case "node":
		return a.Node == b.Node
	}
	return false
}

// localityRank scores ep relative to src over the ordered scopes, as ztunnel
// ranks FAILOVER endpoints: count matching scopes in order and stop at the
// first mismatch, except that NETWORK as first scope adds a bonus when it
// matches and does not stop the count when it does not.
func localityRank(scopes []string, src, ep Locality) int {
	rank := 0
	for i, sc := range scopes {
		m := scopeMatch(sc, src, ep)
		if i == 0 && sc == "network" {
			if m {
				rank += len(scopes)
			}
			continue
		}
		if !m {
			break
		}
		rank++
	}
	return rank
}

func (t *Table) ztunnel(s *service, req *Request, r Rand) Result {
	res := Result{slot: -1, Backend: -1}
	usable := func(ep *Endpoint) bool { return !ep.Unhealthy || s.allowAll }
	best := -1
	var total uint64
	for i := range s.Endpoints {
		ep := &s.Endpoints[i]
		if !usable(ep) {
			continue
		}
		rank := 0
		switch {
		case s.strict != nil:
			ok := true
			for _, sc := range s.strict {
				ok = ok && scopeMatch(sc, req.Source, ep.Locality)
			}
			if !ok {
				continue
			}
		case s.failover != nil:
			rank = localityRank(s.failover, req.Source, ep.Locality)
		}
		if rank > best {
			best, total = rank, 0
		}
		if rank == best {
			total += uint64(ep.Capacity)
		}
	}
	if total == 0 {
		res.Kind, res.Reason = Refused, ReasonNoHealthy
		return res
	}
	sel := r.Uint64() % total
	for i := range s.Endpoints {
		ep := &s.Endpoints[i]
		if !usable(ep) {
			continue
		}
		rank := 0
		switch {
		case s.strict != nil:
			ok := true
			for _, sc := range s.strict {
				ok = ok && scopeMatch(sc, req.Source, ep.Locality)
			}
			if !ok {
				continue
			}
		case s.failover != nil:
			rank = localityRank(s.failover, req.Source, ep.Locality)
		}
		if rank != best {
			continue
		}
		if sel < uint64(ep.Capacity) {
			res.Kind, res.Endpoint = Forward, ep
			return res
		}
		sel -= uint64(ep.Capacity)
	}
	res.Kind, res.Reason = Refused, ReasonNoHealthy
	return res
}
