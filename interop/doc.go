// Package interop tests meshblocks against Istio's own Go code: our HBONE
// client against istio.io/istio/pkg/hbone's server and back, our
// certificates through Istio's SPIFFE and PKI helpers, and our hand-encoded
// ZDS messages against istio.io/istio/pkg/zdsapi. It is a separate module
// so that istio.io/istio never enters the library's dependencies.
package interop
