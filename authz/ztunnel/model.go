package ztunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// Scope says which workloads an Authorization applies to.
type Scope uint8

// The three scopes of istio.security.Authorization. The zero value is
// Global, as in the proto.
const (
	// Global policies apply to every workload of the mesh. istiod gives
	// this scope to policies without a selector in the root namespace.
	Global Scope = iota
	// Namespace policies apply to every workload in the policy's namespace.
	Namespace
	// WorkloadSelector policies apply to the workloads that list them in
	// their authorizationPolicies.
	WorkloadSelector
)

// String returns ztunnel's spelling: "Global", "Namespace" or
// "WorkloadSelector".
func (s Scope) String() string {
	switch s {
	case Global:
		return "Global"
	case Namespace:
		return "Namespace"
	case WorkloadSelector:
		return "WorkloadSelector"
	}
	return "Scope(" + strconv.Itoa(int(s)) + ")"
}

func parseScope(s string) (Scope, bool) {
	for _, v := range []Scope{Global, Namespace, WorkloadSelector} {
		if v.String() == s {
			return v, true
		}
	}
	return 0, false
}

// Action is what an Authorization does when one of its rules matches.
type Action uint8

// The two actions ztunnel enforces. The zero value is Allow, as in the
// proto.
const (
	Allow Action = iota
	Deny
)

// String returns ztunnel's spelling: "Allow" or "Deny".
func (a Action) String() string {
	switch a {
	case Allow:
		return "Allow"
	case Deny:
		return "Deny"
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

func parseAction(s string) (Action, bool) {
	switch s {
	case "Allow":
		return Allow, true
	case "Deny":
		return Deny, true
	}
	return 0, false
}

// Authorization is one L4 authorization policy in ztunnel's own form
// (istio.security.Authorization), the form istiod sends over WDS and
// ztunnel reads from the policies section of its local config file.
type Authorization struct {
	Name      string
	Namespace string
	Scope     Scope
	Action    Action
	// Rules are ORed; a policy without rules never matches.
	Rules []Rule
	// DryRun policies are never enforced.
	DryRun bool
}

// Key returns "namespace/name", the policy's resource name and the form a
// workload's authorizationPolicies use.
func (a *Authorization) Key() string { return a.Namespace + "/" + a.Name }

// Rule is one rule: its clauses are ANDed, and a rule without clauses
// matches every connection. (The proto calls it a Group of Rules; ztunnel's
// local config calls the same thing a rule of clauses.)
type Rule []Clause

// Clause is a list of alternatives: it matches when one of its matches
// does. A clause without matches is true; an empty Match never matches.
type Clause []Match

// Match is a conjunction of attribute tests: every populated field must
// hold. Within a field the values are ORed; a "Not" field holds when none
// of its values match. A Match with no field populated matches nothing.
type Match struct {
	Namespaces, NotNamespaces           []StringMatch
	ServiceAccounts, NotServiceAccounts []ServiceAccountMatch
	Principals, NotPrincipals           []StringMatch
	SourceIPs, NotSourceIPs             []netip.Prefix
	DestinationIPs, NotDestinationIPs   []netip.Prefix
	DestinationPorts                    []uint16
	NotDestinationPorts                 []uint16
}

// IsEmpty reports whether no field of m is populated (such a Match never
// matches).
func (m *Match) IsEmpty() bool {
	return len(m.Namespaces)+len(m.NotNamespaces)+len(m.ServiceAccounts)+len(m.NotServiceAccounts)+
		len(m.Principals)+len(m.NotPrincipals)+len(m.SourceIPs)+len(m.NotSourceIPs)+
		len(m.DestinationIPs)+len(m.NotDestinationIPs)+len(m.DestinationPorts)+len(m.NotDestinationPorts) == 0
}

// MatchKind is the form of a StringMatch.
type MatchKind uint8

// The four StringMatch forms.
const (
	Exact MatchKind = iota
	Prefix
	Suffix
	// Presence matches any non-empty value.
	Presence
)

// String returns the variant name ztunnel uses: "Exact", "Prefix",
// "Suffix" or "Presence".
func (k MatchKind) String() string {
	switch k {
	case Exact:
		return "Exact"
	case Prefix:
		return "Prefix"
	case Suffix:
		return "Suffix"
	case Presence:
		return "Presence"
	}
	return "MatchKind(" + strconv.Itoa(int(k)) + ")"
}

func parseMatchKind(s string) (MatchKind, bool) {
	for _, k := range []MatchKind{Exact, Prefix, Suffix, Presence} {
		if k.String() == s {
			return k, true
		}
	}
	return 0, false
}

// StringMatch is one string test. Value is unused for Presence.
type StringMatch struct {
	Kind  MatchKind
	Value string
}

// String renders the match as ztunnel's YAML does, e.g. `!Exact foo`.
func (s StringMatch) String() string {
	if s.Kind == Presence {
		return "!Presence []"
	}
	return "!" + s.Kind.String() + " " + strconv.Quote(s.Value)
}

// ServiceAccountMatch matches a peer identity's namespace and service
// account exactly, whatever its trust domain.
type ServiceAccountMatch struct {
	Namespace      string
	ServiceAccount string
}

// ErrInvalid is wrapped by every error about a policy or a binding that
// this package cannot read or convert.
var ErrInvalid = errors.New("ztunnel: invalid authorization")

// Error is one problem with a policy or binding: Path is the field at
// fault (for example "policies[2].rules[0][1][0].principals[3]") and Line,
// when known, its line in the YAML input.
type Error struct {
	Path string
	Line int
	Msg  string
}

// Error returns "ztunnel: path (line n): msg".
func (e *Error) Error() string {
	switch {
	case e.Path == "":
		return "ztunnel: " + e.Msg
	case e.Line > 0:
		return fmt.Sprintf("ztunnel: %s (line %d): %s", e.Path, e.Line, e.Msg)
	}
	return fmt.Sprintf("ztunnel: %s: %s", e.Path, e.Msg)
}

// Unwrap returns ErrInvalid.
func (e *Error) Unwrap() error { return ErrInvalid }

func errAt(path string, line int, format string, args ...any) *Error {
	return &Error{Path: path, Line: line, Msg: fmt.Sprintf(format, args...)}
}
