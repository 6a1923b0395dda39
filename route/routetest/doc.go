// Package routetest loads and runs route test files: YAML files of cases,
// each with Istio / Gateway API configuration, Services with endpoints, one
// request and one expectation (destination, distribution, response or
// affinity) plus optional checks. The format is described in the route
// spec, section 0, with these additions:
//
//   - waypointLocality: {network, region, zone, subzone, node} on a case is
//     where the waypoint runs; locality load balancing in the waypoint
//     (DestinationRule localityLbSetting, trafficDistribution) is relative
//     to it. Without it there is no locality preference in the waypoint.
//   - services[].resolution: STATIC (default) or NONE, a ServiceEntry whose
//     connections pass through to the address dialled (ztunnel PASSTHROUGH;
//     the outcome's endpoint is that address).
//   - services[].ports[].targetPort may be a port name; only endpoints that
//     define it in endpoints[].ports ({name: number}) serve that port.
//   - endpoints[].networkGateway: the address of the gateway that reaches
//     the endpoint from other networks; with it, ip may be omitted and the
//     outcome's endpoint is the gateway address.
//
// Use it from go test:
//
//	func TestRoutes(t *testing.T) {
//		routetest.Test(t, "testdata/weights.yaml")
//	}
//
// Distributions are judged over at least 2,000 requests (10,000 when a
// share is below 5 %) with a tolerance of 0.05, tightened to five standard
// deviations for small shares ([Tolerance]); keys expected at 0 must get
// nothing. The random source is seeded from the case name, so runs are
// reproducible.
package routetest
