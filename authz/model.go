package authz

import (
	"net/netip"
)

// Action is what a policy does when one of its rules matches.
type Action uint8

// The four AuthorizationPolicy actions. The zero value is Allow, as in Istio.
const (
	Allow Action = iota
	Deny
	Audit
	Custom
)

// String returns the Istio spelling of the action.
func (a Action) String() string {
	switch a {
	case Allow:
		return "ALLOW"
	case Deny:
		return "DENY"
	case Audit:
		return "AUDIT"
	case Custom:
		return "CUSTOM"
	}
	return "UNKNOWN"
}

// Layer names the enforcement point a request is evaluated at.
type Layer uint8

const (
	// L4 is the destination node proxy (ztunnel semantics).
	L4 Layer = iota
	// L7 is the waypoint serving the destination Service (Envoy HTTP RBAC semantics).
	L7
)

// String returns "L4" or "L7".
func (l Layer) String() string {
	if l == L7 {
		return "L7"
	}
	return "L4"
}

// TargetRef names the object a policy is attached to at a waypoint, like the
// Istio targetRef/targetRefs fields.
type TargetRef struct {
	Group     string
	Kind      string
	Name      string
	Namespace string // optional; must equal the policy's namespace when set
}

// Policy is one authorization policy, independent of its wire format. Field
// names mirror the Istio AuthorizationPolicy so that validation errors can
// name the Istio field path.
type Policy struct {
	Namespace string
	Name      string

	// Selector is spec.selector.matchLabels. HasSelector reports whether
	// spec.selector was present at all (an empty selector differs from none).
	Selector    map[string]string
	HasSelector bool
	// TargetRefs holds spec.targetRefs; a legacy spec.targetRef is stored
	// here too (first), with LegacyTargetRef set.
	TargetRefs      []TargetRef
	LegacyTargetRef bool

	Action   Action
	Provider string // CUSTOM provider name
	DryRun   bool   // istio.io/dry-run: "true"

	// Rules is spec.rules. Nil or empty means the policy never matches.
	Rules []Rule

	// Extra holds additional conditions (for example CEL, see package
	// authz/cel) ANDed into every rule of the policy. They are evaluated at
	// both layers.
	Extra []Predicate

	// Err, when non-nil, marks a policy that could not be decoded or
	// converted; the engine treats it as invalid and denies its scope. A
	// policy with Err set and every other field (but Namespace and Name)
	// zero is taken as entirely undecoded: its attachment and action are
	// unknown, so it denies its whole namespace at both layers.
	Err error
}

// Rule is one entry of spec.rules: from AND to AND every when.
type Rule struct {
	From []*Source
	To   []*Operation
	When []Condition
}

// Source mirrors rules[].from[].source. A nil *Source is invalid.
type Source struct {
	Principals, NotPrincipals               []string
	RequestPrincipals, NotRequestPrincipals []string
	Namespaces, NotNamespaces               []string
	ServiceAccounts, NotServiceAccounts     []string
	IPBlocks, NotIPBlocks                   []string
	RemoteIPBlocks, NotRemoteIPBlocks       []string
	TrustDomains, NotTrustDomains           []string
}

// Operation mirrors rules[].to[].operation. A nil *Operation is invalid.
type Operation struct {
	Hosts, NotHosts     []string
	Ports, NotPorts     []string
	Methods, NotMethods []string
	Paths, NotPaths     []string
}

// Condition mirrors rules[].when[].
type Condition struct {
	Key       string
	Values    []string
	NotValues []string
}

// Predicate is an extension condition compiled ahead of time. Match must be
// pure and safe for concurrent use. An error counts as "no match" in ALLOW
// and AUDIT policies and as "match" in DENY and CUSTOM policies (fail closed).
type Predicate interface {
	Match(r *Request) (bool, error)
	String() string
}

// Workload describes the destination of a request.
type Workload struct {
	Namespace      string
	Labels         map[string]string
	ServiceAccount string
	// Services are the names of the Services (in Namespace) the request is
	// addressed to; used for targetRefs kind Service at L7.
	Services []string
	// ServiceEntries are ServiceEntry names (in Namespace) the request is
	// addressed to; used for targetRefs kind ServiceEntry at L7.
	ServiceEntries []string
	// Waypoint is the name of the waypoint Gateway (in WaypointNamespace, or
	// Namespace when empty) that serves the request at L7.
	Waypoint          string
	WaypointNamespace string
}

// JWT is the payload of an already-validated request JWT.
type JWT struct {
	// Principal is "<iss>/<sub>". requestPrincipals and
	// request.auth.principal match, as in Istio, the issuer and subject
	// separately: the iss and sub claims when Claims has them, otherwise
	// Principal split at its last '/'.
	Principal string
	// Audiences and Presenter default to the aud and azp claims.
	Audiences []string
	Presenter string
	// Claims is the decoded JSON payload (strings, []any, map[string]any, ...).
	Claims map[string]any
}

// Request is the input of one decision. Fields marked L7 are ignored at L4.
type Request struct {
	Layer    Layer
	Workload Workload

	// Peer is the peer mTLS identity without "spiffe://", e.g.
	// "cluster.local/ns/test/sa/sleep". Empty means plaintext.
	Peer     string
	SourceIP netip.Addr
	DestIP   netip.Addr
	DestPort uint16
	// SNI is the TLS server name (connection.sni), if any.
	SNI string

	// RemoteIP (L7) is the original client address from X-Forwarded-For or
	// the PROXY protocol; when invalid, SourceIP is used.
	RemoteIP netip.Addr
	// Method, Path (raw :path, query allowed) and Host (:authority verbatim). L7.
	Method, Path, Host string
	// Headers (L7) keyed by LOWER-CASE name.
	Headers map[string]string
	// Auth (L7) is the validated JWT, nil when there is none.
	Auth *JWT
}
