package route

import (
	"time"
)

// Config is everything a Table is built from: the Services (with their
// endpoints), the route configurations attached to them and the destination
// policies (subsets, load balancing). Adapters (route/istio,
// route/gatewayapi) produce it from Kubernetes objects; it can also be
// written by hand. Build never modifies a Config.
type Config struct {
	// Domain is the cluster DNS suffix. If empty, "cluster.local" is used.
	Domain string
	// Services are the known Services with their endpoints.
	Services []Service
	// Routes are the route configurations (one per VirtualService, or one
	// per merged set of Gateway API routes), in no particular order: Build
	// orders them as Istio's waypoint does.
	Routes []RouteConfig
	// Policies are the destination policies (DestinationRules). For one host
	// the first policy in the slice wins.
	Policies []Policy
	// WaypointLocality is where the waypoint runs; locality-aware load
	// balancing inside the waypoint is relative to it. The zero value
	// disables locality preference.
	WaypointLocality Locality
}

// Protocol is the application protocol of a request or Service port.
type Protocol string

// Protocols.
const (
	HTTP Protocol = "http"
	GRPC Protocol = "grpc"
	TCP  Protocol = "tcp"
	TLS  Protocol = "tls"
)

// Service is a Kubernetes Service (or ServiceEntry) as the mesh sees it.
type Service struct {
	// Host is the fully qualified name, e.g. reviews.default.svc.cluster.local.
	Host string
	// Namespace of the Service. If empty it is taken from Host
	// (<name>.<namespace>.svc.<domain>).
	Namespace string
	// VIP is the cluster IP, optional.
	VIP string
	// Ports of the Service. At least one is required.
	Ports []Port
	// Endpoints back the Service.
	Endpoints []Endpoint
	// NoWaypoint means traffic is balanced by ztunnel alone (no L7 rules).
	NoWaypoint bool
	// WaypointNamespace is where the Service's waypoint lives. If empty, the
	// Service's own namespace (a namespace-scoped waypoint).
	WaypointNamespace string
	// TrafficDistribution is spec.trafficDistribution: "", PreferClose,
	// PreferSameZone or PreferSameNode.
	TrafficDistribution string
	// InternalTrafficPolicy is spec.internalTrafficPolicy: "" (Cluster) or Local.
	InternalTrafficPolicy string
	// PublishNotReadyAddresses makes ztunnel include unhealthy endpoints.
	PublishNotReadyAddresses bool
	// Passthrough is a ServiceEntry with resolution NONE: connections go
	// to the address the client dialled, no endpoint is chosen (ztunnel's
	// PASSTHROUGH mode).
	Passthrough bool
}

// Port is one Service port.
type Port struct {
	Port int
	Name string
	// TargetPort is the endpoints' port; zero means Port.
	TargetPort int
	// TargetPortName is a named target port: only endpoints that define a
	// port of that name (Endpoint.Ports) serve this Service port.
	TargetPortName string
	AppProtocol    string
}

// Locality is where a workload (or client) runs.
type Locality struct {
	Network, Region, Zone, Subzone, Node string
}

// Endpoint is one backend workload address of a Service.
type Endpoint struct {
	// IP is the workload address. It may be empty for a workload on
	// another network that is reachable only through NetworkGateway.
	IP     string
	Labels map[string]string
	// Ports are the workload's named ports (name -> number), for Service
	// ports with a TargetPortName.
	Ports map[string]int
	// NetworkGateway is the address of the gateway that reaches this
	// workload from other networks; optional.
	NetworkGateway string
	Locality
	// Unhealthy marks a not-ready endpoint.
	Unhealthy bool
	// Capacity weights ztunnel's choice. If zero, 1 is used.
	Capacity uint32
}

// RouteConfig is one VirtualService (or the VirtualService Istio generates
// from Gateway API routes): an ordered list of rules for some hosts.
type RouteConfig struct {
	// Kind and Name/Namespace identify the origin, used in errors.
	Kind, Name, Namespace string
	// Created orders configurations for the same host (older first).
	Created time.Time
	// GatewayAPI marks configuration generated from Gateway API routes; in
	// the waypoint's namespace it is ordered before VirtualServices.
	GatewayAPI bool
	// Hosts are FQDNs, possibly wildcards ("*.default.svc.cluster.local").
	Hosts []string
	// Gateways is the top-level gateways list; empty or containing "mesh"
	// applies to waypoints.
	Gateways []string
	// ExportTo limits visibility: "." (own namespace), "*" (all, the
	// default when empty), "~" (none) or namespace names. The waypoint must
	// see the configuration; it also orders configurations (private, then
	// exported to listed namespaces, then public).
	ExportTo []string
	HTTP     []HTTPRoute
	TLS      []L4Route
	TCP      []L4Route
}

// HTTPRoute is one rule: matches ORed, and an action.
type HTTPRoute struct {
	// Name is the rule name, optional.
	Name string
	// Field is the origin of the rule for messages, e.g. "spec.http[2]".
	Field string
	// Matches are ORed; none means match everything.
	Matches []Match

	// Exactly one of Backends, Redirect, DirectResponse (or none of them,
	// with NoBackendStatus answering every request).
	Backends       []Backend
	Redirect       *Redirect
	DirectResponse *DirectResponse

	// MissingBackendStatus answers requests whose backend does not exist
	// (no cluster). If zero, 503 (VirtualService); Gateway API uses 500.
	MissingBackendStatus int
	// NoBackendStatus, if non-zero, answers every request (a Gateway API
	// rule whose backend weights sum to 0).
	NoBackendStatus int

	Rewrite         *Rewrite
	RequestHeaders  HeaderOps
	ResponseHeaders HeaderOps
	Mirrors         []Mirror
	Fault           *Fault
	// Timeout is the route timeout; zero means none.
	Timeout time.Duration
	// Retry is the retry policy; nil means the mesh default.
	Retry *Retry
}

// PathKind says how a path is matched.
type PathKind int

// Path match kinds.
const (
	PathAny PathKind = iota
	// PathExact: the path without query equals Value.
	PathExact
	// PathPrefix: plain string prefix of the whole path (VirtualService).
	PathPrefix
	// PathSegmentPrefix: segment-wise prefix (Gateway API PathPrefix).
	PathSegmentPrefix
	// PathRegex: RE2 full match of the path without query.
	PathRegex
)

// StringKind says how a header, query parameter or other value is matched.
type StringKind int

// String match kinds.
const (
	// Present: the value exists (any content).
	Present StringKind = iota
	Exact
	Prefix
	Regex
)

// StringMatch matches one value.
type StringMatch struct {
	Kind  StringKind
	Value string
}

// HeaderMatch matches a request header (name case-insensitive).
type HeaderMatch struct {
	Name string
	StringMatch
	// Invert negates the match; a missing header is then treated as ""
	// (VirtualService withoutHeaders) unless Kind is Present.
	Invert bool
}

// QueryMatch matches the first value of a query parameter.
type QueryMatch struct {
	Name string
	StringMatch
}

// Match is one match block; all set fields must hold.
type Match struct {
	PathKind PathKind
	Path     string
	// IgnoreCase applies to exact and prefix paths only.
	IgnoreCase bool
	Headers    []HeaderMatch
	Query      []QueryMatch
	Method     *StringMatch
	Authority  *StringMatch
	Scheme     *StringMatch
	// Port, if non-zero, restricts the block to that Service port.
	Port int
	// SourceLabels blocks never match in a waypoint.
	SourceLabels map[string]string
	// SourceNamespace is compared with the waypoint's namespace.
	SourceNamespace string
	// Gateways must contain "mesh" when set.
	Gateways []string
}

// Backend is a weighted destination of a route.
type Backend struct {
	Host   string
	Subset string
	// Port of the destination Service; zero means its only port, else the
	// port the request arrived on.
	Port int
	// Weight is relative to the other backends of the route.
	Weight uint32
	// Invalid marks a reference that cannot resolve (e.g. unknown kind):
	// its share of requests gets the route's MissingBackendStatus.
	Invalid bool
	// Name is how the backend is reported, e.g. the Gateway API backendRef
	// name; optional.
	Name            string
	RequestHeaders  HeaderOps
	ResponseHeaders HeaderOps
}

// HeaderOps are header manipulations, applied set, add, remove in that order.
type HeaderOps struct {
	Set    []Header
	Add    []Header
	Remove []string
}

// Header is one header name/value pair.
type Header struct{ Name, Value string }

// RewriteKind selects how the path is rewritten.
type RewriteKind int

// Path rewrite kinds.
const (
	RewriteNone RewriteKind = iota
	// RewritePrefix replaces the matched prefix (or whole path for exact).
	RewritePrefix
	// RewriteFullPath replaces the path (query kept).
	RewriteFullPath
	// RewriteRegex replaces every match of Pattern with Substitution.
	RewriteRegex
	// RewriteSegmentPrefix is Gateway API ReplacePrefixMatch.
	RewriteSegmentPrefix
)

// Rewrite changes the request before it is forwarded.
type Rewrite struct {
	Kind         RewriteKind
	Value        string
	Pattern      string
	Substitution string
	// Authority replaces the Host header when non-empty.
	Authority string
}

// DerivePort selects how a redirect port is chosen when Port is zero.
type DerivePort int

// Redirect port derivations.
const (
	// PortUnchanged: VirtualService without derivePort keeps the authority as is.
	PortUnchanged DerivePort = iota
	// PortFromRequest: the Service port the request used (default ports dropped).
	PortFromRequest
	// PortFromProtocolDefault: no port (80/443 implied).
	PortFromProtocolDefault
)

// Redirect answers with a redirect.
type Redirect struct {
	// Status; if zero, 301.
	Status int
	Scheme string
	Host   string
	Port   int
	Derive DerivePort
	// Path replaces the whole path when FullPath is set, or the matched
	// prefix when PrefixRewrite is set.
	Path          string
	FullPath      bool
	PrefixRewrite bool
	// SegmentPrefix marks Gateway API ReplacePrefixMatch semantics.
	SegmentPrefix bool
}

// DirectResponse answers locally.
type DirectResponse struct {
	Status int
	Body   string
}

// Mirror sends a copy of a share of requests to another destination.
type Mirror struct {
	Host   string
	Subset string
	Port   int
	// PerMillion is the share mirrored, in millionths (1000000 = all).
	PerMillion uint32
}

// Fault injects delays or aborts.
type Fault struct {
	Delay           time.Duration
	DelayPerMillion uint32
	// AbortStatus (HTTP) or AbortGRPC (gRPC status, with HTTP 200).
	AbortStatus     int
	AbortGRPC       int
	AbortPerMillion uint32
	HasAbort        bool
}

// Retry is a retry policy.
type Retry struct {
	// Attempts is the number of retries (tries = 1 + Attempts).
	Attempts int
	// On is Envoy's retry_on list.
	On []string
	// Codes are retriable HTTP status codes.
	Codes []int
	// PerTryTimeout, if non-zero, limits each try.
	PerTryTimeout time.Duration
	// Backoff is the base retry interval; zero means Envoy's default (25ms).
	Backoff time.Duration
}

// DefaultRetry is the mesh default retry policy Istio applies when a route
// sets none: 2 retries on connect-failure, refused-stream, unavailable and
// cancelled; an upstream 503 is not retried.
func DefaultRetry() Retry {
	return Retry{Attempts: 2, On: []string{"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}}
}

// L4Route is a TCP or TLS rule.
type L4Route struct {
	Field string
	// Port restricts the rule to a Service port (zero: any).
	Port int
	// SNIHosts (TLS rules): used in a waypoint only if exactly [FQDN].
	SNIHosts []string
	// SourceLabels blocks never match in a waypoint.
	SourceLabels map[string]string
	Backends     []Backend
	// Reject refuses every connection (no valid backend).
	Reject bool
}

// LBKind is an endpoint load-balancing algorithm.
type LBKind int

// Load-balancing algorithms.
const (
	// LeastRequest (power of two choices) is the default.
	LeastRequest LBKind = iota
	RoundRobin
	Random
	Passthrough
	ConsistentHash
)

// HashKey says what a consistent hash is computed from.
type HashKey struct {
	Header   string
	Cookie   string
	SourceIP bool
	Query    string
}

// IsZero reports whether no key is set.
func (k HashKey) IsZero() bool { return k == HashKey{} }

// LB is a load-balancing policy (a DestinationRule loadBalancer).
type LB struct {
	Kind LBKind
	Hash HashKey
	// Maglev selects Envoy's Maglev table instead of the ring for
	// ConsistentHash.
	Maglev bool
	// RingSize is the minimum ring size of the ring hash (if zero, 1024) or
	// the Maglev table size, a prime (if zero, 65537).
	RingSize int
	// Locality is the localityLbSetting of this level; nil when unset (the
	// Service's trafficDistribution, then the mesh default apply).
	Locality *LocalityLB
}

// LocalityLB is a DestinationRule localityLbSetting. Locality is relative to
// the waypoint (Config.WaypointLocality). Distribute applies on its own;
// failover (the default region/zone/subzone order, Failover and
// FailoverPriority) applies only when outlier detection is configured for
// the destination, as in Istio (Envoy never leaves a priority level
// without it).
type LocalityLB struct {
	// Disabled is "enabled: false": no locality preference at all, not
	// even from the Service's trafficDistribution.
	Disabled bool
	// Distribute sets the share of traffic per locality; the first entry
	// whose From matches the waypoint applies.
	Distribute []LocalityDistribute
	// Failover names the region to fail over to when the waypoint's region
	// has no endpoint left; other regions come after it.
	Failover []RegionFailover
	// FailoverPriority orders endpoints by how many of these labels, in
	// order, have the same value as the waypoint (or the given value).
	FailoverPriority []FailoverLabel
}

// LocalityDistribute is one distribute entry: from a waypoint locality
// ("region/zone/subzone", "*" matches anything) to weighted localities.
type LocalityDistribute struct {
	From string
	To   []LocalityShare
}

// LocalityShare is the weight (percent) of the endpoints in the localities
// matching Locality.
type LocalityShare struct {
	Locality string
	Weight   uint32
}

// RegionFailover is one failover entry: from region From to region To.
type RegionFailover struct{ From, To string }

// FailoverLabel is one failoverPriority entry: a label name, optionally
// with the value to compare with instead of the waypoint's own. The
// topology labels (topology.istio.io/network, topology.kubernetes.io/region,
// topology.kubernetes.io/zone, topology.istio.io/subzone and
// kubernetes.io/hostname) are compared with the localities; other labels
// with the endpoints' labels and need a Value.
type FailoverLabel struct {
	Label    string
	Value    string
	HasValue bool
}

// Well-known topology labels.
const (
	LabelNetwork  = "topology.istio.io/network"
	LabelRegion   = "topology.kubernetes.io/region"
	LabelZone     = "topology.kubernetes.io/zone"
	LabelSubzone  = "topology.istio.io/subzone"
	LabelHostname = "kubernetes.io/hostname"
)

// TrafficPolicy is one level of a destination policy.
type TrafficPolicy struct {
	// LB is nil when not set at this level.
	LB *LB
	// OutlierDetection reports whether outlierDetection is set at this
	// level; locality failover needs it.
	OutlierDetection bool
	// Ports holds port-level overrides; each replaces the level's policy
	// wholesale for that port: a field it leaves unset is the default, not
	// the level's (Istio's MergeSubsetTrafficPolicy).
	Ports map[int]PortPolicy
}

// PortPolicy is a portLevelSettings entry.
type PortPolicy struct {
	LB               *LB
	OutlierDetection bool
}

// Subset is a named group of endpoints selected by labels. Its policy
// overrides the DestinationRule's field by field (loadBalancer and
// outlierDetection each replace the parent's when set).
type Subset struct {
	Name   string
	Labels map[string]string
	Policy TrafficPolicy
}

// Policy is a destination policy (DestinationRule) for one host.
type Policy struct {
	Kind, Name, Namespace string
	Host                  string
	Policy                TrafficPolicy
	Subsets               []Subset
}
