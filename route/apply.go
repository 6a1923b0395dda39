package route

import (
	"net"
	"net/http"
	"strconv"
	"strings"
)

// The functions in this file execute the actions of a Result. They are
// called after Pick, off the lock-free path, and may allocate.

// RewritePath returns the path (with query) the upstream sees.
func (res *Result) RewritePath(path string) string {
	if path == "" {
		path = "/"
	}
	if res.Rule == nil || res.Rule.Route.Rewrite == nil {
		return path
	}
	rw := res.Rule.Route.Rewrite
	pnq, q := splitQuery(path)
	withQuery := func(p string) string {
		if strings.Contains(path, "?") {
			return p + "?" + q
		}
		return p
	}
	switch rw.Kind {
	case RewritePrefix:
		m := res.Rule.Match
		switch {
		case m != nil && m.PathKind == PathExact:
			return withQuery(rw.Value)
		case m != nil && m.PathKind == PathPrefix:
			return rw.Value + path[len(m.Path):]
		default:
			return rw.Value + strings.TrimPrefix(path, "/")
		}
	case RewriteSegmentPrefix:
		return withQuery(replaceSegmentPrefix(res.Rule.Match, pnq, rw.Value))
	case RewriteFullPath:
		return withQuery(rw.Value)
	case RewriteRegex:
		if res.Rule.rewriteRE == nil {
			return path
		}
		return withQuery(res.Rule.rewriteRE.ReplaceAllString(pnq, res.Rule.rewriteSub))
	}
	return path
}

func replaceSegmentPrefix(m *Match, pnq, value string) string {
	prefix := ""
	if m != nil && (m.PathKind == PathSegmentPrefix || m.PathKind == PathPrefix) {
		prefix = strings.TrimSuffix(m.Path, "/")
	} else if m != nil && m.PathKind == PathExact {
		prefix = pnq
	}
	rest := pnq[min(len(prefix), len(pnq)):]
	repl := strings.TrimSuffix(value, "/")
	if repl == "" {
		return "/" + strings.TrimPrefix(rest, "/")
	}
	if rest != "" && !strings.HasPrefix(rest, "/") {
		rest = "/" + rest
	}
	return repl + rest
}

// envoySubst turns Envoy's \N capture references into Go's ${N} and
// escapes literal dollars.
func envoySubst(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '$':
			b.WriteString("$$")
		case c == '\\' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			b.WriteString("${")
			b.WriteByte(s[i+1])
			b.WriteString("}")
			i++
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// Authority returns the Host header the upstream sees.
func (res *Result) Authority(req *Request) string {
	if res.Rule != nil && res.Rule.Route.Rewrite != nil && res.Rule.Route.Rewrite.Authority != "" {
		return res.Rule.Route.Rewrite.Authority
	}
	return req.authority()
}

func (res *Result) backendOps() (*Backend, bool) {
	if res.Rule == nil || res.Backend < 0 || res.Backend >= len(res.Rule.Route.Backends) {
		return nil, false
	}
	return &res.Rule.Route.Backends[res.Backend], len(res.Rule.Route.Backends) == 1
}

// ApplyRequestHeaders applies the rule's request header operations to h.
func (res *Result) ApplyRequestHeaders(h http.Header) {
	if res.Rule == nil {
		return
	}
	b, single := res.backendOps()
	route := res.Rule.Route.RequestHeaders
	switch {
	case b == nil:
		route.Apply(h)
	case single:
		// one destination: its operations follow the route's, so they win.
		route.Apply(h)
		b.RequestHeaders.Apply(h)
	default:
		b.RequestHeaders.Apply(h)
		route.Apply(h)
	}
}

// ApplyResponseHeaders applies the rule's response header operations to h.
func (res *Result) ApplyResponseHeaders(h http.Header) {
	if res.Rule == nil {
		return
	}
	b, single := res.backendOps()
	route := res.Rule.Route.ResponseHeaders
	switch {
	case b == nil:
		route.Apply(h)
	case single:
		route.Apply(h)
		b.ResponseHeaders.Apply(h)
	default:
		b.ResponseHeaders.Apply(h)
		route.Apply(h)
	}
}

// Apply performs the operations on h: remove, then set, then add.
func (o HeaderOps) Apply(h http.Header) {
	for _, n := range o.Remove {
		h.Del(n)
	}
	for _, kv := range o.Set {
		h.Set(kv.Name, kv.Value)
	}
	for _, kv := range o.Add {
		h.Add(kv.Name, kv.Value)
	}
}

// Location returns the redirect target of a RedirectResponse result.
func (res *Result) Location(req *Request) string {
	if res.Rule == nil || res.Rule.Route.Redirect == nil {
		return ""
	}
	rd := res.Rule.Route.Redirect
	scheme := req.Scheme
	if scheme == "" {
		scheme = "http"
	}
	if rd.Scheme != "" {
		scheme = rd.Scheme
	}
	host, port := req.authority(), ""
	if h, p, err := net.SplitHostPort(host); err == nil {
		host, port = h, p
	}
	if rd.Host != "" {
		host = rd.Host
		if h, p, err := net.SplitHostPort(host); err == nil {
			host, port = h, p
		}
	}
	switch {
	case rd.Port != 0:
		port = strconv.Itoa(rd.Port)
	case rd.Derive == PortFromRequest:
		port = strconv.Itoa(req.Port)
	case rd.Derive == PortFromProtocolDefault:
		port = ""
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	path := req.Path
	if path == "" {
		path = "/"
	}
	pnq, q := splitQuery(path)
	withQuery := func(p string) string {
		if strings.Contains(path, "?") && !strings.Contains(p, "?") {
			return p + "?" + q
		}
		return p
	}
	switch {
	case rd.FullPath:
		path = withQuery(rd.Path)
	case rd.PrefixRewrite && rd.SegmentPrefix:
		path = withQuery(replaceSegmentPrefix(res.Rule.Match, pnq, rd.Path))
	case rd.PrefixRewrite:
		m := res.Rule.Match
		if m != nil && (m.PathKind == PathPrefix || m.PathKind == PathExact) && len(path) >= len(m.Path) {
			path = rd.Path + path[len(m.Path):]
		} else {
			path = rd.Path + strings.TrimPrefix(path, "/")
		}
	}
	hostport := host
	if port != "" {
		hostport = net.JoinHostPort(host, port)
	}
	return scheme + "://" + hostport + path
}
