package identity

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// PrincipalFromID returns the Istio principal for a SPIFFE ID: the ID without
// its "spiffe://" scheme, e.g. "cluster.local/ns/default/sa/sleep". This is
// the form AuthorizationPolicy `principals` and `source.principal` use. The
// zero ID yields "".
func PrincipalFromID(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.TrustDomain().Name() + id.Path()
}

// IDFromPrincipal parses an Istio principal such as
// "cluster.local/ns/default/sa/sleep" into a SPIFFE ID. The principal is the
// trust domain followed by a non-empty path; it must not carry the
// "spiffe://" scheme (use spiffeid.FromString for that) and must not contain
// the wildcards AuthorizationPolicy allows in its match fields. The error
// names what is wrong and wraps ErrInvalidPrincipal.
func IDFromPrincipal(p string) (spiffeid.ID, error) {
	bad := func(format string, args ...any) (spiffeid.ID, error) {
		return spiffeid.ID{}, fmt.Errorf("%w %q: %s", ErrInvalidPrincipal, p, fmt.Sprintf(format, args...))
	}
	switch {
	case p == "":
		return bad("empty")
	case strings.Contains(p, "://"):
		return bad("has a URI scheme; a principal is <trust-domain>/<path> without \"spiffe://\"")
	case strings.Contains(p, "*"):
		return bad("contains a wildcard '*' at byte %d; only exact principals name an identity", strings.Index(p, "*"))
	}
	tdName, path, ok := strings.Cut(p, "/")
	if tdName == "" {
		return bad("trust domain is empty")
	}
	if !ok || path == "" {
		return bad("no path after trust domain %q; want e.g. %s/ns/<namespace>/sa/<service-account>", tdName, tdName)
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return bad("trust domain %q: %v", tdName, err)
	}
	id, err := spiffeid.FromPath(td, "/"+path)
	if err != nil {
		return bad("path %q: %v", "/"+path, err)
	}
	return id, nil
}

// WorkloadID is a SPIFFE ID of the shape ztunnel requires for workload
// identities: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>,
// exactly five path segments with the literal "ns" and "sa". The zero value
// is not a valid ID.
type WorkloadID struct {
	id     spiffeid.ID
	ns, sa string
}

// NewWorkloadID builds the workload ID for a namespace and service account.
func NewWorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (WorkloadID, error) {
	if td.IsZero() {
		return WorkloadID{}, fmt.Errorf("%w: trust domain is empty", ErrNotWorkloadID)
	}
	if namespace == "" {
		return WorkloadID{}, fmt.Errorf("%w: namespace is empty", ErrNotWorkloadID)
	}
	if serviceAccount == "" {
		return WorkloadID{}, fmt.Errorf("%w: service account is empty", ErrNotWorkloadID)
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return WorkloadID{}, fmt.Errorf("%w: namespace %q, service account %q: %v", ErrNotWorkloadID, namespace, serviceAccount, err)
	}
	return WorkloadID{id: id, ns: namespace, sa: serviceAccount}, nil
}

// ParseWorkloadID parses "spiffe://<td>/ns/<namespace>/sa/<service-account>".
// Errors name the segment at fault and wrap ErrNotWorkloadID.
func ParseWorkloadID(s string) (WorkloadID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return WorkloadID{}, fmt.Errorf("%w: %q: %v", ErrNotWorkloadID, s, err)
	}
	return WorkloadIDFromID(id)
}

// WorkloadIDFromID checks that a SPIFFE ID has the workload shape.
func WorkloadIDFromID(id spiffeid.ID) (WorkloadID, error) {
	if id.IsZero() {
		return WorkloadID{}, fmt.Errorf("%w: the SPIFFE ID is empty", ErrNotWorkloadID)
	}
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	bad := func(format string, args ...any) (WorkloadID, error) {
		return WorkloadID{}, fmt.Errorf("%w: %q: %s; want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
			ErrNotWorkloadID, id.String(), fmt.Sprintf(format, args...))
	}
	switch {
	case id.Path() == "":
		return bad("the path is empty")
	case len(segs) != 4:
		return bad("the path has %d segments, want 4", len(segs))
	case segs[0] != "ns":
		return bad("path segment 1 is %q, want \"ns\"", segs[0])
	case segs[2] != "sa":
		return bad("path segment 3 is %q, want \"sa\"", segs[2])
	}
	// spiffeid already rejects empty segments, so both names are non-empty.
	return WorkloadID{id: id, ns: segs[1], sa: segs[3]}, nil
}

// ID returns the SPIFFE ID.
func (w WorkloadID) ID() spiffeid.ID { return w.id }

// TrustDomain returns the trust domain.
func (w WorkloadID) TrustDomain() spiffeid.TrustDomain { return w.id.TrustDomain() }

// Namespace returns the Kubernetes namespace.
func (w WorkloadID) Namespace() string { return w.ns }

// ServiceAccount returns the Kubernetes service account.
func (w WorkloadID) ServiceAccount() string { return w.sa }

// Principal returns the Istio principal, "<td>/ns/<namespace>/sa/<sa>".
func (w WorkloadID) Principal() string { return PrincipalFromID(w.id) }

// String returns the SPIFFE ID as a URI string.
func (w WorkloadID) String() string { return w.id.String() }

// IsZero reports whether w is the zero value.
func (w WorkloadID) IsZero() bool { return w.id.IsZero() }
