package identity

import "errors"

// Sentinel errors. Errors returned by this package wrap one of these where a
// caller may want to branch on the condition; use errors.Is.
var (
	// ErrInvalidPrincipal reports an Istio principal that cannot be turned
	// into a SPIFFE ID.
	ErrInvalidPrincipal = errors.New("identity: invalid principal")

	// ErrNotWorkloadID reports a SPIFFE ID that does not have the
	// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> shape
	// ztunnel requires of workload identities.
	ErrNotWorkloadID = errors.New("identity: not a workload ID")

	// ErrExpired reports that the only certificate at hand has expired (or
	// that none has been issued yet and the caller gave up waiting). A
	// Manager returns it instead of ever handing out an expired certificate.
	ErrExpired = errors.New("identity: no valid certificate")

	// ErrClosed reports a call on a Manager whose Run has returned, or on a
	// closed Source.
	ErrClosed = errors.New("identity: closed")

	// ErrPeerRejected reports a TLS peer whose certificate failed mesh
	// verification: unknown root, wrong key usage, expired or not yet
	// valid, no SPIFFE ID, wrong trust domain or unexpected identity. The
	// error text says which.
	ErrPeerRejected = errors.New("identity: peer certificate rejected")

	// ErrCSRRejected reports a certificate signing request the CA refuses
	// to sign: bad signature, unexpected or missing URI SAN, other SANs,
	// weak key. The error text says which.
	ErrCSRRejected = errors.New("identity: certificate request rejected")

	// ErrInvalidPEM reports PEM input that does not hold what it should.
	ErrInvalidPEM = errors.New("identity: invalid PEM")
)
