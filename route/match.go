package route

import (
	"cmp"
	"fmt"
	"net/textproto"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

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
