package routetest

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-multierror"
	"sigs.k8s.io/yaml"

	"github.com/meshblocks/meshblocks/route"
	"github.com/meshblocks/meshblocks/route/gatewayapi"
	"github.com/meshblocks/meshblocks/route/istio"
)

// BuildConfig turns a case's config and services into a route.Config.
func (c *Case) BuildConfig() (route.Config, error) {
	var cfg route.Config
	if l := c.WaypointLocality; l != nil {
		cfg.WaypointLocality = route.Locality{Network: l.Network, Region: l.Region, Zone: l.Zone, Subzone: l.Subzone, Node: l.Node}
	}
	for i, s := range c.Services {
		rs := route.Service{
			Host: s.Host, VIP: s.VIP, NoWaypoint: s.Waypoint != nil && !*s.Waypoint,
			WaypointNamespace: s.WaypointNamespace, TrafficDistribution: s.TrafficDistribution,
			InternalTrafficPolicy: s.InternalTrafficPolicy, PublishNotReadyAddresses: s.PublishNotReadyAddresses,
		}
		switch s.Resolution {
		case "", "STATIC":
		case "NONE":
			rs.Passthrough = true
		default:
			return cfg, fmt.Errorf("%w: services[%d] (%s).resolution: want STATIC or NONE, got %q", ErrInvalidFile, i, s.Host, s.Resolution)
		}
		for _, p := range s.Ports {
			rs.Ports = append(rs.Ports, route.Port{Port: p.Port, Name: p.Name, TargetPort: p.TargetPort.Number, TargetPortName: p.TargetPort.Name, AppProtocol: p.AppProtocol})
		}
		if s.Port != 0 && !slices.ContainsFunc(rs.Ports, func(p route.Port) bool { return p.Port == s.Port }) {
			rs.Ports = append([]route.Port{{Port: s.Port}}, rs.Ports...)
		}
		if len(rs.Ports) == 0 {
			return cfg, fmt.Errorf("%w: services[%d] (%s): port or ports required", ErrInvalidFile, i, s.Host)
		}
		for _, e := range s.Endpoints {
			ep := route.Endpoint{IP: e.IP, Labels: e.Labels, Unhealthy: e.Healthy != nil && !*e.Healthy,
				Ports: e.Ports, NetworkGateway: e.NetworkGateway,
				Locality: route.Locality{Network: e.Network, Region: e.Region, Zone: e.Zone, Subzone: e.Subzone, Node: e.Node}}
			if e.Capacity != nil {
				ep.Capacity = *e.Capacity
			}
			rs.Endpoints = append(rs.Endpoints, ep)
		}
		cfg.Services = append(cfg.Services, rs)
	}
	if strings.TrimSpace(c.Config) == "" {
		return cfg, nil
	}
	var iobjs []istio.Object
	var gobjs gatewayapi.Objects
	var errs *multierror.Error
	for i, doc := range istio.SplitYAML([]byte(c.Config)) {
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			errs = multierror.Append(errs, fmt.Errorf("config document %d: %w", i, err))
			continue
		}
		if string(js) == "null" {
			continue
		}
		var tm struct {
			APIVersion string `json:"apiVersion"`
		}
		_ = json.Unmarshal(js, &tm)
		group, _, _ := strings.Cut(tm.APIVersion, "/")
		switch group {
		case istio.Group:
			o, err := istio.DecodeJSON(js)
			if err != nil {
				errs = multierror.Append(errs, err)
				continue
			}
			iobjs = append(iobjs, o)
		case gatewayapi.Group:
			if err := gobjs.AddJSON(js); err != nil {
				errs = multierror.Append(errs, err)
			}
		default:
			errs = multierror.Append(errs, fmt.Errorf("config document %d: unsupported apiVersion %q", i, tm.APIVersion))
		}
	}
	// Convert what decoded, and report every problem together: decoding,
	// the Istio objects and the Gateway API objects.
	ir, ierr := istio.Convert(iobjs, "")
	gr, gerr := gatewayapi.Convert(gobjs, "")
	errs = multierror.Append(errs, ierr, gerr)
	if len(errs.Errors) > 0 {
		errs.ErrorFormat = joinLines
		return cfg, errs
	}
	cfg.Routes = append(ir.Routes, gr...)
	cfg.Policies = ir.Policies
	return cfg, nil
}

func joinLines(es []error) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

func invalidConfig(err error) error {
	if errors.Is(err, ErrInvalidFile) {
		return err
	}
	return fmt.Errorf("%w: config: %w", ErrInvalidFile, err)
}

// Build builds the case's route table.
func (c *Case) Build() (*route.Table, error) {
	cfg, err := c.BuildConfig()
	if err != nil {
		return nil, err
	}
	return route.Build(cfg)
}

// Outcome is what one simulated request produced.
type Outcome struct {
	// Local is true when the proxy answered (no upstream).
	Local           bool
	ConnectionError bool
	Status          int
	GRPCStatus      *int
	Body            string
	Location        string
	// Destination is the cluster used (Host and Subset) for forwarded requests.
	Destination route.Destination
	Endpoint    string
	BackendName string
	Rule        string
	Path        string
	Authority   string
	ReqHeaders  http.Header
	RespHeaders http.Header
	Mirrors     []route.Destination
	Latency     time.Duration
	Attempts    int
	// Hash is the consistent-hash key of the cluster used, if any.
	Hash *route.HashKey
}

// Request converts the case request into a route.Request.
func (c *Case) routeRequest() route.Request {
	r := c.Request
	req := route.Request{Host: r.Host, Port: r.Port, Protocol: route.Protocol(strings.ToLower(r.Protocol)), Method: r.Method, Scheme: r.Scheme,
		Path: r.Path, SourceIP: r.SourceIP, Header: map[string][]string{}}
	if r.TargetIP != "" {
		req.Host = r.TargetIP
		req.Authority = r.Host
	}
	if req.Port == 0 {
		for _, s := range c.Services {
			if s.Host == r.Host || s.VIP == r.TargetIP && s.VIP != "" {
				req.Port = cmp.Or(s.Port, firstPort(s))
			}
		}
	}
	for k, v := range r.Headers {
		if strings.EqualFold(k, "host") || k == ":authority" {
			req.Authority = v
			continue
		}
		for _, part := range []string{v} {
			req.Header[http.CanonicalHeaderKey(k)] = append(req.Header[http.CanonicalHeaderKey(k)], part)
		}
	}
	if req.Protocol == route.GRPC {
		req.Method = cmp.Or(req.Method, "POST")
		req.Header["Content-Type"] = []string{"application/grpc"}
	}
	if r.Source != nil {
		req.Source = route.Locality{Network: r.Source.Network, Region: r.Source.Region, Zone: r.Source.Zone, Subzone: r.Source.Subzone, Node: r.Source.Node}
	}
	return req
}

func firstPort(s Service) int {
	if len(s.Ports) > 0 {
		return s.Ports[0].Port
	}
	return 0
}

func grpcFromHTTP(status int) int {
	switch status {
	case 400:
		return 13
	case 401:
		return 16
	case 403:
		return 7
	case 404:
		return 12
	case 429, 502, 503, 504:
		return 14
	}
	return 2
}

// Simulate runs one request through the table as the waypoint (or ztunnel)
// would, including the simulated upstream.
func (c *Case) Simulate(t *route.Table, r route.Rand) Outcome {
	req := c.routeRequest()
	res := t.Pick(&req, r)
	defer res.Done()
	return c.outcome(t, &req, &res)
}

// outcome simulates what follows the pick res of req: the local answer,
// or the upstream with timeout and retries.
func (c *Case) outcome(t *route.Table, req *route.Request, res *route.Result) Outcome {
	out := Outcome{ReqHeaders: http.Header{}, RespHeaders: http.Header{}, Endpoint: "", Latency: res.Delay}
	if res.Rule != nil {
		out.Rule = res.Rule.Origin + " " + res.Rule.Route.Field
	}
	grpc := req.Protocol == route.GRPC
	switch res.Kind {
	case route.Refused:
		out.Local, out.ConnectionError = true, true
		return out
	case route.Local:
		out.Local, out.Status = true, res.Status
		if res.Reason == route.ReasonDirect {
			out.Body = res.Rule.Route.DirectResponse.Body
		}
		if res.Reason == route.ReasonAbort && (res.GRPCStatus != 0 || res.Rule.Route.Fault.AbortStatus == 0) {
			g := res.GRPCStatus
			out.GRPCStatus = &g
		} else if grpc {
			g := grpcFromHTTP(res.Status)
			out.GRPCStatus = &g
		}
		res.ApplyResponseHeaders(out.RespHeaders)
		return out
	case route.RedirectResponse:
		out.Local, out.Status = true, res.Status
		out.Location = res.Location(req)
		out.RespHeaders.Set("Location", out.Location)
		res.ApplyResponseHeaders(out.RespHeaders)
		return out
	}
	// Forward: to an endpoint (through its network gateway when it has no
	// address), or, passing through, to the address dialled.
	switch {
	case res.Passthrough:
		out.Endpoint = req.Host
	case res.Endpoint.IP != "":
		out.Endpoint = res.Endpoint.IP
	default:
		out.Endpoint = res.Endpoint.NetworkGateway
	}
	if res.Cluster != nil {
		out.Destination = res.Cluster.Destination
		if res.Cluster.LB.Kind == route.ConsistentHash {
			h := res.Cluster.LB.Hash
			out.Hash = &h
		}
	} else if s, ok := t.Service(req.Host); ok {
		out.Destination = route.Destination{Host: s.Host, Port: req.Port}
	} else {
		out.Destination = route.Destination{Host: out.Endpoint, Port: req.Port}
	}
	if res.Rule != nil && res.Backend >= 0 {
		out.BackendName = res.Rule.Route.Backends[res.Backend].Name
	} else if res.L4Rule != nil && res.Backend >= 0 {
		out.BackendName = res.L4Rule.Route.Backends[res.Backend].Name
	}
	out.Path = res.RewritePath(req.Path)
	out.Authority = res.Authority(req)
	for k, v := range req.Header {
		out.ReqHeaders[k] = slices.Clone(v)
	}
	res.ApplyRequestHeaders(out.ReqHeaders)
	if res.Rule != nil {
		for i, m := range res.Rule.Route.Mirrors {
			if res.Mirrors&(1<<i) != 0 {
				out.Mirrors = append(out.Mirrors, route.Destination{Host: m.Host, Subset: m.Subset, Port: m.Port})
			}
		}
	}
	if req.Protocol == route.TCP || req.Protocol == route.TLS {
		return out
	}
	// Upstream simulation with timeout and retries.
	var timeout time.Duration
	retry := route.Retry{}
	if res.Waypoint && res.Rule != nil {
		timeout = res.Rule.Route.Timeout
		retry = route.DefaultRetry()
		if res.Rule.Route.Retry != nil {
			retry = *res.Rule.Route.Retry
		}
	} else if res.Waypoint {
		retry = route.DefaultRetry()
	}
	be := c.Request.Backend
	var elapsed time.Duration
	status := 200
	for attempt := 1; attempt <= 1+retry.Attempts; attempt++ {
		out.Attempts = attempt
		d := time.Duration(0)
		st := 200
		if be != nil {
			d = time.Duration(be.Delay)
			if attempt <= be.FailFirst {
				st = cmp.Or(be.Status, 503)
			}
		}
		perTry := retry.PerTryTimeout
		if perTry > 0 && d > perTry {
			d, st = perTry, 504
		}
		if timeout > 0 && elapsed+d > timeout {
			elapsed = timeout
			status = 504
			break
		}
		elapsed += d
		status = st
		if !retriable(retry, st) {
			break
		}
	}
	out.Latency += elapsed
	out.Status = status
	if status == 504 && timeout > 0 && elapsed >= timeout {
		out.Local = true // the proxy answered the timeout
	}
	if grpc {
		g := 0
		if status != 200 {
			g = grpcFromHTTP(status)
		}
		out.GRPCStatus = &g
	}
	for k, v := range c.Request.BackendResponseHeaders {
		out.RespHeaders.Set(k, v)
	}
	res.ApplyResponseHeaders(out.RespHeaders)
	return out
}

func retriable(r route.Retry, status int) bool {
	if status == 200 {
		return false
	}
	for _, on := range r.On {
		switch on {
		case "5xx":
			if status >= 500 {
				return true
			}
		case "gateway-error":
			if status == 502 || status == 503 || status == 504 {
				return true
			}
		case "retriable-status-codes":
			if slices.Contains(r.Codes, status) {
				return true
			}
		}
	}
	return false
}

// seed derives a deterministic seed from the case name.
func seed(name string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(name))
	return rand.New(rand.NewPCG(h.Sum64(), 0x9e3779b97f4a7c15))
}

// samples decides how many requests a case needs.
func (c *Case) samples() int {
	e := c.Expect
	n := 1
	switch {
	case e.Distribution != nil:
		n = 2000
		for _, v := range e.Distribution {
			if (v > 0 && v < 0.05) || (v > 0.95 && v < 1) {
				n = 10000
			}
		}
	case e.Destination != nil:
		n = 200
	case e.Affinity != nil:
		n = cmp.Or(c.Request.Count, 100)
	}
	for _, m := range e.MirroredTo {
		if m.Fraction != nil && *m.Fraction > 0 && *m.Fraction < 1 {
			n = max(n, 4000)
		} else {
			n = max(n, 20)
		}
	}
	return n
}

// Tolerance is the allowed |observed - expected| for a share p observed
// over n samples, as route test files judge distributions: the Gateway API
// conformance bound of 0.05, tightened to five standard deviations (plus
// one sample) for small shares. Use it to judge a weighted split measured
// elsewhere (through a running waypoint, for example) the same way.
func Tolerance(p float64, n int) float64 {
	sd := math.Sqrt(p * (1 - p) / float64(n))
	return math.Min(0.05, 5*sd+1/float64(n))
}

// Run runs the case and returns its failures (nil when it passed). A
// configuration that fails to build makes the file invalid: the error
// wraps ErrInvalidFile (and route.ErrInvalidConfig when the route table
// rejected it).
func (c *Case) Run() error {
	t, err := c.Build()
	if err != nil {
		return invalidConfig(err)
	}
	r := seed(c.Name)
	n := c.samples()
	outs := make([]Outcome, n)
	for i := range outs {
		outs[i] = c.Simulate(t, r)
	}
	var errs *multierror.Error
	fail := func(format string, a ...any) { errs = multierror.Append(errs, fmt.Errorf(format, a...)) }
	e := c.Expect
	switch {
	case e.Destination != nil:
		d := e.Destination
		for _, o := range outs {
			if o.Local || o.Endpoint == "" {
				fail("want destination %s, got local answer status %d connectionError=%v (rule %s)", d.Host, o.Status, o.ConnectionError, o.Rule)
				break
			}
			if net.ParseIP(d.Host) != nil {
				if o.Endpoint != d.Host {
					fail("want endpoint %s, got %s", d.Host, o.Endpoint)
					break
				}
				continue
			}
			if o.Destination.Host != d.Host || o.Destination.Subset != d.Subset || (d.Port != 0 && o.Destination.Port != d.Port) {
				fail("want destination %s subset %q port %d, got %s subset %q port %d (rule %s)", d.Host, d.Subset, d.Port, o.Destination.Host, o.Destination.Subset, o.Destination.Port, o.Rule)
				break
			}
		}
	case e.Distribution != nil:
		counts := map[string]int{}
		other := map[string]int{}
		for _, o := range outs {
			k, ok := distKey(e.Distribution, o)
			if ok {
				counts[k]++
			} else {
				other[describe(o)]++
			}
		}
		for _, k := range sortedKeys(e.Distribution) {
			want := e.Distribution[k]
			got := float64(counts[k]) / float64(n)
			if want == 0 && counts[k] > 0 {
				fail("distribution %s: want none, got %d of %d", k, counts[k], n)
				continue
			}
			if tol := Tolerance(want, n); math.Abs(got-want) > tol {
				fail("distribution %s: want %.4f ± %.4f, got %.4f (%d of %d)", k, want, tol, got, counts[k], n)
			}
		}
		for _, k := range sortedKeys(other) {
			fail("distribution: %d of %d requests went to unexpected %s", other[k], n, k)
		}
	case e.Response != nil:
		checkResponse(e.Response, outs[0], fail)
	case e.Affinity != nil:
		checkAffinity(c, t, e.Affinity, outs, fail)
	}
	checkOptional(c, outs, n, fail)
	if errs != nil {
		errs.ErrorFormat = func(es []error) string {
			s := make([]string, len(es))
			for i, e := range es {
				s[i] = e.Error()
			}
			return strings.Join(s, "; ")
		}
	}
	return errs.ErrorOrNil()
}

func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

func describe(o Outcome) string {
	switch {
	case o.ConnectionError:
		return "connectionError"
	case o.Local:
		return "status:" + strconv.Itoa(o.Status)
	}
	return fmt.Sprintf("%s (endpoint %s)", o.Destination, o.Endpoint)
}

func shortName(host string) string {
	n, _, _ := strings.Cut(host, ".")
	return n
}

// distKey files an outcome under one of the expected keys.
func distKey(dist map[string]float64, o Outcome) (string, bool) {
	if o.ConnectionError {
		_, ok := dist["connectionError"]
		return "connectionError", ok
	}
	if o.Local {
		k := "status:" + strconv.Itoa(o.Status)
		_, ok := dist[k]
		return k, ok
	}
	for _, k := range sortedKeys(dist) {
		switch {
		case strings.HasPrefix(k, "status:"):
		case net.ParseIP(k) != nil:
			if o.Endpoint == k {
				return k, true
			}
		case strings.Contains(k, "."):
			if o.Destination.Host == k {
				return k, true
			}
		default:
			if o.Destination.Subset == k || (o.Destination.Subset == "" && (shortName(o.Destination.Host) == k || o.BackendName == k)) {
				return k, true
			}
		}
	}
	return "", false
}

func checkResponse(want *Response, o Outcome, fail func(string, ...any)) {
	if want.ConnectionError != o.ConnectionError {
		fail("connectionError: want %v, got %v (%s)", want.ConnectionError, o.ConnectionError, describe(o))
		return
	}
	if want.Status != 0 && want.Status != o.Status {
		fail("status: want %d, got %d (%s, rule %s)", want.Status, o.Status, describe(o), o.Rule)
	}
	if want.GRPCStatus != nil {
		if o.GRPCStatus == nil {
			fail("grpcStatus: want %d, got none", *want.GRPCStatus)
		} else if *o.GRPCStatus != *want.GRPCStatus {
			fail("grpcStatus: want %d, got %d", *want.GRPCStatus, *o.GRPCStatus)
		}
	}
	if want.Body != nil && *want.Body != o.Body {
		fail("body: want %q, got %q", *want.Body, o.Body)
	}
	for k, v := range want.Headers {
		if got := strings.Join(o.RespHeaders.Values(k), ","); got != v {
			fail("response header %s: want %q, got %q", k, v, got)
		}
	}
	if rd := want.Redirect; rd != nil {
		u, err := url.Parse(o.Location)
		if err != nil || o.Location == "" {
			fail("redirect: bad Location %q", o.Location)
			return
		}
		if rd.Scheme != "" && u.Scheme != rd.Scheme {
			fail("redirect scheme: want %q, got %q (Location %s)", rd.Scheme, u.Scheme, o.Location)
		}
		if rd.Host != "" && u.Hostname() != rd.Host {
			fail("redirect host: want %q, got %q (Location %s)", rd.Host, u.Hostname(), o.Location)
		}
		switch p := string(rd.Port); {
		case p == "default":
			if port := u.Port(); port != "" && !(u.Scheme == "http" && port == "80") && !(u.Scheme == "https" && port == "443") {
				fail("redirect port: want default, got %s (Location %s)", port, o.Location)
			}
		case p != "":
			port := u.Port()
			if port == "" {
				port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
			}
			if port != p {
				fail("redirect port: want %s, got %q (Location %s)", p, u.Port(), o.Location)
			}
		}
		if rd.Path != "" && u.RequestURI() != rd.Path && u.EscapedPath() != rd.Path {
			fail("redirect path: want %q, got %q (Location %s)", rd.Path, u.RequestURI(), o.Location)
		}
	}
}

func checkAffinity(c *Case, t *route.Table, a *Affinity, outs []Outcome, fail func(string, ...any)) {
	eps := map[string]bool{}
	for _, o := range outs {
		if o.Local {
			fail("affinity: request answered locally: %s", describe(o))
			return
		}
		eps[o.Endpoint] = true
		if a.Within != "" && o.Destination.Subset != a.Within && o.Destination.Host != a.Within && shortName(o.Destination.Host) != a.Within {
			fail("affinity: endpoint %s (%s) is outside %s", o.Endpoint, o.Destination, a.Within)
			return
		}
	}
	if a.SameEndpoint {
		want, err := parseHashOn(a.HashOn)
		if err != nil {
			fail("affinity: %v", err)
			return
		}
		if h := outs[0].Hash; h == nil || *h != want {
			fail("affinity: the destination does not hash on %s (hash policy %+v)", a.HashOn, h)
		}
	}
	if a.SameEndpoint && len(eps) != 1 {
		fail("affinity on %s: want one endpoint, got %d: %v", a.HashOn, len(eps), sortedKeys(eps))
	}
	if !a.SameEndpoint && len(eps) < 2 {
		fail("affinity on %s: want requests spread over endpoints, all went to %v", a.HashOn, sortedKeys(eps))
	}
}

// parseHashOn reads "header:<name>", "cookie:<name>", "query:<name>" or
// "sourceIP".
func parseHashOn(s string) (route.HashKey, error) {
	kind, name, _ := strings.Cut(s, ":")
	switch {
	case kind == "sourceIP" && name == "":
		return route.HashKey{SourceIP: true}, nil
	case kind == "header" && name != "":
		return route.HashKey{Header: name}, nil
	case kind == "cookie" && name != "":
		return route.HashKey{Cookie: name}, nil
	case kind == "query" && name != "":
		return route.HashKey{Query: name}, nil
	}
	return route.HashKey{}, fmt.Errorf("hashOn %q: want header:<name>, cookie:<name>, query:<name> or sourceIP", s)
}

func checkOptional(c *Case, outs []Outcome, n int, fail func(string, ...any)) {
	e := c.Expect
	fwd := outs[:0:0]
	for _, o := range outs {
		if !o.Local {
			fwd = append(fwd, o)
		}
	}
	needFwd := e.Path != "" || e.Authority != "" || len(e.RequestHeaders) > 0 || len(e.AbsentRequestHeaders) > 0 || e.UpstreamAttempts > 0
	if needFwd && len(fwd) == 0 {
		fail("no request reached an upstream (%s)", describe(outs[0]))
		return
	}
	for _, o := range fwd {
		if e.Path != "" && o.Path != e.Path {
			fail("upstream path: want %q, got %q", e.Path, o.Path)
			break
		}
		if e.Authority != "" && o.Authority != e.Authority {
			fail("upstream authority: want %q, got %q", e.Authority, o.Authority)
			break
		}
		bad := false
		for k, v := range e.RequestHeaders {
			if got := strings.Join(o.ReqHeaders.Values(k), ","); got != v {
				fail("upstream request header %s: want %q, got %q", k, v, got)
				bad = true
			}
		}
		for _, k := range e.AbsentRequestHeaders {
			if _, ok := o.ReqHeaders[http.CanonicalHeaderKey(k)]; ok {
				fail("upstream request header %s: want absent, got %q", k, o.ReqHeaders.Get(k))
				bad = true
			}
		}
		if e.UpstreamAttempts > 0 && o.Attempts != e.UpstreamAttempts {
			fail("upstream attempts: want %d, got %d", e.UpstreamAttempts, o.Attempts)
			bad = true
		}
		if bad {
			break
		}
	}
	for _, o := range outs {
		bad := false
		for k, v := range e.ResponseHeaders {
			if got := strings.Join(o.RespHeaders.Values(k), ","); got != v {
				fail("response header %s: want %q, got %q", k, v, got)
				bad = true
			}
		}
		for _, k := range e.AbsentResponseHeaders {
			if _, ok := o.RespHeaders[http.CanonicalHeaderKey(k)]; ok {
				fail("response header %s: want absent, got %q", k, o.RespHeaders.Get(k))
				bad = true
			}
		}
		if e.MinLatency > 0 && o.Latency < time.Duration(e.MinLatency) {
			fail("latency: want at least %v, got %v", time.Duration(e.MinLatency), o.Latency)
			bad = true
		}
		if bad {
			break
		}
	}
	if len(e.RequestHeadersByBackend) > 0 {
		seen := map[string]bool{}
		for _, o := range fwd {
			for key, hs := range e.RequestHeadersByBackend {
				if key != o.Destination.Subset && key != o.Destination.Host && key != shortName(o.Destination.Host) && key != o.BackendName {
					continue
				}
				seen[key] = true
				for k, v := range hs {
					if got := strings.Join(o.ReqHeaders.Values(k), ","); got != v {
						fail("backend %s: request header %s: want %q, got %q", key, k, v, got)
						return
					}
				}
			}
		}
		for key := range e.RequestHeadersByBackend {
			if !seen[key] {
				fail("backend %s: no request reached it", key)
			}
		}
	}
	for _, m := range e.MirroredTo {
		cnt := 0
		for _, o := range outs {
			for _, d := range o.Mirrors {
				if d.Host == m.Host && d.Subset == m.Subset {
					cnt++
					break
				}
			}
		}
		got := float64(cnt) / float64(n)
		want := 1.0
		if m.Fraction != nil {
			want = *m.Fraction
		}
		if want == 0 && cnt > 0 {
			fail("mirror %s: want none, got %d of %d", m.Host, cnt, n)
		} else if math.Abs(got-want) > Tolerance(want, n) {
			fail("mirror %s %s: want fraction %.4f, got %.4f (%d of %d)", m.Host, m.Subset, want, got, cnt, n)
		}
	}
}

// Result is the outcome of one case.
type Result struct {
	File, Name string
	Err        error
}

// RunFiles loads and runs files. It returns the results and the first
// structural error (an invalid file), if any.
func RunFiles(paths ...string) ([]Result, error) {
	var out []Result
	var invalid error
	for _, p := range paths {
		f, err := LoadFile(p)
		if err != nil {
			invalid = cmp.Or(invalid, err)
			continue
		}
		for i := range f.Cases {
			c := &f.Cases[i]
			out = append(out, Result{File: p, Name: c.Name, Err: c.Run()})
		}
	}
	return out, invalid
}

// TB is the part of testing.TB that Test uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
}

// Runner is satisfied by *testing.T.
type Runner[T TB] interface {
	TB
	Run(name string, f func(T)) bool
}

// Test runs every case of the files as subtests of t:
//
//	func TestRoutes(t *testing.T) { routetest.Test(t, "testdata/vs.yaml") }
func Test[T Runner[T]](t T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		f, err := LoadFile(p)
		if err != nil {
			t.Fatalf("%v", err)
			return
		}
		for i := range f.Cases {
			c := &f.Cases[i]
			t.Run(c.Name, func(t T) {
				if err := c.Run(); err != nil {
					t.Errorf("%s (%s): %v", c.Name, c.Source, err)
				}
			})
		}
	}
}

// Explain simulates the case's request once and describes the decision:
// the rule chosen, the destination, the filters applied (request and
// response header operations, rewrites, mirrors) and, for forwarded HTTP
// requests, the timeout and retry policy. A configuration that does not
// build is reported as an invalid file (ErrInvalidFile).
func (c *Case) Explain() (string, error) {
	t, err := c.Build()
	if err != nil {
		return "", invalidConfig(err)
	}
	req := c.routeRequest()
	res := t.Pick(&req, seed(c.Name))
	o := c.outcome(t, &req, &res)
	res.Done()
	var b strings.Builder
	fmt.Fprintf(&b, "request:     %s %s%s (port %d)\n", cmp.Or(c.Request.Method, "GET"), c.Request.Host, cmp.Or(c.Request.Path, "/"), req.Port)
	fmt.Fprintf(&b, "rule:        %s\n", cmp.Or(o.Rule, "(none: default route)"))
	switch {
	case o.ConnectionError:
		fmt.Fprintf(&b, "outcome:     connection refused\n")
	case o.Location != "":
		fmt.Fprintf(&b, "outcome:     redirect %d to %s\n", o.Status, o.Location)
	case o.Local:
		fmt.Fprintf(&b, "outcome:     answered locally with %d\n", o.Status)
	default:
		fmt.Fprintf(&b, "destination: %s\nendpoint:    %s\n", o.Destination, o.Endpoint)
		fmt.Fprintf(&b, "path:        %s\nauthority:   %s\n", o.Path, o.Authority)
		for _, k := range sortedKeys(o.ReqHeaders) {
			fmt.Fprintf(&b, "header:      %s: %s\n", k, strings.Join(o.ReqHeaders[k], ","))
		}
		for _, m := range o.Mirrors {
			fmt.Fprintf(&b, "mirror:      %s\n", m)
		}
	}
	if ops := responseOps(&res); ops != "" {
		fmt.Fprintf(&b, "response:    %s\n", ops)
	}
	if !o.Local && res.Waypoint && req.Protocol != route.TCP && req.Protocol != route.TLS {
		fmt.Fprintf(&b, "timeout:     %s\n", describeTimeout(&res))
		fmt.Fprintf(&b, "retries:     %s\n", describeRetry(&res))
		fmt.Fprintf(&b, "status:      %d after %d attempt(s)\n", o.Status, o.Attempts)
	}
	if o.Latency > 0 {
		fmt.Fprintf(&b, "latency:     %v\n", o.Latency)
	}
	return b.String(), nil
}

// responseOps describes the response header operations the rule (and the
// backend chosen) applies, in the order they apply.
func responseOps(res *route.Result) string {
	if res.Rule == nil {
		return ""
	}
	var parts []string
	add := func(ops route.HeaderOps) {
		for _, n := range ops.Remove {
			parts = append(parts, "remove "+n)
		}
		for _, h := range ops.Set {
			parts = append(parts, "set "+h.Name+": "+h.Value)
		}
		for _, h := range ops.Add {
			parts = append(parts, "add "+h.Name+": "+h.Value)
		}
	}
	hr := res.Rule.Route
	var backend *route.Backend
	if res.Backend >= 0 && res.Backend < len(hr.Backends) {
		backend = &hr.Backends[res.Backend]
	}
	// The order of route.Result.ApplyResponseHeaders.
	switch {
	case backend == nil:
		add(hr.ResponseHeaders)
	case len(hr.Backends) == 1:
		add(hr.ResponseHeaders)
		add(backend.ResponseHeaders)
	default:
		add(backend.ResponseHeaders)
		add(hr.ResponseHeaders)
	}
	return strings.Join(parts, "; ")
}

func describeTimeout(res *route.Result) string {
	if res.Rule == nil || res.Rule.Route.Timeout == 0 {
		return "none"
	}
	return res.Rule.Route.Timeout.String()
}

func describeRetry(res *route.Result) string {
	rt, origin := route.DefaultRetry(), " (mesh default)"
	if res.Rule != nil && res.Rule.Route.Retry != nil {
		rt, origin = *res.Rule.Route.Retry, ""
	}
	if rt.Attempts == 0 {
		return "none" + origin
	}
	s := fmt.Sprintf("%d on %s", rt.Attempts, strings.Join(rt.On, ","))
	if len(rt.Codes) > 0 {
		codes := make([]string, len(rt.Codes))
		for i, c := range rt.Codes {
			codes[i] = strconv.Itoa(c)
		}
		s += " (codes " + strings.Join(codes, ",") + ")"
	}
	if rt.PerTryTimeout > 0 {
		s += ", per try " + rt.PerTryTimeout.String()
	}
	if rt.Backoff > 0 {
		s += ", backoff " + rt.Backoff.String()
	}
	return s + origin
}
