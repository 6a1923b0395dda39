package istio

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/hashicorp/go-multierror"
	"google.golang.org/protobuf/encoding/protojson"
	secv1beta1 "istio.io/api/security/v1beta1"

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

// SplitDocuments splits multi-document YAML at "---" separator lines.
func SplitDocuments(data []byte) [][]byte { return yamldoc.Split(data) }

// Parse decodes multi-document YAML as kubectl would apply it and converts
// every security.istio.io v1/v1beta1 AuthorizationPolicy. Documents of other
// kinds are skipped (a v1 List is expanded). It returns every policy it could
// attribute to a namespace and, separately, an aggregate of all errors:
//
//   - a policy that fails to decode, validate or convert is returned with
//     Err set, so that an engine fails closed over its scope; its errors are
//     *authz.PolicyError values naming the field in the user's YAML (for
//     example `spec.rules[0].from[1].source.principals[0]: must be a
//     string, got number 7`), and decoding errors also wrap ErrDecode;
//   - a document that cannot be read as an object at all yields no policy,
//     only a *DocumentError: it cannot be attributed to any scope, so a
//     caller that enforces must treat it as fatal rather than run without
//     the policy.
func Parse(data []byte, opts Options) ([]authz.Policy, error) {
	var errs *multierror.Error
	var out []authz.Policy
	for i, d := range documents(data) {
		v, err := decodeDocument(d.body)
		if err != nil {
			errs = multierror.Append(errs, &DocumentError{Doc: i, Line: d.line, Err: shiftLines(err, d.line)})
			continue
		}
		ps, err := parseValue(v, &opts, &DocumentError{Doc: i, Line: d.line})
		if err != nil {
			errs = multierror.Append(errs, err) // names namespace/name and field, or the document
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

// docErr returns a *DocumentError for the document or List item at.
func docErr(at *DocumentError, format string, args ...any) error {
	e := *at
	e.Err = fmt.Errorf(format, args...)
	return &e
}

// parseValue converts one decoded document or List item.
func parseValue(v any, opts *Options, at *DocumentError) ([]authz.Policy, error) {
	if v == nil {
		return nil, nil
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, docErr(at, "an object must be a mapping, got %s", describe(v))
	}
	kind, kindOK := obj["kind"].(string)
	apiVersion, apiOK := obj["apiVersion"].(string)
	if (!kindOK && obj["kind"] != nil) || (!apiOK && obj["apiVersion"] != nil) {
		return nil, docErr(at, "kind and apiVersion must be strings, got %s and %s", describe(obj["kind"]), describe(obj["apiVersion"]))
	}
	if kind == "List" {
		items, ok := obj["items"].([]any)
		if !ok && obj["items"] != nil {
			return nil, docErr(at, "items: must be a list, got %s", describe(obj["items"]))
		}
		var errs *multierror.Error
		var out []authz.Policy
		for i, it := range items {
			item := *at
			item.Item = fmt.Sprintf("items[%d]", i)
			if at.Item != "" {
				item.Item = at.Item + "." + item.Item
			}
			ps, err := parseValue(it, opts, &item)
			if err != nil {
				errs = multierror.Append(errs, err)
			}
			out = append(out, ps...)
		}
		if errs == nil {
			return out, nil
		}
		errs.ErrorFormat = authz.ListFormat
		return out, errs
	}
	group, _, _ := strings.Cut(apiVersion, "/")
	if kind != "AuthorizationPolicy" || group != "security.istio.io" {
		return nil, nil
	}
	p, err := convertObject(obj, apiVersion, opts, at)
	if p == nil {
		return nil, err
	}
	return []authz.Policy{*p}, err
}

// dryRunField is the field path of the dry-run annotation in errors.
var dryRunField = authz.DryRunField

// convertObject converts one AuthorizationPolicy. It returns a nil policy
// (and a *DocumentError) only when the object's namespace cannot be read.
func convertObject(obj map[string]any, apiVersion string, opts *Options, at *DocumentError) (*authz.Policy, error) {
	meta, ok := obj["metadata"].(map[string]any)
	if !ok && obj["metadata"] != nil {
		return nil, docErr(at, "metadata: must be a mapping, got %s", describe(obj["metadata"]))
	}
	ns, ok := meta["namespace"].(string)
	if !ok && meta["namespace"] != nil {
		return nil, docErr(at, "metadata.namespace: must be a string, got %s", describe(meta["namespace"]))
	}
	if ns == "" {
		ns = cmp.Or(opts.DefaultNamespace, "default")
	}
	var pre []error // problems found before authz.Validate
	bad := func(field string, cause error, format string, args ...any) {
		pre = append(pre, &authz.PolicyError{Field: field, Msg: fmt.Sprintf(format, args...), Err: cause})
	}
	name, ok := meta["name"].(string)
	if !ok && meta["name"] != nil {
		bad("metadata.name", ErrDecode, "must be a string, got %s", describe(meta["name"]))
	}
	annotations := map[string]string{}
	switch a := meta["annotations"].(type) {
	case nil:
	case map[string]any:
		for k, v := range a {
			s, ok := v.(string)
			if !ok {
				bad("metadata.annotations["+strconv.Quote(k)+"]", ErrDecode, "must be a string, got %s", describe(v))
				continue
			}
			annotations[k] = s
		}
	default:
		bad("metadata.annotations", ErrDecode, "must be a mapping, got %s", describe(a))
	}
	finish := func(p *authz.Policy) (*authz.Policy, error) {
		p.Namespace, p.Name = ns, name
		for _, e := range pre {
			pe := e.(*authz.PolicyError)
			pe.Namespace, pe.Name = ns, name
		}
		if len(pre) > 0 {
			p.Err = aggregate(pre)
		}
		return p, authz.Validate(p)
	}
	if apiVersion != "security.istio.io/v1" && apiVersion != "security.istio.io/v1beta1" {
		bad("apiVersion", ErrDecode, "unsupported apiVersion %q (want security.istio.io/v1 or v1beta1)", apiVersion)
		return finish(&authz.Policy{})
	}
	spec, specErrs := decodeSpec(obj["spec"])
	for _, fe := range specErrs {
		bad(fe.path, ErrDecode, "%s", fe.msg)
	}
	if spec == nil {
		// Attachment and action unknown: the engine fails closed over the
		// whole namespace.
		return finish(&authz.Policy{})
	}
	p := Convert(ns, name, spec)
	for _, fe := range emptyLists(obj["spec"]) {
		bad(fe.path, nil, "%s", fe.msg)
	}
	if v, ok := annotations[DryRunAnnotation]; ok {
		// Istio's admission: the annotation is only for ALLOW and DENY, and
		// its value must parse with strconv.ParseBool, as istiod reads it.
		switch p.Action {
		case authz.Allow, authz.Deny:
			b, err := strconv.ParseBool(v)
			if err != nil {
				bad(dryRunField, err, "%q is not a boolean (use \"true\" or \"false\")", v)
			}
			p.DryRun = b
		default:
			bad(dryRunField, nil, "is only supported for action ALLOW or DENY, not %s", p.Action)
		}
	}
	if expr, ok := annotations[authzcel.Annotation]; ok {
		celField := "metadata.annotations[" + strconv.Quote(authzcel.Annotation) + "]"
		c := opts.CEL
		if c == nil {
			var err error
			if c, err = authzcel.NewCompiler(); err == nil {
				opts.CEL = c
			} else {
				bad(celField, err, "%v", err)
			}
		}
		if c != nil {
			cond, err := c.Compile(expr)
			if err != nil {
				bad(celField, err, "%v", err)
			} else {
				p.Extra = append(p.Extra, cond)
			}
		}
	}
	return finish(&p)
}

// decodeSpec decodes spec with the istio.io/api type. It returns nil and
// the problems, with field paths, when protojson would refuse it.
func decodeSpec(v any) (*secv1beta1.AuthorizationPolicy, []fieldError) {
	spec := &secv1beta1.AuthorizationPolicy{}
	if v == nil {
		return spec, nil
	}
	var errs []fieldError
	checkMessage("spec", v, spec.ProtoReflect().Descriptor(), &errs)
	if len(errs) > 0 {
		return nil, errs
	}
	js, err := json.Marshal(v)
	if err == nil {
		err = protojson.Unmarshal(js, spec)
	}
	if err != nil {
		// checkMessage missed a reason; report protojson's, without its
		// position in the internal JSON.
		return nil, []fieldError{{"spec", protoMessage(err)}}
	}
	return spec, nil
}

func aggregate(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	me := multierror.Append(nil, errs...)
	me.ErrorFormat = authz.ListFormat
	return me
}

// emptyLists reports `from: []` and `to: []`, which Istio rejects but which
// decode to the same value as an absent list.
func emptyLists(spec any) []fieldError {
	s, _ := spec.(map[string]any)
	rules, _ := s["rules"].([]any)
	var out []fieldError
	for i, r := range rules {
		rule, _ := r.(map[string]any)
		for _, k := range []string{"from", "to"} {
			if l, ok := rule[k].([]any); ok && len(l) == 0 {
				out = append(out, fieldError{fmt.Sprintf("spec.rules[%d].%s", i, k), "must not be an empty list (omit it instead)"})
			}
		}
	}
	return out
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
