package istio_test

import (
	"errors"
	"fmt"

	secv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"

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
	// POST DENY (no ALLOW policy matched: bookinfo/get-from-sleep)
}

// Convert takes a spec already decoded with the istio.io/api types, for
// example from a Kubernetes informer, instead of YAML.
func ExampleConvert() {
	spec := &secv1beta1.AuthorizationPolicy{
		Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "ratings"}},
		Action:   secv1beta1.AuthorizationPolicy_DENY,
		Rules: []*secv1beta1.Rule{{
			To: []*secv1beta1.Rule_To{{Operation: &secv1beta1.Operation{NotPorts: []string{"9080"}}}},
		}},
	}
	p := istio.Convert("bookinfo", "ratings-only-9080", spec)
	eng, err := authz.New(authz.Config{}, []authz.Policy{p})
	if err != nil {
		panic(err)
	}
	ratings := authz.Workload{Namespace: "bookinfo", Labels: map[string]string{"app": "ratings"}}
	for _, port := range []uint16{9080, 22} {
		fmt.Println(port, eng.Evaluate(&authz.Request{Layer: authz.L4, Workload: ratings, DestPort: port}))
	}
	// Output:
	// 9080 ALLOW (no ALLOW policy applies)
	// 22 DENY by DENY bookinfo/ratings-only-9080 rules[0] (DENY policy matched)
}

// A file that cannot be read at all cannot be attributed to any namespace;
// enforcing callers must stop rather than run without it.
func ExampleDocumentError() {
	_, err := istio.Parse([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: x\n"), istio.Options{})
	var de *istio.DocumentError
	fmt.Println(errors.As(err, &de), de.Doc, de.Line)
	fmt.Println(err)
	// Output:
	// true 0 1
	// istio: document 0 (line 1): cannot decode: yaml: line 3: did not find expected ',' or '}'
}
