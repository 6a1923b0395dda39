package route

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"regexp"
	"slices"
	"sort"
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
	scratch  scratch
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
	// Endpoints are the endpoints in use: healthy, serving the port,
	// reachable, in the subset, and of the best locality priority (or, when
	// the DestinationRule distributes by locality, grouped by locality).
	Endpoints []*Endpoint
	// LB is the merged load-balancing policy.
	LB LB
	// hashHeader is LB.Hash.Header in canonical form (as Request.Header keys).
	hashHeader string
	// localities partition Endpoints when traffic is distributed by
	// locality; groups chooses one by weight.
	localities []localityGroup
	groups     Weighted[int]
	ring       []ringEntry
	maglev     []int32
	rr         []atomic.Uint64 // per locality group (one without groups)
	active     []atomic.Int64
}

// LocalityShares reports, when the cluster distributes traffic by locality,
// each locality's share of requests (its weight over the sum); nil
// otherwise.
func (c *Cluster) LocalityShares() map[Locality]float64 {
	if len(c.localities) == 0 {
		return nil
	}
	out := map[Locality]float64{}
	total := float64(c.groups.Total())
	for _, g := range c.localities {
		l := c.Endpoints[g.lo].Locality
		out[Locality{Region: l.Region, Zone: l.Zone, Subzone: l.Subzone}] = float64(g.weight) / total
	}
	return out
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
	Rules   []*Rule
	L4      []*L4Rule
	def     *Cluster
	index   pathIndex
	scratch *scratch
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
	// A rule is compiled once per Service port; report each problem once.
	seen := map[FieldError]bool{}
	bad := func(obj, field, format string, a ...any) {
		fe := FieldError{Object: obj, Field: field, Msg: fmt.Sprintf(format, a...)}
		if seen[fe] {
			return
		}
		seen[fe] = true
		errs = multierror.Append(errs, &fe)
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
			ef := fmt.Sprintf("%s.endpoints[%d]", f, j)
			switch {
			case ep.IP == "" && ep.NetworkGateway == "":
				bad(obj, ef+".ip", "required unless the endpoint has a networkGateway")
			case ep.IP != "" && net.ParseIP(ep.IP) == nil:
				bad(obj, ef+".ip", "not an IP address: %q", ep.IP)
			}
			if ep.NetworkGateway != "" && net.ParseIP(ep.NetworkGateway) == nil {
				bad(obj, ef+".networkGateway", "not an IP address: %q", ep.NetworkGateway)
			}
			for name, n := range ep.Ports {
				if name == "" || n <= 0 || n > 65535 {
					bad(obj, ef+".ports."+name, "want a name and a port in 1..65535, got %d", n)
				}
			}
			if ep.Capacity == 0 {
				ep.Capacity = 1
			}
			if ep.IP != "" {
				t.pods[ep.IP] = ep
			}
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
		pf := "spec"
		if p.Kind == "" {
			pf = fmt.Sprintf("policies[%d]", i)
		}
		validatePolicy(p, pf, bad)
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
			vh := &VirtualHost{Service: s.Host, Port: p.Port, Protocol: portProtocol(p), scratch: &t.scratch}
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

// validatePolicy checks what the adapters cannot: settings Envoy rejects
// and labels the waypoint cannot compare.
func validatePolicy(p *Policy, f string, bad func(obj, field, format string, a ...any)) {
	obj := cmp.Or(p.Kind, "Policy") + " " + p.Namespace + "/" + p.Name
	check := func(lf string, lb *LB) {
		if lb == nil {
			return
		}
		if lb.Maglev && lb.RingSize != 0 && !isPrime(lb.RingSize) {
			bad(obj, lf+".consistentHash.maglev.tableSize", "%d is not a prime number", lb.RingSize)
		}
		if lb.RingSize < 0 || lb.RingSize > maxRingSize {
			bad(obj, lf+".consistentHash", "table or ring size %d is out of range 0..%d", lb.RingSize, maxRingSize)
		}
		if lb.Locality == nil {
			return
		}
		for i, l := range lb.Locality.FailoverPriority {
			if !l.HasValue && !isTopologyLabel(l.Label) {
				bad(obj, fmt.Sprintf("%s.localityLbSetting.failoverPriority[%d]", lf, i), "label %q needs a value: the waypoint's own labels are not known", l.Label)
			}
		}
	}
	level := func(lf string, tp *TrafficPolicy) {
		check(lf+".loadBalancer", tp.LB)
		for _, port := range slices.Sorted(maps.Keys(tp.Ports)) {
			check(fmt.Sprintf("%s.portLevelSettings[port %d].loadBalancer", lf, port), tp.Ports[port].LB)
		}
	}
	level(f+".trafficPolicy", &p.Policy)
	for i := range p.Subsets {
		level(fmt.Sprintf("%s.subsets[%d].trafficPolicy", f, i), &p.Subsets[i].Policy)
	}
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
	if rd := hr.Redirect; rd != nil {
		switch rd.Status {
		case 0, 301, 302, 303, 307, 308:
		default:
			// Istio accepts any 3xx code but emits the route without an
			// action for codes Envoy has no RedirectResponseCode for
			// (route.go ApplyRedirect); Envoy requires an action, so the
			// waypoint rejects the route configuration and keeps the
			// previous one.
			routeField, _, _ := strings.Cut(field, ".match[")
			bad(origin, routeField+".redirect.redirectCode", "redirect code %d is not supported by the waypoint (301, 302, 303, 307, 308): the route would have no action and the route configuration would be rejected", rd.Status)
			return nil
		}
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
	for i, b := range hr.Backends {
		if !b.Invalid {
			r.clusters[i] = t.cluster(s, Destination{Host: b.Host, Subset: b.Subset, Port: t.destPort(b, port)}, policies, wl)
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
	// Passthrough is set (with Kind Forward and no Endpoint) when ztunnel
	// forwards the connection to the address the client dialled
	// (Request.Host), for a Service with Passthrough.
	Passthrough bool
	slot        int
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
		return pickEndpoint(res, vh.def, false, req, r)
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
	return pickEndpoint(res, c, true, req, r)
}

func (t *Table) pickL4(vh *VirtualHost, req *Request, r Rand) Result {
	res := Result{Via: vh, Waypoint: true, slot: -1, Backend: -1}
	if len(vh.L4) == 0 {
		return pickEndpoint(res, vh.def, false, req, r)
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
	return pickEndpoint(res, c, true, req, r)
}

// pickEndpoint chooses an endpoint of c. useHash is false on the default
// route (no route configuration), which carries no hash policy.
func pickEndpoint(res Result, c *Cluster, useHash bool, req *Request, r Rand) Result {
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
	if c.LB.Kind == ConsistentHash {
		// Envoy's hashing balancers use a random point when the request
		// has no key; the table already reflects locality weights.
		h, ok := c.hashRequest(req)
		if !useHash || !ok {
			h = r.Uint64()
		}
		idx = c.hashLookup(h)
	} else {
		// Locality-weighted clusters choose a locality first, then an
		// endpoint in it.
		lo, g := 0, 0
		if c.groups.Len() > 0 {
			g = c.groups.Item(c.groups.Pick(r.Uint64()))
			lo, n = c.localities[g].lo, c.localities[g].hi-c.localities[g].lo
		}
		switch c.LB.Kind {
		case RoundRobin:
			idx = lo + int((c.rr[g].Add(1)-1)%uint64(n))
		case Random, Passthrough:
			idx = lo + int(r.Uint64()%uint64(n))
		default: // least request, power of two choices
			a := lo + int(r.Uint64()%uint64(n))
			b := lo + int(r.Uint64()%uint64(n))
			idx = a
			if c.active[b].Load() < c.active[a].Load() {
				idx = b
			}
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
