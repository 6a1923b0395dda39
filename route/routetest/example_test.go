package routetest_test

import (
	"fmt"

	"github.com/meshblocks/meshblocks/route/routetest"
)

func ExampleCase_Explain() {
	f, err := routetest.Parse([]byte(`
cases:
- name: redirect
  source: route.md §3.5
  config: |
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: web, namespace: default}
    spec:
      hosts: [web]
      http:
      - match: [{uri: {prefix: /old}}]
        redirect: {prefixRewrite: /new}
  services:
  - host: web.default.svc.cluster.local
    port: 80
    endpoints: [{ip: 10.0.0.1}]
  request: {host: web.default.svc.cluster.local, path: /old/page}
  expect:
    response: {status: 301}
`))
	if err != nil {
		panic(err)
	}
	out, err := f.Cases[0].Explain()
	if err != nil {
		panic(err)
	}
	fmt.Print(out)
	fmt.Println(f.Cases[0].Run())
	// Output:
	// request:     GET web.default.svc.cluster.local/old/page (port 80)
	// rule:        VirtualService default/web spec.http[0]
	// outcome:     redirect 301 to http://web.default.svc.cluster.local/new/page
	// <nil>
}
