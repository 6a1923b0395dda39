package authztest_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/meshblocks/meshblocks/authz/authztest"
)

func ExampleRunFiles() {
	code := authztest.RunFiles(os.Stdout, "../testdata/seed.yaml")
	fmt.Println("exit status", code)
	// Output:
	// 18 passed, 0 failed
	// exit status 0
}

func ExampleCase_Evaluate() {
	c := authztest.Case{
		Name:  "get-only-from-sleep",
		Layer: "L7",
		Policies: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: test}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/test/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"]}}]
`,
		Workload: authztest.Workload{Namespace: "test", Services: []string{"web"}},
	}
	c.Request.Source.Principal = "cluster.local/ns/test/sa/sleep"
	c.Request.Method = "POST"
	d, err := c.Evaluate()
	fmt.Println(d, err)
	// Output:
	// DENY (no ALLOW policy matched: test/web) <nil>
}

func ExampleLoad() {
	suite, err := authztest.Load("inline.yaml", []byte(`
x-allow-sleep: &allow-sleep |
  apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: allow-sleep, namespace: test}
  spec:
    rules:
    - from:
      - source: {principals: ["cluster.local/ns/test/sa/sleep"]}
cases:
  - name: sleep-allowed
    layer: L4
    policies: *allow-sleep
    workload: {namespace: test}
    request: {source: {principal: cluster.local/ns/test/sa/sleep}, destination: {port: 8080}}
    expect: ALLOW
  - name: curl-denied
    layer: L4
    policies: *allow-sleep
    workload: {namespace: test}
    request: {source: {principal: cluster.local/ns/test/sa/curl}, destination: {port: 8080}}
    expect: ALLOW # wrong on purpose
`))
	if err != nil {
		panic(err)
	}
	for _, r := range suite.Run() {
		fmt.Printf("%s: %q\n", r.Case.Name, r.Failure)
	}
	// Output:
	// sleep-allowed: ""
	// curl-denied: "got DENY (no ALLOW policy matched: test/allow-sleep), want ALLOW"
}

func ExampleParseRequest() {
	c, err := authztest.ParseRequest("request.yaml", []byte(`
layer: L7
policies: |
  apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: get-only, namespace: test}
  spec:
    targetRefs: [{kind: Service, group: "", name: web}]
    rules:
    - to:
      - operation: {methods: ["GET"]}
workload: {namespace: test, services: [web]}
request: {method: DELETE, path: /items/7}
`))
	if err != nil {
		panic(err)
	}
	d, err := c.Evaluate()
	fmt.Println(d, err)
	// Output:
	// DENY (no ALLOW policy matched: test/get-only) <nil>
}

// RunT runs suites under go test, one subtest per file and case:
//
//	func TestPolicies(t *testing.T) {
//		authztest.RunT(t, "testdata/policies.yaml", "testdata/more.yaml")
//	}
func ExampleRunT() {
	test := func(t *testing.T) {
		authztest.RunT(t, "../testdata/seed.yaml")
	}
	_ = test
}
