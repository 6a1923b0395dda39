// Package istio converts Istio AuthorizationPolicy objects
// (security.istio.io/v1 and v1beta1) into authz.Policy values.
//
// Parse reads multi-document YAML exactly as a user would kubectl-apply it:
// documents of other kinds are skipped, a v1 List is expanded, objects
// without metadata.namespace get Options.DefaultNamespace ("default"). The
// spec is decoded with the istio.io/api types through protojson, so unknown
// fields, values of the wrong type and unknown enum values are errors, as
// they are for the CRD; each is reported at its field path in the user's
// YAML (`spec.rules[0].to[0].operation.ports[0]: must be a string, got
// number 8080`), all of them at once.
//
// Annotations understood:
//
//	istio.io/dry-run: "true"            the policy is never enforced; read
//	                                    with strconv.ParseBool as istiod does
//	                                    ("1", "t", "TRUE" ... are true); any
//	                                    other value, or the annotation on an
//	                                    AUDIT or CUSTOM policy, is an error,
//	                                    as in Istio's admission
//	authz.meshblocks.io/cel: <expr>     a CEL condition ANDed into every rule
//	                                    (see package authz/cel)
//
// Every problem with a policy is an *authz.PolicyError naming namespace/name
// and the field path; decoding problems also wrap ErrDecode. A policy that
// fails to decode is still returned, with Err set, so that authz.New fails
// closed over its namespace instead of silently dropping it. A document that
// cannot be read as an object at all (broken YAML, a list instead of a
// mapping, an unreadable metadata.namespace) cannot be attributed to any
// namespace: it yields only a *DocumentError naming the document and its
// line, and a caller that enforces must treat that error as fatal.
//
//	pols, err := istio.Parse(yamlBytes, istio.Options{})
//	eng, verr := authz.New(authz.Config{}, pols)
package istio
