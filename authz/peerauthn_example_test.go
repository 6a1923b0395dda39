package authz_test

import (
	"fmt"

	"github.com/meshblocks/meshblocks/authz"
)

// A STRICT namespace with one workload that keeps a plaintext metrics port.
func ExampleNewPeerAuthn() {
	pa, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{RootNamespace: "istio-system"}, []authz.PeerAuthentication{
		{Namespace: "shop", Name: "default", Mode: authz.MTLSStrict},
		{
			Namespace: "shop", Name: "web",
			Selector: map[string]string{"app": "web"}, HasSelector: true,
			PortModes: map[uint32]authz.MTLSMode{9090: authz.MTLSPermissive},
		},
	})
	if err != nil {
		panic(err)
	}
	w := &authz.Workload{Namespace: "shop", Labels: map[string]string{"app": "web"}}
	for _, port := range []uint16{8080, 9090} {
		d := pa.Mode(w, port)
		fmt.Println(port, d.AllowsPlaintext(), d)
	}
	// Output:
	// 8080 false STRICT by namespace PeerAuthentication shop/default
	// 9090 true PERMISSIVE by port PeerAuthentication shop/web portLevelMtls[9090]
}
