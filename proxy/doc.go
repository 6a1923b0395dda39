// Package proxy holds the node proxy's data paths, in the style of Istio's
// ztunnel: outbound (redirected app traffic on :15001, sent through HBONE
// tunnels), inbound HBONE (:15008), inbound plaintext (:15006), and a SOCKS5
// listener (:15080) so that applications can use the mesh without root or
// traffic redirection.
//
// The package composes identity, hbone, authz and route; it never imports
// inpod or xds. Network-namespace specifics reach it as plain functions (a
// listener, a dial function, an original-destination lookup) so that the
// same data path runs in a pod's namespace or on loopback.
package proxy
