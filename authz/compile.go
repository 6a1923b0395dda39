package authz

import (
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

type ckind uint8

const (
	ckNever ckind = iota
	ckPrincipal
	ckNamespaceL4
	ckNamespaceL7
	ckServiceAccount
	ckServiceAccountL7
	ckTrustDomain
	ckSourceIP
	ckRemoteIP
	ckDestIP
	ckPort
	ckHost
	ckMethod
	ckPath
	ckHeader
	ckReqPrincipal
	ckAudiences
	ckPresenter
	ckClaim
	ckSNI
	ckPred
)

// saPat is one serviceAccounts value. At L7, re is set when ns or sa holds
// a regular-expression metacharacter: Istio pastes both into a regex
// unescaped, so they keep their regex meaning there.
type saPat struct {
	ns, sa string
	re     *regexp.Regexp
}

// reqPat is one requestPrincipals value (or request.auth.principal
// condition value), matched, like Istio, as two matchers on the JWT's iss
// and sub claims.
type reqPat struct{ iss, sub strPat }

// check is one compiled attribute test: "some pos value matches" (when pos
// is set) AND "no neg value matches".
type check struct {
	kind       ckind
	pos, neg   []strPat
	ppos, pneg []pathPat
	ipos, ineg []netip.Prefix
	npos, nneg []uint16
	gpos, gneg []string
	spos, sneg []saPat
	rpos, rneg []reqPat
	hasPos     bool
	name       string   // header name (lower case)
	claim      []string // claim path
	pred       Predicate
	action     Action
}

// match is a Source or Operation (or a single condition): checks ANDed. An
// empty match never matches (ztunnel's "match none").
type match []check

// clause is a list of alternatives, ORed. An empty clause is true.
type clause []match

type crule struct {
	idx     int
	clauses []clause
}

type compileCtx struct {
	p     *Policy
	layer Layer
}

func strPats(vs []string, fold bool) []strPat {
	if len(vs) == 0 {
		return nil
	}
	out := make([]strPat, len(vs))
	for i, v := range vs {
		if fold {
			v = strings.ToLower(v)
		}
		out[i] = compileStr(v)
	}
	return out
}

func (cc *compileCtx) strCheck(k ckind, pos, neg []string) check {
	return check{kind: k, pos: strPats(pos, k == ckHost), neg: strPats(neg, k == ckHost), hasPos: len(pos) > 0}
}

func (cc *compileCtx) nsCheck(pos, neg []string) check {
	if cc.layer == L4 {
		return cc.strCheck(ckNamespaceL4, pos, neg)
	}
	g := func(vs []string) []string {
		var out []string
		for _, v := range vs {
			out = append(out, v+"/*")
		}
		return out
	}
	return check{kind: ckNamespaceL7, gpos: g(pos), gneg: g(neg), hasPos: len(pos) > 0}
}

func (cc *compileCtx) saCheck(pos, neg []string) check {
	g := func(vs []string) []saPat {
		var out []saPat
		for _, v := range vs {
			p := saPat{}
			p.ns, p.sa = splitSA(cc.p.Namespace, v)
			if cc.layer == L7 && (strings.ContainsAny(p.ns, regexMeta) || strings.ContainsAny(p.sa, regexMeta)) {
				re, err := regexp.Compile(serviceAccountRegex(p.ns, p.sa))
				if err != nil {
					continue // rejected by Validate
				}
				p.re = re
			}
			out = append(out, p)
		}
		return out
	}
	k := ckServiceAccount
	if cc.layer == L7 {
		k = ckServiceAccountL7
	}
	return check{kind: k, spos: g(pos), sneg: g(neg), hasPos: len(pos) > 0}
}

// regexMeta holds the bytes with a meaning in an RE2 regular expression.
const regexMeta = `\.+*?()|[]{}^$`

// splitSA splits a serviceAccounts value, "ns/sa" or a bare "sa" in the
// policy's namespace.
func splitSA(policyNS, v string) (ns, sa string) {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok {
		return policyNS, v
	}
	return ns, sa
}

// serviceAccountRegex is the regex Envoy fully matches against the peer's
// URI SAN for a serviceAccounts value at a waypoint: any trust domain and
// path before /ns/<ns>/, optional segments before sa/<sa>, and only
// "/..." after it (pilot/pkg/security/authz/model/generator.go).
func serviceAccountRegex(ns, sa string) string {
	return "^(?:spiffe://.+/ns/" + ns + "/(.+/|)sa/" + sa + "(/.+)?)$"
}

// reqPats compiles requestPrincipals values the way istiod does: the value
// is split at its last '/' into an issuer and a subject; "*" needs both
// non-empty; a leading '*' makes the issuer a suffix (or, with no '/', any
// issuer and a subject suffix) with an exact subject; a trailing '*' makes
// the subject a prefix (or, with no '/', an issuer prefix and any subject)
// with an exact issuer; otherwise both are exact.
func reqPats(vs []string) []reqPat {
	if len(vs) == 0 {
		return nil
	}
	nonEmpty := strPat{kind: patPresence}
	out := make([]reqPat, len(vs))
	for i, v := range vs {
		idx := strings.LastIndexByte(v, '/')
		found := idx >= 0
		iss, sub := v, ""
		if found {
			iss, sub = v[:idx], v[idx+1:]
		}
		var p reqPat
		switch {
		case v == "*":
			p = reqPat{nonEmpty, nonEmpty}
		case strings.HasPrefix(v, "*") && found:
			p.iss = strPat{kind: patSuffix, s: iss[1:]}
			if iss == "*" {
				p.iss = nonEmpty
			}
			p.sub = strPat{kind: patExact, s: sub}
		case strings.HasPrefix(v, "*"):
			p = reqPat{nonEmpty, strPat{kind: patSuffix, s: v[1:]}}
		case strings.HasSuffix(v, "*") && found:
			p.iss = strPat{kind: patExact, s: iss}
			p.sub = strPat{kind: patPrefix, s: sub[:len(sub)-1]}
			if sub == "*" {
				p.sub = nonEmpty
			}
		case strings.HasSuffix(v, "*"):
			p = reqPat{strPat{kind: patPrefix, s: v[:len(v)-1]}, nonEmpty}
		default:
			p = reqPat{strPat{kind: patExact, s: iss}, strPat{kind: patExact, s: sub}}
		}
		out[i] = p
	}
	return out
}

func reqPrincipalCheck(pos, neg []string) check {
	return check{kind: ckReqPrincipal, rpos: reqPats(pos), rneg: reqPats(neg), hasPos: len(pos) > 0}
}

func ipCheck(k ckind, pos, neg []string) check {
	g := func(vs []string) []netip.Prefix {
		var out []netip.Prefix
		for _, v := range vs {
			if p, ok := parsePrefix(v); ok {
				out = append(out, p)
			}
		}
		return out
	}
	return check{kind: k, ipos: g(pos), ineg: g(neg), hasPos: len(pos) > 0}
}

func portCheck(pos, neg []string) check {
	g := func(vs []string) []uint16 {
		var out []uint16
		for _, v := range vs {
			if n, err := strconv.ParseUint(v, 10, 16); err == nil {
				out = append(out, uint16(n))
			}
		}
		return out
	}
	return check{kind: ckPort, npos: g(pos), nneg: g(neg), hasPos: len(pos) > 0}
}

func pathCheck(pos, neg []string) check {
	g := func(vs []string) []pathPat {
		var out []pathPat
		for _, v := range vs {
			if isTemplate(v) {
				out = append(out, pathPat{tmpl: compileTemplate(v)})
			} else {
				out = append(out, pathPat{str: compileStr(v)})
			}
		}
		return out
	}
	return check{kind: ckPath, ppos: g(pos), pneg: g(neg), hasPos: len(pos) > 0}
}

// isL4Key reports whether a condition key is understood by ztunnel.
func isL4Key(k string) bool {
	switch k {
	case "source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port":
		return true
	}
	return false
}

// condCheck compiles a when condition; ok is false for keys the layer cannot
// evaluate (experimental.* at L7).
func (cc *compileCtx) condCheck(c Condition) (check, bool) {
	switch c.Key {
	case "source.ip":
		return ipCheck(ckSourceIP, c.Values, c.NotValues), true
	case "remote.ip":
		return ipCheck(ckRemoteIP, c.Values, c.NotValues), true
	case "destination.ip":
		return ipCheck(ckDestIP, c.Values, c.NotValues), true
	case "destination.port":
		return portCheck(c.Values, c.NotValues), true
	case "source.namespace":
		return cc.nsCheck(c.Values, c.NotValues), true
	case "source.principal":
		return cc.strCheck(ckPrincipal, c.Values, c.NotValues), true
	case "source.serviceAccount":
		return cc.saCheck(c.Values, c.NotValues), true
	case "source.trustDomain":
		return cc.strCheck(ckTrustDomain, c.Values, c.NotValues), true
	case "connection.sni":
		return cc.strCheck(ckSNI, c.Values, c.NotValues), true
	case "request.auth.principal":
		return reqPrincipalCheck(c.Values, c.NotValues), true
	case "request.auth.audiences":
		return cc.strCheck(ckAudiences, c.Values, c.NotValues), true
	case "request.auth.presenter":
		return cc.strCheck(ckPresenter, c.Values, c.NotValues), true
	}
	if n, ok := bracket(c.Key, "request.headers"); ok && len(n) == 1 {
		ch := cc.strCheck(ckHeader, c.Values, c.NotValues)
		ch.name = strings.ToLower(n[0])
		return ch, true
	}
	if n, ok := bracket(c.Key, "request.auth.claims"); ok {
		ch := cc.strCheck(ckClaim, c.Values, c.NotValues)
		ch.claim = n
		return ch, true
	}
	return check{}, false
}

func sourceHTTP(s *Source) bool {
	return len(s.RequestPrincipals)+len(s.NotRequestPrincipals)+len(s.RemoteIPBlocks)+len(s.NotRemoteIPBlocks) > 0
}

func operationHTTP(o *Operation) bool {
	return len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) > 0
}

func ruleHTTP(r *Rule) bool {
	for _, s := range r.From {
		if s != nil && sourceHTTP(s) {
			return true
		}
	}
	for _, o := range r.To {
		if o != nil && operationHTTP(o) {
			return true
		}
	}
	for _, c := range r.When {
		if !isL4Key(c.Key) {
			return true
		}
	}
	return false
}

func add(m match, c check) match {
	if c.hasPos || len(c.neg)+len(c.pneg)+len(c.ineg)+len(c.nneg)+len(c.gneg)+len(c.sneg)+len(c.rneg) > 0 {
		return append(m, c)
	}
	return m
}

// compileRule compiles rule i for cc.layer. ok is false when the rule is
// dropped (never matches).
func (cc *compileCtx) compileRule(i int, r *Rule) (crule, bool) {
	l4 := cc.layer == L4
	if l4 && cc.p.Action == Allow && ruleHTTP(r) {
		return crule{}, false // ztunnel drops ALLOW rules with HTTP attributes
	}
	out := crule{idx: i}
	if len(r.From) > 0 {
		var cl clause
		for _, s := range r.From {
			var m match
			m = add(m, cc.strCheck(ckPrincipal, s.Principals, s.NotPrincipals))
			m = add(m, cc.nsCheck(s.Namespaces, s.NotNamespaces))
			m = add(m, cc.saCheck(s.ServiceAccounts, s.NotServiceAccounts))
			m = add(m, ipCheck(ckSourceIP, s.IPBlocks, s.NotIPBlocks))
			if !l4 {
				m = add(m, cc.strCheck(ckTrustDomain, s.TrustDomains, s.NotTrustDomains))
				m = add(m, ipCheck(ckRemoteIP, s.RemoteIPBlocks, s.NotRemoteIPBlocks))
				m = add(m, reqPrincipalCheck(s.RequestPrincipals, s.NotRequestPrincipals))
			}
			cl = append(cl, m) // an empty match (L4: only HTTP fields or trustDomains) never matches
		}
		out.clauses = append(out.clauses, cl)
	}
	if len(r.To) > 0 {
		var cl clause
		for _, o := range r.To {
			var m match
			m = add(m, portCheck(o.Ports, o.NotPorts))
			if !l4 {
				m = add(m, cc.strCheck(ckHost, o.Hosts, o.NotHosts))
				m = add(m, cc.strCheck(ckMethod, o.Methods, o.NotMethods))
				m = add(m, pathCheck(o.Paths, o.NotPaths))
			}
			cl = append(cl, m)
		}
		out.clauses = append(out.clauses, cl)
	}
	for _, c := range r.When {
		if l4 && !isL4Key(c.Key) {
			out.clauses = append(out.clauses, clause{nil}) // DENY: an empty match, never true
			continue
		}
		ch, ok := cc.condCheck(c)
		if !ok {
			if cc.p.Action == Allow {
				return crule{}, false // unsupported value: an ALLOW rule is skipped
			}
			continue // DENY/AUDIT/CUSTOM: the value is ignored
		}
		out.clauses = append(out.clauses, clause{add(nil, ch)})
	}
	for _, pr := range cc.p.Extra {
		out.clauses = append(out.clauses, clause{match{check{kind: ckPred, pred: pr, action: cc.p.Action, hasPos: true}}})
	}
	return out, true
}

func (cc *compileCtx) compile() []crule {
	var out []crule
	for i := range cc.p.Rules {
		if r, ok := cc.compileRule(i, &cc.p.Rules[i]); ok {
			out = append(out, r)
		}
	}
	return out
}
