// Package istio converts Istio AuthorizationPolicy objects
// (security.istio.io/v1 and v1beta1) into authz.Policy values.
//
// Parse reads multi-document YAML exactly as a user would kubectl-apply it:
// documents of other kinds are skipped, a v1 List is expanded, objects
// without metadata.namespace get Options.DefaultNamespace ("default"). The
// spec is decoded with the istio.io/api types through protojson, so unknown
// fields and unknown enum values are errors, as they are for the CRD.
//
// Annotations understood:
//
//	istio.io/dry-run: "true"            the policy is never enforced
//	authz.meshblocks.io/cel: <expr>     a CEL condition ANDed into every rule
//	                                    (see package authz/cel)
//
// Every problem is an *authz.PolicyError naming namespace/name and the field
// path. A policy that fails to decode is still returned, with Err set, so that
// authz.New fails closed over its namespace instead of silently dropping it.
//
//	pols, err := istio.Parse(yamlBytes, istio.Options{})
//	eng, verr := authz.New(authz.Config{}, pols)
package istio
