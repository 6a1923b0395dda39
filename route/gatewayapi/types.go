package gatewayapi

import "time"

// The types below mirror the JSON schema of gateway.networking.k8s.io/v1
// HTTPRoute, GRPCRoute, TCPRoute and TLSRoute, limited to the fields that
// matter for routing inside a mesh. Pointer fields are optional; the CRD
// defaults are applied by Convert, not by decoding.

// ObjectMeta is the part of Kubernetes metadata used here.
type ObjectMeta struct {
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace,omitempty"`
	CreationTimestamp time.Time         `json:"creationTimestamp,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	Generation        int64             `json:"generation,omitempty"`
}

// TypeMeta is apiVersion and kind.
type TypeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// ParentReference is spec.parentRefs[].
type ParentReference struct {
	Group       *string `json:"group,omitempty"`
	Kind        *string `json:"kind,omitempty"`
	Namespace   *string `json:"namespace,omitempty"`
	Name        string  `json:"name"`
	SectionName *string `json:"sectionName,omitempty"`
	Port        *int32  `json:"port,omitempty"`
}

// BackendObjectReference names a backend.
type BackendObjectReference struct {
	Group     *string `json:"group,omitempty"`
	Kind      *string `json:"kind,omitempty"`
	Name      string  `json:"name"`
	Namespace *string `json:"namespace,omitempty"`
	Port      *int32  `json:"port,omitempty"`
}

// BackendRef is a weighted backend.
type BackendRef struct {
	BackendObjectReference `json:",inline"`
	Weight                 *int32 `json:"weight,omitempty"`
}

// HTTPBackendRef is a backend with filters.
type HTTPBackendRef struct {
	BackendRef `json:",inline"`
	Filters    []HTTPRouteFilter `json:"filters,omitempty"`
}

// CommonRouteSpec holds the parent references.
type CommonRouteSpec struct {
	ParentRefs []ParentReference `json:"parentRefs,omitempty"`
}

// HTTPRoute is gateway.networking.k8s.io/v1 HTTPRoute.
type HTTPRoute struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta    `json:"metadata"`
	Spec     HTTPRouteSpec `json:"spec"`
	Status   any           `json:"status,omitempty"`
}

// HTTPRouteSpec is the HTTPRoute spec.
type HTTPRouteSpec struct {
	CommonRouteSpec `json:",inline"`
	Hostnames       []string        `json:"hostnames,omitempty"`
	Rules           []HTTPRouteRule `json:"rules,omitempty"`
}

// HTTPRouteRule is one rule.
type HTTPRouteRule struct {
	Name               *string            `json:"name,omitempty"`
	Matches            []HTTPRouteMatch   `json:"matches,omitempty"`
	Filters            []HTTPRouteFilter  `json:"filters,omitempty"`
	BackendRefs        []HTTPBackendRef   `json:"backendRefs,omitempty"`
	Timeouts           *HTTPRouteTimeouts `json:"timeouts,omitempty"`
	Retry              *HTTPRouteRetry    `json:"retry,omitempty"`
	SessionPersistence any                `json:"sessionPersistence,omitempty"`
}

// HTTPRouteTimeouts are durations in Gateway API format ("10s", "1m").
type HTTPRouteTimeouts struct {
	Request        *string `json:"request,omitempty"`
	BackendRequest *string `json:"backendRequest,omitempty"`
}

// HTTPRouteRetry is the retry stanza.
type HTTPRouteRetry struct {
	Codes    []int   `json:"codes,omitempty"`
	Attempts *int    `json:"attempts,omitempty"`
	Backoff  *string `json:"backoff,omitempty"`
}

// HTTPPathMatch matches the path.
type HTTPPathMatch struct {
	Type  *string `json:"type,omitempty"`
	Value *string `json:"value,omitempty"`
}

// HTTPHeaderMatch matches a header.
type HTTPHeaderMatch struct {
	Type  *string `json:"type,omitempty"`
	Name  string  `json:"name"`
	Value string  `json:"value"`
}

// HTTPQueryParamMatch matches a query parameter.
type HTTPQueryParamMatch struct {
	Type  *string `json:"type,omitempty"`
	Name  string  `json:"name"`
	Value string  `json:"value"`
}

// HTTPRouteMatch is one match.
type HTTPRouteMatch struct {
	Path        *HTTPPathMatch        `json:"path,omitempty"`
	Headers     []HTTPHeaderMatch     `json:"headers,omitempty"`
	QueryParams []HTTPQueryParamMatch `json:"queryParams,omitempty"`
	Method      *string               `json:"method,omitempty"`
}

// HTTPHeader is a header name and value.
type HTTPHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// HTTPHeaderFilter modifies headers.
type HTTPHeaderFilter struct {
	Set    []HTTPHeader `json:"set,omitempty"`
	Add    []HTTPHeader `json:"add,omitempty"`
	Remove []string     `json:"remove,omitempty"`
}

// HTTPPathModifier rewrites a path.
type HTTPPathModifier struct {
	Type               string  `json:"type"`
	ReplaceFullPath    *string `json:"replaceFullPath,omitempty"`
	ReplacePrefixMatch *string `json:"replacePrefixMatch,omitempty"`
}

// HTTPRequestRedirectFilter redirects.
type HTTPRequestRedirectFilter struct {
	Scheme     *string           `json:"scheme,omitempty"`
	Hostname   *string           `json:"hostname,omitempty"`
	Path       *HTTPPathModifier `json:"path,omitempty"`
	Port       *int32            `json:"port,omitempty"`
	StatusCode *int              `json:"statusCode,omitempty"`
}

// HTTPURLRewriteFilter rewrites host and path.
type HTTPURLRewriteFilter struct {
	Hostname *string           `json:"hostname,omitempty"`
	Path     *HTTPPathModifier `json:"path,omitempty"`
}

// Fraction is numerator/denominator (denominator defaults to 100).
type Fraction struct {
	Numerator   int32  `json:"numerator"`
	Denominator *int32 `json:"denominator,omitempty"`
}

// HTTPRequestMirrorFilter mirrors requests.
type HTTPRequestMirrorFilter struct {
	BackendRef BackendObjectReference `json:"backendRef"`
	Percent    *int32                 `json:"percent,omitempty"`
	Fraction   *Fraction              `json:"fraction,omitempty"`
}

// LocalObjectReference is an extension reference.
type LocalObjectReference struct {
	Group string `json:"group"`
	Kind  string `json:"kind"`
	Name  string `json:"name"`
}

// HTTPRouteFilter is one filter.
type HTTPRouteFilter struct {
	Type                   string                     `json:"type"`
	RequestHeaderModifier  *HTTPHeaderFilter          `json:"requestHeaderModifier,omitempty"`
	ResponseHeaderModifier *HTTPHeaderFilter          `json:"responseHeaderModifier,omitempty"`
	RequestMirror          *HTTPRequestMirrorFilter   `json:"requestMirror,omitempty"`
	RequestRedirect        *HTTPRequestRedirectFilter `json:"requestRedirect,omitempty"`
	URLRewrite             *HTTPURLRewriteFilter      `json:"urlRewrite,omitempty"`
	ExtensionRef           *LocalObjectReference      `json:"extensionRef,omitempty"`
	CORS                   any                        `json:"cors,omitempty"`
}

// GRPCRoute is gateway.networking.k8s.io/v1 GRPCRoute.
type GRPCRoute struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta    `json:"metadata"`
	Spec     GRPCRouteSpec `json:"spec"`
	Status   any           `json:"status,omitempty"`
}

// GRPCRouteSpec is the GRPCRoute spec.
type GRPCRouteSpec struct {
	CommonRouteSpec `json:",inline"`
	Hostnames       []string        `json:"hostnames,omitempty"`
	Rules           []GRPCRouteRule `json:"rules,omitempty"`
}

// GRPCRouteRule is one rule.
type GRPCRouteRule struct {
	Name        *string           `json:"name,omitempty"`
	Matches     []GRPCRouteMatch  `json:"matches,omitempty"`
	Filters     []HTTPRouteFilter `json:"filters,omitempty"`
	BackendRefs []HTTPBackendRef  `json:"backendRefs,omitempty"`
}

// GRPCRouteMatch is one match.
type GRPCRouteMatch struct {
	Method  *GRPCMethodMatch  `json:"method,omitempty"`
	Headers []HTTPHeaderMatch `json:"headers,omitempty"`
}

// GRPCMethodMatch matches service and method.
type GRPCMethodMatch struct {
	Type    *string `json:"type,omitempty"`
	Service *string `json:"service,omitempty"`
	Method  *string `json:"method,omitempty"`
}

// TCPRoute is gateway.networking.k8s.io TCPRoute.
type TCPRoute struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta  `json:"metadata"`
	Spec     L4RouteSpec `json:"spec"`
	Status   any         `json:"status,omitempty"`
}

// TLSRoute is gateway.networking.k8s.io TLSRoute.
type TLSRoute struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta  `json:"metadata"`
	Spec     L4RouteSpec `json:"spec"`
	Status   any         `json:"status,omitempty"`
}

// L4RouteSpec is the TCPRoute/TLSRoute spec.
type L4RouteSpec struct {
	CommonRouteSpec `json:",inline"`
	Hostnames       []string      `json:"hostnames,omitempty"`
	Rules           []L4RouteRule `json:"rules,omitempty"`
}

// L4RouteRule is one TCP/TLS rule.
type L4RouteRule struct {
	Name        *string      `json:"name,omitempty"`
	BackendRefs []BackendRef `json:"backendRefs,omitempty"`
}
