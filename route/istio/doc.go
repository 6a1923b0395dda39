// Package istio converts Istio networking objects (VirtualService and
// DestinationRule, networking.istio.io v1, v1beta1 and v1alpha3) into
// route configurations and policies for package route.
//
// Decode reads multi-document YAML; Convert validates with Istio's rules
// and reports every problem with its object and field path, for example
//
//	VirtualService default/reviews: spec.http[0].route[1].weight: must be >= 0
//
// Short host names resolve in the VirtualService's (or DestinationRule's)
// own namespace. Waypoint-specific selection (namespace restriction,
// sourceLabels blocks dropped, sourceNamespace compared with the waypoint's
// namespace) happens in route.Build.
package istio
