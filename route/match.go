package route

import (
	"cmp"
	"fmt"
	"net/textproto"
	"regexp"
	"slices"
	"strings"
	"sync"
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

func (c *cmatch) matches(req *Request, path, pathNoQuery, rawQuery string, sc *scratch) bool {
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
		if h.invert {
			if h.kind == Present {
				if ok {
					return false
				}
				continue
			}
			if h.matchValues(vals, sc) {
				return false
			}
			continue
		}
		if !ok || !h.matchValues(vals, sc) {
			return false
		}
	}
	for i := range c.query {
		q := &c.query[i]
		v, ok := queryValue(rawQuery, q.name)
		if !ok || !q.matchEscaped(v, sc) {
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

// queryValue returns the first value of key in a raw query string, still
// escaped: keys are compared decoded ("%"-escapes and "+" for space) without
// building strings, and the caller decodes the value only if it must.
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
		if escapedEqual(k, key) {
			return v, true
		}
	}
	return "", false
}

// needsDecode reports whether a query component contains escapes.
func needsDecode(s string) bool { return strings.ContainsAny(s, "%+") }

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// decodeAt decodes the byte of a query component at s[i]: "+" is a space,
// "%XY" a hex-encoded byte; a malformed escape stands for itself. It
// returns the byte and how many bytes of s it used.
func decodeAt(s string, i int) (byte, int) {
	switch c := s[i]; c {
	case '+':
		return ' ', 1
	case '%':
		if i+2 < len(s) {
			hi, ok1 := unhex(s[i+1])
			lo, ok2 := unhex(s[i+2])
			if ok1 && ok2 {
				return hi<<4 | lo, 3
			}
		}
		return c, 1
	default:
		return c, 1
	}
}

// escapedHasPrefix reports whether the decoded form of the query component
// s starts with prefix, without allocating. escapedEqual is the exact form.
func escapedHasPrefix(s, prefix string) bool {
	j := 0
	for i := 0; i < len(s) && j < len(prefix); {
		b, n := decodeAt(s, i)
		if b != prefix[j] {
			return false
		}
		i += n
		j++
	}
	return j == len(prefix)
}

func escapedEqual(s, want string) bool {
	if !needsDecode(s) {
		return s == want
	}
	j := 0
	for i := 0; i < len(s); {
		b, n := decodeAt(s, i)
		if j >= len(want) || b != want[j] {
			return false
		}
		i += n
		j++
	}
	return j == len(want)
}

// appendUnescaped appends the decoded form of the query component s.
func appendUnescaped(b []byte, s string) []byte {
	for i := 0; i < len(s); {
		c, n := decodeAt(s, i)
		b = append(b, c)
		i += n
	}
	return b
}

// matchEscaped matches a raw (escaped) query value by its decoded form.
// Only a regular expression needs the decoded bytes; they are built in a
// pooled buffer.
func (c *cstring) matchEscaped(raw string, sc *scratch) bool {
	if !needsDecode(raw) {
		return c.match(raw)
	}
	switch c.kind {
	case Present:
		return true
	case Exact:
		return escapedEqual(raw, c.value)
	case Prefix:
		return escapedHasPrefix(raw, c.value)
	case Regex:
		b := sc.get()
		*b = appendUnescaped((*b)[:0], raw)
		ok := c.re.Match(*b)
		sc.put(b)
		return ok
	}
	return false
}

// matchValues matches the values of a header as Envoy sees a repeated
// header: joined with ",". The joined form is compared piecewise; only a
// regular expression needs it built, in a pooled buffer.
func (c *cstring) matchValues(vals []string, sc *scratch) bool {
	switch len(vals) {
	case 0:
		return c.match("")
	case 1:
		return c.match(vals[0])
	}
	switch c.kind {
	case Present:
		return true
	case Exact:
		return joinedEqual(vals, c.value)
	case Prefix:
		return joinedHasPrefix(vals, c.value)
	case Regex:
		b := sc.get()
		*b = appendJoined((*b)[:0], vals)
		ok := c.re.Match(*b)
		sc.put(b)
		return ok
	}
	return false
}

func joinedLen(vals []string) int {
	n := len(vals) - 1
	for _, v := range vals {
		n += len(v)
	}
	return n
}

func joinedHasPrefix(vals []string, prefix string) bool {
	if joinedLen(vals) < len(prefix) {
		return false
	}
	for i, v := range vals {
		if i > 0 {
			if prefix == "" {
				return true
			}
			if prefix[0] != ',' {
				return false
			}
			prefix = prefix[1:]
		}
		if len(prefix) <= len(v) {
			return strings.HasPrefix(v, prefix)
		}
		if prefix[:len(v)] != v {
			return false
		}
		prefix = prefix[len(v):]
	}
	return prefix == ""
}

func joinedEqual(vals []string, s string) bool {
	return joinedLen(vals) == len(s) && joinedHasPrefix(vals, s)
}

func appendJoined(b []byte, vals []string) []byte {
	for i, v := range vals {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, v...)
	}
	return b
}

// scratch pools byte buffers for the few matches that need a decoded or
// joined value as bytes (regular expressions). Each Table owns one.
type scratch struct{ p sync.Pool }

func (s *scratch) get() *[]byte {
	if b, ok := s.p.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, 256)
	return &b
}

func (s *scratch) put(b *[]byte) {
	if cap(*b) <= 64<<10 {
		s.p.Put(b)
	}
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
			if r.Match == nil || r.m.matches(req, path, pnq, rq, vh.scratch) {
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
			if r.Match == nil || r.m.matches(req, path, pnq, rq, vh.scratch) {
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
		if len(vals) == 1 {
			if l, ok := ix.hdr[name][vals[0]]; ok {
				try(l)
			}
			continue
		}
		b := vh.scratch.get()
		*b = appendJoined((*b)[:0], vals)
		l, ok := ix.hdr[name][string(*b)] // no allocation for a map lookup
		vh.scratch.put(b)
		if ok {
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
