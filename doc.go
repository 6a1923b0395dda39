// Package meshblocks is the root of a library of composable building blocks
// for a sidecar-less ("ambient") service mesh in the style of Istio's ambient
// mode, plus example binaries that wire the blocks into a working mesh.
//
// This package holds no code; it documents the package map. Import the
// packages you need on their own:
//
//	identity    SPIFFE IDs, SVIDs and bundles, a local CA, a per-identity
//	            certificate manager with rotation, mutual-TLS configs
//	            (identity/spire: a Workload API source; identity/identitytest:
//	            an in-memory CA for tests).
//	hbone       HTTP/2 CONNECT tunnels over mutual TLS on port 15008,
//	            wire-compatible with Istio's ztunnel.
//	authz       Istio AuthorizationPolicy evaluation with ztunnel (L4) and
//	            waypoint (L7) semantics (authz/cel: CEL conditions;
//	            authz/istio: the CRD adapter; authz/ztunnel: ztunnel's own
//	            policy format; authz/authztest: offline policy suites).
//	route       weighted subset routing (VirtualService + DestinationRule,
//	            Gateway API routes) and endpoint load balancing
//	            (route/istio, route/gatewayapi, route/routetest).
//	proxy       the node proxy's data paths: outbound, inbound HBONE,
//	            inbound plaintext and SOCKS5, with access logs and metric
//	            hooks; and the L7 waypoint (proxy/waypointconfig: its
//	            rules from Istio YAML).
//	inpod       network-namespace handles, sockets inside a pod's
//	            namespace, packet marks and original destinations; the
//	            in-pod iptables/nftables rules and the ZDS protocol.
//
// Planned and not built yet: xds (configuration over delta xDS with
// Istio-compatible workload resources) and the controller that would feed
// the proxies from Kubernetes over it. Until then, examples/demo (the local
// mesh demo: go run ./examples/demo) converts Istio YAML in process and
// swaps the result into its proxies.
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
