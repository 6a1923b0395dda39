package istio_test

import (
	"fmt"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
)

func ExampleParse() {
	const policies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-from-sleep, namespace: bookinfo}
spec:
  targetRefs:
  - {kind: Service, group: "", name: productpage}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/bookinfo/sa/sleep"]}
    to:
    - operation: {methods: ["GET"]}
`
	ps, err := istio.Parse([]byte(policies), istio.Options{})
	if err != nil {
		panic(err)
	}
	eng, err := authz.New(authz.Config{}, ps)
	if err != nil {
		panic(err)
	}
	for _, m := range []string{"GET", "POST"} {
		d := eng.Evaluate(&authz.Request{
			Layer:    authz.L7,
			Workload: authz.Workload{Namespace: "bookinfo", Services: []string{"productpage"}},
			Peer:     "cluster.local/ns/bookinfo/sa/sleep",
			Method:   m, Path: "/productpage",
		})
		fmt.Println(m, d)
	}
	// Output:
	// GET ALLOW by ALLOW bookinfo/get-from-sleep rules[0] (ALLOW policy matched)
	// POST DENY (no ALLOW policy matched)
}
