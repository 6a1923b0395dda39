// Package route decides where a request goes inside an ambient mesh, the way
// an Istio waypoint (Envoy) does for L7 traffic and ztunnel does for L4
// traffic of Services without a waypoint.
//
// A Config (Services with endpoints, route configurations, destination
// policies) is validated and compiled by Build into an immutable *Table.
// Tables are published with a Holder and swapped atomically; Table.Pick is
// lock-free and does not allocate:
//
//	var tables route.Holder[route.Table]
//	if err := tables.Update(func() (*route.Table, error) { return route.Build(cfg) }); err != nil {
//		// invalid config: the previous table stays in force
//	}
//	res := tables.Load().Pick(&route.Request{Host: "reviews.default.svc.cluster.local", Port: 9080, Path: "/"}, rnd)
//	defer res.Done()
//
// Semantics follow Istio's waypoint: VirtualService rules in first-match
// order with plain string prefixes; Gateway API rules pre-sorted by
// precedence with segment prefixes (the route/gatewayapi adapter does the
// sorting); weighted destinations chosen per request with a random value
// modulo the sum of the weights (Envoy's weighted clusters, no
// normalisation); 404 when route configuration exists but nothing matches;
// 503 (VirtualService) or 500 (Gateway API) when a destination does not
// exist. Endpoints are balanced by least request (power of two choices),
// round robin, random or consistent hashing (Envoy's ring hash or Maglev
// table; the hash function differs from Envoy's, so a given key may land
// on another endpoint than in Envoy, with the same spread and the same
// behaviour when endpoints come and go). Locality is relative to the
// waypoint (Config.WaypointLocality): DestinationRule localityLbSetting
// (distribute, failover, failoverPriority; failover only with outlier
// detection, as in Istio), else the Service's trafficDistribution, else
// the mesh default. Services without a waypoint use ztunnel's STANDARD,
// STRICT, FAILOVER and PASSTHROUGH modes.
//
// The actions of a Result (rewrites, redirects, header operations, mirrors,
// faults, timeouts, retries) are data: the waypoint executes them with the
// helper methods of Result. Randomness is injected through Rand so results
// can be reproduced.
//
// The adapters route/istio and route/gatewayapi convert Kubernetes objects
// into a Config; route/routetest runs route test files.
package route
