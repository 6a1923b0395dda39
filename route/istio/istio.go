package istio

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-multierror"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"istio.io/api/networking/v1alpha3"
	"sigs.k8s.io/yaml"

	"github.com/meshblocks/meshblocks/internal/yamldoc"
	"github.com/meshblocks/meshblocks/route"
)

// Group is the API group this package reads.
const Group = "networking.istio.io"

// Object is one decoded Istio networking object.
type Object struct {
	APIVersion, Kind, Name, Namespace string
	Created                           time.Time
	// Exactly one of these is set.
	VirtualService  *v1alpha3.VirtualService
	DestinationRule *v1alpha3.DestinationRule
}

// ID is "<Kind> <namespace>/<name>", the prefix of error messages.
func (o *Object) ID() string { return o.Kind + " " + o.Namespace + "/" + o.Name }

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name              string    `json:"name"`
		Namespace         string    `json:"namespace"`
		CreationTimestamp time.Time `json:"creationTimestamp"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
}

// ErrUnsupported is returned for objects of another API group or kind.
var ErrUnsupported = errors.New("route/istio: unsupported object")

// Decode reads a multi-document YAML stream of VirtualServices and
// DestinationRules (networking.istio.io v1, v1beta1 or v1alpha3).
func Decode(data []byte) ([]Object, error) {
	var out []Object
	var errs *multierror.Error
	for i, doc := range SplitYAML(data) {
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			errs = multierror.Append(errs, fmt.Errorf("route/istio: document %d: %w", i, err))
			continue
		}
		if string(js) == "null" {
			continue
		}
		o, err := DecodeJSON(js)
		if err != nil {
			errs = multierror.Append(errs, fmt.Errorf("document %d: %w", i, err))
			continue
		}
		out = append(out, o)
	}
	return out, errs.ErrorOrNil()
}

// SplitYAML splits a multi-document YAML stream at "---" lines.
func SplitYAML(data []byte) [][]byte { return yamldoc.Split(data) }

// DecodeJSON decodes one object in JSON form.
func DecodeJSON(js []byte) (Object, error) {
	var h header
	if err := json.Unmarshal(js, &h); err != nil {
		return Object{}, fmt.Errorf("route/istio: %w", err)
	}
	o := Object{APIVersion: h.APIVersion, Kind: h.Kind, Name: h.Metadata.Name, Namespace: cmp.Or(h.Metadata.Namespace, "default"), Created: h.Metadata.CreationTimestamp}
	group, _, _ := strings.Cut(h.APIVersion, "/")
	if group != Group {
		return o, fmt.Errorf("%w: apiVersion %q", ErrUnsupported, h.APIVersion)
	}
	if o.Name == "" {
		return o, fmt.Errorf("route/istio: %s: metadata.name: required", h.Kind)
	}
	spec := []byte(h.Spec)
	if len(spec) == 0 {
		spec = []byte("{}")
	}
	opts := protojson.UnmarshalOptions{}
	switch h.Kind {
	case "VirtualService":
		o.VirtualService = &v1alpha3.VirtualService{}
		if err := opts.Unmarshal(spec, o.VirtualService); err != nil {
			return o, fmt.Errorf("route/istio: %s: spec: %w", o.ID(), err)
		}
	case "DestinationRule":
		o.DestinationRule = &v1alpha3.DestinationRule{}
		if err := opts.Unmarshal(spec, o.DestinationRule); err != nil {
			return o, fmt.Errorf("route/istio: %s: spec: %w", o.ID(), err)
		}
	default:
		return o, fmt.Errorf("%w: kind %q", ErrUnsupported, h.Kind)
	}
	return o, nil
}

// Result is the routing configuration converted from Istio objects.
type Result struct {
	Routes   []route.RouteConfig
	Policies []route.Policy
}

// Convert validates the objects and converts them. domain is the cluster
// DNS suffix ("" means cluster.local). All problems are reported together,
// each with its object and field path.
func Convert(objs []Object, domain string) (Result, error) {
	domain = cmp.Or(domain, "cluster.local")
	var res Result
	var errs *multierror.Error
	for i := range objs {
		o := &objs[i]
		c := conv{obj: o, domain: domain}
		switch {
		case o.VirtualService != nil:
			rc := c.virtualService(o.VirtualService)
			if len(c.errs) == 0 {
				res.Routes = append(res.Routes, rc)
			}
		case o.DestinationRule != nil:
			p := c.destinationRule(o.DestinationRule)
			if len(c.errs) == 0 {
				res.Policies = append(res.Policies, p)
			}
		}
		for _, e := range c.errs {
			errs = multierror.Append(errs, e)
		}
	}
	if errs != nil {
		errs.ErrorFormat = func(es []error) string {
			s := make([]string, len(es))
			for i, e := range es {
				s[i] = e.Error()
			}
			return strings.Join(s, "\n")
		}
		return Result{}, fmt.Errorf("route/istio: %w", errs)
	}
	return res, nil
}

type conv struct {
	obj    *Object
	domain string
	errs   []error
}

func (c *conv) bad(field, format string, a ...any) {
	c.errs = append(c.errs, &route.FieldError{Object: c.obj.ID(), Field: field, Msg: fmt.Sprintf(format, a...)})
}

// fqdn resolves a short name in the object's namespace, as Istio does.
func (c *conv) fqdn(h string) string {
	if h == "" || strings.Contains(h, ".") || strings.HasPrefix(h, "*") {
		return h
	}
	return h + "." + c.obj.Namespace + ".svc." + c.domain
}

func (c *conv) virtualService(vs *v1alpha3.VirtualService) route.RouteConfig {
	rc := route.RouteConfig{Kind: c.obj.Kind, Name: c.obj.Name, Namespace: c.obj.Namespace, Created: c.obj.Created, Gateways: vs.Gateways, ExportTo: vs.ExportTo}
	if len(vs.Hosts) == 0 {
		c.bad("spec.hosts", "at least one host is required")
	}
	for i, h := range vs.Hosts {
		if h == "" {
			c.bad(fmt.Sprintf("spec.hosts[%d]", i), "must not be empty")
		}
		rc.Hosts = append(rc.Hosts, c.fqdn(h))
	}
	if len(vs.Http) == 0 && len(vs.Tcp) == 0 && len(vs.Tls) == 0 {
		c.bad("spec", "http, tcp or tls must be provided in virtual service")
	}
	for i, hr := range vs.Http {
		rc.HTTP = append(rc.HTTP, c.httpRoute(fmt.Sprintf("spec.http[%d]", i), hr))
	}
	for i, tr := range vs.Tls {
		f := fmt.Sprintf("spec.tls[%d]", i)
		if len(tr.Match) == 0 {
			c.bad(f+".match", "TLS route must have at least one match condition")
		}
		backends := c.l4Backends(f, tr.Route)
		for j, m := range tr.Match {
			if len(m.SniHosts) == 0 {
				c.bad(fmt.Sprintf("%s.match[%d].sniHosts", f, j), "TLS route match must have at least one SNI host")
			}
			var sni []string
			for k, h := range m.SniHosts {
				fh := c.fqdn(h)
				if !slices.ContainsFunc(rc.Hosts, func(vh string) bool { return vh == fh || (strings.HasPrefix(vh, "*") && strings.HasSuffix(fh, vh[1:])) }) {
					c.bad(fmt.Sprintf("%s.match[%d].sniHosts[%d]", f, j, k), "SNI host %q is not a compatible subset of any of the virtual service hosts", h)
				}
				sni = append(sni, fh)
			}
			rc.TLS = append(rc.TLS, route.L4Route{Field: f, Port: int(m.Port), SNIHosts: sni, SourceLabels: m.SourceLabels, Backends: backends})
		}
	}
	for i, tr := range vs.Tcp {
		f := fmt.Sprintf("spec.tcp[%d]", i)
		backends := c.l4Backends(f, tr.Route)
		if len(tr.Match) == 0 {
			rc.TCP = append(rc.TCP, route.L4Route{Field: f, Backends: backends})
		}
		for _, m := range tr.Match {
			rc.TCP = append(rc.TCP, route.L4Route{Field: f, Port: int(m.Port), SourceLabels: m.SourceLabels, Backends: backends})
		}
	}
	return rc
}

func (c *conv) destination(f string, d *v1alpha3.Destination) route.Backend {
	if d == nil {
		c.bad(f, "destination is required")
		return route.Backend{}
	}
	if d.Host == "" {
		c.bad(f+".host", "destination host is required")
	}
	b := route.Backend{Host: c.fqdn(d.Host), Subset: d.Subset}
	if d.Port != nil {
		if d.Port.Number == 0 || d.Port.Number > 65535 {
			c.bad(f+".port.number", "must be in 1..65535")
		}
		b.Port = int(d.Port.Number)
	}
	return b
}

func (c *conv) l4Backends(f string, ds []*v1alpha3.RouteDestination) []route.Backend {
	if len(ds) == 0 {
		c.bad(f+".route", "route is required")
	}
	var out []route.Backend
	var total int64
	for j, d := range ds {
		ff := fmt.Sprintf("%s.route[%d]", f, j)
		b := c.destination(ff+".destination", d.Destination)
		if d.Weight < 0 {
			c.bad(ff+".weight", "must be >= 0")
		}
		total += int64(d.Weight)
		b.Weight = uint32(max(d.Weight, 0))
		out = append(out, b)
	}
	if len(ds) > 1 && total == 0 {
		c.bad(f+".route", "total destination weight = 0")
	}
	return out
}

func (c *conv) stringMatch(f string, sm *v1alpha3.StringMatch, allowStar bool) route.StringMatch {
	if sm == nil {
		return route.StringMatch{Kind: route.Present}
	}
	switch m := sm.MatchType.(type) {
	case *v1alpha3.StringMatch_Exact:
		return route.StringMatch{Kind: route.Exact, Value: m.Exact}
	case *v1alpha3.StringMatch_Prefix:
		return route.StringMatch{Kind: route.Prefix, Value: m.Prefix}
	case *v1alpha3.StringMatch_Regex:
		if m.Regex == "*" && allowStar {
			return route.StringMatch{Kind: route.Present}
		}
		if _, err := regexp.Compile(m.Regex); err != nil {
			c.bad(f+".regex", "%q is not a valid RE2 expression: %v", m.Regex, err)
		}
		return route.StringMatch{Kind: route.Regex, Value: m.Regex}
	}
	return route.StringMatch{Kind: route.Present}
}

func percent(p *v1alpha3.Percent, legacy int32, dflt uint32) uint32 {
	switch {
	case p != nil:
		return uint32(p.Value*10000 + 0.5)
	case legacy != 0:
		return uint32(legacy) * 10000
	}
	return dflt
}

func (c *conv) checkPercent(f string, p *v1alpha3.Percent) {
	if p != nil && (p.Value < 0 || p.Value > 100) {
		c.bad(f, "percentage %v is not in range 0..100", p.Value)
	}
}

func dur(d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.AsDuration()
}

func (c *conv) headerOps(f string, ops *v1alpha3.Headers_HeaderOperations, authority *string) route.HeaderOps {
	var out route.HeaderOps
	if ops == nil {
		return out
	}
	for _, k := range slices.Sorted(maps.Keys(ops.Set)) {
		if lk := strings.ToLower(k); lk == ":authority" || lk == "host" {
			if authority != nil {
				*authority = ops.Set[k]
			}
			continue
		}
		out.Set = append(out.Set, route.Header{Name: k, Value: ops.Set[k]})
	}
	for _, k := range slices.Sorted(maps.Keys(ops.Add)) {
		if lk := strings.ToLower(k); lk == ":authority" || lk == "host" {
			if authority != nil && *authority == "" {
				*authority = ops.Add[k]
			}
			continue
		}
		out.Add = append(out.Add, route.Header{Name: k, Value: ops.Add[k]})
	}
	out.Remove = slices.Clone(ops.Remove)
	return out
}

// grpcCode maps a gRPC status name to its code.
func grpcCode(name string) (int, bool) {
	names := [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
		"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
		"OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}
	for i, n := range names {
		if n == name {
			return i, true
		}
	}
	if n, err := strconv.Atoi(name); err == nil && n >= 0 && n < len(names) {
		return n, true
	}
	return 0, false
}

func (c *conv) httpRoute(f string, hr *v1alpha3.HTTPRoute) route.HTTPRoute {
	out := route.HTTPRoute{Name: hr.Name, Field: f, Timeout: dur(hr.Timeout)}
	if hr.Delegate != nil {
		c.bad(f+".delegate", "delegate VirtualServices are not supported in a waypoint")
	}
	if hr.Timeout != nil && hr.Timeout.AsDuration() < 0 {
		c.bad(f+".timeout", "must not be negative")
	}
	for j, m := range hr.Match {
		mf := fmt.Sprintf("%s.match[%d]", f, j)
		rm := route.Match{IgnoreCase: m.IgnoreUriCase, Port: int(m.Port), SourceLabels: m.SourceLabels, SourceNamespace: m.SourceNamespace, Gateways: m.Gateways}
		if m.Uri != nil {
			switch u := m.Uri.MatchType.(type) {
			case *v1alpha3.StringMatch_Exact:
				rm.PathKind, rm.Path = route.PathExact, u.Exact
			case *v1alpha3.StringMatch_Prefix:
				rm.PathKind, rm.Path = route.PathPrefix, u.Prefix
			case *v1alpha3.StringMatch_Regex:
				if _, err := regexp.Compile(u.Regex); err != nil {
					c.bad(mf+".uri.regex", "%q is not a valid RE2 expression: %v", u.Regex, err)
				}
				rm.PathKind, rm.Path = route.PathRegex, u.Regex
			}
		}
		for _, k := range slices.Sorted(maps.Keys(m.Headers)) {
			hf := mf + ".headers." + k
			if k != strings.ToLower(k) {
				c.bad(hf, "header name must be lowercase")
			}
			if k == "" {
				c.bad(hf, "header name must not be empty")
			}
			sm := c.stringMatch(hf, m.Headers[k], false)
			rm.Headers = append(rm.Headers, route.HeaderMatch{Name: k, StringMatch: sm})
		}
		for _, k := range slices.Sorted(maps.Keys(m.WithoutHeaders)) {
			hf := mf + ".withoutHeaders." + k
			if k != strings.ToLower(k) {
				c.bad(hf, "header name must be lowercase")
			}
			sm := c.stringMatch(hf, m.WithoutHeaders[k], true)
			rm.Headers = append(rm.Headers, route.HeaderMatch{Name: k, StringMatch: sm, Invert: true})
		}
		for _, k := range slices.Sorted(maps.Keys(m.QueryParams)) {
			sm := c.stringMatch(mf+".queryParams."+k, m.QueryParams[k], false)
			rm.Query = append(rm.Query, route.QueryMatch{Name: k, StringMatch: sm})
		}
		for _, x := range []struct {
			in  *v1alpha3.StringMatch
			out **route.StringMatch
			n   string
		}{{m.Method, &rm.Method, "method"}, {m.Authority, &rm.Authority, "authority"}, {m.Scheme, &rm.Scheme, "scheme"}} {
			if x.in != nil {
				sm := c.stringMatch(mf+"."+x.n, x.in, false)
				*x.out = &sm
			}
		}
		out.Matches = append(out.Matches, rm)
	}

	set := 0
	if len(hr.Route) > 0 {
		set++
	}
	if hr.Redirect != nil {
		set++
	}
	if hr.DirectResponse != nil {
		set++
	}
	if set == 0 && hr.Delegate == nil {
		c.bad(f, "one of route, redirect, directResponse or delegate must be set")
	}
	if hr.Redirect != nil && len(hr.Route) > 0 {
		c.bad(f, "must not specify both redirect and route")
	}
	if hr.DirectResponse != nil && (len(hr.Route) > 0 || hr.Redirect != nil) {
		c.bad(f, "must not specify directResponse together with route or redirect")
	}

	var authority string
	var total int64
	for j, d := range hr.Route {
		df := fmt.Sprintf("%s.route[%d]", f, j)
		b := c.destination(df+".destination", d.Destination)
		if d.Weight < 0 {
			c.bad(df+".weight", "must be >= 0")
		}
		total += int64(d.Weight)
		b.Weight = uint32(max(d.Weight, 0))
		if d.Headers != nil {
			b.RequestHeaders = c.headerOps(df+".headers.request", d.Headers.Request, nil)
			b.ResponseHeaders = c.headerOps(df+".headers.response", d.Headers.Response, nil)
		}
		out.Backends = append(out.Backends, b)
	}
	if len(hr.Route) > 1 && total == 0 {
		c.bad(f+".route", "total destination weight = 0")
	}
	if hr.Headers != nil {
		out.RequestHeaders = c.headerOps(f+".headers.request", hr.Headers.Request, &authority)
		out.ResponseHeaders = c.headerOps(f+".headers.response", hr.Headers.Response, nil)
	}
	if rw := hr.Rewrite; rw != nil {
		r := &route.Rewrite{Authority: rw.Authority}
		if rw.Uri != "" && rw.UriRegexRewrite != nil {
			c.bad(f+".rewrite", "uri and uriRegexRewrite cannot both be set")
		}
		if rw.Authority != "" && authority != "" {
			c.bad(f+".rewrite.authority", "authority rewrite and a host header set cannot both be used")
		}
		switch {
		case rw.Uri != "":
			r.Kind, r.Value = route.RewritePrefix, rw.Uri
		case rw.UriRegexRewrite != nil:
			if _, err := regexp.Compile(rw.UriRegexRewrite.Match); err != nil {
				c.bad(f+".rewrite.uriRegexRewrite.match", "%q is not a valid RE2 expression: %v", rw.UriRegexRewrite.Match, err)
			}
			r.Kind, r.Pattern, r.Substitution = route.RewriteRegex, rw.UriRegexRewrite.Match, rw.UriRegexRewrite.Rewrite
		}
		out.Rewrite = r
	}
	if authority != "" {
		if out.Rewrite == nil {
			out.Rewrite = &route.Rewrite{}
		}
		if out.Rewrite.Authority == "" {
			out.Rewrite.Authority = authority
		}
	}
	if rd := hr.Redirect; rd != nil {
		r := &route.Redirect{Status: int(rd.RedirectCode), Scheme: rd.Scheme, Host: rd.Authority}
		if r.Status == 0 {
			r.Status = 301
		}
		// Istio's validation (validateHTTPRedirect) accepts any 3xx code;
		// Build rejects the ones Envoy has no response code for.
		if r.Status < 300 || r.Status > 399 {
			c.bad(f+".redirect.redirectCode", "%d is not a valid redirect code, must be 3xx", r.Status)
		}
		if rd.Uri != "" && rd.PrefixRewrite != "" {
			c.bad(f+".redirect", "uri and prefixRewrite cannot both be set")
		}
		if rd.Uri == "" && rd.PrefixRewrite == "" && rd.Authority == "" && rd.RedirectPort == nil && rd.Scheme == "" {
			c.bad(f+".redirect", "redirect must specify uri, prefixRewrite, authority, scheme or port")
		}
		if rd.Scheme != "" && rd.Scheme != "http" && rd.Scheme != "https" {
			c.bad(f+".redirect.scheme", "%q is not a valid redirect scheme, must be \"http\" or \"https\"", rd.Scheme)
		}
		if p, ok := rd.RedirectPort.(*v1alpha3.HTTPRedirect_Port); ok && (p.Port == 0 || p.Port > 65535) {
			c.bad(f+".redirect.port", "must be in 1..65535, got %d", p.Port)
		}
		if rd.PrefixRewrite != "" {
			for j, m := range hr.Match {
				if _, isPrefix := m.GetUri().GetMatchType().(*v1alpha3.StringMatch_Prefix); m.Uri != nil && !isPrefix {
					c.bad(fmt.Sprintf("%s.match[%d].uri", f, j), "redirect prefixRewrite requires all uri matches to be prefix matches")
				}
			}
		}
		if hr.Fault != nil {
			c.bad(f+".fault", "HTTP route cannot contain both fault and redirect")
		}
		if hr.Rewrite != nil {
			c.bad(f+".rewrite", "HTTP route rule cannot contain both rewrite and redirect")
		}
		switch {
		case rd.Uri != "":
			r.Path, r.FullPath = rd.Uri, true
		case rd.PrefixRewrite != "":
			r.Path, r.PrefixRewrite = rd.PrefixRewrite, true
		}
		switch p := rd.RedirectPort.(type) {
		case *v1alpha3.HTTPRedirect_Port:
			r.Port = int(p.Port)
		case *v1alpha3.HTTPRedirect_DerivePort:
			switch p.DerivePort {
			case v1alpha3.HTTPRedirect_FROM_REQUEST_PORT:
				r.Derive = route.PortFromRequest
			case v1alpha3.HTTPRedirect_FROM_PROTOCOL_DEFAULT:
				r.Derive = route.PortFromProtocolDefault
			}
		}
		out.Redirect = r
	}
	if dr := hr.DirectResponse; dr != nil {
		if dr.Status < 200 || dr.Status > 599 {
			c.bad(f+".directResponse.status", "%d is not a valid HTTP status (200..599)", dr.Status)
		}
		d := &route.DirectResponse{Status: int(dr.Status)}
		if dr.Body != nil {
			d.Body = dr.Body.GetString_()
			if b := dr.Body.GetBytes(); b != nil {
				d.Body = string(b)
			}
		}
		out.DirectResponse = d
	}
	if hr.Mirror != nil {
		c.checkPercent(f+".mirrorPercentage.value", hr.MirrorPercentage)
		var legacy int32
		if hr.MirrorPercent != nil {
			legacy = int32(hr.MirrorPercent.Value)
		}
		pm := percent(hr.MirrorPercentage, legacy, 1000000)
		if hr.MirrorPercent != nil && hr.MirrorPercent.Value == 0 && hr.MirrorPercentage == nil {
			pm = 0
		}
		b := c.destination(f+".mirror", hr.Mirror)
		out.Mirrors = append(out.Mirrors, route.Mirror{Host: b.Host, Subset: b.Subset, Port: b.Port, PerMillion: pm})
	}
	if hr.Mirror != nil && len(hr.Mirrors) > 0 {
		c.bad(f+".mirrors", "mirror and mirrors cannot both be set")
	}
	for j, m := range hr.Mirrors {
		mf := fmt.Sprintf("%s.mirrors[%d]", f, j)
		c.checkPercent(mf+".percentage.value", m.Percentage)
		b := c.destination(mf+".destination", m.Destination)
		out.Mirrors = append(out.Mirrors, route.Mirror{Host: b.Host, Subset: b.Subset, Port: b.Port, PerMillion: percent(m.Percentage, 0, 1000000)})
	}
	if ft := hr.Fault; ft != nil {
		fault := &route.Fault{}
		if d := ft.Delay; d != nil {
			c.checkPercent(f+".fault.delay.percentage.value", d.Percentage)
			if d.GetExponentialDelay() != nil {
				c.bad(f+".fault.delay.exponentialDelay", "not supported")
			}
			fault.Delay = dur(d.GetFixedDelay())
			if fault.Delay <= 0 {
				c.bad(f+".fault.delay.fixedDelay", "must be greater than 0")
			}
			fault.DelayPerMillion = percent(d.Percentage, d.Percent, 0)
		}
		if a := ft.Abort; a != nil {
			c.checkPercent(f+".fault.abort.percentage.value", a.Percentage)
			fault.HasAbort = true
			fault.AbortPerMillion = percent(a.Percentage, 0, 0)
			switch e := a.ErrorType.(type) {
			case *v1alpha3.HTTPFaultInjection_Abort_HttpStatus:
				if e.HttpStatus < 200 || e.HttpStatus > 599 {
					c.bad(f+".fault.abort.httpStatus", "%d is not a valid HTTP status (200..599)", e.HttpStatus)
				}
				fault.AbortStatus = int(e.HttpStatus)
			case *v1alpha3.HTTPFaultInjection_Abort_GrpcStatus:
				code, ok := grpcCode(e.GrpcStatus)
				if !ok {
					c.bad(f+".fault.abort.grpcStatus", "unknown gRPC status %q", e.GrpcStatus)
				}
				fault.AbortGRPC = code
			default:
				c.bad(f+".fault.abort", "httpStatus or grpcStatus is required")
			}
		}
		out.Fault = fault
	}
	if rt := hr.Retries; rt != nil {
		if rt.Attempts < 0 {
			c.bad(f+".retries.attempts", "must be >= 0")
		}
		r := route.DefaultRetry()
		r.Attempts = int(max(rt.Attempts, 0))
		if rt.PerTryTimeout != nil {
			if rt.PerTryTimeout.AsDuration() < time.Millisecond {
				c.bad(f+".retries.perTryTimeout", "must be at least 1ms")
			}
			r.PerTryTimeout = rt.PerTryTimeout.AsDuration()
		}
		if rt.Backoff != nil {
			r.Backoff = rt.Backoff.AsDuration()
		}
		if rt.RetryOn != "" {
			r.On = nil
			for _, p := range strings.Split(rt.RetryOn, ",") {
				p = strings.TrimSpace(p)
				if p == "" {
					continue
				}
				if n, err := strconv.Atoi(p); err == nil {
					if n < 100 || n > 599 {
						c.bad(f+".retries.retryOn", "%d is not a valid HTTP status", n)
					}
					r.Codes = append(r.Codes, n)
					if !slices.Contains(r.On, "retriable-status-codes") {
						r.On = append(r.On, "retriable-status-codes")
					}
					continue
				}
				r.On = append(r.On, p)
			}
		}
		out.Retry = &r
	}
	return out
}

// maxMaglevTableSize is Envoy's limit for a Maglev table.
const maxMaglevTableSize = 5000011

func (c *conv) lb(f string, s *v1alpha3.LoadBalancerSettings) *route.LB {
	if s == nil {
		return nil
	}
	lb := &route.LB{}
	switch p := s.LbPolicy.(type) {
	case *v1alpha3.LoadBalancerSettings_Simple:
		switch p.Simple {
		case v1alpha3.LoadBalancerSettings_ROUND_ROBIN:
			lb.Kind = route.RoundRobin
		case v1alpha3.LoadBalancerSettings_RANDOM:
			lb.Kind = route.Random
		case v1alpha3.LoadBalancerSettings_PASSTHROUGH:
			lb.Kind = route.Passthrough
		default:
			lb.Kind = route.LeastRequest
		}
	case *v1alpha3.LoadBalancerSettings_ConsistentHash:
		ch := p.ConsistentHash
		lb.Kind = route.ConsistentHash
		switch k := ch.HashKey.(type) {
		case *v1alpha3.LoadBalancerSettings_ConsistentHashLB_HttpHeaderName:
			lb.Hash.Header = k.HttpHeaderName
		case *v1alpha3.LoadBalancerSettings_ConsistentHashLB_HttpCookie:
			if k.HttpCookie.GetName() == "" {
				c.bad(f+".consistentHash.httpCookie.name", "required")
			}
			lb.Hash.Cookie = k.HttpCookie.GetName()
		case *v1alpha3.LoadBalancerSettings_ConsistentHashLB_UseSourceIp:
			lb.Hash.SourceIP = k.UseSourceIp
		case *v1alpha3.LoadBalancerSettings_ConsistentHashLB_HttpQueryParameterName:
			lb.Hash.Query = k.HttpQueryParameterName
		default:
			c.bad(f+".consistentHash", "a hash key is required")
		}
		lb.RingSize = int(ch.MinimumRingSize)
		if rh := ch.GetRingHash(); rh != nil && rh.MinimumRingSize > 0 {
			lb.RingSize = int(rh.MinimumRingSize)
		}
		if mg := ch.GetMaglev(); mg != nil {
			lb.Maglev = true
			lb.RingSize = 0
			if n := mg.TableSize; n != 0 {
				if n > maxMaglevTableSize || !isPrime(n) {
					c.bad(f+".consistentHash.maglev.tableSize", "%d must be a prime number not above %d", n, maxMaglevTableSize)
				} else {
					lb.RingSize = int(n)
				}
			}
		}
	}
	if s.ZoneAwareLbSetting != nil {
		c.bad(f+".zoneAwareLbSetting", "not supported")
	}
	if ls := s.LocalityLbSetting; ls != nil {
		lb.Locality = c.locality(f+".localityLbSetting", ls)
	}
	return lb
}

func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// locality converts and validates a localityLbSetting as Istio's
// ValidateLocalityLbSetting does. (Failover without outlier detection is
// only a warning there: it is accepted and has no effect.)
func (c *conv) locality(f string, ls *v1alpha3.LocalityLoadBalancerSetting) *route.LocalityLB {
	out := &route.LocalityLB{Disabled: ls.Enabled != nil && !ls.Enabled.Value}
	if len(ls.Distribute) > 0 && len(ls.Failover) > 0 {
		c.bad(f, "can not simultaneously specify 'distribute' and 'failover'")
	}
	for i, d := range ls.Distribute {
		df := fmt.Sprintf("%s.distribute[%d]", f, i)
		c.checkLocality(df+".from", d.From)
		if len(d.To) == 0 {
			c.bad(df+".to", "at least one locality is required")
		}
		var total uint32
		dist := route.LocalityDistribute{From: d.From}
		for _, loc := range slices.Sorted(maps.Keys(d.To)) {
			w := d.To[loc]
			if w == 0 || w > 100 {
				c.bad(df+".to."+loc, "locality weight must be in range [1, 100], got %d", w)
			}
			total += w
			c.checkLocality(df+".to."+loc, loc)
			dist.To = append(dist.To, route.LocalityShare{Locality: loc, Weight: w})
		}
		if len(d.To) > 0 && total != 100 {
			c.bad(df+".to", "total locality weight %d != 100", total)
		}
		c.checkOverlap(df+".to", slices.Sorted(maps.Keys(d.To)))
		out.Distribute = append(out.Distribute, dist)
	}
	for i, fo := range ls.Failover {
		ff := fmt.Sprintf("%s.failover[%d]", f, i)
		switch {
		case fo.From == fo.To:
			c.bad(ff, "locality lb failover settings must specify different regions")
		case strings.Contains(fo.From, "/") || strings.Contains(fo.To, "/"):
			c.bad(ff, "locality lb failover only specify region")
		case strings.Contains(fo.From, "*") || strings.Contains(fo.To, "*"):
			c.bad(ff, "locality lb failover region should not contain '*' wildcard")
		}
		out.Failover = append(out.Failover, route.RegionFailover{From: fo.From, To: fo.To})
	}
	for i, l := range ls.FailoverPriority {
		lf := fmt.Sprintf("%s.failoverPriority[%d]", f, i)
		name, value, hasValue := strings.Cut(l, "=")
		switch name {
		case route.LabelRegion, route.LabelZone, route.LabelSubzone:
			if len(ls.Failover) > 0 {
				c.bad(lf, "can not simultaneously set 'failover' and topology label '%s' in 'failoverPriority'", name)
			}
		case route.LabelNetwork, route.LabelHostname:
		default:
			if !hasValue {
				// Istio compares it with the waypoint's own labels,
				// which this library does not know.
				c.bad(lf, "label %q needs a value (%s=<value>): the waypoint's own labels are not known", name, name)
			}
		}
		if name == "" {
			c.bad(lf, "label name is required")
		}
		out.FailoverPriority = append(out.FailoverPriority, route.FailoverLabel{Label: name, Value: value, HasValue: hasValue})
	}
	return out
}

// checkLocality checks a "region/zone/subzone" locality: at most one "*",
// and only at the end.
func (c *conv) checkLocality(f, loc string) {
	if loc == "" {
		c.bad(f, "locality is required")
		return
	}
	if n := strings.Count(loc, "*"); n > 1 || (n == 1 && !strings.HasSuffix(loc, "*")) {
		c.bad(f, "locality %s wildcard '*' number can not exceed 1 and must be in the end", loc)
	}
	if strings.Count(loc, "/") > 2 {
		c.bad(f, "locality %s has more than region/zone/subzone", loc)
	}
}

// checkOverlap rejects destination localities that overlap (one matches
// the other), as Istio's validateLocalities does.
func (c *conv) checkOverlap(f string, locs []string) {
	for i, a := range locs {
		for _, b := range locs[i+1:] {
			if localityCovers(a, b) || localityCovers(b, a) {
				c.bad(f, "locality %s overlaps with %s", a, b)
			}
		}
	}
}

// localityCovers reports whether pattern a matches every locality b does.
func localityCovers(a, b string) bool {
	pa, pb := strings.Split(a, "/"), strings.Split(b, "/")
	for i, x := range pa {
		if x == "*" {
			return true
		}
		if i >= len(pb) || pb[i] != x {
			return false
		}
	}
	return len(pa) <= len(pb)
}

func (c *conv) trafficPolicy(f string, tp *v1alpha3.TrafficPolicy) route.TrafficPolicy {
	var out route.TrafficPolicy
	if tp == nil {
		return out
	}
	out.OutlierDetection = tp.OutlierDetection != nil
	out.LB = c.lb(f+".loadBalancer", tp.LoadBalancer)
	for i, pl := range tp.PortLevelSettings {
		pf := fmt.Sprintf("%s.portLevelSettings[%d]", f, i)
		if pl.Port == nil || pl.Port.Number == 0 || pl.Port.Number > 65535 {
			c.bad(pf+".port.number", "must be in 1..65535")
			continue
		}
		if out.Ports == nil {
			out.Ports = map[int]route.PortPolicy{}
		}
		n := int(pl.Port.Number)
		if _, dup := out.Ports[n]; dup {
			c.bad(pf+".port.number", "duplicate port %d", n)
		}
		od := pl.OutlierDetection != nil
		out.Ports[n] = route.PortPolicy{LB: c.lb(pf+".loadBalancer", pl.LoadBalancer), OutlierDetection: od}
	}
	return out
}

func (c *conv) destinationRule(dr *v1alpha3.DestinationRule) route.Policy {
	p := route.Policy{Kind: c.obj.Kind, Name: c.obj.Name, Namespace: c.obj.Namespace, Host: c.fqdn(dr.Host)}
	if dr.Host == "" {
		c.bad("spec.host", "required")
	}
	p.Policy = c.trafficPolicy("spec.trafficPolicy", dr.TrafficPolicy)
	seen := map[string]bool{}
	for i, s := range dr.Subsets {
		f := fmt.Sprintf("spec.subsets[%d]", i)
		if s.Name == "" {
			c.bad(f+".name", "required")
		}
		if seen[s.Name] {
			c.bad(f+".name", "duplicate subset name %q", s.Name)
		}
		seen[s.Name] = true
		p.Subsets = append(p.Subsets, route.Subset{Name: s.Name, Labels: s.Labels, Policy: c.trafficPolicy(f+".trafficPolicy", s.TrafficPolicy)})
	}
	return p
}
