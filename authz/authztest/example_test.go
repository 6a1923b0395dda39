package authztest_test

import (
	"fmt"
	"os"

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
	// DENY (no ALLOW policy matched) <nil>
}
