package ztunnel

import (
	"cmp"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/go-multierror"

	"github.com/meshblocks/meshblocks/authz"
)

// Names istiod gives the policies it derives from PeerAuthentication.
const (
	// StaticStrictPolicyName is the DENY policy (in the root namespace)
	// that refuses plaintext; every workload whose effective mTLS mode is
	// STRICT on all its ports lists it.
	StaticStrictPolicyName = "istio_converted_static_strict"
	// ConvertedPeerAuthnPrefix starts the name of the policy derived from
	// a workload PeerAuthentication with port-level exceptions.
	ConvertedPeerAuthnPrefix = "converted_peer_authentication_"
)

// Config configures Convert. The zero value is usable.
type Config struct {
	// RootNamespace is the mesh root namespace. If empty,
	// DefaultRootNamespace.
	RootNamespace string
	// SendDryRun sends dry-run policies (with dryRun: true), as istiod does
	// when AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY is set; otherwise
	// they are left out, as istiod does by default. ztunnel enforces
	// neither.
	SendDryRun bool
}

// Input is what Convert converts.
type Input struct {
	Policies            []authz.Policy
	PeerAuthentications []authz.PeerAuthentication
	// Workloads are the destination workloads to bind policies to; only
	// Namespace and Labels are read.
	Workloads []authz.Workload
}

// Output is the result of Convert.
type Output struct {
	// Policies are the ztunnel policies: those derived from
	// AuthorizationPolicies (sorted by namespace/name), then those derived
	// from PeerAuthentications.
	Policies []Authorization
	// Bindings[i] are the keys ("namespace/name") workload i must list in
	// its authorizationPolicies, sorted, PeerAuthentication-derived last.
	Bindings [][]string
	// Warnings say, one line per policy, what ztunnel cannot enforce and
	// what was done instead (istiod reports the same as policy status).
	Warnings []string
}

// Convert does for a static set of objects what istiod does for ztunnel
// (istio/istio pilot/pkg/serviceregistry/ambient, authorization.go and
// policies.go): it turns AuthorizationPolicies and PeerAuthentications
// into L4 Authorizations and computes, per workload, the selector-scoped
// policies it must list.
//
// AuthorizationPolicies:
//
//   - policies with targetRef(s) are for waypoints and are not sent; AUDIT
//     and CUSTOM policies are not sent (ztunnel has neither action), nor
//     are dry-run ones unless Config.SendDryRun;
//   - scope: a selector makes it WorkloadSelector, bound to the workloads
//     of its namespace (or of any namespace, from the root namespace) whose
//     labels include the selector's; otherwise Global in the root namespace
//     and Namespace elsewhere. An empty selector binds nothing, as in the
//     authz engine;
//   - each rule becomes a rule whose clauses are, in order, the to (one
//     match per operation: ports and notPorts), the from (one match per
//     source: ipBlocks, namespaces, serviceAccounts, principals and their
//     not- variants; a bare service account is in the policy's namespace)
//     and one clause per when condition (source.ip, source.namespace,
//     source.principal, destination.ip, destination.port);
//   - HTTP attributes (hosts, methods, paths, requestPrincipals,
//     remoteIpBlocks, other condition keys, and their not- variants):
//     an ALLOW rule that uses one is left out; in a DENY rule the attribute
//     is dropped, so a source, operation or condition with nothing else
//     becomes an empty match that never matches (a clause of only such
//     matches makes the rule a no-op, as with istiod since istio#61166);
//     trustDomains are dropped silently, as istiod does.
//
// Extension conditions (Policy.Extra, the CEL annotation of package
// authz/cel) have no equivalent in ztunnel's format, and Istio ignores
// the annotation. Convert fails closed instead: an ALLOW rule of a policy
// with a condition is left out (as istiod does with HTTP attributes in
// ALLOW rules), and a DENY policy's rules are sent without the condition,
// so that they deny whenever their L4 part matches. (istiod turns an
// unsupported when condition of a DENY rule into an empty match, which
// makes the rule a no-op; for a deny that fails open, so Convert does not
// copy it.) The result is never more permissive than the engine's own
// evaluation of the policy.
//
// An invalid policy (one authz.Validate rejects, or with Err set) is sent
// as a DENY policy that matches every connection, in the scope the authz
// engine fails closed over (its selector's workloads, or its whole
// namespace, the whole mesh for the root namespace). Its errors are
// returned, aggregated, alongside a usable Output.
//
// PeerAuthentications: the effective mode of each workload port is
// resolved with authz.PeerAuthn (same root namespace). A workload STRICT on
// every port lists StaticStrictPolicyName (in the root namespace: deny
// connections without a peer principal). A workload whose workload
// PeerAuthentication makes some ports differ from the rest lists a policy
// named ConvertedPeerAuthnPrefix + that object's name, in its namespace,
// that denies connections without a principal on its STRICT ports (or on
// all but its non-STRICT ports). The static policy is sent whenever there
// is a PeerAuthentication, as istiod does.
func Convert(cfg Config, in Input) (*Output, error) {
	root := cmp.Or(cfg.RootNamespace, DefaultRootNamespace)
	pols := slices.Clone(in.Policies)
	slices.SortStableFunc(pols, func(a, b authz.Policy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	out := &Output{Bindings: make([][]string, len(in.Workloads))}
	var errs *multierror.Error
	type selector struct {
		key, ns string
		labels  map[string]string
	}
	var selectors []selector
	keys := map[string]bool{}
	emit := func(a Authorization) error {
		if keys[a.Key()] {
			return fmt.Errorf("%w: duplicate policy %s", ErrInvalid, a.Key())
		}
		keys[a.Key()] = true
		out.Policies = append(out.Policies, a)
		return nil
	}
	warn := func(p *authz.Policy, format string, args ...any) {
		out.Warnings = append(out.Warnings, p.Namespace+"/"+p.Name+": "+fmt.Sprintf(format, args...))
	}
	scopeOf := func(p *authz.Policy) Scope {
		switch {
		case p.HasSelector:
			return WorkloadSelector
		case p.Namespace == root:
			return Global
		}
		return Namespace
	}
	unnamed := 0
	for i := range pols {
		p := &pols[i]
		hasTargets := len(p.TargetRefs) > 0
		if verr := authz.Validate(p); verr != nil {
			errs = multierror.Append(errs, verr)
			a, ok := invalidAt(p, root)
			if !ok {
				continue
			}
			if a.Name == "" {
				unnamed++
				a.Name = "_unnamed_" + strconv.Itoa(unnamed)
			}
			if err := emit(a); err != nil {
				return nil, err
			}
			if a.Scope == WorkloadSelector {
				selectors = append(selectors, selector{a.Key(), a.Namespace, p.Selector})
			}
			warn(p, "invalid; sent as a DENY policy matching every connection in its scope (fail closed)")
			continue
		}
		switch {
		case hasTargets:
			continue // a waypoint policy
		case p.Action == authz.Audit || p.Action == authz.Custom:
			warn(p, "not sent: ztunnel does not support the %s action", p.Action)
			continue
		case p.DryRun && !cfg.SendDryRun:
			warn(p, "not sent: dry-run policies are left out (Config.SendDryRun sends them)")
			continue
		}
		a := Authorization{Name: p.Name, Namespace: p.Namespace, Scope: scopeOf(p), DryRun: p.DryRun}
		if p.Action == authz.Deny {
			a.Action = Deny
		}
		http := map[string]bool{}
		for ri := range p.Rules {
			r, found := ruleFromAuthz(p, &p.Rules[ri])
			for _, f := range found {
				http[f] = true
			}
			if a.Action == Allow && (len(found) > 0 || len(p.Extra) > 0) {
				continue
			}
			a.Rules = append(a.Rules, r)
		}
		if len(http) > 0 {
			how := "ALLOW rules using them are left out (more restrictive than requested)"
			if a.Action == Deny {
				how = "the DENY rules are enforced without them (more restrictive than requested)"
				if !effective(a.Rules) {
					how = "without them no DENY rule can match, so the policy has no effect at ztunnel; use a waypoint"
				}
			}
			warn(p, "ztunnel does not support HTTP attributes (found: %s); %s", strings.Join(sortedKeys(http), ", "), how)
		}
		if len(p.Extra) > 0 {
			how := "its ALLOW rules are left out"
			if a.Action == Deny {
				how = "its DENY rules are enforced without it"
			}
			warn(p, "extension conditions (%s) cannot be expressed in ztunnel's format; %s (fail closed)", p.Extra[0], how)
		}
		if err := emit(a); err != nil {
			return nil, err
		}
		if a.Scope == WorkloadSelector {
			selectors = append(selectors, selector{a.Key(), a.Namespace, p.Selector})
		}
	}
	for i := range in.Workloads {
		w := &in.Workloads[i]
		for _, s := range selectors {
			if (s.ns == w.Namespace || s.ns == root) && len(s.labels) > 0 && selects(s.labels, w.Labels) {
				out.Bindings[i] = append(out.Bindings[i], s.key)
			}
		}
		slices.Sort(out.Bindings[i])
	}
	if len(in.PeerAuthentications) > 0 {
		if err := convertPeerAuthn(root, in, out, emit); err != nil {
			errs = multierror.Append(errs, err)
		}
	}
	if errs != nil {
		errs.ErrorFormat = authz.ListFormat
		return out, errs
	}
	return out, nil
}

// invalidAt returns the policy that makes an invalid p fail closed at
// ztunnel where the authz engine fails closed at L4: a DENY of every
// connection over its selector's workloads when the selector is usable,
// otherwise over its namespace (the mesh for the root namespace). A policy
// whose attachment or action is unknown (nothing decoded but the error)
// and one with both targetRefs and a selector cover the namespace. ok is
// false where the engine does not enforce p at L4: targetRefs only, AUDIT
// and CUSTOM actions, no namespace.
func invalidAt(p *authz.Policy, root string) (a Authorization, ok bool) {
	hasTargets := len(p.TargetRefs) > 0
	unknown := p.Err != nil && !p.HasSelector && p.Selector == nil && !hasTargets && len(p.Rules) == 0 &&
		p.Action == authz.Allow && p.Provider == "" && !p.DryRun && len(p.Extra) == 0
	if p.Namespace == "" || !unknown && (p.Action == authz.Audit || p.Action == authz.Custom) {
		return a, false
	}
	a = Authorization{Name: p.Name, Namespace: p.Namespace, Action: Deny, Rules: []Rule{{}}, Scope: Namespace}
	switch {
	case unknown || hasTargets && p.HasSelector:
	case hasTargets:
		return a, false
	case p.HasSelector && usableSelector(p.Selector):
		a.Scope = WorkloadSelector
	}
	if a.Scope == Namespace && p.Namespace == root {
		a.Scope = Global
	}
	return a, true
}

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

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// effective reports whether some rule can match: it has no clause, or each
// of its clauses has a non-empty match.
func effective(rules []Rule) bool {
	for _, r := range rules {
		ok := true
		for _, c := range r {
			nonEmpty := false
			for i := range c {
				if !c[i].IsEmpty() {
					nonEmpty = true
					break
				}
			}
			if !nonEmpty {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

var l4ConditionKeys = map[string]bool{
	"source.ip": true, "source.namespace": true, "source.principal": true,
	"destination.ip": true, "destination.port": true,
}

// ruleFromAuthz converts one rule and returns the HTTP attributes it found.
func ruleFromAuthz(p *authz.Policy, r *authz.Rule) (Rule, []string) {
	var out Rule
	var found []string
	note := func(name string, n int) {
		if n > 0 {
			found = append(found, name)
		}
	}
	if len(r.To) > 0 {
		var c Clause
		for _, o := range r.To {
			note("hosts", len(o.Hosts))
			note("notHosts", len(o.NotHosts))
			note("methods", len(o.Methods))
			note("notMethods", len(o.NotMethods))
			note("paths", len(o.Paths))
			note("notPaths", len(o.NotPaths))
			c = append(c, Match{DestinationPorts: portsOf(o.Ports), NotDestinationPorts: portsOf(o.NotPorts)})
		}
		out = append(out, c)
	}
	if len(r.From) > 0 {
		var c Clause
		for _, s := range r.From {
			note("remoteIpBlocks", len(s.RemoteIPBlocks))
			note("notRemoteIpBlocks", len(s.NotRemoteIPBlocks))
			note("requestPrincipals", len(s.RequestPrincipals))
			note("notRequestPrincipals", len(s.NotRequestPrincipals))
			c = append(c, Match{
				SourceIPs: prefixesOf(s.IPBlocks), NotSourceIPs: prefixesOf(s.NotIPBlocks),
				Namespaces: stringMatches(s.Namespaces), NotNamespaces: stringMatches(s.NotNamespaces),
				ServiceAccounts:    serviceAccountMatches(s.ServiceAccounts, p.Namespace),
				NotServiceAccounts: serviceAccountMatches(s.NotServiceAccounts, p.Namespace),
				Principals:         stringMatches(s.Principals), NotPrincipals: stringMatches(s.NotPrincipals),
			})
		}
		out = append(out, c)
	}
	for _, w := range r.When {
		var m Match
		switch w.Key {
		case "source.namespace":
			m.Namespaces, m.NotNamespaces = stringMatches(w.Values), stringMatches(w.NotValues)
		case "source.principal":
			m.Principals, m.NotPrincipals = stringMatches(w.Values), stringMatches(w.NotValues)
		case "source.ip":
			m.SourceIPs, m.NotSourceIPs = prefixesOf(w.Values), prefixesOf(w.NotValues)
		case "destination.ip":
			m.DestinationIPs, m.NotDestinationIPs = prefixesOf(w.Values), prefixesOf(w.NotValues)
		case "destination.port":
			m.DestinationPorts, m.NotDestinationPorts = portsOf(w.Values), portsOf(w.NotValues)
		}
		if !l4ConditionKeys[w.Key] {
			found = append(found, w.Key)
		}
		out = append(out, Clause{m})
	}
	return out, found
}

// stringMatches reads Istio's value syntax as istiod does: "*" is
// presence, a leading '*' a suffix match, else a trailing '*' a prefix
// match, else exact.
func stringMatches(vs []string) []StringMatch {
	var out []StringMatch
	for _, v := range vs {
		switch {
		case v == "*":
			out = append(out, StringMatch{Kind: Presence})
		case strings.HasPrefix(v, "*"):
			out = append(out, StringMatch{Kind: Suffix, Value: v[1:]})
		case strings.HasSuffix(v, "*"):
			out = append(out, StringMatch{Kind: Prefix, Value: v[:len(v)-1]})
		default:
			out = append(out, StringMatch{Kind: Exact, Value: v})
		}
	}
	return out
}

func serviceAccountMatches(vs []string, policyNS string) []ServiceAccountMatch {
	var out []ServiceAccountMatch
	for _, v := range vs {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = policyNS, v
		}
		out = append(out, ServiceAccountMatch{Namespace: ns, ServiceAccount: sa})
	}
	return out
}

// prefixesOf reads IPs and CIDRs; values that are neither are left out
// (validation rejects them before).
func prefixesOf(vs []string) []netip.Prefix {
	var out []netip.Prefix
	for _, v := range vs {
		if p, err := netip.ParsePrefix(v); err == nil {
			out = append(out, p)
		} else if a, err := netip.ParseAddr(v); err == nil && a.Zone() == "" {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

func portsOf(vs []string) []uint16 {
	var out []uint16
	for _, v := range vs {
		if n, err := strconv.ParseUint(v, 10, 16); err == nil {
			out = append(out, uint16(n))
		}
	}
	return out
}

func convertPeerAuthn(root string, in Input, out *Output, emit func(Authorization) error) error {
	var errs *multierror.Error
	pa, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{RootNamespace: root}, in.PeerAuthentications)
	if err != nil {
		errs = multierror.Append(errs, err)
	}
	noPeer := Match{NotPrincipals: []StringMatch{{Kind: Presence}}}
	strict := Authorization{Name: StaticStrictPolicyName, Namespace: root, Scope: WorkloadSelector, Action: Deny,
		Rules: []Rule{{Clause{noPeer}}}}
	if err := emit(strict); err != nil {
		return err
	}
	var ports []uint16
	for _, p := range in.PeerAuthentications {
		for port := range p.PortModes {
			if port > 0 && port <= 65535 {
				ports = append(ports, uint16(port))
			}
		}
	}
	slices.Sort(ports)
	ports = slices.Compact(ports)
	derived := map[string]*Authorization{}
	var order []string
	for i := range in.Workloads {
		w := &in.Workloads[i]
		def := pa.Mode(w, 0).Mode == authz.MTLSStrict // port 0 is never port-level
		var exceptions []uint16
		var by *authz.PeerAuthentication
		for _, port := range ports {
			d := pa.Mode(w, port)
			if (d.Mode == authz.MTLSStrict) != def {
				exceptions = append(exceptions, port)
				if d.Level == authz.LevelPort {
					by = d.By
				}
			}
		}
		switch {
		case len(exceptions) == 0 && def:
			out.Bindings[i] = append(out.Bindings[i], strict.Key())
			continue
		case len(exceptions) == 0:
			continue
		case by == nil:
			errs = multierror.Append(errs, fmt.Errorf("%w: workloads[%d]: port-level mTLS exceptions without a deciding PeerAuthentication", ErrInvalid, i))
			continue
		}
		m := Match{NotPrincipals: []StringMatch{{Kind: Presence}}}
		if def {
			m.NotDestinationPorts = exceptions // deny plaintext except on these
		} else {
			m.DestinationPorts = exceptions // deny plaintext on these
		}
		a := &Authorization{Name: ConvertedPeerAuthnPrefix + by.Name, Namespace: by.Namespace,
			Scope: WorkloadSelector, Action: Deny, Rules: []Rule{{Clause{m}}}}
		if prev, ok := derived[a.Key()]; ok {
			if !reflect.DeepEqual(prev, a) {
				errs = multierror.Append(errs, fmt.Errorf("%w: %s: workloads disagree on its ports", ErrInvalid, a.Key()))
			}
		} else {
			derived[a.Key()] = a
			order = append(order, a.Key())
		}
		out.Bindings[i] = append(out.Bindings[i], a.Key())
	}
	slices.Sort(order)
	for _, k := range order {
		if err := emit(*derived[k]); err != nil {
			return err
		}
	}
	return errs.ErrorOrNil()
}
