package authz

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/hashicorp/go-multierror"
)

// DryRunField is the field path of the istio.io/dry-run annotation in
// errors about Policy.DryRun.
const DryRunField = `metadata.annotations["istio.io/dry-run"]`

// ErrInvalidPolicy is wrapped by every *PolicyError.
var ErrInvalidPolicy = errors.New("authz: invalid policy")

// PolicyError is one validation failure of one policy.
type PolicyError struct {
	Namespace, Name string
	// Field is the Istio field path, e.g. "spec.rules[0].from[1].source.ipBlocks[2]".
	Field string
	Msg   string
	// Err is the underlying cause, if any (for example a decoding error).
	Err error
}

// Error returns "authz: ns/name: field: msg".
func (e *PolicyError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("authz: %s/%s: %s", e.Namespace, e.Name, e.Msg)
	}
	return fmt.Sprintf("authz: %s/%s: %s: %s", e.Namespace, e.Name, e.Field, e.Msg)
}

// Unwrap returns ErrInvalidPolicy and the cause, if any.
func (e *PolicyError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrInvalidPolicy, e.Err}
	}
	return []error{ErrInvalidPolicy}
}

type validator struct {
	p   *Policy
	err *multierror.Error
}

func (v *validator) add(field, format string, args ...any) {
	v.err = multierror.Append(v.err, &PolicyError{
		Namespace: v.p.Namespace, Name: v.p.Name, Field: field, Msg: fmt.Sprintf(format, args...),
	})
}

// knownConditionKey reports whether key is an Istio condition key. http
// reports keys that are HTTP attributes for ztunnel.
func conditionKey(key string) (ok bool) {
	switch key {
	case "source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port",
		"remote.ip", "source.serviceAccount", "source.trustDomain", "connection.sni",
		"request.auth.principal", "request.auth.audiences", "request.auth.presenter":
		return true
	}
	if name, ok := bracket(key, "request.headers"); ok {
		return len(name) == 1 && name[0] != ""
	}
	if names, ok := bracket(key, "request.auth.claims"); ok {
		for _, n := range names {
			if n == "" {
				return false
			}
		}
		return len(names) > 0
	}
	return strings.HasPrefix(key, "experimental.envoy.filters.")
}

// bracket parses "prefix[a][b]" into [a b].
func bracket(key, prefix string) ([]string, bool) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok || rest == "" {
		return nil, false
	}
	var out []string
	for rest != "" {
		if rest[0] != '[' {
			return nil, false
		}
		j := strings.IndexByte(rest, ']')
		if j < 0 {
			return nil, false
		}
		out = append(out, rest[1:j])
		rest = rest[j+1:]
	}
	return out, true
}

func validPort(v string) bool {
	n, err := strconv.Atoi(v)
	return err == nil && n >= 0 && n <= 65535 && strconv.Itoa(n) == v
}

// Validate checks p the way Istio's admission webhook does (and a little
// more: every IP, CIDR, port and path template is checked). It returns nil or
// a *multierror.Error of *PolicyError values.
func Validate(p *Policy) error {
	v := &validator{p: p}
	if p.Err != nil {
		causes := []error{p.Err}
		var me *multierror.Error
		if errors.As(p.Err, &me) {
			causes = me.Errors
		}
		for _, c := range causes {
			var pe *PolicyError
			if errors.As(c, &pe) {
				v.err = multierror.Append(v.err, pe)
			} else {
				v.add("", "%v", c)
			}
		}
	}
	if p.Namespace == "" {
		v.add("metadata.namespace", "must not be empty")
	}
	if p.Name == "" {
		v.add("metadata.name", "must not be empty")
	}
	n := 0
	if p.HasSelector {
		n++
	}
	if len(p.TargetRefs) > 0 {
		n++
	}
	if p.LegacyTargetRef && len(p.TargetRefs) > 1 {
		n++ // targetRef and targetRefs both set
	}
	if n > 1 {
		v.add("spec", "only one of selector, targetRef or targetRefs may be set")
	}
	for k := range p.Selector {
		if k == "" || strings.Contains(k, "*") {
			v.add("spec.selector.matchLabels", "key %q must be non-empty and contain no wildcard", k)
		}
		if strings.Contains(p.Selector[k], "*") {
			v.add("spec.selector.matchLabels["+k+"]", "value %q must not contain a wildcard", p.Selector[k])
		}
	}
	for i, t := range p.TargetRefs {
		f := fmt.Sprintf("spec.targetRefs[%d]", i)
		if p.LegacyTargetRef {
			if i == 0 {
				f = "spec.targetRef"
			} else {
				f = fmt.Sprintf("spec.targetRefs[%d]", i-1)
			}
		}
		if t.Name == "" {
			v.add(f+".name", "must not be empty")
		}
		if t.Namespace != "" && t.Namespace != p.Namespace {
			v.add(f+".namespace", "%q must equal the policy namespace %q (cross-namespace references are not allowed)", t.Namespace, p.Namespace)
		}
		if targetKind(t) == tkUnsupported {
			v.add(f, "unsupported target group %q kind %q", t.Group, t.Kind)
		}
	}
	switch p.Action {
	case Allow, Deny, Audit, Custom:
	default:
		v.add("spec.action", "unknown action %d", p.Action)
	}
	if p.DryRun && p.Action != Allow && p.Action != Deny {
		v.add(DryRunField, "is only supported for action ALLOW or DENY, not %s", p.Action)
	}
	if p.Action == Custom {
		if p.Provider == "" {
			v.add("spec.provider.name", "must be set for action CUSTOM")
		}
	} else if p.Provider != "" {
		v.add("spec.provider", "is only allowed with action CUSTOM")
	}
	if (p.Action == Deny || p.Action == Custom) && len(p.Rules) == 0 {
		v.add("spec.rules", "a %s policy needs rules (use rules: [{}] to match every request)", p.Action)
	}
	for i := range p.Rules {
		v.rule(fmt.Sprintf("spec.rules[%d]", i), &p.Rules[i])
	}
	if v.err == nil {
		return nil
	}
	v.err.ErrorFormat = ListFormat
	return v.err
}

// ListFormat is a multierror.ErrorFormatFunc that prints one error per line,
// without a header. Every aggregated error this package returns uses it.
func ListFormat(es []error) string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

func (v *validator) values(field string, vals []string, check func(f, s string)) {
	for i, s := range vals {
		f := fmt.Sprintf("%s[%d]", field, i)
		if s == "" {
			v.add(f, "must not be empty")
			continue
		}
		if check != nil {
			check(f, s)
		}
	}
}

func (v *validator) ipCheck(f, s string) {
	if _, ok := parsePrefix(s); !ok {
		v.add(f, "%q is not an IP or CIDR", s)
	}
}

func (v *validator) portCheck(f, s string) {
	if !validPort(s) {
		v.add(f, "%q is not a port number", s)
	}
}

func (v *validator) saCheck(f, s string) {
	parts := strings.Split(s, "/")
	if strings.Contains(s, "*") || len(parts) > 2 || parts[0] == "" || parts[len(parts)-1] == "" {
		v.add(f, "%q must be \"sa\" or \"ns/sa\" without wildcards", s)
		return
	}
	// Istio pastes the value into a regex unescaped; Envoy would reject
	// the waypoint's configuration if it does not compile.
	if ns, sa := splitSA(v.p.Namespace, s); strings.ContainsAny(ns+sa, regexMeta) {
		if _, err := regexp.Compile(serviceAccountRegex(ns, sa)); err != nil {
			v.add(f, "%q is not usable: the regex Istio builds from it does not compile: %v", s, err)
		}
	}
}

func (v *validator) tdCheck(f, s string) {
	if strings.Contains(s, "/") || (len(s) > 2 && strings.Contains(s[1:len(s)-1], "*")) {
		v.add(f, "%q must not contain '/' and may have '*' only at the start or end", s)
	}
}

func (v *validator) pathCheck(f, s string) {
	if !strings.ContainsAny(s, "{}") {
		return
	}
	// Like Istio: every operator is a whole path segment, and nothing but
	// literal segments may follow {**}.
	seenAny := false
	for _, seg := range strings.Split(strings.Trim(s, "/"), "/") {
		switch {
		case seg == "{*}" || seg == "{**}":
			if seenAny {
				v.add(f, "%q: {**} must be the last operator", s)
				return
			}
			seenAny = seg == "{**}"
		case strings.ContainsAny(seg, "{}"):
			v.add(f, "%q: '{' or '}' outside a whole-segment {*} or {**} operator", s)
			return
		}
	}
}

func (v *validator) rule(f string, r *Rule) {
	custom := v.p.Action == Custom
	for i, from := range r.From {
		ff := fmt.Sprintf("%s.from[%d].source", f, i)
		if from == nil {
			v.add(ff, "must not be nil")
			continue
		}
		s := from
		if sourceEmpty(s) {
			v.add(ff, "must not be empty")
		}
		v.values(ff+".principals", s.Principals, nil)
		v.values(ff+".notPrincipals", s.NotPrincipals, nil)
		v.values(ff+".requestPrincipals", s.RequestPrincipals, nil)
		v.values(ff+".notRequestPrincipals", s.NotRequestPrincipals, nil)
		v.values(ff+".namespaces", s.Namespaces, nil)
		v.values(ff+".notNamespaces", s.NotNamespaces, nil)
		v.values(ff+".serviceAccounts", s.ServiceAccounts, v.saCheck)
		v.values(ff+".notServiceAccounts", s.NotServiceAccounts, v.saCheck)
		v.values(ff+".ipBlocks", s.IPBlocks, v.ipCheck)
		v.values(ff+".notIpBlocks", s.NotIPBlocks, v.ipCheck)
		v.values(ff+".remoteIpBlocks", s.RemoteIPBlocks, v.ipCheck)
		v.values(ff+".notRemoteIpBlocks", s.NotRemoteIPBlocks, v.ipCheck)
		v.values(ff+".trustDomains", s.TrustDomains, v.tdCheck)
		v.values(ff+".notTrustDomains", s.NotTrustDomains, v.tdCheck)
		if len(s.ServiceAccounts)+len(s.NotServiceAccounts) > 0 &&
			len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces) > 0 {
			v.add(ff, "serviceAccounts cannot be combined with principals or namespaces")
		}
		if len(s.ServiceAccounts) > 16 {
			v.add(ff+".serviceAccounts", "at most 16 entries are allowed, got %d", len(s.ServiceAccounts))
		}
		if len(s.NotServiceAccounts) > 16 {
			v.add(ff+".notServiceAccounts", "at most 16 entries are allowed, got %d", len(s.NotServiceAccounts))
		}
		if custom {
			for _, x := range []struct {
				name string
				n    int
			}{
				{"principals", len(s.Principals) + len(s.NotPrincipals)},
				{"namespaces", len(s.Namespaces) + len(s.NotNamespaces)},
				{"serviceAccounts", len(s.ServiceAccounts) + len(s.NotServiceAccounts)},
				{"trustDomains", len(s.TrustDomains) + len(s.NotTrustDomains)},
				{"requestPrincipals", len(s.RequestPrincipals) + len(s.NotRequestPrincipals)},
			} {
				if x.n > 0 {
					v.add(ff+"."+x.name, "identity fields are not allowed in a CUSTOM policy")
				}
			}
		}
	}
	for i, to := range r.To {
		ff := fmt.Sprintf("%s.to[%d].operation", f, i)
		if to == nil {
			v.add(ff, "must not be nil")
			continue
		}
		o := to
		if operationEmpty(o) {
			v.add(ff, "must not be empty")
		}
		v.values(ff+".hosts", o.Hosts, nil)
		v.values(ff+".notHosts", o.NotHosts, nil)
		v.values(ff+".ports", o.Ports, v.portCheck)
		v.values(ff+".notPorts", o.NotPorts, v.portCheck)
		v.values(ff+".methods", o.Methods, nil)
		v.values(ff+".notMethods", o.NotMethods, nil)
		v.values(ff+".paths", o.Paths, v.pathCheck)
		v.values(ff+".notPaths", o.NotPaths, v.pathCheck)
	}
	for i, c := range r.When {
		ff := fmt.Sprintf("%s.when[%d]", f, i)
		if !conditionKey(c.Key) {
			v.add(ff+".key", "unknown condition key %q", c.Key)
			continue
		}
		if len(c.Values) == 0 && len(c.NotValues) == 0 {
			v.add(ff, "values or notValues must be set")
		}
		var check func(f, s string)
		switch c.Key {
		case "source.ip", "remote.ip", "destination.ip":
			check = v.ipCheck
		case "destination.port":
			check = v.portCheck
		case "source.serviceAccount":
			check = v.saCheck
		case "source.namespace", "source.principal":
			if custom {
				v.add(ff+".key", "%q is not allowed in a CUSTOM policy", c.Key)
			}
		}
		if custom && strings.HasPrefix(c.Key, "request.auth.") {
			v.add(ff+".key", "%q is not allowed in a CUSTOM policy", c.Key)
		}
		v.values(ff+".values", c.Values, check)
		v.values(ff+".notValues", c.NotValues, check)
	}
}

func sourceEmpty(s *Source) bool {
	return len(s.Principals)+len(s.NotPrincipals)+len(s.RequestPrincipals)+len(s.NotRequestPrincipals)+
		len(s.Namespaces)+len(s.NotNamespaces)+len(s.ServiceAccounts)+len(s.NotServiceAccounts)+
		len(s.IPBlocks)+len(s.NotIPBlocks)+len(s.RemoteIPBlocks)+len(s.NotRemoteIPBlocks)+
		len(s.TrustDomains)+len(s.NotTrustDomains) == 0
}

func operationEmpty(o *Operation) bool {
	return len(o.Hosts)+len(o.NotHosts)+len(o.Ports)+len(o.NotPorts)+
		len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) == 0
}
