package proxy

import "strings"

// normalizePath applies the path normalization an Istio waypoint's HTTP
// connection manager performs by default (meshConfig.pathNormalization
// BASE: Envoy's normalize_path), before authorization and routing see the
// path (authz.md §5.2):
//
//   - a backslash becomes a slash;
//   - a percent-escape of an unreserved character (ALPHA, DIGIT, "-",
//     ".", "_", "~") is decoded, other escapes get upper-case hex digits,
//     and a "%" that starts no escape becomes "%25";
//   - control characters, space, DEL and non-ASCII bytes are
//     percent-encoded;
//   - "." and ".." segments are resolved (RFC 3986 §5.2.4), so that an
//     escaped dot ("%2e") cannot smuggle one past a path policy.
//
// Slashes are not merged (MERGE_SLASHES is not the default), and "%2F"
// stays encoded. p is the path without query or fragment; it must start
// with "/", otherwise normalizePath reports false. The result is
// normalized again unchanged.
func normalizePath(p string) (string, bool) {
	if p == "" || p[0] != '/' && p[0] != '\\' {
		return "", false
	}
	if !needsNormalizing(p) {
		return p, true
	}
	var b strings.Builder
	b.Grow(len(p) + 8)
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '\\':
			b.WriteByte('/')
		case c == '%' && i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]):
			d := unhex(p[i+1])<<4 | unhex(p[i+2])
			if isUnreserved(d) {
				b.WriteByte(d)
			} else {
				b.WriteByte('%')
				b.WriteByte(upperHex(p[i+1]))
				b.WriteByte(upperHex(p[i+2]))
			}
			i += 2
		case c == '%':
			// A percent sign that starts no escape is escaped itself, so
			// that decoding cannot assemble a new escape from it ("%2%44"
			// would otherwise become "%2D", then "-").
			b.WriteString("%25")
		case c <= ' ' || c >= 0x7f:
			const hex = "0123456789ABCDEF"
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
		default:
			b.WriteByte(c)
		}
	}
	return removeDotSegments(b.String()), true
}

// needsNormalizing reports whether p holds anything normalizePath would
// change: the common path is returned without allocating.
func needsNormalizing(p string) bool {
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '\\' || c == '%' || c <= ' ' || c >= 0x7f:
			return true
		case c == '.' && (i == 0 || p[i-1] == '/'):
			// "." or ".." segment candidates
			rest := p[i:]
			if rest == "." || rest == ".." || strings.HasPrefix(rest, "./") || strings.HasPrefix(rest, "../") {
				return true
			}
		}
	}
	return false
}

// removeDotSegments resolves "." and ".." segments of an absolute path.
func removeDotSegments(p string) string {
	if !strings.Contains(p, ".") {
		return p
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

// splitPathQuery splits a request target into its path and its query
// (with the "?"), dropping any fragment: authorization matches the path
// without query and fragment (authz.md §5.2), and a fragment is never
// forwarded.
func splitPathQuery(target string) (path, query string) {
	if i := strings.IndexByte(target, '#'); i >= 0 {
		target = target[:i]
	}
	if i := strings.IndexByte(target, '?'); i >= 0 {
		return target[:i], target[i:]
	}
	return target, ""
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}
