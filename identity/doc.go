// Package identity is the bottom layer of meshblocks: SPIFFE workload
// identities, the certificates that prove them, and the mutual TLS that
// checks them, as Istio's ambient mesh (ztunnel) uses them.
//
// # Identities
//
// A workload identity is a SPIFFE ID (go-spiffe's spiffeid.ID). Istio
// writes the same identity as a principal without the scheme:
// PrincipalFromID and IDFromPrincipal convert between
// "spiffe://cluster.local/ns/default/sa/sleep" and
// "cluster.local/ns/default/sa/sleep". ztunnel requires workload IDs to
// have exactly the shape spiffe://<td>/ns/<namespace>/sa/<service-account>;
// ParseWorkloadID checks that shape and gives the namespace and service
// account.
//
// # Seams
//
// Two small interfaces connect certificate producers to consumers:
//
//   - Source gives one identity's current certificate (an
//     *x509svid.SVID) and its trust bundle. Static, FileSource (PEM files
//     that are re-read when they change), a Manager's per-identity sources
//     and spire.Source (the SPIFFE Workload API, e.g. a SPIRE agent, in
//     subpackage identity/spire so that its gRPC client is linked only by
//     those who use it) implement it; FromX509Source and ToX509Source adapt to and from
//     go-spiffe's x509svid.Source and x509bundle.Source.
//   - Fetcher issues certificates for any identity on demand: the local CA
//     implements it, as will an Istio CA client.
//
// A Manager sits between the two: it keeps a certificate per identity,
// fetched through a Fetcher, renews it at half of its lifetime, backs off
// when the CA fails, never returns an expired certificate, and forgets
// identities nobody uses.
//
// # Local CA
//
// CA is the embedded default certificate authority: a generated
// self-signed root, or a root/intermediate loaded from Istio's "cacerts"
// files. It issues ECDSA P-256 workload certificates with exactly one URI
// SAN and EKU serverAuth+clientAuth (DefaultTTL unless configured), and
// signs CSRs for an identity the caller has authorised.
//
// # Mutual TLS
//
// ClientTLSConfig and ServerTLSConfig build *tls.Config values that
// interoperate with ztunnel on the HBONE port: TLS 1.3 only, ALPN "h2", no
// SNI, no host name checks, no session resumption. The client accepts a
// server whose chain verifies to the bundle and whose URI SAN is one of
// the expected identities; the server accepts a client whose chain
// verifies and whose SPIFFE ID is in its own trust domain, and PeerID
// reports the client's identity. The configs fetch the current
// certificate from their Source on every handshake, so rotation needs no
// restart.
//
// # Example
//
//	ca, err := identity.NewCA(identity.CAConfig{
//		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
//	})
//	if err != nil { ... }
//	certs, err := identity.NewManager(identity.ManagerConfig{Fetcher: ca})
//	if err != nil { ... }
//	go certs.Run(ctx)
//
//	server := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/server")
//	client := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
//	ln, _ := tls.Listen("tcp", "127.0.0.1:15008", identity.ServerTLSConfig(certs.Source(server)))
//	conn, _ := tls.Dial("tcp", ln.Addr().String(), identity.ClientTLSConfig(certs.Source(client), server))
//
// The package holds no global state, starts no goroutine outside the Run
// methods, and logs only through the *slog.Logger in a Config.
package identity
