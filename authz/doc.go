// Package authz is a pure, deterministic evaluator for Istio-style
// AuthorizationPolicy at the two ambient enforcement points:
//
//   - L4, the destination ztunnel: policies attach by namespace, workload
//     selector and root namespace; only identity, IP and port attributes
//     exist; ALLOW rules that use any HTTP attribute are dropped, and the
//     HTTP parts of DENY rules never match (spec §4).
//   - L7, the waypoint serving a Service: only policies with targetRefs
//     attach; methods, paths (including {*}/{**} templates), hosts, headers,
//     JWT principals, audiences, presenters and claims are enforced (spec §5).
//
// A Policy is independent of its wire format (package authz/istio decodes
// the Istio YAML users already run). New validates, compiles and indexes
// policies; Evaluate decides one Request in the order CUSTOM, DENY, "no
// ALLOW policy => allow", ALLOW, otherwise deny, and explains the decision
// with the deciding policy and rule index; a default deny names the ALLOW
// policies that applied but did not match (Decision.Unmatched). AUDIT and
// dry-run policies never change a decision.
//
// Evaluation does no I/O, reads no clock, starts no goroutine and, at L4,
// allocates nothing. Policies are indexed by namespace, by the first label
// of their selector and by targetRef, so a decision only visits the policies
// that can attach to the destination.
//
// Invalid policies fail closed: New reports every problem as a *PolicyError
// naming the object and Istio field path (for example
// `test/bad: spec.rules[0].from[1].source.ipBlocks[2]: "10.0.0.300/8" is not
// an IP or CIDR`), and the invalid policy denies every request in the scope
// it would have applied to. When that scope cannot be known (the policy
// could not be decoded, sets both a selector and targetRefs, has a selector
// that selects nothing, or has no targetRef that can attach anywhere), the
// scope is the policy's whole namespace, and everything for a policy in the
// root namespace. An invalid policy denies only at the layers that would
// enforce its action: AUDIT never changes a decision, and ztunnel never
// receives CUSTOM (or AUDIT) policies, so an invalid CUSTOM policy fails
// closed only at the waypoint. A policy whose action could not be decoded
// fails closed at both layers.
//
// Extension conditions (CEL, package authz/cel) plug in as Predicates on
// Policy.Extra.
//
//	eng, err := authz.New(authz.Config{RootNamespace: "istio-system"}, policies)
//	d := eng.Evaluate(&authz.Request{
//		Layer:    authz.L4,
//		Workload: authz.Workload{Namespace: "test", Labels: map[string]string{"app": "web"}},
//		Peer:     "cluster.local/ns/test/sa/sleep",
//		DestPort: 8080,
//	})
//	fmt.Println(d) // ALLOW by ALLOW test/web rules[0] (ALLOW policy matched)
package authz
