// Package spire is an identity.Source over the SPIFFE Workload API, as a
// SPIRE agent (or any Workload API server) serves it.
//
// It lives apart from package identity because the Workload API client
// brings gRPC and go-jose with it: a proxy that takes its certificates from
// a local CA or Istio's CA does not link them.
//
//	src, err := spire.New(ctx, spire.Config{Addr: "unix:///run/spire/agent.sock"})
//	if err != nil { ... }
//	defer src.Close()
//	tlsConf := identity.ClientTLSConfig(src, serverID)
package spire
