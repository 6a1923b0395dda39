// Package authztest runs offline authorization test suites: YAML files of
// cases, each with the policies (multi-document YAML as kubectl-applied), the
// destination workload, one request and the expected decision.
//
//	x-web: &web {namespace: test, labels: {app: web-api}}  # top-level x-* keys are ignored:
//	                                                       # they hold YAML anchors for cases
//	cases:
//	  - name: sleep-may-call-web-api          # unique across all files of one run
//	    layer: L4                              # L4 = destination ztunnel, L7 = waypoint
//	    rootNamespace: istio-system            # optional (default istio-system)
//	    extensionProviders: [my-ext-authz]     # optional: meshConfig.extensionProviders names;
//	                                           # CUSTOM policies naming others deny what they match
//	    policies: |                            # multi-document YAML, as kubectl-applied
//	      apiVersion: security.istio.io/v1
//	      kind: AuthorizationPolicy
//	      ...
//	    workload:                              # the destination
//	      namespace: test                      # required
//	      labels: {app: web-api}               # for selectors (L4)
//	      serviceAccount: web-api              # informational (CEL destination.serviceAccount)
//	      services: [web-api]                  # Services addressed (L7 targetRefs kind Service)
//	      serviceEntries: [api-ext]            # ServiceEntries addressed (kind ServiceEntry)
//	      waypoint: waypoint                   # the serving waypoint Gateway (kind Gateway)
//	      waypointNamespace: test              # its namespace (default: workload.namespace)
//	    request:
//	      source:
//	        principal: cluster.local/ns/test/sa/sleep  # peer identity; none = plaintext
//	        namespace: test                    # informational: identity comes from principal
//	        ip: 10.0.0.5                       # peer IP (ipBlocks, source.ip)
//	      destination: {ip: 10.0.0.9, port: 8080}
//	      remoteIp: 203.0.113.7                # L7: X-Forwarded-For client (default: source.ip)
//	      sni: api.example.com                 # connection.sni
//	      method: GET                          # L7 only from here on
//	      path: /api?x=1                       # raw :path, query included
//	      host: web-api.test.svc.cluster.local # :authority verbatim
//	      headers: {x-user: alice}             # names are case-insensitive
//	      auth:                                # an already-validated JWT
//	        principal: "issuer/subject"        # default: claims iss + "/" + sub
//	        audiences: [web]                   # default: claims aud
//	        presenter: my-client               # default: claims azp
//	        claims: {iss: issuer, sub: subject, groups: [admin]}
//	    expect: ALLOW                          # or DENY
//	    expectPolicy: test/allow-sleep         # optional: the deciding policy (ns/name)
//	    expectRule: 0                          # optional: its rule index
//	    expectError: "is not an IP"            # optional: the policies must fail to load with
//	                                           # an error containing this text
//
// requestPrincipals match the JWT's issuer and subject separately, as in
// Istio: the iss and sub claims when given, otherwise auth.principal split
// at its last '/'.
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
// so they can hold YAML anchors shared by cases. Case names must be unique
// across all the files of one run. A case whose policies fail to load fails
// unless it sets expectError; the decision is still checked: invalid
// policies deny their scope, and a policy document that cannot be read at
// all denies the whole request.
//
// From Go:
//
//	func TestPolicies(t *testing.T) { authztest.RunT(t, "testdata/policies.yaml") }
//
// From the command line, `meshctl authz test FILE...` calls RunFiles: one
// line per failing case, then "N passed, M failed"; exit status 1 when a case
// failed and 2 when a file is invalid.
package authztest
