package istio_test

import (
	"fmt"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
)

func ExampleParsePeerAuthentications() {
	const yaml = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: web-metrics, namespace: shop}
spec:
  selector:
    matchLabels: {app: web}
  portLevelMtls:
    15020: {mode: PERMISSIVE}
`
	pas, err := istio.ParsePeerAuthentications([]byte(yaml), istio.Options{})
	if err != nil {
		panic(err)
	}
	pa, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{}, pas)
	if err != nil {
		panic(err)
	}
	web := &authz.Workload{Namespace: "shop", Labels: map[string]string{"app": "web"}}
	fmt.Println(pa.Mode(web, 8080))
	fmt.Println(pa.Mode(web, 15020))
	// Output:
	// STRICT by mesh PeerAuthentication istio-system/default
	// PERMISSIVE by port PeerAuthentication shop/web-metrics portLevelMtls[15020]
}
