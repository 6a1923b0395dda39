// Package authztest runs offline authorization test suites: YAML files of
// cases, each with the policies (multi-document YAML as kubectl-applied), the
// destination workload, one request and the expected decision.
//
//	cases:
//	  - name: sleep-may-call-web-api          # unique within the file
//	    layer: L4                              # L4 = destination ztunnel, L7 = waypoint
//	    rootNamespace: istio-system            # optional
//	    extensionProviders: [my-ext-authz]     # optional, meshConfig provider names
//	    policies: |
//	      apiVersion: security.istio.io/v1
//	      kind: AuthorizationPolicy
//	      ...
//	    workload: {namespace: test, labels: {app: web-api}, serviceAccount: web-api,
//	               services: [web-api], serviceEntries: [], waypoint: waypoint, waypointNamespace: test}
//	    request:
//	      source: {principal: cluster.local/ns/test/sa/sleep, ip: 10.0.0.5}  # no principal = plaintext
//	      destination: {ip: 10.0.0.9, port: 8080}
//	      remoteIp: 203.0.113.7                # L7: X-Forwarded-For client (default: source.ip)
//	      sni: api.example.com
//	      method: GET
//	      path: /api?x=1
//	      host: web-api.test.svc.cluster.local
//	      headers: {x-user: alice}
//	      auth: {principal: "issuer/subject", claims: {groups: [admin]}}
//	    expect: ALLOW                          # or DENY
//	    expectPolicy: test/allow-sleep         # optional: the deciding policy
//	    expectRule: 0                          # optional: its rule index
//	    expectError: "is not an IP"            # optional: policies must fail validation with this text
//
// Cases may also check PeerAuthentication (mTLS mode, as ztunnel applies it):
//
//	peerAuthentications: |                 # Istio PeerAuthentication YAML
//	  apiVersion: security.istio.io/v1
//	  kind: PeerAuthentication
//	  ...
//	expectMTLS: STRICT                     # optional: DISABLE, PERMISSIVE or STRICT
//	expectMTLSBy: test/default             # optional: deciding object, or "default"
//
// With peerAuthentications, an L4 request without a source principal to a
// STRICT port is denied whatever the policies say; layer defaults to L4, and
// a case with expectMTLS may omit expect.
//
// Unknown fields are errors. Top-level keys starting with "x-" are ignored,
// so they can hold YAML anchors shared by cases. A case whose policies fail
// validation fails unless it sets expectError (the decision is still checked:
// invalid policies deny their scope).
//
// From Go:
//
//	func TestPolicies(t *testing.T) { authztest.RunT(t, "testdata/policies.yaml") }
//
// From the command line, `meshctl authz test FILE...` calls RunFiles: one
// line per failing case, then "N passed, M failed"; exit status 1 when a case
// failed and 2 when a file is invalid.
package authztest
