package authz

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/go-multierror"
)

// Config configures an Engine. The zero value is usable.
type Config struct {
	// RootNamespace is the mesh root namespace. If empty, "istio-system".
	RootNamespace string
	// Providers are the names of the extension providers defined in
	// meshConfig.extensionProviders. A CUSTOM policy naming any other
	// provider denies the requests its rules match (Istio's behaviour for an
	// unknown or invalid provider).
	Providers []string
	// MultipleCustomProviders mirrors PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS.
	// When false and more than one provider applies to a request, every
	// CUSTOM rule becomes a deny rule.
	MultipleCustomProviders bool
}

// Reason says why a decision was made.
type Reason uint8

// Decision reasons.
const (
	// ReasonNoPolicy: no ALLOW policy applies, so the request is allowed.
	ReasonNoPolicy Reason = iota
	// ReasonAllowed: an ALLOW policy rule matched.
	ReasonAllowed
	// ReasonDenied: a DENY policy rule matched.
	ReasonDenied
	// ReasonNoAllowMatch: ALLOW policies apply but none matched.
	ReasonNoAllowMatch
	// ReasonCustomDenied: a CUSTOM policy with an unknown provider (or with
	// several providers in play) matched.
	ReasonCustomDenied
	// ReasonInvalidPolicy: an invalid policy applies; its scope fails closed.
	ReasonInvalidPolicy
)

// String describes the reason.
func (r Reason) String() string {
	switch r {
	case ReasonNoPolicy:
		return "no ALLOW policy applies"
	case ReasonAllowed:
		return "ALLOW policy matched"
	case ReasonDenied:
		return "DENY policy matched"
	case ReasonNoAllowMatch:
		return "no ALLOW policy matched"
	case ReasonCustomDenied:
		return "CUSTOM policy with unusable provider matched"
	case ReasonInvalidPolicy:
		return "invalid policy applies (fail closed)"
	}
	return "unknown"
}

// Decision is the result of Evaluate.
type Decision struct {
	Allowed bool
	Reason  Reason
	// Policy is the policy that decided (nil for ReasonNoPolicy and
	// ReasonNoAllowMatch) and Rule the index of its matching rule in
	// Policy.Rules (-1 when none, e.g. for an invalid policy).
	Policy *Policy
	Rule   int
	// Audit is the first AUDIT policy that matched (L7), if any.
	Audit *Policy
	// Custom names the (known) extension provider that ext_authz would
	// consult for this request at L7; its verdict is not modelled offline.
	Custom string

	// unmatched holds, for ReasonNoAllowMatch, the first ALLOW policies in
	// evaluation order that applied but did not match (see Unmatched).
	unmatched     [MaxUnmatched]*Policy
	nUnmatched    uint8
	moreUnmatched bool
}

// MaxUnmatched is how many non-matching ALLOW policies a Decision names.
const MaxUnmatched = 4

// Unmatched returns, for a default deny (ReasonNoAllowMatch), the ALLOW
// policies that applied to the request but whose rules did not match, in
// evaluation (namespace/name) order: at most MaxUnmatched of them, with more
// reporting that further ones applied too. It returns nil for other
// reasons. The slice aliases d.
func (d *Decision) Unmatched() (ps []*Policy, more bool) {
	if d.nUnmatched == 0 {
		return nil, false
	}
	return d.unmatched[:d.nUnmatched], d.moreUnmatched
}

// String renders the decision as one line, e.g.
// "ALLOW by test/allow-sleep rules[0] (ALLOW policy matched)".
func (d Decision) String() string {
	v := "DENY"
	if d.Allowed {
		v = "ALLOW"
	}
	var b strings.Builder
	b.WriteString(v)
	if d.Policy != nil {
		kind := d.Policy.Action.String()
		if d.Reason == ReasonInvalidPolicy {
			kind = "invalid policy"
		}
		fmt.Fprintf(&b, " by %s %s/%s", kind, d.Policy.Namespace, d.Policy.Name)
		if d.Rule >= 0 {
			fmt.Fprintf(&b, " rules[%d]", d.Rule)
		}
	}
	fmt.Fprintf(&b, " (%s", d.Reason)
	if ps, more := d.Unmatched(); len(ps) > 0 {
		b.WriteString(": ")
		for i, p := range ps {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(p.Namespace + "/" + p.Name)
		}
		if more {
			b.WriteString(" and more")
		}
	}
	b.WriteByte(')')
	if d.Custom != "" {
		fmt.Fprintf(&b, " [ext_authz provider %q consulted]", d.Custom)
	}
	return b.String()
}

type cpolicy struct {
	p       *Policy
	ord     int
	invalid bool
	rules   []crule // for the layer of the index that holds it
}

type labelKey struct{ k, v string }

// nsIndex holds the policies of one namespace at one layer.
type nsIndex struct {
	wide    []*cpolicy              // no selector (namespace-wide)
	byLabel map[labelKey][]*cpolicy // selector policies by their first label
}

type targetKey struct {
	kind     uint8 // 1 Service, 2 ServiceEntry, 3 Gateway
	ns, name string
}

type layerIndex struct {
	global   []*cpolicy // root namespace, no selector (L4); GatewayClass (L7)
	rootSel  *nsIndex   // root namespace selector policies (L4)
	byNS     map[string]*nsIndex
	byTarget map[targetKey][]*cpolicy
}

// Engine evaluates requests against a fixed set of policies. It is
// immutable and safe for concurrent use; build a new one when policies change.
type Engine struct {
	root      string
	providers map[string]bool
	multi     bool
	policies  []Policy
	l4, l7    layerIndex
}

// New validates and compiles policies. It always returns a usable Engine:
// when some policies are invalid, err aggregates their *PolicyError values
// and each invalid policy denies every request in the scope it would have
// applied to (fail closed). Policies are ordered by namespace and name, which
// makes explanations deterministic.
func New(cfg Config, policies []Policy) (*Engine, error) {
	e := &Engine{
		root:      cmp.Or(cfg.RootNamespace, "istio-system"),
		providers: map[string]bool{},
		multi:     cfg.MultipleCustomProviders,
		policies:  slices.Clone(policies),
	}
	for _, p := range cfg.Providers {
		e.providers[p] = true
	}
	slices.SortStableFunc(e.policies, func(a, b Policy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	for _, ix := range []*layerIndex{&e.l4, &e.l7} {
		ix.byNS = map[string]*nsIndex{}
		ix.byTarget = map[targetKey][]*cpolicy{}
	}
	var errs *multierror.Error
	for i := range e.policies {
		p := &e.policies[i]
		verr := Validate(p)
		if verr != nil {
			errs = multierror.Append(errs, verr)
		}
		e.place(p, i, verr != nil)
	}
	if errs == nil {
		return e, nil
	}
	errs.ErrorFormat = ListFormat
	return e, errs
}

// Target kinds a waypoint attaches policies to (spec §3.2).
const (
	tkUnsupported uint8 = iota
	tkService
	tkServiceEntry
	tkGateway
	tkGatewayClass
)

// targetKind classifies a targetRef by group and kind, as Istio's
// validation does (an empty group is the core group).
func targetKind(t TargetRef) uint8 {
	switch {
	case t.Kind == "Service" && (t.Group == "" || t.Group == "core"):
		return tkService
	case t.Kind == "ServiceEntry" && t.Group == "networking.istio.io":
		return tkServiceEntry
	case t.Kind == "Gateway" && t.Group == "gateway.networking.k8s.io":
		return tkGateway
	case t.Kind == "GatewayClass" && t.Group == "gateway.networking.k8s.io":
		return tkGatewayClass
	}
	return tkUnsupported
}

// usableRef reports whether a targetRef of p names an object a policy can be
// attached to at all: a supported group and kind, a name, and no other
// namespace.
func usableRef(p *Policy, t TargetRef) bool {
	return targetKind(t) != tkUnsupported && t.Name != "" && (t.Namespace == "" || t.Namespace == p.Namespace)
}

// usableSelector reports whether a selector can select workloads: at least
// one label, and no empty or wildcard key or value.
func usableSelector(sel map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if k == "" || strings.Contains(k, "*") || strings.Contains(v, "*") {
			return false
		}
	}
	return true
}

// undecoded reports whether p carries nothing but an error: the converter
// could not decode it, so its attachment and action are unknown.
func undecoded(p *Policy) bool {
	return p.Err != nil && !p.HasSelector && p.Selector == nil && len(p.TargetRefs) == 0 &&
		len(p.Rules) == 0 && p.Action == Allow && p.Provider == "" && !p.DryRun && len(p.Extra) == 0
}

// enforcedAt reports whether a policy with action a can deny a request at
// layer l. ztunnel receives only ALLOW and DENY policies (istiod drops AUDIT
// and CUSTOM ones with the status "ztunnel does not support the X action");
// a waypoint enforces ALLOW, DENY and CUSTOM; AUDIT never changes a
// decision. An action outside the four counts as enforced everywhere.
func enforcedAt(a Action, l Layer) bool {
	switch a {
	case Audit:
		return false
	case Custom:
		return l == L7
	}
	return true
}

func (e *Engine) place(p *Policy, ord int, invalid bool) {
	if invalid {
		e.placeInvalid(p, ord)
		return
	}
	if p.DryRun {
		return // never enforced (a waypoint keeps it only as a shadow rule)
	}
	if len(p.TargetRefs) == 0 {
		// L4 only: waypoints ignore policies without targetRefs, and
		// ztunnel receives only ALLOW and DENY.
		if p.Action != Allow && p.Action != Deny {
			return
		}
		cp := &cpolicy{p: p, ord: ord, rules: (&compileCtx{p: p, layer: L4}).compile()}
		switch {
		case !p.HasSelector:
			e.l4.addScope(e.root, p.Namespace, cp)
		case len(p.Selector) > 0:
			e.l4.addSelected(e.root, p.Namespace, p.Selector, cp)
		} // a valid selector: {} attaches to nothing at L4 (spec §3.1)
		return
	}
	// L7 only: a policy with targetRefs is never sent to ztunnel.
	cp := &cpolicy{p: p, ord: ord, rules: (&compileCtx{p: p, layer: L7}).compile()}
	for _, t := range p.TargetRefs {
		e.attachL7(p, t, cp)
	}
}

// placeInvalid makes an invalid policy deny every request in the scope it
// would have applied to, at each layer that would enforce its action. When
// that scope cannot be known (the policy could not be decoded, it sets both
// a selector and targetRefs, its selector selects nothing, or none of its
// targetRefs can attach anywhere), the scope is the policy's whole
// namespace, and every namespace for a root-namespace policy.
func (e *Engine) placeInvalid(p *Policy, ord int) {
	unknown := undecoded(p)
	hasTargets := len(p.TargetRefs) > 0
	wide := unknown || (hasTargets && p.HasSelector)
	for _, l := range [...]Layer{L4, L7} {
		if !unknown && !enforcedAt(p.Action, l) {
			continue
		}
		cp := &cpolicy{p: p, ord: ord, invalid: true}
		switch {
		case wide && l == L4:
			e.l4.addScope(e.root, p.Namespace, cp)
		case wide:
			e.l7.addScope(e.root, p.Namespace, cp)
		case l == L4 && hasTargets:
			// never sent to ztunnel, whatever its targets
		case l == L4 && p.HasSelector && usableSelector(p.Selector):
			e.l4.addSelected(e.root, p.Namespace, p.Selector, cp)
		case l == L4:
			e.l4.addScope(e.root, p.Namespace, cp)
		case !hasTargets:
			// waypoints ignore policies without targetRefs
		default:
			attached := false
			for _, t := range p.TargetRefs {
				if usableRef(p, t) {
					attached = true
					e.attachL7(p, t, cp)
				}
			}
			if !attached {
				e.l7.addScope(e.root, p.Namespace, cp)
			}
		}
	}
}

// attachL7 indexes cp under one targetRef of p.
func (e *Engine) attachL7(p *Policy, t TargetRef, cp *cpolicy) {
	var k targetKey
	switch targetKind(t) {
	case tkService:
		k = targetKey{1, p.Namespace, t.Name}
	case tkServiceEntry:
		k = targetKey{2, p.Namespace, t.Name}
	case tkGateway:
		k = targetKey{3, p.Namespace, t.Name}
	case tkGatewayClass:
		if t.Name == "istio-waypoint" && p.Namespace == e.root {
			e.l7.global = append(e.l7.global, cp)
		}
		return
	default:
		return
	}
	e.l7.byTarget[k] = append(e.l7.byTarget[k], cp)
}

func (ix *layerIndex) ns(name string) *nsIndex {
	n := ix.byNS[name]
	if n == nil {
		n = &nsIndex{byLabel: map[labelKey][]*cpolicy{}}
		ix.byNS[name] = n
	}
	return n
}

func (ix *layerIndex) addScope(root, ns string, cp *cpolicy) {
	if ns == root {
		ix.global = append(ix.global, cp)
	} else {
		n := ix.ns(ns)
		n.wide = append(n.wide, cp)
	}
}

// addSelected indexes a selector policy of namespace ns by its first label.
func (ix *layerIndex) addSelected(root, ns string, sel map[string]string, cp *cpolicy) {
	k, v, _ := firstLabel(sel)
	n := ix.ns(ns)
	if ns == root {
		ix.rootSel = n
	}
	lk := labelKey{k, v}
	n.byLabel[lk] = append(n.byLabel[lk], cp)
}

func firstLabel(m map[string]string) (k, v string, ok bool) {
	for key := range m {
		if !ok || key < k {
			k, ok = key, true
		}
	}
	return k, m[k], ok
}

// RootNamespace returns the root namespace in use.
func (e *Engine) RootNamespace() string { return e.root }

// Policies returns the loaded policies in evaluation order.
func (e *Engine) Policies() []Policy { return e.policies }

type best struct {
	cp   *cpolicy
	rule int
}

func (b *best) offer(cp *cpolicy, rule int) {
	if b.cp == nil || cp.ord < b.cp.ord {
		b.cp, b.rule = cp, rule
	}
}

type state struct {
	e                        *ectx
	invalid, deny, allow     best
	audit, custom, customBad best
	anyAllow                 bool
	customProv               string
	customMulti              bool
	providers                map[string]bool
	multiOK                  bool
	// unmatched keeps the lowest-ordered ALLOW policies that applied and
	// did not match; moreUnmatched records that others were dropped.
	unmatched     [MaxUnmatched]*cpolicy
	nUnmatched    uint8
	moreUnmatched bool
}

// noteUnmatched records an ALLOW policy that applied but did not match,
// keeping the MaxUnmatched lowest-ordered ones, without allocating. A
// policy visited twice (one targetRef per Service of the request) is kept
// once.
func (st *state) noteUnmatched(cp *cpolicy) {
	n := int(st.nUnmatched)
	i := 0
	for ; i < n && st.unmatched[i].ord <= cp.ord; i++ {
		if st.unmatched[i] == cp {
			return
		}
	}
	if n == MaxUnmatched {
		st.moreUnmatched = true
		if i == n {
			return
		}
		n-- // drop the last
	} else {
		st.nUnmatched++
	}
	for j := n; j > i; j-- { // not copy(): slicing the array would make st escape
		st.unmatched[j] = st.unmatched[j-1]
	}
	st.unmatched[i] = cp
}

func (st *state) visit(cp *cpolicy) {
	if cp.invalid {
		st.invalid.offer(cp, -1)
		return
	}
	p := cp.p
	switch p.Action {
	case Allow:
		st.anyAllow = true
		if st.allow.cp != nil && st.allow.cp.ord <= cp.ord {
			return
		}
	case Deny:
		if st.deny.cp != nil && st.deny.cp.ord <= cp.ord {
			return
		}
	case Custom:
		if st.customProv == "" {
			st.customProv = p.Provider
		} else if st.customProv != p.Provider {
			st.customMulti = true
		}
	}
	rule := -1
	for i := range cp.rules {
		if cp.rules[i].match(st.e) {
			rule = cp.rules[i].idx
			break
		}
	}
	if rule < 0 {
		if p.Action == Allow {
			st.noteUnmatched(cp)
		}
		return
	}
	switch p.Action {
	case Allow:
		st.allow.offer(cp, rule)
	case Deny:
		st.deny.offer(cp, rule)
	case Audit:
		st.audit.offer(cp, rule)
	case Custom:
		st.custom.offer(cp, rule)
		if !st.providers[p.Provider] {
			st.customBad.offer(cp, rule)
		}
	}
}

func (st *state) visitAll(list []*cpolicy) {
	for _, cp := range list {
		st.visit(cp)
	}
}

func (st *state) visitSelected(list []*cpolicy, labels map[string]string) {
	for _, cp := range list {
		if selects(cp.p.Selector, labels) {
			st.visit(cp)
		}
	}
}

func (st *state) visitLabels(n *nsIndex, labels map[string]string) {
	if n == nil || len(n.byLabel) == 0 {
		return
	}
	for k, v := range labels {
		st.visitSelected(n.byLabel[labelKey{k, v}], labels)
	}
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// Evaluate decides one request. It does no I/O, reads no clock and, at L4,
// does not allocate.
func (e *Engine) Evaluate(r *Request) Decision {
	ec := newEctx(r)
	st := state{e: &ec, providers: e.providers, multiOK: e.multi}
	w := &r.Workload
	if r.Layer == L4 {
		ix := &e.l4
		st.visitAll(ix.global)
		var own *nsIndex
		if w.Namespace != e.root {
			own = ix.byNS[w.Namespace]
			if own != nil {
				st.visitAll(own.wide)
			}
		}
		st.visitLabels(own, w.Labels)
		st.visitLabels(ix.rootSel, w.Labels)
	} else {
		ix := &e.l7
		st.visitAll(ix.global)
		if len(ix.byNS) > 0 && w.Namespace != e.root {
			if n := ix.byNS[w.Namespace]; n != nil {
				st.visitAll(n.wide)
			}
		}
		for _, s := range w.Services {
			st.visitAll(ix.byTarget[targetKey{1, w.Namespace, s}])
		}
		for _, s := range w.ServiceEntries {
			st.visitAll(ix.byTarget[targetKey{2, w.Namespace, s}])
		}
		if w.Waypoint != "" {
			st.visitAll(ix.byTarget[targetKey{3, cmp.Or(w.WaypointNamespace, w.Namespace), w.Waypoint}])
		}
	}
	return st.decide()
}

func (st *state) decide() Decision {
	d := Decision{Rule: -1}
	if st.audit.cp != nil {
		d.Audit = st.audit.cp.p
	}
	set := func(b best, allowed bool, r Reason) Decision {
		d.Allowed, d.Reason, d.Policy, d.Rule = allowed, r, b.cp.p, b.rule
		return d
	}
	switch {
	case st.invalid.cp != nil:
		return set(st.invalid, false, ReasonInvalidPolicy)
	case st.customMulti && !st.multiOK && st.custom.cp != nil:
		return set(st.custom, false, ReasonCustomDenied)
	case st.customBad.cp != nil:
		return set(st.customBad, false, ReasonCustomDenied)
	}
	if st.custom.cp != nil {
		d.Custom = st.custom.cp.p.Provider
	}
	switch {
	case st.deny.cp != nil:
		return set(st.deny, false, ReasonDenied)
	case !st.anyAllow:
		d.Allowed, d.Reason = true, ReasonNoPolicy
		return d
	case st.allow.cp != nil:
		return set(st.allow, true, ReasonAllowed)
	}
	d.Reason = ReasonNoAllowMatch
	for i := range st.nUnmatched {
		d.unmatched[i] = st.unmatched[i].p
	}
	d.nUnmatched, d.moreUnmatched = st.nUnmatched, st.moreUnmatched
	return d
}
