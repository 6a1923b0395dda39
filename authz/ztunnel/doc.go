// Package ztunnel is ztunnel's own L4 authorization format,
// istio.security.Authorization: what istiod sends ztunnel over WDS and
// what ztunnel reads from the policies section of its local config file
// (LOCAL_XDS_PATH). ztunnel never sees AuthorizationPolicy objects; istiod
// converts them, and this package does the same conversions offline.
//
// An Authorization has a scope (Global, Namespace, or WorkloadSelector:
// attached to the workloads that list it in their authorizationPolicies),
// an action (Allow or Deny), rules made of clauses made of matches, and a
// dry-run flag:
//
//	policies:
//	- name: echo-from-sleep
//	  namespace: default
//	  scope: WorkloadSelector
//	  action: Allow
//	  rules:
//	  - - - principals:
//	        - !Exact cluster.local/ns/default/sa/sleep
//	  dryRun: false
//
// The package has three entry points:
//
//   - Policies (a yaml.v3 Unmarshaler and Marshaler), Parse and Marshal
//     read and write the format with ztunnel's spelling;
//   - ToAuthz turns Authorizations and the workloads' bindings into
//     authz.Policy values and labels, so that authz.Engine decides L4
//     connections exactly as ztunnel would (package proxy uses it for the
//     local config file);
//   - Convert turns AuthorizationPolicies and PeerAuthentications (the
//     authz model, as package authz/istio decodes them) into
//     Authorizations and per-workload bindings, as istiod does. Extension
//     conditions (CEL) cannot be expressed in the format: Convert fails
//     closed (ALLOW rules with a condition are left out, DENY rules are
//     enforced without it) and says so in Output.Warnings.
//
// The package depends on authz and go.yaml.in/yaml/v3 only, so that a node
// proxy that reads this format does not link Istio's API types, protobuf
// JSON or CEL.
package ztunnel
