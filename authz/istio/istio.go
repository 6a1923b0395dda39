package istio

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/go-multierror"
	"google.golang.org/protobuf/encoding/protojson"
	secv1beta1 "istio.io/api/security/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/meshblocks/meshblocks/authz"
	authzcel "github.com/meshblocks/meshblocks/authz/cel"
	"github.com/meshblocks/meshblocks/internal/yamldoc"
)

// DryRunAnnotation is Istio's dry-run annotation.
const DryRunAnnotation = "istio.io/dry-run"

// ErrDecode is wrapped by errors about documents that cannot be decoded.
var ErrDecode = errors.New("istio: cannot decode")

// Options configures Parse. The zero value is usable.
type Options struct {
	// DefaultNamespace is used for objects without metadata.namespace, as
	// kubectl does with the current context. If empty, "default".
	DefaultNamespace string
	// CEL compiles authz.meshblocks.io/cel annotations. If nil, a compiler is
	// created on first use.
	CEL *authzcel.Compiler
}

type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec  json.RawMessage   `json:"spec"`
	Items []json.RawMessage `json:"items"`
}

// SplitDocuments splits multi-document YAML at "---" separator lines.
func SplitDocuments(data []byte) [][]byte { return yamldoc.Split(data) }

// Parse decodes multi-document YAML as kubectl would apply it and converts
// every security.istio.io v1/v1beta1 AuthorizationPolicy. Documents of other
// kinds are skipped (a v1 List is expanded). It returns every policy it could
// identify (a policy that failed to decode or convert is returned with Err
// set, so that an engine fails closed over its scope) and, separately, an
// aggregate of all errors.
func Parse(data []byte, opts Options) ([]authz.Policy, error) {
	var errs *multierror.Error
	var out []authz.Policy
	for i, doc := range SplitDocuments(data) {
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			errs = multierror.Append(errs, fmt.Errorf("%w: document %d: %w", ErrDecode, i, err))
			continue
		}
		ps, err := parseJSON(js, &opts)
		if err != nil {
			errs = multierror.Append(errs, err) // already names namespace/name and field
		}
		out = append(out, ps...)
	}
	out = lastWins(out, func(p *authz.Policy) [2]string { return [2]string{p.Namespace, p.Name} })
	if errs == nil {
		return out, nil
	}
	errs.ErrorFormat = authz.ListFormat
	return out, errs
}

// lastWins keeps, for every namespace/name, only the last item, as
// applying the documents one after another with kubectl would.
func lastWins[T any](items []T, key func(*T) [2]string) []T {
	last := map[[2]string]int{}
	for i := range items {
		last[key(&items[i])] = i
	}
	if len(last) == len(items) {
		return items
	}
	out := items[:0:0]
	for i := range items {
		if last[key(&items[i])] == i {
			out = append(out, items[i])
		}
	}
	return out
}

func parseJSON(js []byte, opts *Options) ([]authz.Policy, error) {
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil, nil
	}
	var o object
	if err := json.Unmarshal(js, &o); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	if o.Kind == "List" {
		var errs *multierror.Error
		var out []authz.Policy
		for i, it := range o.Items {
			ps, err := parseJSON(it, opts)
			if err != nil {
				errs = multierror.Append(errs, fmt.Errorf("istio: items[%d]: %w", i, err))
			}
			out = append(out, ps...)
		}
		if errs == nil {
			return out, nil
		}
		errs.ErrorFormat = authz.ListFormat
		return out, errs
	}
	group, _, _ := strings.Cut(o.APIVersion, "/")
	if o.Kind != "AuthorizationPolicy" || group != "security.istio.io" {
		return nil, nil
	}
	p, err := convertObject(&o, opts)
	return []authz.Policy{p}, err
}

func convertObject(o *object, opts *Options) (authz.Policy, error) {
	ns := o.Metadata.Namespace
	if ns == "" {
		ns = opts.DefaultNamespace
		if ns == "" {
			ns = "default"
		}
	}
	fail := func(field string, err error) (authz.Policy, error) {
		pe := &authz.PolicyError{Namespace: ns, Name: o.Metadata.Name, Field: field, Msg: err.Error(), Err: err}
		return authz.Policy{Namespace: ns, Name: o.Metadata.Name, Err: pe}, pe
	}
	if o.APIVersion != "security.istio.io/v1" && o.APIVersion != "security.istio.io/v1beta1" {
		return fail("apiVersion", fmt.Errorf("%w: unsupported apiVersion %q", ErrDecode, o.APIVersion))
	}
	spec := &secv1beta1.AuthorizationPolicy{}
	if len(o.Spec) > 0 && !bytes.Equal(o.Spec, []byte("null")) {
		if err := protojson.Unmarshal(o.Spec, spec); err != nil {
			return fail("spec", fmt.Errorf("%w: %w", ErrDecode, err))
		}
	}
	p := Convert(ns, o.Metadata.Name, spec)
	if err := emptyLists(ns, o.Metadata.Name, o.Spec); err != nil {
		p.Err = err
		return p, err
	}
	p.DryRun = strings.EqualFold(o.Metadata.Annotations[DryRunAnnotation], "true")
	if expr, ok := o.Metadata.Annotations[authzcel.Annotation]; ok {
		c := opts.CEL
		if c == nil {
			var err error
			if c, err = authzcel.NewCompiler(); err != nil {
				return fail("metadata.annotations["+authzcel.Annotation+"]", err)
			}
			opts.CEL = c
		}
		cond, err := c.Compile(expr)
		if err != nil {
			pe := &authz.PolicyError{Namespace: ns, Name: o.Metadata.Name,
				Field: "metadata.annotations[" + authzcel.Annotation + "]", Msg: err.Error(), Err: err}
			p.Err = pe
			return p, pe
		}
		p.Extra = append(p.Extra, cond)
	}
	if err := authz.Validate(&p); err != nil {
		return p, err
	}
	return p, nil
}

// emptyLists reports `from: []` and `to: []`, which Istio rejects but which
// decode to the same value as an absent list.
func emptyLists(ns, name string, spec []byte) error {
	var raw struct {
		Rules []map[string]json.RawMessage `json:"rules"`
	}
	if json.Unmarshal(spec, &raw) != nil {
		return nil // reported by protojson already
	}
	for i, r := range raw.Rules {
		for _, k := range []string{"from", "to"} {
			if v, ok := r[k]; ok && bytes.Equal(bytes.TrimSpace(v), []byte("[]")) {
				return &authz.PolicyError{Namespace: ns, Name: name,
					Field: fmt.Sprintf("spec.rules[%d].%s", i, k), Msg: "must not be an empty list (omit it instead)"}
			}
		}
	}
	return nil
}

// Convert turns a decoded AuthorizationPolicy spec into an authz.Policy. It
// does not validate; authz.New (or authz.Validate) does.
func Convert(namespace, name string, spec *secv1beta1.AuthorizationPolicy) authz.Policy {
	p := authz.Policy{Namespace: namespace, Name: name}
	if sel := spec.GetSelector(); sel != nil {
		p.HasSelector = true
		p.Selector = sel.GetMatchLabels()
	}
	if t := spec.GetTargetRef(); t != nil {
		p.LegacyTargetRef = true
		p.TargetRefs = append(p.TargetRefs, authz.TargetRef{Group: t.GetGroup(), Kind: t.GetKind(), Name: t.GetName(), Namespace: t.GetNamespace()})
	}
	for _, t := range spec.GetTargetRefs() {
		p.TargetRefs = append(p.TargetRefs, authz.TargetRef{Group: t.GetGroup(), Kind: t.GetKind(), Name: t.GetName(), Namespace: t.GetNamespace()})
	}
	switch spec.GetAction() {
	case secv1beta1.AuthorizationPolicy_ALLOW:
		p.Action = authz.Allow
	case secv1beta1.AuthorizationPolicy_DENY:
		p.Action = authz.Deny
	case secv1beta1.AuthorizationPolicy_AUDIT:
		p.Action = authz.Audit
	case secv1beta1.AuthorizationPolicy_CUSTOM:
		p.Action = authz.Custom
	default:
		p.Action = authz.Action(255)
	}
	if pr := spec.GetProvider(); pr != nil {
		p.Provider = pr.GetName()
	}
	for _, r := range spec.GetRules() {
		var rule authz.Rule
		if r == nil {
			p.Rules = append(p.Rules, rule)
			continue
		}
		for _, f := range r.GetFrom() {
			s := f.GetSource()
			if s == nil {
				rule.From = append(rule.From, nil)
				continue
			}
			rule.From = append(rule.From, &authz.Source{
				Principals: s.GetPrincipals(), NotPrincipals: s.GetNotPrincipals(),
				RequestPrincipals: s.GetRequestPrincipals(), NotRequestPrincipals: s.GetNotRequestPrincipals(),
				Namespaces: s.GetNamespaces(), NotNamespaces: s.GetNotNamespaces(),
				ServiceAccounts: s.GetServiceAccounts(), NotServiceAccounts: s.GetNotServiceAccounts(),
				IPBlocks: s.GetIpBlocks(), NotIPBlocks: s.GetNotIpBlocks(),
				RemoteIPBlocks: s.GetRemoteIpBlocks(), NotRemoteIPBlocks: s.GetNotRemoteIpBlocks(),
				TrustDomains: s.GetTrustDomains(), NotTrustDomains: s.GetNotTrustDomains(),
			})
		}
		for _, t := range r.GetTo() {
			o := t.GetOperation()
			if o == nil {
				rule.To = append(rule.To, nil)
				continue
			}
			rule.To = append(rule.To, &authz.Operation{
				Hosts: o.GetHosts(), NotHosts: o.GetNotHosts(),
				Ports: o.GetPorts(), NotPorts: o.GetNotPorts(),
				Methods: o.GetMethods(), NotMethods: o.GetNotMethods(),
				Paths: o.GetPaths(), NotPaths: o.GetNotPaths(),
			})
		}
		for _, c := range r.GetWhen() {
			rule.When = append(rule.When, authz.Condition{Key: c.GetKey(), Values: c.GetValues(), NotValues: c.GetNotValues()})
		}
		p.Rules = append(p.Rules, rule)
	}
	return p
}
