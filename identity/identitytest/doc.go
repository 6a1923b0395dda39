// Package identitytest provides an in-memory certificate authority and
// certificate sources for tests of packages that use identity: real
// ECDSA P-256 certificates with SPIFFE IDs, issued in memory, plus helpers
// that issue deliberately broken certificates for negative tests.
//
//	ca := identitytest.NewCA(t, "cluster.local")
//	server := ca.Source(t, "ns/default/sa/server")
//	client := ca.Source(t, "ns/default/sa/client")
//	srvConf := identity.ServerTLSConfig(server)
//	cliConf := identity.ClientTLSConfig(client, ca.ID("ns/default/sa/server"))
//
// CA.Template and CA.Issue make certificates with any defect (expired, not
// yet valid, no URI SAN, wrong key usage, foreign trust domain), and
// CA.SourceFor serves them without the checks identity.NewStatic makes.
// CA.IssueIntermediate gives a CA that signs through an intermediate.
// Everything lives in memory; nothing is written to disk.
package identitytest
