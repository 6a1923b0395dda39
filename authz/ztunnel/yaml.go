package ztunnel

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Policies is the policies section of a ztunnel local config file. It
// implements yaml.Unmarshaler and yaml.Marshaler (go.yaml.in/yaml/v3) with
// ztunnel's spelling, so that a struct holding the whole local config can
// decode it:
//
//	policies:
//	- name: allow-sleep
//	  namespace: default
//	  scope: WorkloadSelector          # Global, Namespace or WorkloadSelector
//	  action: Allow                    # Allow or Deny
//	  rules:                           # rules, each a list of clauses, each a list of matches
//	  - - - principals:
//	        - !Exact cluster.local/ns/default/sa/sleep
//	    - - destinationPorts: [8080]
//	  dryRun: false
//
// String matches are YAML-tagged as ztunnel's serde_yaml writes them
// (!Exact v, !Prefix v, !Suffix v, !Presence []); the single-key mapping
// form of serde's JSON ({Exact: v}, {Presence: []}) is accepted too, so
// that JSON input works. A match's fields are namespaces, serviceAccounts
// ({namespace, serviceAccount}), principals, sourceIps and destinationIps
// (CIDRs such as 10.0.0.1/32), destinationPorts, and the "not" variant of
// each (notNamespaces, ...).
//
// Decoding is as strict as ztunnel (every field of a policy is required and
// unknown policy fields are errors) and a little stricter: unknown match
// fields are errors too (ztunnel ignores them, which would silently widen
// or void a rule), and every policy must be one this package can hand to
// the authz engine (see ToAuthz). Errors are *Error values naming the
// field path from "policies" and the line.
type Policies []Authorization

// UnmarshalYAML decodes a policies list.
func (p *Policies) UnmarshalYAML(n *yaml.Node) error {
	out, err := decodePolicies(n, "policies")
	if err != nil {
		return err
	}
	*p = out
	return nil
}

// Parse decodes a YAML or JSON document holding only a policies section
// (a local config file without workloads or services), the form `meshctl
// authz convert` writes without -config.
func Parse(data []byte) ([]Authorization, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Error{Msg: err.Error()}
	}
	if doc.Kind == 0 {
		return nil, nil // empty input
	}
	top := doc.Content[0]
	if isNull(top) {
		return nil, nil
	}
	if top.Kind != yaml.MappingNode {
		return nil, errAt("", top.Line, "the document must be a mapping with a policies key, got %s", kindName(top))
	}
	var out []Authorization
	seen := false
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		if k.Value != "policies" {
			return nil, errAt(k.Value, k.Line, "unknown field (a policies file holds only policies)")
		}
		if seen {
			return nil, errAt("policies", k.Line, "duplicate key")
		}
		seen = true
		var err error
		if out, err = decodePolicies(v, "policies"); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Marshal encodes policies as a YAML document with one key, policies, in
// the spelling ztunnel reads.
func Marshal(auths []Authorization) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(map[string]Policies{"policies": auths}); err != nil {
		return nil, fmt.Errorf("ztunnel: encode: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("ztunnel: encode: %w", err)
	}
	return buf.Bytes(), nil
}

// MarshalYAML encodes the list as ztunnel writes it.
func (p Policies) MarshalYAML() (any, error) {
	seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	if len(p) == 0 {
		seq.Style = yaml.FlowStyle
	}
	for i := range p {
		seq.Content = append(seq.Content, encodeAuthorization(&p[i]))
	}
	return seq, nil
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "null"
		}
		return fmt.Sprintf("%q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}

// resolve follows aliases (anchors may be used to share matches).
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func seqOf(n *yaml.Node, path string) ([]*yaml.Node, error) {
	n = resolve(n)
	if n.Kind != yaml.SequenceNode {
		return nil, errAt(path, n.Line, "must be a list, got %s", kindName(n))
	}
	return n.Content, nil
}

// mapping calls f for every key of the mapping n, rejecting duplicates.
func mapping(n *yaml.Node, path string, f func(key string, k, v *yaml.Node) error) error {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		return errAt(path, n.Line, "must be a mapping, got %s", kindName(n))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return errAt(path, k.Line, "keys must be strings")
		}
		if seen[k.Value] {
			return errAt(join(path, k.Value), k.Line, "duplicate key")
		}
		seen[k.Value] = true
		if err := f(k.Value, k, resolve(v)); err != nil {
			return err
		}
	}
	return nil
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func str(n *yaml.Node, path string) (string, error) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		return "", errAt(path, n.Line, "must be a string, got %s", kindName(n))
	}
	return n.Value, nil
}

func decodePolicies(n *yaml.Node, path string) ([]Authorization, error) {
	n = resolve(n)
	if isNull(n) {
		return nil, nil // "policies:" with nothing after it
	}
	items, err := seqOf(n, path)
	if err != nil {
		return nil, err
	}
	out := make([]Authorization, 0, len(items))
	seen := map[string]int{}
	for i, item := range items {
		p := fmt.Sprintf("%s[%d]", path, i)
		a, err := decodeAuthorization(resolve(item), p)
		if err != nil {
			return nil, err
		}
		if j, dup := seen[a.Key()]; dup {
			return nil, errAt(p, item.Line, "duplicate policy %s (also %s[%d])", a.Key(), path, j)
		}
		seen[a.Key()] = i
		if _, err := rulesToAuthz(&a, p); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

var authorizationFields = []string{"name", "namespace", "scope", "action", "rules", "dryRun"}

func decodeAuthorization(n *yaml.Node, path string) (Authorization, error) {
	var a Authorization
	got := map[string]bool{}
	err := mapping(n, path, func(key string, k, v *yaml.Node) error {
		p := join(path, key)
		got[key] = true
		var err error
		switch key {
		case "name":
			a.Name, err = str(v, p)
			if err == nil && a.Name == "" {
				err = errAt(p, v.Line, "must not be empty")
			}
		case "namespace":
			a.Namespace, err = str(v, p)
			if err == nil && a.Namespace == "" {
				err = errAt(p, v.Line, "must not be empty")
			}
		case "scope":
			var s string
			if s, err = str(v, p); err == nil {
				var ok bool
				if a.Scope, ok = parseScope(s); !ok {
					err = errAt(p, v.Line, "%q is not Global, Namespace or WorkloadSelector", s)
				}
			}
		case "action":
			var s string
			if s, err = str(v, p); err == nil {
				var ok bool
				if a.Action, ok = parseAction(s); !ok {
					err = errAt(p, v.Line, "%q is not Allow or Deny (ztunnel is sent no other action)", s)
				}
			}
		case "rules":
			a.Rules, err = decodeRules(v, p)
		case "dryRun":
			if v.Kind != yaml.ScalarNode || v.Tag != "!!bool" {
				return errAt(p, v.Line, "must be true or false, got %s", kindName(v))
			}
			a.DryRun = v.Value == "true" || v.Value == "True" || v.Value == "TRUE"
		default:
			return errAt(p, k.Line, "unknown field (a policy has %s)", strings.Join(authorizationFields, ", "))
		}
		return err
	})
	if err != nil {
		return a, err
	}
	for _, f := range authorizationFields {
		if !got[f] {
			return a, errAt(join(path, f), n.Line, "required (ztunnel requires every field of a policy)")
		}
	}
	return a, nil
}

func decodeRules(n *yaml.Node, path string) ([]Rule, error) {
	rules, err := seqOf(n, path)
	if err != nil {
		return nil, err
	}
	out := make([]Rule, 0, len(rules))
	for i, rn := range rules {
		rp := fmt.Sprintf("%s[%d]", path, i)
		clauses, err := seqOf(rn, rp)
		if err != nil {
			return nil, err
		}
		r := make(Rule, 0, len(clauses))
		for j, cn := range clauses {
			cp := fmt.Sprintf("%s[%d]", rp, j)
			matches, err := seqOf(cn, cp)
			if err != nil {
				return nil, err
			}
			c := make(Clause, 0, len(matches))
			for k, mn := range matches {
				m, err := decodeMatch(resolve(mn), fmt.Sprintf("%s[%d]", cp, k))
				if err != nil {
					return nil, err
				}
				c = append(c, m)
			}
			r = append(r, c)
		}
		out = append(out, r)
	}
	return out, nil
}

var matchFields = "namespaces, serviceAccounts, principals, sourceIps, destinationIps, destinationPorts and their not- variants"

func decodeMatch(n *yaml.Node, path string) (Match, error) {
	var m Match
	err := mapping(n, path, func(key string, k, v *yaml.Node) error {
		p := join(path, key)
		var err error
		switch key {
		case "namespaces":
			m.Namespaces, err = decodeStrings(v, p)
		case "notNamespaces":
			m.NotNamespaces, err = decodeStrings(v, p)
		case "principals":
			m.Principals, err = decodeStrings(v, p)
		case "notPrincipals":
			m.NotPrincipals, err = decodeStrings(v, p)
		case "serviceAccounts":
			m.ServiceAccounts, err = decodeServiceAccounts(v, p)
		case "notServiceAccounts":
			m.NotServiceAccounts, err = decodeServiceAccounts(v, p)
		case "sourceIps":
			m.SourceIPs, err = decodeIPs(v, p)
		case "notSourceIps":
			m.NotSourceIPs, err = decodeIPs(v, p)
		case "destinationIps":
			m.DestinationIPs, err = decodeIPs(v, p)
		case "notDestinationIps":
			m.NotDestinationIPs, err = decodeIPs(v, p)
		case "destinationPorts":
			m.DestinationPorts, err = decodePorts(v, p)
		case "notDestinationPorts":
			m.NotDestinationPorts, err = decodePorts(v, p)
		default:
			return errAt(p, k.Line, "unknown field (a match has %s)", matchFields)
		}
		return err
	})
	return m, err
}

func eachItem(n *yaml.Node, path string, f func(p string, item *yaml.Node) error) error {
	items, err := seqOf(n, path)
	if err != nil {
		return err
	}
	for i, item := range items {
		if err := f(fmt.Sprintf("%s[%d]", path, i), resolve(item)); err != nil {
			return err
		}
	}
	return nil
}

func decodeStrings(n *yaml.Node, path string) ([]StringMatch, error) {
	var out []StringMatch
	err := eachItem(n, path, func(p string, item *yaml.Node) error {
		s, err := decodeStringMatch(item, p)
		out = append(out, s)
		return err
	})
	return out, err
}

// decodeStringMatch reads `!Exact v` (serde_yaml's tagged form) or
// `{Exact: v}` (serde's JSON form).
func decodeStringMatch(n *yaml.Node, path string) (StringMatch, error) {
	variant, val := "", n
	switch {
	case strings.HasPrefix(n.Tag, "!") && !strings.HasPrefix(n.Tag, "!!"):
		variant = n.Tag[1:]
	case n.Kind == yaml.MappingNode && len(n.Content) == 2 && n.Content[0].Kind == yaml.ScalarNode:
		variant, val = n.Content[0].Value, resolve(n.Content[1])
	default:
		return StringMatch{}, errAt(path, n.Line, "must be a tagged string match (!Exact v, !Prefix v, !Suffix v or !Presence []), got %s", kindName(n))
	}
	kind, ok := parseMatchKind(variant)
	if !ok {
		return StringMatch{}, errAt(path, n.Line, "unknown string match %q (want Exact, Prefix, Suffix or Presence)", variant)
	}
	if kind == Presence {
		// serde writes the empty tuple variant as [] ; a bare tag or null
		// carries no value either.
		if (val.Kind == yaml.SequenceNode && len(val.Content) == 0) || (val.Kind == yaml.ScalarNode && (val.Value == "" || isNull(val))) {
			return StringMatch{Kind: Presence}, nil
		}
		return StringMatch{}, errAt(path, n.Line, "Presence takes no value (write !Presence [])")
	}
	if val.Kind != yaml.ScalarNode || (val != n && isNull(val)) {
		return StringMatch{}, errAt(path, n.Line, "%s takes a string, got %s", variant, kindName(val))
	}
	return StringMatch{Kind: kind, Value: val.Value}, nil
}

func decodeServiceAccounts(n *yaml.Node, path string) ([]ServiceAccountMatch, error) {
	var out []ServiceAccountMatch
	err := eachItem(n, path, func(p string, item *yaml.Node) error {
		var sa ServiceAccountMatch
		got := 0
		err := mapping(item, p, func(key string, k, v *yaml.Node) error {
			var err error
			switch key {
			case "namespace":
				sa.Namespace, err = str(v, join(p, key))
			case "serviceAccount":
				sa.ServiceAccount, err = str(v, join(p, key))
			default:
				return errAt(join(p, key), k.Line, "unknown field (a service account match has namespace and serviceAccount)")
			}
			got++
			return err
		})
		if err == nil && got != 2 {
			err = errAt(p, item.Line, "namespace and serviceAccount are required")
		}
		out = append(out, sa)
		return err
	})
	return out, err
}

func decodeIPs(n *yaml.Node, path string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	err := eachItem(n, path, func(p string, item *yaml.Node) error {
		s, err := str(item, p)
		if err != nil {
			return err
		}
		pfx, err := netip.ParsePrefix(s)
		if err != nil || pfx.Addr().Zone() != "" {
			return errAt(p, item.Line, "%q is not a CIDR such as 10.0.0.0/8 or 10.0.0.1/32", s)
		}
		out = append(out, pfx)
		return nil
	})
	return out, err
}

func decodePorts(n *yaml.Node, path string) ([]uint16, error) {
	var out []uint16
	err := eachItem(n, path, func(p string, item *yaml.Node) error {
		if item.Kind != yaml.ScalarNode || item.Tag != "!!int" {
			return errAt(p, item.Line, "must be a port number, got %s", kindName(item))
		}
		v, err := strconv.ParseUint(item.Value, 10, 16)
		if err != nil {
			return errAt(p, item.Line, "%s is not a port number (0-65535)", item.Value)
		}
		out = append(out, uint16(v))
		return nil
	})
	return out, err
}

func scalar(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v} }

func encodeAuthorization(a *Authorization) *yaml.Node {
	m := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	add := func(k string, v *yaml.Node) { m.Content = append(m.Content, scalar(k), v) }
	add("name", scalar(a.Name))
	add("namespace", scalar(a.Namespace))
	add("scope", scalar(a.Scope.String()))
	add("action", scalar(a.Action.String()))
	rules := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	if len(a.Rules) == 0 {
		rules.Style = yaml.FlowStyle
	}
	for _, r := range a.Rules {
		rn := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		if len(r) == 0 {
			rn.Style = yaml.FlowStyle
		}
		for _, c := range r {
			cn := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
			if len(c) == 0 {
				cn.Style = yaml.FlowStyle
			}
			for i := range c {
				cn.Content = append(cn.Content, encodeMatch(&c[i]))
			}
			rn.Content = append(rn.Content, cn)
		}
		rules.Content = append(rules.Content, rn)
	}
	add("rules", rules)
	add("dryRun", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(a.DryRun)})
	return m
}

func encodeMatch(m *Match) *yaml.Node {
	out := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	if m.IsEmpty() {
		out.Style = yaml.FlowStyle
	}
	list := func(k string, items []*yaml.Node) {
		if len(items) == 0 {
			return
		}
		out.Content = append(out.Content, scalar(k), &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Content: items})
	}
	strs := func(k string, ss []StringMatch) {
		var items []*yaml.Node
		for _, s := range ss {
			if s.Kind == Presence {
				items = append(items, &yaml.Node{Kind: yaml.SequenceNode, Tag: "!Presence", Style: yaml.FlowStyle})
				continue
			}
			n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!" + s.Kind.String(), Value: s.Value}
			if needsQuotes(s.Value) {
				n.Style = yaml.DoubleQuotedStyle
			}
			items = append(items, n)
		}
		list(k, items)
	}
	sas := func(k string, ss []ServiceAccountMatch) {
		var items []*yaml.Node
		for _, s := range ss {
			items = append(items, &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: yaml.FlowStyle, Content: []*yaml.Node{
				scalar("namespace"), scalar(s.Namespace), scalar("serviceAccount"), scalar(s.ServiceAccount),
			}})
		}
		list(k, items)
	}
	ips := func(k string, ps []netip.Prefix) {
		var items []*yaml.Node
		for _, p := range ps {
			items = append(items, scalar(p.String()))
		}
		list(k, items)
	}
	ports := func(k string, ps []uint16) {
		var items []*yaml.Node
		for _, p := range ps {
			items = append(items, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(int(p))})
		}
		list(k, items)
	}
	// ztunnel's field order.
	strs("namespaces", m.Namespaces)
	strs("notNamespaces", m.NotNamespaces)
	sas("serviceAccounts", m.ServiceAccounts)
	sas("notServiceAccounts", m.NotServiceAccounts)
	strs("principals", m.Principals)
	strs("notPrincipals", m.NotPrincipals)
	ips("sourceIps", m.SourceIPs)
	ips("notSourceIps", m.NotSourceIPs)
	ips("destinationIps", m.DestinationIPs)
	ips("notDestinationIps", m.NotDestinationIPs)
	ports("destinationPorts", m.DestinationPorts)
	ports("notDestinationPorts", m.NotDestinationPorts)
	for _, n := range out.Content {
		if n.Kind == yaml.SequenceNode && len(n.Content) > 0 && n.Content[0].Kind == yaml.ScalarNode && n.Content[0].Tag == "!!int" {
			n.Style = yaml.FlowStyle
		}
	}
	return out
}

// needsQuotes reports whether a tagged scalar must be quoted to read back
// as the same string: empty, surrounding spaces, or YAML indicators.
func needsQuotes(s string) bool {
	if s == "" || strings.TrimSpace(s) != s {
		return true
	}
	return strings.ContainsAny(s, ":#{}[],&*!|>'\"%@`\n\t") || strings.HasPrefix(s, "-") || strings.HasPrefix(s, "?")
}
