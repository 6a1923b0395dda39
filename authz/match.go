package authz

import (
	"net/netip"
	"strings"
)

// patKind is the form of an Istio string value (spec §2.2).
type patKind uint8

const (
	patExact patKind = iota
	patPrefix
	patSuffix
	patPresence // "*": non-empty (or, for headers, present)
)

// strPat is one compiled string value.
type strPat struct {
	kind patKind
	s    string
}

func compileStr(v string) strPat {
	switch {
	case v == "*":
		return strPat{kind: patPresence}
	case strings.HasPrefix(v, "*"):
		// Checked before the prefix form, as istiod does: "*x*" is the
		// suffix "x*", not the prefix "*x".
		return strPat{kind: patSuffix, s: v[1:]}
	case strings.HasSuffix(v, "*"):
		return strPat{kind: patPrefix, s: v[:len(v)-1]}
	}
	return strPat{kind: patExact, s: v}
}

func (p strPat) match(s string) bool {
	switch p.kind {
	case patPresence:
		return s != ""
	case patPrefix:
		return strings.HasPrefix(s, p.s)
	case patSuffix:
		return strings.HasSuffix(s, p.s)
	}
	return s == p.s
}

// matchFold is match with ASCII case folding (hosts).
func (p strPat) matchFold(s string) bool {
	switch p.kind {
	case patPresence:
		return s != ""
	case patPrefix:
		return len(s) >= len(p.s) && strings.EqualFold(s[:len(p.s)], p.s)
	case patSuffix:
		return len(s) >= len(p.s) && strings.EqualFold(s[len(s)-len(p.s):], p.s)
	}
	return strings.EqualFold(s, p.s)
}

// glob reports whether s matches pattern p in which every '*' stands for any
// run of bytes (the regex ".*") and everything else is literal.
func glob(p, s string) bool {
	px, sx := 0, 0
	starP, starS := -1, 0
	for sx < len(s) {
		if px < len(p) && p[px] == '*' {
			starP, starS = px, sx
			px++
			continue
		}
		if px < len(p) && p[px] == s[sx] {
			px++
			sx++
			continue
		}
		if starP >= 0 {
			starS++
			px, sx = starP+1, starS
			continue
		}
		return false
	}
	for px < len(p) && p[px] == '*' {
		px++
	}
	return px == len(p)
}

// nsGlobL7 implements the waypoint's namespace matcher: the regex
// ".*/ns/<v>/.*" (each '*' of v becoming ".*") against "spiffe://"+peer.
// pat is v+"/*".
func nsGlobL7(pat, peer string) bool {
	if peer == "" {
		return false
	}
	// "spiffe://" + peer: an occurrence of "/ns/" may start at the last '/'
	// of the scheme when peer begins with "ns/".
	if strings.HasPrefix(peer, "ns/") && glob(pat, peer[3:]) {
		return true
	}
	for i := 0; i+4 <= len(peer); i++ {
		if peer[i] == '/' && peer[i+1] == 'n' && peer[i+2] == 's' && peer[i+3] == '/' {
			if glob(pat, peer[i+4:]) {
				return true
			}
		}
	}
	return false
}

// pathPat is a compiled paths value: a plain string value or a URI template
// with {*} and {**} operators.
type pathPat struct {
	str  strPat
	tmpl []tmplPart // non-nil for templates
}

type tmplPart struct {
	op  uint8 // 0 literal, 1 {*} (one non-empty segment), 2 {**} (anything, incl. '/')
	lit string
}

func isTemplate(v string) bool { return strings.Contains(v, "{*}") || strings.Contains(v, "{**}") }

func compileTemplate(v string) []tmplPart {
	var parts []tmplPart
	for v != "" {
		i := strings.IndexByte(v, '{')
		if i < 0 {
			parts = append(parts, tmplPart{lit: v})
			break
		}
		if i > 0 {
			parts = append(parts, tmplPart{lit: v[:i]})
		}
		switch {
		case strings.HasPrefix(v[i:], "{**}"):
			parts = append(parts, tmplPart{op: 2})
			v = v[i+4:]
		case strings.HasPrefix(v[i:], "{*}"):
			parts = append(parts, tmplPart{op: 1})
			v = v[i+3:]
		default: // validated away
			parts = append(parts, tmplPart{lit: v[i:]})
			v = ""
		}
	}
	return parts
}

func matchTemplate(parts []tmplPart, s string) bool {
	if len(parts) == 0 {
		return s == ""
	}
	p := parts[0]
	switch p.op {
	case 0:
		return strings.HasPrefix(s, p.lit) && matchTemplate(parts[1:], s[len(p.lit):])
	case 1:
		// exactly one non-empty segment: everything up to the next '/'
		i := strings.IndexByte(s, '/')
		if i < 0 {
			i = len(s)
		}
		return i > 0 && matchTemplate(parts[1:], s[i:])
	}
	for i := 0; i <= len(s); i++ {
		if matchTemplate(parts[1:], s[i:]) {
			return true
		}
	}
	return false
}

func (p *pathPat) match(path string) bool {
	if p.tmpl != nil {
		return matchTemplate(p.tmpl, path)
	}
	return p.str.match(path)
}

// stripQuery removes "?query" and "#fragment" from a :path.
func stripQuery(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}

// peerParts splits "td/ns/N/sa/S" without allocating. ok is false when the
// identity does not have that shape.
func peerParts(peer string) (td, ns, sa string, ok bool) {
	i := strings.IndexByte(peer, '/')
	if i < 0 {
		return "", "", "", false
	}
	td, rest := peer[:i], peer[i+1:]
	rest, found := strings.CutPrefix(rest, "ns/")
	if !found {
		return td, "", "", false
	}
	j := strings.Index(rest, "/sa/")
	if j < 0 {
		return td, "", "", false
	}
	ns, sa = rest[:j], rest[j+4:]
	if strings.IndexByte(sa, '/') >= 0 || ns == "" || sa == "" {
		return td, "", "", false
	}
	return td, ns, sa, true
}

func parsePrefix(v string) (netip.Prefix, bool) {
	if strings.IndexByte(v, '/') >= 0 {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, false
		}
		return p.Masked(), true
	}
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, a.BitLen()), true
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// matchL7 reports whether a waypoint's serviceAccounts matcher for p accepts
// peer (without "spiffe://"): the full-match regex
// spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)? of serviceAccountRegex. Literal
// values are matched without a regexp and without allocating; like the
// regex's '.', the wildcard parts never span a newline.
func (p *saPat) matchL7(peer string) bool {
	if p.re != nil {
		return p.re.MatchString("spiffe://" + peer)
	}
	if peer == "" || peer[0] == '\n' {
		return false
	}
	nsPart := len("/ns/") + len(p.ns) + 1
	for i := 1; i+nsPart <= len(peer); i++ {
		if peer[i] == '\n' {
			return false // X (".+") cannot span it; nothing further can start
		}
		if peer[i] != '/' || peer[i+1:i+4] != "ns/" || peer[i+4:i+4+len(p.ns)] != p.ns || peer[i+4+len(p.ns)] != '/' {
			continue
		}
		if saTail(peer[i+nsPart:], p.sa) {
			return true
		}
	}
	return false
}

// saTail matches rest against (.+/|)sa/<sa>(/.+)?.
func saTail(rest, sa string) bool {
	for j := 0; j+3+len(sa) <= len(rest); j++ {
		if j > 0 && rest[j-1] == '\n' {
			return false
		}
		if j == 1 || (j > 1 && rest[j-1] != '/') {
			continue // the optional segments are ".+/": at least one byte and a '/'
		}
		if rest[j:j+3] != "sa/" || rest[j+3:j+3+len(sa)] != sa {
			continue
		}
		tail := rest[j+3+len(sa):]
		if tail == "" || (len(tail) >= 2 && tail[0] == '/' && strings.IndexByte(tail, '\n') < 0) {
			return true
		}
	}
	return false
}
