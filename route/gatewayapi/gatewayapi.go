package gatewayapi

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-multierror"
	"sigs.k8s.io/yaml"

	"github.com/meshblocks/meshblocks/internal/yamldoc"
	"github.com/meshblocks/meshblocks/route"
)

// Group is the Gateway API group.
const Group = "gateway.networking.k8s.io"

// ErrUnsupported is returned for objects of another group or kind.
var ErrUnsupported = errors.New("route/gatewayapi: unsupported object")

// Objects are decoded Gateway API routes.
type Objects struct {
	HTTPRoutes []HTTPRoute
	GRPCRoutes []GRPCRoute
	TCPRoutes  []TCPRoute
	TLSRoutes  []TLSRoute
}

// Decode reads a multi-document YAML stream of routes.
func Decode(data []byte) (Objects, error) {
	var objs Objects
	var errs *multierror.Error
	for i, doc := range yamldoc.Split(data) {
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			errs = multierror.Append(errs, fmt.Errorf("route/gatewayapi: document %d: %w", i, err))
			continue
		}
		if string(js) == "null" {
			continue
		}
		if err := objs.AddJSON(js); err != nil {
			errs = multierror.Append(errs, fmt.Errorf("document %d: %w", i, err))
		}
	}
	return objs, errs.ErrorOrNil()
}

// AddJSON decodes one object in JSON form and appends it. Unknown fields are
// rejected.
func (o *Objects) AddJSON(js []byte) error {
	var tm TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return fmt.Errorf("route/gatewayapi: %w", err)
	}
	group, _, _ := strings.Cut(tm.APIVersion, "/")
	if group != Group {
		return fmt.Errorf("%w: apiVersion %q", ErrUnsupported, tm.APIVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var err error
	switch tm.Kind {
	case "HTTPRoute":
		var r HTTPRoute
		if err = dec.Decode(&r); err == nil {
			o.HTTPRoutes = append(o.HTTPRoutes, r)
		}
	case "GRPCRoute":
		var r GRPCRoute
		if err = dec.Decode(&r); err == nil {
			o.GRPCRoutes = append(o.GRPCRoutes, r)
		}
	case "TCPRoute":
		var r TCPRoute
		if err = dec.Decode(&r); err == nil {
			o.TCPRoutes = append(o.TCPRoutes, r)
		}
	case "TLSRoute":
		var r TLSRoute
		if err = dec.Decode(&r); err == nil {
			o.TLSRoutes = append(o.TLSRoutes, r)
		}
	default:
		return fmt.Errorf("%w: kind %q", ErrUnsupported, tm.Kind)
	}
	if err != nil {
		return fmt.Errorf("route/gatewayapi: %s: %w", tm.Kind, err)
	}
	return nil
}

type mergeKey struct {
	ns, host string
	port     int
}

type meshRoute struct {
	kind   string
	meta   ObjectMeta
	port   int
	routes []route.HTTPRoute
	// noMatch[i] marks routes[i] as coming from a GRPCRoute rule without
	// matches: Istio gives it no match at all and sorts it after every
	// route that has one.
	noMatch []bool
	grpc    bool
	l4      []route.L4Route
	tls     bool
	created time.Time
}

type conv struct {
	domain string
	obj    string
	errs   []error
}

func (c *conv) bad(field, format string, a ...any) {
	c.errs = append(c.errs, &route.FieldError{Object: c.obj, Field: field, Msg: fmt.Sprintf(format, a...)})
}

// Convert applies the CRD defaults, validates, and converts the routes whose
// parents are Services (GAMMA) into route configurations, merged and sorted
// as Istio does: one configuration per (route namespace, Service, parent
// port), rules split per match and ordered by precedence. domain "" means
// cluster.local. Routes with only Gateway parents are ignored.
func Convert(objs Objects, domain string) ([]route.RouteConfig, error) {
	domain = cmp.Or(domain, "cluster.local")
	var errs *multierror.Error
	groups := map[mergeKey][]*meshRoute{}
	var keys []mergeKey
	add := func(k mergeKey, mr *meshRoute) {
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], mr)
	}
	collect := func(kind string, meta ObjectMeta, parents []ParentReference, c *conv, build func(port int) *meshRoute) {
		ns := cmp.Or(meta.Namespace, "default")
		if meta.Name == "" {
			c.bad("metadata.name", "required")
		}
		if len(parents) == 0 {
			c.bad("spec.parentRefs", "at least one parent is required")
		}
		for i, p := range parents {
			if ptrOr(p.Group, Group) != "" || ptrOr(p.Kind, "Gateway") != "Service" {
				continue
			}
			if p.Name == "" {
				c.bad(fmt.Sprintf("spec.parentRefs[%d].name", i), "required")
				continue
			}
			host := p.Name + "." + ptrOr(p.Namespace, ns) + ".svc." + domain
			port := 0
			if p.Port != nil {
				if *p.Port < 1 || *p.Port > 65535 {
					c.bad(fmt.Sprintf("spec.parentRefs[%d].port", i), "must be in 1..65535, got %d", *p.Port)
				}
				port = int(*p.Port)
			}
			mr := build(port)
			mr.kind, mr.meta, mr.port, mr.created = kind, meta, port, meta.CreationTimestamp
			mr.meta.Namespace = ns
			add(mergeKey{ns: ns, host: host, port: port}, mr)
		}
	}
	for _, r := range objs.HTTPRoutes {
		c := &conv{domain: domain, obj: "HTTPRoute " + cmp.Or(r.Metadata.Namespace, "default") + "/" + r.Metadata.Name}
		collect("HTTPRoute", r.Metadata, r.Spec.ParentRefs, c, func(port int) *meshRoute {
			return &meshRoute{routes: c.httpRules(r.Metadata, r.Spec.Rules, port)}
		})
		for _, e := range c.errs {
			errs = multierror.Append(errs, e)
		}
	}
	for _, r := range objs.GRPCRoutes {
		c := &conv{domain: domain, obj: "GRPCRoute " + cmp.Or(r.Metadata.Namespace, "default") + "/" + r.Metadata.Name}
		collect("GRPCRoute", r.Metadata, r.Spec.ParentRefs, c, func(port int) *meshRoute {
			routes, noMatch := c.grpcRules(r.Metadata, r.Spec.Rules, port)
			return &meshRoute{routes: routes, noMatch: noMatch, grpc: true}
		})
		for _, e := range c.errs {
			errs = multierror.Append(errs, e)
		}
	}
	var out []route.RouteConfig
	for _, r := range objs.TCPRoutes {
		c := &conv{domain: domain, obj: "TCPRoute " + cmp.Or(r.Metadata.Namespace, "default") + "/" + r.Metadata.Name}
		out = append(out, c.l4Route("TCPRoute", r.Metadata, r.Spec, false)...)
		for _, e := range c.errs {
			errs = multierror.Append(errs, e)
		}
	}
	for _, r := range objs.TLSRoutes {
		c := &conv{domain: domain, obj: "TLSRoute " + cmp.Or(r.Metadata.Namespace, "default") + "/" + r.Metadata.Name}
		out = append(out, c.l4Route("TLSRoute", r.Metadata, r.Spec, true)...)
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
		return nil, fmt.Errorf("route/gatewayapi: %w", errs)
	}
	for _, k := range keys {
		list := groups[k]
		sort.SliceStable(list, func(i, j int) bool {
			a, b := list[i], list[j]
			if !a.created.Equal(b.created) {
				return a.created.Before(b.created)
			}
			if a.meta.Namespace != b.meta.Namespace {
				return a.meta.Namespace < b.meta.Namespace
			}
			return a.meta.Name < b.meta.Name
		})
		rc := route.RouteConfig{Kind: list[0].kind, Name: list[0].meta.Name, Namespace: k.ns, Created: list[0].created, GatewayAPI: true, Hosts: []string{k.host}}
		var all []sortable
		for _, mr := range list {
			for i := range mr.routes {
				all = append(all, sortable{r: mr.routes[i], noMatch: i < len(mr.noMatch) && mr.noMatch[i]})
			}
		}
		sort.SliceStable(all, func(i, j int) bool { return precedes(&all[i], &all[j]) })
		for _, a := range all {
			rc.HTTP = append(rc.HTTP, a.r)
		}
		out = append(out, rc)
	}
	return out, nil
}

func ptrOr[T any](p *T, d T) T {
	if p == nil {
		return d
	}
	return *p
}

// pathRank is Istio's getURIRank: Exact 3 > Prefix 2 > Regex 1 > no URI
// match -1. Every HTTPRoute match has a path (the CRD defaults it to
// PathPrefix "/"); a GRPCRoute match without a method has none, so it ranks
// below every regex.
func pathRank(m *route.Match) int {
	switch m.PathKind {
	case route.PathExact:
		return 3
	case route.PathSegmentPrefix, route.PathPrefix:
		return 2
	case route.PathRegex:
		return 1
	}
	return -1
}

// sortable is one split route with the flag sortHTTPRoutes looks at first.
type sortable struct {
	r       route.HTTPRoute
	noMatch bool
}

// precedes is Istio's sortHTTPRoutes order for one-match routes. A route
// without any match (a GRPCRoute rule without matches and without a parent
// port) sorts after all others.
func precedes(x, y *sortable) bool {
	if x.noMatch {
		return false
	}
	if y.noMatch {
		return true
	}
	a, b := &x.r, &y.r
	ma, mb := &a.Matches[0], &b.Matches[0]
	if ra, rb := pathRank(ma), pathRank(mb); ra != rb {
		return ra > rb
	}
	if len(ma.Path) != len(mb.Path) {
		return len(ma.Path) > len(mb.Path)
	}
	if (ma.Method != nil) != (mb.Method != nil) {
		return ma.Method != nil
	}
	if len(ma.Headers) != len(mb.Headers) {
		return len(ma.Headers) > len(mb.Headers)
	}
	return len(ma.Query) > len(mb.Query)
}

func (c *conv) svcHost(ref BackendObjectReference, ns string) (string, bool) {
	if ptrOr(ref.Group, "") != "" || ptrOr(ref.Kind, "Service") != "Service" {
		return "", false
	}
	return ref.Name + "." + ptrOr(ref.Namespace, ns) + ".svc." + c.domain, true
}

func (c *conv) headerFilter(f string, hf *HTTPHeaderFilter) route.HeaderOps {
	var ops route.HeaderOps
	if hf == nil {
		c.bad(f, "required by the filter type")
		return ops
	}
	seen := map[string]bool{}
	for i, h := range hf.Set {
		n := strings.ToLower(h.Name)
		if n == "" {
			c.bad(fmt.Sprintf("%s.set[%d].name", f, i), "required")
		}
		if seen[n] {
			continue // the first of duplicate names wins
		}
		seen[n] = true
		ops.Set = append(ops.Set, route.Header{Name: n, Value: h.Value})
	}
	seen = map[string]bool{}
	for i, h := range hf.Add {
		n := strings.ToLower(h.Name)
		if n == "" {
			c.bad(fmt.Sprintf("%s.add[%d].name", f, i), "required")
		}
		if seen[n] {
			continue
		}
		seen[n] = true
		ops.Add = append(ops.Add, route.Header{Name: n, Value: h.Value})
	}
	for _, n := range hf.Remove {
		ops.Remove = append(ops.Remove, strings.ToLower(n))
	}
	return ops
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, errors.New("must not be negative")
	}
	return d, nil
}

// rule fills the action part shared by HTTPRoute and GRPCRoute rules.
func (c *conv) rule(f, ns string, filters []HTTPRouteFilter, backends []HTTPBackendRef, out *route.HTTPRoute) {
	out.MissingBackendStatus = 500
	for i, ft := range filters {
		ff := fmt.Sprintf("%s.filters[%d]", f, i)
		switch ft.Type {
		case "RequestHeaderModifier":
			ops := c.headerFilter(ff+".requestHeaderModifier", ft.RequestHeaderModifier)
			for _, h := range ops.Set {
				if h.Name == "host" {
					c.rewrite(out).Authority = h.Value
				}
			}
			out.RequestHeaders = ops
		case "ResponseHeaderModifier":
			out.ResponseHeaders = c.headerFilter(ff+".responseHeaderModifier", ft.ResponseHeaderModifier)
		case "URLRewrite":
			u := ft.URLRewrite
			if u == nil {
				c.bad(ff+".urlRewrite", "required by the filter type")
				continue
			}
			rw := c.rewrite(out)
			if u.Hostname != nil {
				rw.Authority = *u.Hostname
			}
			if u.Path != nil {
				switch u.Path.Type {
				case "ReplaceFullPath":
					rw.Kind, rw.Value = route.RewriteFullPath, ptrOr(u.Path.ReplaceFullPath, "")
				case "ReplacePrefixMatch":
					rw.Kind, rw.Value = route.RewriteSegmentPrefix, ptrOr(u.Path.ReplacePrefixMatch, "")
					for _, m := range out.Matches {
						if m.PathKind != route.PathSegmentPrefix {
							c.bad(ff+".urlRewrite.path", "ReplacePrefixMatch is only compatible with a PathPrefix match")
							break
						}
					}
				default:
					c.bad(ff+".urlRewrite.path.type", "unknown type %q", u.Path.Type)
				}
			}
		case "RequestRedirect":
			rd := ft.RequestRedirect
			if rd == nil {
				c.bad(ff+".requestRedirect", "required by the filter type")
				continue
			}
			r := &route.Redirect{Status: ptrOr(rd.StatusCode, 302), Scheme: ptrOr(rd.Scheme, ""), Host: ptrOr(rd.Hostname, ""), SegmentPrefix: true}
			switch r.Status {
			case 301, 302, 303, 307, 308:
			default:
				c.bad(ff+".requestRedirect.statusCode", "unsupported value %d: must be 301, 302, 303, 307 or 308", r.Status)
			}
			switch {
			case rd.Port != nil:
				r.Port = int(*rd.Port)
			case rd.Scheme != nil:
				r.Derive = route.PortFromProtocolDefault
			default:
				r.Derive = route.PortFromRequest
			}
			if rd.Path != nil {
				switch rd.Path.Type {
				case "ReplaceFullPath":
					r.Path, r.FullPath = ptrOr(rd.Path.ReplaceFullPath, ""), true
				case "ReplacePrefixMatch":
					r.Path, r.PrefixRewrite = ptrOr(rd.Path.ReplacePrefixMatch, ""), true
				default:
					c.bad(ff+".requestRedirect.path.type", "unknown type %q", rd.Path.Type)
				}
			}
			out.Redirect = r
		case "RequestMirror":
			m := ft.RequestMirror
			if m == nil {
				c.bad(ff+".requestMirror", "required by the filter type")
				continue
			}
			host, ok := c.svcHost(m.BackendRef, ns)
			if !ok {
				c.bad(ff+".requestMirror.backendRef", "only Service backends are supported")
				continue
			}
			pm := uint32(1000000)
			switch {
			case m.Percent != nil:
				if *m.Percent < 0 || *m.Percent > 100 {
					c.bad(ff+".requestMirror.percent", "must be in 0..100")
				}
				pm = uint32(max(*m.Percent, 0)) * 10000
			case m.Fraction != nil:
				den := ptrOr(m.Fraction.Denominator, 100)
				if den <= 0 || m.Fraction.Numerator < 0 || m.Fraction.Numerator > den {
					c.bad(ff+".requestMirror.fraction", "numerator must be in 0..denominator and denominator > 0")
					continue
				}
				pm = uint32(int64(m.Fraction.Numerator) * 1000000 / int64(den))
			}
			out.Mirrors = append(out.Mirrors, route.Mirror{Host: host, Port: int(ptrOr(m.BackendRef.Port, 0)), PerMillion: pm})
		case "ExtensionRef", "CORS":
			c.bad(ff+".type", "filter %s is not supported", ft.Type)
		default:
			c.bad(ff+".type", "unknown filter type %q", ft.Type)
		}
	}
	if out.Redirect != nil {
		return
	}
	var total int64
	for i, b := range backends {
		bf := fmt.Sprintf("%s.backendRefs[%d]", f, i)
		rb := c.backend(b.BackendRef, bf, ns)
		total += int64(rb.Weight)
		for j, ft := range b.Filters {
			ff := fmt.Sprintf("%s.filters[%d]", bf, j)
			switch ft.Type {
			case "RequestHeaderModifier":
				rb.RequestHeaders = c.headerFilter(ff+".requestHeaderModifier", ft.RequestHeaderModifier)
			case "ResponseHeaderModifier":
				rb.ResponseHeaders = c.headerFilter(ff+".responseHeaderModifier", ft.ResponseHeaderModifier)
			default:
				c.bad(ff+".type", "filter %q is not supported on a backendRef", ft.Type)
			}
		}
		out.Backends = append(out.Backends, rb)
	}
	if len(backends) == 0 || total == 0 {
		out.NoBackendStatus = 500
	}
}

func (c *conv) rewrite(out *route.HTTPRoute) *route.Rewrite {
	if out.Rewrite == nil {
		out.Rewrite = &route.Rewrite{}
	}
	return out.Rewrite
}

func (c *conv) httpRules(meta ObjectMeta, rules []HTTPRouteRule, port int) []route.HTTPRoute {
	ns := cmp.Or(meta.Namespace, "default")
	var out []route.HTTPRoute
	for i, r := range rules {
		f := fmt.Sprintf("spec.rules[%d]", i)
		base := route.HTTPRoute{Name: ptrOr(r.Name, ""), Field: f}
		matches := r.Matches
		if len(matches) == 0 {
			matches = []HTTPRouteMatch{{}}
		}
		var ms []route.Match
		for j, m := range matches {
			mf := fmt.Sprintf("%s.matches[%d]", f, j)
			rm := route.Match{Port: port, PathKind: route.PathSegmentPrefix, Path: "/"}
			if m.Path != nil {
				v := ptrOr(m.Path.Value, "/")
				switch t := ptrOr(m.Path.Type, "PathPrefix"); t {
				case "Exact":
					rm.PathKind = route.PathExact
				case "PathPrefix":
					rm.PathKind = route.PathSegmentPrefix
				case "RegularExpression":
					rm.PathKind = route.PathRegex
					if _, err := regexp.Compile(v); err != nil {
						c.bad(mf+".path.value", "%q is not a valid RE2 expression: %v", v, err)
					}
				default:
					c.bad(mf+".path.type", "unknown type %q", t)
				}
				if rm.PathKind != route.PathRegex && !strings.HasPrefix(v, "/") {
					c.bad(mf+".path.value", "must be an absolute path")
				}
				rm.Path = v
			}
			for k, h := range m.Headers {
				hf := fmt.Sprintf("%s.headers[%d]", mf, k)
				if !c.firstHeader(hf, h.Name, k, func(i int) string { return m.Headers[i].Name }) {
					continue
				}
				rm.Headers = append(rm.Headers, route.HeaderMatch{Name: h.Name, StringMatch: c.valueMatch(hf, h.Type, h.Value)})
			}
			for k, q := range m.QueryParams {
				qf := fmt.Sprintf("%s.queryParams[%d]", mf, k)
				if q.Name == "" {
					c.bad(qf+".name", "required")
				}
				if slices.ContainsFunc(m.QueryParams[:k], func(o HTTPQueryParamMatch) bool { return o.Name == q.Name }) {
					// The list is keyed by name: the API server rejects a duplicate.
					c.bad(qf+".name", "duplicate entry for query parameter %q (the list is keyed by name)", q.Name)
					continue
				}
				rm.Query = append(rm.Query, route.QueryMatch{Name: q.Name, StringMatch: c.valueMatch(qf, q.Type, q.Value)})
			}
			if m.Method != nil {
				rm.Method = &route.StringMatch{Kind: route.Exact, Value: *m.Method}
			}
			ms = append(ms, rm)
		}
		base.Matches = ms
		c.rule(f, ns, r.Filters, r.BackendRefs, &base)
		if r.Timeouts != nil {
			if r.Timeouts.Request != nil {
				d, err := parseDuration(*r.Timeouts.Request)
				if err != nil {
					c.bad(f+".timeouts.request", "%v", err)
				}
				base.Timeout = d
			}
			if r.Timeouts.BackendRequest != nil {
				d, err := parseDuration(*r.Timeouts.BackendRequest)
				if err != nil {
					c.bad(f+".timeouts.backendRequest", "%v", err)
				}
				if r.Retry == nil && d != 0 {
					base.Timeout = d // without retry it bounds the whole request
				}
			}
		}
		if rt := r.Retry; rt != nil {
			rp := route.DefaultRetry()
			rp.Attempts = ptrOr(rt.Attempts, 2)
			if rp.Attempts < 0 {
				c.bad(f+".retry.attempts", "must be >= 0")
			}
			for _, code := range rt.Codes {
				if code < 400 || code > 599 {
					c.bad(f+".retry.codes", "%d is not in 400..599", code)
				}
				rp.Codes = append(rp.Codes, code)
			}
			if rt.Backoff != nil {
				d, err := parseDuration(*rt.Backoff)
				if err != nil {
					c.bad(f+".retry.backoff", "%v", err)
				}
				rp.Backoff = d
			}
			if r.Timeouts != nil && r.Timeouts.BackendRequest != nil {
				d, _ := parseDuration(*r.Timeouts.BackendRequest)
				rp.PerTryTimeout = d
			}
			base.Retry = &rp
		}
		// One route per match, the rule's action copied.
		for _, m := range ms {
			rc := base
			rc.Matches = []route.Match{m}
			out = append(out, rc)
		}
	}
	return out
}

func (c *conv) valueMatch(f string, typ *string, v string) route.StringMatch {
	switch t := ptrOr(typ, "Exact"); t {
	case "Exact":
		return route.StringMatch{Kind: route.Exact, Value: v}
	case "RegularExpression":
		if _, err := regexp.Compile(v); err != nil {
			c.bad(f+".value", "%q is not a valid RE2 expression: %v", v, err)
		}
		return route.StringMatch{Kind: route.Regex, Value: v}
	default:
		c.bad(f+".type", "unknown type %q", t)
		return route.StringMatch{Kind: route.Exact, Value: v}
	}
}

// grpcRules converts GRPCRoute rules. GRPCRoute has no CRD default for the
// path: a match without a method has no URI match (it matches every path),
// and a rule without matches has no match at all; the second result marks
// those routes for sorting.
func (c *conv) grpcRules(meta ObjectMeta, rules []GRPCRouteRule, port int) ([]route.HTTPRoute, []bool) {
	ns := cmp.Or(meta.Namespace, "default")
	var out []route.HTTPRoute
	var noMatch []bool
	for i, r := range rules {
		f := fmt.Sprintf("spec.rules[%d]", i)
		base := route.HTTPRoute{Name: ptrOr(r.Name, ""), Field: f}
		matches := r.Matches
		// Without a parent port Istio emits the rule with no match; with one
		// (augmentPortMatch) it gets a match holding only the port.
		none := len(matches) == 0 && port == 0
		if len(matches) == 0 {
			matches = []GRPCRouteMatch{{}}
		}
		var ms []route.Match
		for j, m := range matches {
			mf := fmt.Sprintf("%s.matches[%d]", f, j)
			rm := route.Match{Port: port}
			if mm := m.Method; mm != nil {
				svc, meth := ptrOr(mm.Service, ""), ptrOr(mm.Method, "")
				switch t := ptrOr(mm.Type, "Exact"); t {
				case "Exact":
					switch {
					case svc != "" && meth != "":
						rm.PathKind, rm.Path = route.PathExact, "/"+svc+"/"+meth
					case svc != "":
						rm.PathKind, rm.Path = route.PathSegmentPrefix, "/"+svc+"/"
					case meth != "":
						rm.PathKind, rm.Path = route.PathRegex, "/[^/]+/"+regexp.QuoteMeta(meth)
					default:
						c.bad(mf+".method", "one of service or method is required")
					}
				case "RegularExpression":
					rm.PathKind, rm.Path = route.PathRegex, "/"+cmp.Or(svc, "[^/]+")+"/"+cmp.Or(meth, "[^/]+")
					if _, err := regexp.Compile(rm.Path); err != nil {
						c.bad(mf+".method", "invalid RE2: %v", err)
					}
				default:
					c.bad(mf+".method.type", "unknown type %q", t)
				}
			}
			for k, h := range m.Headers {
				hf := fmt.Sprintf("%s.headers[%d]", mf, k)
				if !c.firstHeader(hf, h.Name, k, func(i int) string { return m.Headers[i].Name }) {
					continue
				}
				rm.Headers = append(rm.Headers, route.HeaderMatch{Name: h.Name, StringMatch: c.valueMatch(hf, h.Type, h.Value)})
			}
			ms = append(ms, rm)
		}
		base.Matches = ms
		c.rule(f, ns, r.Filters, r.BackendRefs, &base)
		for _, m := range ms {
			rc := base
			rc.Matches = []route.Match{m}
			out = append(out, rc)
			noMatch = append(noMatch, none)
		}
	}
	return out, noMatch
}

// firstHeader applies the Gateway API rules for repeated header matches
// in one match: the list is a map keyed by name, so the API server rejects
// an exact duplicate, and of names equal but for case only the first is
// considered. It reports whether entry k is to be used; name(i) returns the
// name of entry i.
func (c *conv) firstHeader(f, n string, k int, name func(int) string) bool {
	if n == "" {
		c.bad(f+".name", "required")
		return false
	}
	for i := 0; i < k; i++ {
		switch o := name(i); {
		case o == n:
			c.bad(f+".name", "duplicate entry for header %q (the list is keyed by name)", n)
			return false
		case strings.EqualFold(o, n):
			return false // the first entry with an equivalent name wins
		}
	}
	return true
}

func (c *conv) l4Route(kind string, meta ObjectMeta, spec L4RouteSpec, tls bool) []route.RouteConfig {
	ns := cmp.Or(meta.Namespace, "default")
	if meta.Name == "" {
		c.bad("metadata.name", "required")
	}
	if len(spec.ParentRefs) == 0 {
		c.bad("spec.parentRefs", "at least one parent is required")
	}
	if len(spec.Rules) == 0 {
		c.bad("spec.rules", "at least one rule is required")
	}
	// The rules are validated once; each Service parent gets a copy.
	rules := make([]route.L4Route, 0, len(spec.Rules))
	for j, r := range spec.Rules {
		f := fmt.Sprintf("spec.rules[%d]", j)
		lr := route.L4Route{Field: f}
		for k, b := range r.BackendRefs {
			lr.Backends = append(lr.Backends, c.backend(b, fmt.Sprintf("%s.backendRefs[%d]", f, k), ns))
		}
		if len(lr.Backends) == 0 {
			lr.Reject = true
		}
		rules = append(rules, lr)
	}
	var out []route.RouteConfig
	for i, p := range spec.ParentRefs {
		if ptrOr(p.Group, Group) != "" || ptrOr(p.Kind, "Gateway") != "Service" {
			continue
		}
		pf := fmt.Sprintf("spec.parentRefs[%d]", i)
		if p.Name == "" {
			c.bad(pf+".name", "required")
			continue
		}
		host := p.Name + "." + ptrOr(p.Namespace, ns) + ".svc." + c.domain
		port := 0
		if p.Port != nil {
			if *p.Port < 1 || *p.Port > 65535 {
				c.bad(pf+".port", "must be in 1..65535, got %d", *p.Port)
				continue
			}
			port = int(*p.Port)
		}
		rc := route.RouteConfig{Kind: kind, Name: meta.Name, Namespace: ns, Created: meta.CreationTimestamp, GatewayAPI: true, Hosts: []string{host}}
		for _, r := range rules {
			lr := r
			lr.Port = port
			if tls {
				lr.SNIHosts = spec.Hostnames
				if len(lr.SNIHosts) == 0 {
					lr.SNIHosts = []string{host}
				}
				rc.TLS = append(rc.TLS, lr)
			} else {
				rc.TCP = append(rc.TCP, lr)
			}
		}
		out = append(out, rc)
	}
	return out
}

// backend converts one weighted backendRef at field path bf: the weight
// (default 1, 0..1000000) and, for a Service in this mesh, its host and
// port; any other reference is an invalid backend.
func (c *conv) backend(b BackendRef, bf, ns string) route.Backend {
	w := ptrOr(b.Weight, 1)
	if w < 0 || w > 1000000 {
		c.bad(bf+".weight", "must be in 0..1000000")
	}
	rb := route.Backend{Name: b.Name, Weight: uint32(max(w, 0))}
	host, ok := c.svcHost(b.BackendObjectReference, ns)
	if !ok {
		rb.Invalid = true
		return rb
	}
	rb.Host = host
	switch {
	case b.Port == nil:
		c.bad(bf+".port", "required when referring to a Service")
	case *b.Port < 1 || *b.Port > 65535:
		c.bad(bf+".port", "must be in 1..65535, got %d", *b.Port)
	default:
		rb.Port = int(*b.Port)
	}
	return rb
}
