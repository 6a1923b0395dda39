// Package cel adds CEL conditions to authorization policies, an extension
// that Istio does not have.
//
// # Attaching a condition
//
// A user attaches a condition with the annotation
//
//	metadata:
//	  annotations:
//	    authz.meshblocks.io/cel: 'request.method == "GET" && source.namespace == "test"'
//
// on an AuthorizationPolicy. The expression is ANDed into every rule of the
// policy, at both layers (at L4 the request.* values are empty). A policy
// without the annotation means exactly what it means in Istio, and an
// annotation cannot make a policy that Istio would accept mean anything
// else: Istio itself ignores the annotation. Because Istio ignores it, a
// policy using the annotation is more restrictive here (ALLOW) or matches
// less (DENY) than in Istio; that is the point of the extension.
//
// The variables are maps of dynamic values, so a field access has type dyn:
// the compiler rejects expressions whose type is known not to be bool, and a
// non-bool result at run time is an evaluation error (fail closed as below).
//
// The expression is compiled once, when the policy is loaded (see
// authz/istio). An expression that fails to parse or type-check makes the
// policy invalid, and an invalid policy denies everything in its scope
// (fail closed). At request time an evaluation error (for example indexing a
// header map with a missing key; use `"x" in request.headers` first) counts
// as "no match" in ALLOW/AUDIT policies and as "match" in DENY/CUSTOM
// policies.
//
// # Variables
//
//	layer                              "L4" or "L7"
//	source.principal                   peer identity, "cluster.local/ns/N/sa/S", "" for plaintext
//	source.namespace, .serviceAccount, .trustDomain, .ip
//	remote.ip                          X-Forwarded-For client, else source.ip
//	destination.ip, .port (int), .namespace, .serviceAccount, .labels (map)
//	connection.sni
//	request.method, .path (raw, with query), .host, .headers (lower-case keys)
//	request.auth.principal, .audiences (list), .presenter, .claims (map)
//
// Example:
//
//	c, _ := cel.NewCompiler()
//	cond, err := c.Compile(`request.path.startsWith("/api/") && "x-user" in request.headers`)
//	pol.Extra = append(pol.Extra, cond)
package cel
