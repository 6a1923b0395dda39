// Package gatewayapi converts Gateway API routes attached to Services
// (GAMMA: HTTPRoute, GRPCRoute, TCPRoute, TLSRoute with a parentRef of
// group "" kind Service) into route configurations for package route, the
// way Istio does for its waypoints.
//
// The types mirror the gateway.networking.k8s.io/v1 JSON schema (the
// upstream Go module is not used). Convert applies the CRD defaults users
// omit (PathPrefix "/", Exact header and query matches, weight 1, redirect
// 302), merges the routes of one namespace for one Service port, splits
// rules per match and sorts them by Istio's precedence: Exact > PathPrefix
// > RegularExpression, then longer path, then method, then more headers,
// then more query parameters, ties to the older route.
package gatewayapi
