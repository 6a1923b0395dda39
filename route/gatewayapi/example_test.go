package gatewayapi_test

import (
	"fmt"

	"github.com/meshblocks/meshblocks/route/gatewayapi"
)

func ExampleConvert() {
	objs, err := gatewayapi.Decode([]byte(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: Exact, value: /admin}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: admin.example.com}
`))
	if err != nil {
		panic(err)
	}
	rcs, err := gatewayapi.Convert(objs, "")
	if err != nil {
		panic(err)
	}
	for _, hr := range rcs[0].HTTP {
		m := hr.Matches[0]
		switch {
		case hr.Redirect != nil:
			fmt.Printf("%s -> redirect %d\n", m.Path, hr.Redirect.Status)
		default:
			fmt.Printf("%s -> %s\n", m.Path, hr.Backends[0].Host)
		}
	}
	// Output:
	// /admin -> redirect 302
	// / -> echo-v1.default.svc.cluster.local
}
