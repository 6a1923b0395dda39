package authztest_test

import (
	"testing"

	"github.com/meshblocks/meshblocks/authz/authztest"
)

const seedSuite = `cases:
- name: sleep-to-productpage
  layer: L4
  policies: |
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: pp, namespace: bookinfo}
    spec:
      selector: {matchLabels: {app: productpage}}
      rules:
      - from: [{source: {principals: ["cluster.local/ns/bookinfo/sa/sleep"], ipBlocks: ["10.0.0.0/8"]}}]
        to: [{operation: {ports: ["9080"]}}]
  workload: {namespace: bookinfo, labels: {app: productpage}, serviceAccount: pp, services: [productpage]}
  request:
    source: {principal: cluster.local/ns/bookinfo/sa/sleep, ip: 10.0.0.5}
    destination: {ip: 10.0.0.9, port: 9080}
  expect: ALLOW
- name: get-only
  layer: L7
  policies: |
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: get, namespace: bookinfo}
    spec:
      targetRefs: [{kind: Service, group: "", name: productpage}]
      rules:
      - to: [{operation: {methods: [GET], paths: ["/api/*"]}}]
        when: [{key: "request.headers[x-user]", values: [alice]}]
  workload: {namespace: bookinfo, services: [productpage]}
  request: {source: {ip: 10.0.0.5}, destination: {ip: 10.0.0.9, port: 9080}, method: POST, path: /api/x, headers: {x-user: alice}}
  expect: DENY
- name: strict
  peerAuthentications: |
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: default, namespace: bookinfo}
    spec: {mtls: {mode: STRICT}}
  workload: {namespace: bookinfo}
  request: {source: {ip: 10.0.0.5}, destination: {ip: 10.0.0.9, port: 9080}}
  expectMTLS: STRICT
`

// FuzzLoad feeds arbitrary bytes to the suite parser and runs whatever
// loads: neither may panic, and a loaded suite yields one result per case.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(seedSuite))
	f.Add([]byte("cases: [{name: a, layer: L9}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := authztest.Load("fuzz.yaml", data)
		if err != nil {
			return
		}
		if got, want := len(s.Run()), len(s.Cases); got != want {
			t.Fatalf("Run returned %d results for %d cases", got, want)
		}
	})
}
