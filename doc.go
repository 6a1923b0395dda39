// Package meshblocks is the root of a library of composable building blocks
// for a sidecar-less ("ambient") service mesh in the style of Istio's ambient
// mode, plus example binaries that wire the blocks into a working mesh.
//
// This package holds no code; it documents the package map. Import the
// packages you need on their own:
//
//	identity    SPIFFE IDs, SVIDs and bundles, a local CA, a per-identity
//	            certificate manager with rotation, mutual-TLS configs.
//	hbone       HTTP/2 CONNECT tunnels over mutual TLS on port 15008,
//	            wire-compatible with Istio's ztunnel.
//	authz       Istio AuthorizationPolicy evaluation with ztunnel (L4) and
//	            waypoint (L7) semantics, plus CEL conditions.
//	route       weighted subset routing (VirtualService + DestinationRule,
//	            Gateway API routes) and endpoint load balancing.
//	proxy       the data paths: outbound, inbound HBONE, inbound plaintext,
//	            SOCKS5 and the L7 waypoint handler.
//	inpod       pod traffic redirection: network namespaces, iptables and
//	            nftables rules, the ZDS protocol.
//	xds         configuration distribution over delta xDS with
//	            Istio-compatible workload resources.
//
// Lower layers never import higher ones; internal/depcheck enforces the
// table:
//
//	identity < hbone, authz
//	hbone, authz, route < proxy
//	xds, route, authz < xds/istio
//
// The example binaries live in a separate module,
// github.com/meshblocks/meshblocks/examples, so that their dependencies
// (Prometheus, client-go, CLI libraries) never reach library users. Tests
// against Istio's own Go code live in the interop module.
package meshblocks
