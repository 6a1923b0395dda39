package routetest_test

import (
	"testing"

	"github.com/meshblocks/meshblocks/route/routetest"
)

// Compact seeds: whole corpus files make the fuzzer spend its time
// minimizing, not exploring.
const (
	seedVS = `cases:
- name: split
  source: fuzz seed
  config: |
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: r, namespace: shop}
    spec:
      hosts: [r]
      http:
      - match: [{uri: {prefix: /v2}, headers: {x-user: {exact: bob}}}]
        route: [{destination: {host: r, subset: v2}}]
      - route:
        - {destination: {host: r, subset: v1}, weight: 80}
        - {destination: {host: r, subset: v2}, weight: 20}
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: r, namespace: shop}
    spec:
      host: r
      subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
  services:
  - host: r.shop.svc.cluster.local
    port: 80
    endpoints: [{ip: 10.0.0.1, labels: {version: v1}}, {ip: 10.0.0.2, labels: {version: v2}}]
  request: {host: r.shop.svc.cluster.local, port: 80, path: /v2/x, headers: {x-user: bob}}
  expect:
    destination: {host: r.shop.svc.cluster.local, subset: v2}
`
	seedHTTPRoute = `cases:
- name: gamma
  source: fuzz seed
  config: |
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: r, namespace: shop}
    spec:
      parentRefs: [{group: "", kind: Service, name: r, port: 80}]
      rules:
      - matches: [{path: {type: PathPrefix, value: /a}}]
        filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /b}}}]
      - backendRefs: [{name: r, port: 80, weight: 9}, {name: r-v2, port: 80, weight: 1}]
  services:
  - {host: r.shop.svc.cluster.local, port: 80, endpoints: [{ip: 10.0.0.1}]}
  - {host: r-v2.shop.svc.cluster.local, port: 80, endpoints: [{ip: 10.0.0.2}]}
  request: {host: r.shop.svc.cluster.local, port: 80, path: /a}
  expect: {response: {status: 301}}
`
)

// FuzzParse feeds arbitrary bytes to the route test-file parser and builds
// and explains every case that parses: none of it may panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte(seedVS))
	f.Add([]byte(seedHTTPRoute))
	f.Add([]byte("cases: [{name: a, services: [{host: a.b.svc.cluster.local, port: 80}], request: {host: a.b.svc.cluster.local, port: 80}, source: s, expect: {destination: {host: a.b.svc.cluster.local}}}]"))
	f.Add([]byte("cases: [{name: z, waypointLocality: {region: r1}, services: [{host: a.b.svc.cluster.local, vip: 240.0.0.1, resolution: NONE, waypoint: false, ports: [{port: 80, targetPort: web}], endpoints: [{networkGateway: 1.2.3.4, network: n2, ports: {web: 8080}}]}], request: {host: 240.0.0.1, port: 80, protocol: tcp}, source: s, expect: {destination: {host: 240.0.0.1}}}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := routetest.Parse(data)
		if err != nil {
			return
		}
		for i := range file.Cases {
			c := &file.Cases[i]
			if _, err := c.Build(); err != nil {
				continue
			}
			_, _ = c.Explain()
		}
	})
}
