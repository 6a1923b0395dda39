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

// A split measured through a running waypoint, judged as route test files
// judge one: 80/19/1 over 2,000 requests.
func ExampleTolerance() {
	n := 2000
	observed := map[string]int{"v1": 1617, "v2": 364, "v3": 19}
	for _, s := range []struct {
		subset string
		want   float64
	}{{"v1", 0.80}, {"v2", 0.19}, {"v3", 0.01}} {
		got := float64(observed[s.subset]) / float64(n)
		tol := routetest.Tolerance(s.want, n)
		fmt.Printf("%s %.2f%% (want %.0f%% ± %.2f): %v\n", s.subset, 100*got, 100*s.want, 100*tol, got >= s.want-tol && got <= s.want+tol)
	}
	// Output:
	// v1 80.85% (want 80% ± 4.52): true
	// v2 18.20% (want 19% ± 4.44): true
	// v3 0.95% (want 1% ± 1.16): true
}
