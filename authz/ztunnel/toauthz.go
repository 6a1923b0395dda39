package ztunnel

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/go-multierror"

	"github.com/meshblocks/meshblocks/authz"
)

// BindingLabelPrefix starts the label keys that ToAuthz uses to attach
// bound policies to workloads.
const BindingLabelPrefix = "ztunnel.authz.meshblocks.io/"

// BindingLabel returns the label key ToAuthz gives to the workloads a
// policy is bound to: BindingLabelPrefix + "namespace/name". Its value is
// "bound".
func BindingLabel(namespace, name string) string { return BindingLabelPrefix + namespace + "/" + name }

// DefaultRootNamespace is the root namespace ToAuthz and Convert assume
// when nothing says otherwise.
const DefaultRootNamespace = "istio-system"

// Binding is what ToAuthz needs of one workload: its namespace and the
// policies it lists (istio.workload.Workload.authorization_policies, the
// authorizationPolicies of a local config workload), as "namespace/name".
type Binding struct {
	// Name identifies the workload in errors (for example its uid).
	Name      string
	Namespace string
	Policies  []string
}

// AuthzPolicies is the result of ToAuthz: what to give authz.New, and the
// labels that attach bound policies to each workload.
type AuthzPolicies struct {
	// RootNamespace is the authz.Config.RootNamespace the policies are
	// meant for.
	RootNamespace string
	// Policies are the converted policies, in input order. A Deny policy
	// none of whose rules can ever match is left out: it can never decide
	// anything.
	Policies []authz.Policy
	// Labels[i] holds the labels to add to the labels of workload i (the
	// i-th Binding) for the engine to attach its policies, or nil.
	Labels []map[string]string
}

// ToAuthz converts ztunnel Authorizations to authz.Policy values that
// authz.Engine evaluates at L4 exactly as ztunnel does:
//
//   - a Global policy applies to every workload (it must live in the root
//     namespace, which ToAuthz infers: the namespace of the Global policies
//     and of the WorkloadSelector policies that workloads of other
//     namespaces list; DefaultRootNamespace when there are none);
//   - a Namespace policy applies to the workloads of its namespace;
//   - a WorkloadSelector policy applies to the workloads that list it; the
//     binding becomes a selector on the label BindingLabel(namespace, name),
//     which ToAuthz returns in Labels for those workloads (Namespace
//     policies of the root namespace are bound the same way, to that
//     namespace's workloads).
//
// Rules keep ztunnel's meaning: clauses ANDed, matches ORed, fields ANDed,
// values ORed, "not" fields none-of, an empty clause true, an empty match
// false, a policy without rules never matching; string matches keep their
// exact/prefix/suffix/presence form, service accounts ignore the trust
// domain, dry-run policies are never enforced.
//
// Everything istiod generates converts. ToAuthz refuses, with an *Error
// naming the policy and field, what Istio's policy language cannot say and
// so the engine cannot evaluate (rather than evaluate it differently): a
// clause of several matches that mixes source and destination fields, two
// such clauses of one kind in a rule, a source match that combines
// serviceAccounts with principals or namespaces, exact values that begin
// or end with '*', empty values, prefixes that begin with '*' and suffixes
// that end with '*'. It also refuses bindings ztunnel would honour but
// istiod never sends: a workload listing an unknown policy, a
// WorkloadSelector policy of another namespace (other than the root), or a
// Namespace policy of another namespace; and Global policies in different
// namespaces.
func ToAuthz(auths []Authorization, workloads []Binding) (*AuthzPolicies, error) {
	var errs *multierror.Error
	fail := func(e error) { errs = multierror.Append(errs, e) }
	byKey := make(map[string]*Authorization, len(auths))
	for i := range auths {
		a := &auths[i]
		if _, dup := byKey[a.Key()]; dup {
			fail(errAt("policy "+a.Key(), 0, "duplicate policy"))
			continue
		}
		byKey[a.Key()] = a
	}

	// The root namespace: where Global policies live, and where the
	// selector policies live that workloads of other namespaces list.
	roots := map[string]string{} // namespace -> why
	for i := range auths {
		if a := &auths[i]; a.Scope == Global {
			roots[a.Namespace] = "Global policy " + a.Key()
		}
	}
	for _, w := range workloads {
		for j, k := range w.Policies {
			a := byKey[k]
			if a == nil {
				fail(errAt(fmt.Sprintf("workload %s: authorizationPolicies[%d]", w.Name, j), 0, "no policy %s", k))
				continue
			}
			if a.Scope == WorkloadSelector && a.Namespace != w.Namespace {
				roots[a.Namespace] = fmt.Sprintf("policy %s listed by workload %s of namespace %s", k, w.Name, w.Namespace)
			}
		}
	}
	root := DefaultRootNamespace
	if len(roots) > 1 {
		var why []string
		for _, ns := range sortedKeys(roots) {
			why = append(why, roots[ns])
		}
		fail(errAt("", 0, "policies imply several root namespaces: %s (Global policies and selector policies bound across namespaces must all live in the root namespace)", strings.Join(why, "; ")))
	}
	for ns := range roots {
		root = ns
	}
	if errs != nil {
		errs.ErrorFormat = authz.ListFormat
		return nil, errs
	}

	labelBound := func(a *Authorization) bool {
		return a.Scope == WorkloadSelector || (a.Scope == Namespace && a.Namespace == root)
	}
	out := &AuthzPolicies{RootNamespace: root, Labels: make([]map[string]string, len(workloads))}
	for i, w := range workloads {
		bind := func(a *Authorization) {
			if out.Labels[i] == nil {
				out.Labels[i] = map[string]string{}
			}
			out.Labels[i][BindingLabel(a.Namespace, a.Name)] = "bound"
		}
		for j, k := range w.Policies {
			a := byKey[k]
			where := fmt.Sprintf("workload %s: authorizationPolicies[%d]", w.Name, j)
			switch {
			case a.Scope == Global:
				// applies anyway
			case a.Scope == Namespace && a.Namespace != w.Namespace:
				fail(errAt(where, 0, "%s is a Namespace policy of namespace %s; a workload of namespace %s cannot list it", k, a.Namespace, w.Namespace))
			case a.Scope == Namespace && a.Namespace != root:
				// applies anyway
			default:
				bind(a)
			}
		}
		if w.Namespace == root {
			for ai := range auths {
				if a := &auths[ai]; a.Scope == Namespace && a.Namespace == root {
					bind(a)
				}
			}
		}
	}
	for i := range auths {
		a := &auths[i]
		if byKey[a.Key()] != a {
			continue
		}
		where := "policy " + a.Key()
		rules, err := rulesToAuthz(a, where)
		if err != nil {
			fail(err)
			continue
		}
		if a.Action == Deny && len(rules) == 0 {
			continue // can never match
		}
		p := authz.Policy{Namespace: a.Namespace, Name: a.Name, DryRun: a.DryRun, Rules: rules}
		if a.Action == Deny {
			p.Action = authz.Deny
		}
		if labelBound(a) {
			p.HasSelector = true
			p.Selector = map[string]string{BindingLabel(a.Namespace, a.Name): "bound"}
		}
		if err := authz.Validate(&p); err != nil {
			fail(errAt(where, 0, "cannot be evaluated: %v", err))
			continue
		}
		out.Policies = append(out.Policies, p)
	}
	if errs != nil {
		errs.ErrorFormat = authz.ListFormat
		return nil, errs
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// rulesToAuthz converts the rules of a, leaving out those that can never
// match. path prefixes errors.
func rulesToAuthz(a *Authorization, path string) ([]authz.Rule, error) {
	if strings.Contains(a.Key(), "*") {
		return nil, errAt(path, 0, "the namespace and name must not contain '*'")
	}
	out := make([]authz.Rule, 0, len(a.Rules))
	for i, r := range a.Rules {
		rule, never, err := ruleToAuthz(r, fmt.Sprintf("%s.rules[%d]", path, i))
		if err != nil {
			return nil, err
		}
		if !never {
			out = append(out, rule)
		}
	}
	return out, nil
}

// field kinds of a Match
const (
	fNamespaces = 1 << iota
	fServiceAccounts
	fPrincipals
	fSourceIPs
	fDestinationIPs
	fDestinationPorts

	sourceFields = fNamespaces | fServiceAccounts | fPrincipals | fSourceIPs
)

func fieldsOf(m *Match) int {
	f := 0
	if len(m.Namespaces)+len(m.NotNamespaces) > 0 {
		f |= fNamespaces
	}
	if len(m.ServiceAccounts)+len(m.NotServiceAccounts) > 0 {
		f |= fServiceAccounts
	}
	if len(m.Principals)+len(m.NotPrincipals) > 0 {
		f |= fPrincipals
	}
	if len(m.SourceIPs)+len(m.NotSourceIPs) > 0 {
		f |= fSourceIPs
	}
	if len(m.DestinationIPs)+len(m.NotDestinationIPs) > 0 {
		f |= fDestinationIPs
	}
	if len(m.DestinationPorts)+len(m.NotDestinationPorts) > 0 {
		f |= fDestinationPorts
	}
	return f
}

// ruleToAuthz converts one rule. never reports a rule that can never match
// (a clause whose every match is empty).
//
// Istio's rule has one from (ORed sources), one to (ORed operations) and
// ANDed when conditions, each a single attribute. A clause of several
// matches therefore becomes the from (all source fields) or the to (all
// ports); a clause of one match is a conjunction of attribute tests, each
// of which becomes a when condition, except serviceAccounts, which has no
// L4 condition key and joins the from.
func ruleToAuthz(r Rule, path string) (rule authz.Rule, never bool, err error) {
	var atoms []*Match // single-match clauses
	var atomPaths []string
	for j, c := range r {
		cp := fmt.Sprintf("%s[%d]", path, j)
		var ms []*Match
		var paths []string
		for k := range c {
			if !c[k].IsEmpty() {
				ms = append(ms, &c[k])
				paths = append(paths, fmt.Sprintf("%s[%d]", cp, k))
			}
		}
		switch {
		case len(c) == 0:
			continue // an empty clause is true
		case len(ms) == 0:
			return authz.Rule{}, true, nil // only empty matches: never true
		case len(ms) == 1:
			atoms = append(atoms, ms[0])
			atomPaths = append(atomPaths, paths[0])
			continue
		}
		all := 0
		for _, m := range ms {
			all |= fieldsOf(m)
		}
		switch {
		case all&^sourceFields == 0:
			if rule.From != nil {
				return rule, false, errAt(cp, 0, "a second clause of several source matches cannot be expressed as an Istio rule (it has one from)")
			}
			for k, m := range ms {
				s, err := sourceOf(m, paths[k])
				if err != nil {
					return rule, false, err
				}
				rule.From = append(rule.From, s)
			}
		case all == fDestinationPorts:
			if rule.To != nil {
				return rule, false, errAt(cp, 0, "a second clause of several port matches cannot be expressed as an Istio rule (it has one to)")
			}
			for _, m := range ms {
				rule.To = append(rule.To, &authz.Operation{Ports: ports(m.DestinationPorts), NotPorts: ports(m.NotDestinationPorts)})
			}
		default:
			return rule, false, errAt(cp, 0, "a clause of several matches that mixes source fields with destination fields (or destination IPs) cannot be expressed as an Istio rule")
		}
	}
	for k, m := range atoms {
		p := atomPaths[k]
		if len(m.ServiceAccounts)+len(m.NotServiceAccounts) > 0 {
			pos, err := serviceAccounts(m.ServiceAccounts, p+".serviceAccounts")
			if err != nil {
				return rule, false, err
			}
			neg, err := serviceAccounts(m.NotServiceAccounts, p+".notServiceAccounts")
			if err != nil {
				return rule, false, err
			}
			if rule.From == nil {
				rule.From = []*authz.Source{{}}
			}
			for _, s := range rule.From {
				if len(s.ServiceAccounts)+len(s.NotServiceAccounts)+len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces) > 0 {
					return rule, false, errAt(p+".serviceAccounts", 0, "cannot be combined with the service accounts, principals or namespaces of another clause in an Istio rule")
				}
				s.ServiceAccounts, s.NotServiceAccounts = pos, neg
			}
		}
		conds := []struct {
			key, field string
			pos, neg   []string
			err        error
		}{
			{key: "source.namespace", field: "namespaces"},
			{key: "source.principal", field: "principals"},
			{key: "source.ip", field: "sourceIps", pos: prefixes(m.SourceIPs), neg: prefixes(m.NotSourceIPs)},
			{key: "destination.ip", field: "destinationIps", pos: prefixes(m.DestinationIPs), neg: prefixes(m.NotDestinationIPs)},
			{key: "destination.port", field: "destinationPorts", pos: ports(m.DestinationPorts), neg: ports(m.NotDestinationPorts)},
		}
		conds[0].pos, conds[0].err = istioStrings(m.Namespaces, p+".namespaces")
		if conds[0].err == nil {
			conds[0].neg, conds[0].err = istioStrings(m.NotNamespaces, p+".notNamespaces")
		}
		conds[1].pos, conds[1].err = istioStrings(m.Principals, p+".principals")
		if conds[1].err == nil {
			conds[1].neg, conds[1].err = istioStrings(m.NotPrincipals, p+".notPrincipals")
		}
		for _, c := range conds {
			if c.err != nil {
				return rule, false, c.err
			}
			if len(c.pos)+len(c.neg) > 0 {
				rule.When = append(rule.When, authz.Condition{Key: c.key, Values: c.pos, NotValues: c.neg})
			}
		}
	}
	return rule, false, nil
}

func sourceOf(m *Match, path string) (*authz.Source, error) {
	if len(m.ServiceAccounts)+len(m.NotServiceAccounts) > 0 && len(m.Principals)+len(m.NotPrincipals)+len(m.Namespaces)+len(m.NotNamespaces) > 0 {
		return nil, errAt(path, 0, "serviceAccounts cannot be combined with principals or namespaces in one Istio source")
	}
	s := &authz.Source{IPBlocks: prefixes(m.SourceIPs), NotIPBlocks: prefixes(m.NotSourceIPs)}
	var err error
	for _, f := range []struct {
		dst  *[]string
		src  []StringMatch
		name string
	}{
		{&s.Principals, m.Principals, "principals"},
		{&s.NotPrincipals, m.NotPrincipals, "notPrincipals"},
		{&s.Namespaces, m.Namespaces, "namespaces"},
		{&s.NotNamespaces, m.NotNamespaces, "notNamespaces"},
	} {
		if *f.dst, err = istioStrings(f.src, path+"."+f.name); err != nil {
			return nil, err
		}
	}
	if s.ServiceAccounts, err = serviceAccounts(m.ServiceAccounts, path+".serviceAccounts"); err != nil {
		return nil, err
	}
	if s.NotServiceAccounts, err = serviceAccounts(m.NotServiceAccounts, path+".notServiceAccounts"); err != nil {
		return nil, err
	}
	return s, nil
}

// istioStrings writes string matches in Istio's value syntax ("v", "v*",
// "*v", "*"), refusing those the syntax cannot say unambiguously.
func istioStrings(ms []StringMatch, path string) ([]string, error) {
	var out []string
	for i, m := range ms {
		p := fmt.Sprintf("%s[%d]", path, i)
		v := m.Value
		switch {
		case m.Kind == Presence:
			out = append(out, "*")
			continue
		case v == "":
			return nil, errAt(p, 0, "an empty %s value cannot be expressed in Istio's syntax (use !Presence [] for any non-empty value)", m.Kind)
		case m.Kind == Exact && (strings.HasPrefix(v, "*") || strings.HasSuffix(v, "*")):
			return nil, errAt(p, 0, "an exact value that begins or ends with '*' cannot be expressed in Istio's syntax")
		case m.Kind == Prefix && strings.HasPrefix(v, "*"):
			return nil, errAt(p, 0, "a prefix that begins with '*' cannot be expressed unambiguously in Istio's syntax")
		case m.Kind == Suffix && strings.HasSuffix(v, "*"):
			return nil, errAt(p, 0, "a suffix that ends with '*' cannot be expressed unambiguously in Istio's syntax")
		case m.Kind == Exact:
			out = append(out, v)
		case m.Kind == Prefix:
			out = append(out, v+"*")
		case m.Kind == Suffix:
			out = append(out, "*"+v)
		default:
			return nil, errAt(p, 0, "unknown string match kind %d", m.Kind)
		}
	}
	return out, nil
}

func serviceAccounts(ms []ServiceAccountMatch, path string) ([]string, error) {
	var out []string
	for i, m := range ms {
		if m.Namespace == "" || m.ServiceAccount == "" || strings.ContainsAny(m.Namespace+m.ServiceAccount, "/*") {
			return nil, errAt(fmt.Sprintf("%s[%d]", path, i), 0, "namespace and serviceAccount must be non-empty, without '/' or '*'")
		}
		out = append(out, m.Namespace+"/"+m.ServiceAccount)
	}
	return out, nil
}

func ports(ps []uint16) []string {
	var out []string
	for _, p := range ps {
		out = append(out, strconv.Itoa(int(p)))
	}
	return out
}

func prefixes[T interface{ String() string }](ps []T) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}
