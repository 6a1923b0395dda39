package authz

import (
	"net/netip"
	"slices"
	"strings"
)

// ectx holds per-request values derived once.
type ectx struct {
	r          *Request
	peer       string
	td, ns, sa string
	idOK       bool // peer has the td/ns/N/sa/S shape
	path       string
	remote     netip.Addr
	iss, sub   string // the JWT's issuer and subject
	hasAuth    bool
}

func newEctx(r *Request) ectx {
	e := ectx{r: r, peer: r.Peer, path: stripQuery(r.Path), remote: r.RemoteIP}
	if e.peer != "" {
		e.td, e.ns, e.sa, e.idOK = peerParts(e.peer)
	}
	if !e.remote.IsValid() {
		e.remote = r.SourceIP
	}
	if r.Auth != nil {
		e.hasAuth = true
		e.iss, e.sub = splitLast(r.Auth.Principal)
		if s, ok := r.Auth.Claims["iss"].(string); ok {
			e.iss = s
		}
		if s, ok := r.Auth.Claims["sub"].(string); ok {
			e.sub = s
		}
	}
	return e
}

func (r *crule) match(e *ectx) bool {
	for _, cl := range r.clauses {
		if !cl.match(e) {
			return false
		}
	}
	return true
}

func (cl clause) match(e *ectx) bool {
	if len(cl) == 0 {
		return true
	}
	for _, m := range cl {
		if m.match(e) {
			return true
		}
	}
	return false
}

func (m match) match(e *ectx) bool {
	if len(m) == 0 {
		return false
	}
	for i := range m {
		if !m[i].match(e) {
			return false
		}
	}
	return true
}

func anyStr(ps []strPat, s string) bool {
	for _, p := range ps {
		if p.match(s) {
			return true
		}
	}
	return false
}

func anyFold(ps []strPat, s string) bool {
	for _, p := range ps {
		if p.matchFold(s) {
			return true
		}
	}
	return false
}

// strResult combines positive and negative string lists for a value that is
// present (ok) or absent.
func (c *check) strResult(s string, ok bool) bool {
	if !ok {
		return !c.hasPos
	}
	if c.hasPos && !anyStr(c.pos, s) {
		return false
	}
	return !anyStr(c.neg, s)
}

func (c *check) match(e *ectx) bool {
	r := e.r
	switch c.kind {
	case ckNever:
		return false
	case ckPrincipal:
		return c.strResult(e.peer, e.peer != "")
	case ckNamespaceL4:
		return c.strResult(e.ns, e.peer != "")
	case ckTrustDomain:
		return c.strResult(e.td, e.peer != "")
	case ckNamespaceL7:
		if e.peer == "" {
			return !c.hasPos
		}
		if c.hasPos {
			ok := false
			for _, g := range c.gpos {
				if nsGlobL7(g, e.peer) {
					ok = true
					break
				}
			}
			if !ok {
				return false
			}
		}
		for _, g := range c.gneg {
			if nsGlobL7(g, e.peer) {
				return false
			}
		}
		return true
	case ckServiceAccount:
		if !e.idOK {
			return !c.hasPos
		}
		has := func(ps []saPat) bool {
			for _, p := range ps {
				if p.ns == e.ns && p.sa == e.sa {
					return true
				}
			}
			return false
		}
		if c.hasPos && !has(c.spos) {
			return false
		}
		return !has(c.sneg)
	case ckServiceAccountL7:
		if e.peer == "" {
			return !c.hasPos
		}
		has := func(ps []saPat) bool {
			for i := range ps {
				if ps[i].matchL7(e.peer) {
					return true
				}
			}
			return false
		}
		if c.hasPos && !has(c.spos) {
			return false
		}
		return !has(c.sneg)
	case ckSourceIP, ckRemoteIP, ckDestIP:
		a := r.SourceIP
		if c.kind == ckRemoteIP {
			a = e.remote
		} else if c.kind == ckDestIP {
			a = r.DestIP
		}
		if !a.IsValid() {
			return !c.hasPos
		}
		if c.hasPos && !containsAddr(c.ipos, a) {
			return false
		}
		return !containsAddr(c.ineg, a)
	case ckPort:
		if c.hasPos && !slices.Contains(c.npos, r.DestPort) {
			return false
		}
		return !slices.Contains(c.nneg, r.DestPort)
	case ckHost:
		if c.hasPos && !anyFold(c.pos, r.Host) {
			return false
		}
		return !anyFold(c.neg, r.Host)
	case ckMethod:
		return c.strResult(r.Method, true)
	case ckSNI:
		return c.strResult(r.SNI, r.SNI != "")
	case ckPath:
		has := func(ps []pathPat) bool {
			for i := range ps {
				if ps[i].match(e.path) {
					return true
				}
			}
			return false
		}
		if c.hasPos && !has(c.ppos) {
			return false
		}
		return !has(c.pneg)
	case ckHeader:
		v, ok := header(r, c.name)
		if !ok {
			return !c.hasPos
		}
		has := func(ps []strPat) bool {
			for _, p := range ps {
				if p.kind == patPresence || p.match(v) {
					return true
				}
			}
			return false
		}
		if c.hasPos && !has(c.pos) {
			return false
		}
		return !has(c.neg)
	case ckReqPrincipal:
		if !e.hasAuth {
			return !c.hasPos
		}
		has := func(ps []reqPat) bool {
			for _, p := range ps {
				if p.iss.match(e.iss) && p.sub.match(e.sub) {
					return true
				}
			}
			return false
		}
		if c.hasPos && !has(c.rpos) {
			return false
		}
		return !has(c.rneg)
	case ckPresenter:
		if !e.hasAuth {
			return !c.hasPos
		}
		return c.strResult(r.Auth.Presenter, r.Auth.Presenter != "")
	case ckAudiences:
		if !e.hasAuth || len(r.Auth.Audiences) == 0 {
			return !c.hasPos
		}
		return c.listResult(r.Auth.Audiences, nil)
	case ckClaim:
		if !e.hasAuth {
			return !c.hasPos
		}
		v := lookupClaim(r.Auth.Claims, c.claim)
		switch v := v.(type) {
		case string:
			return c.strResult(v, true)
		case []string:
			return c.listResult(v, nil)
		case []any:
			return c.listResult(nil, v)
		}
		return !c.hasPos
	case ckPred:
		ok, err := evalPred(c.pred, *r)
		if err != nil {
			return c.action == Deny || c.action == Custom
		}
		return ok
	}
	return false
}

// header returns a request header; the pseudo-headers :method, :path and
// :authority come from the request line.
func header(r *Request, name string) (string, bool) {
	if len(name) > 0 && name[0] == ':' {
		switch name {
		case ":method":
			return r.Method, r.Method != ""
		case ":path":
			return r.Path, r.Path != ""
		case ":authority":
			return r.Host, r.Host != ""
		}
	}
	v, ok := r.Headers[name]
	return v, ok
}

func (c *check) listResult(ss []string, as []any) bool {
	has := func(ps []strPat) bool {
		for _, s := range ss {
			if anyStr(ps, s) {
				return true
			}
		}
		for _, a := range as {
			if s, ok := a.(string); ok && anyStr(ps, s) {
				return true
			}
		}
		return false
	}
	if c.hasPos && !has(c.pos) {
		return false
	}
	return !has(c.neg)
}

// evalPred copies the request so that only requests reaching an extension
// predicate pay for the heap escape.
//
//go:noinline
func evalPred(p Predicate, r Request) (bool, error) { return p.Match(&r) }

func lookupClaim(claims map[string]any, path []string) any {
	var cur any = claims
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur, ok = m[k]
		if !ok {
			return nil
		}
	}
	return cur
}

func splitLast(p string) (iss, sub string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return p, ""
	}
	return p[:i], p[i+1:]
}
