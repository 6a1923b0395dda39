package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/ztunnel"
	"github.com/meshblocks/meshblocks/proxy"
)

func convert(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), append([]string{"authz", "convert"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

const convertMesh = `# the mesh
workloads:
- uid: c//Pod/shop/web
  name: web
  namespace: shop
  workloadIps: ["10.0.0.2"]
  protocol: HBONE
  labels: {app: web}   # selected by web-from-frontend
  authorizationPolicies: [shop/stale]
- uid: c//Pod/shop/db
  name: db
  namespace: shop
  workloadIps: ["10.0.0.3"]
  protocol: HBONE
services: []
policies:
- {name: stale, namespace: shop, scope: WorkloadSelector, action: Allow, rules: [], dryRun: false}
`

const convertPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-from-frontend, namespace: shop}
spec:
  selector:
    matchLabels: {app: web}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/shop/sa/frontend"]}
  - to:
    - operation: {methods: ["GET"]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
`

func TestAuthzConvertWithConfig(t *testing.T) {
	mesh := writeFile(t, "mesh.yaml", convertMesh)
	pol := writeFile(t, "p.yaml", convertPolicies)
	code, out, errs := convert(t, "-config", mesh, pol)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"# the mesh", "# selected by web-from-frontend", "- shop/web-from-frontend", "- istio-system/istio_converted_static_strict", "name: web-from-frontend"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "stale") {
		t.Errorf("the old policies and bindings are replaced:\n%s", out)
	}
	if !strings.Contains(errs, "warning: shop/web-from-frontend: ztunnel does not support HTTP attributes (found: methods)") {
		t.Errorf("stderr: %s", errs)
	}

	// The result is a local config the ztunnel reads, deciding as Istio would.
	lc, err := proxy.ParseLocalConfig([]byte(out))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	eng, err := authz.New(authz.Config{RootNamespace: lc.RootNamespace}, lc.Policies)
	if err != nil {
		t.Fatal(err)
	}
	decide := func(w proxy.Workload, peer string) bool {
		return eng.Evaluate(&authz.Request{Layer: authz.L4, Workload: authz.Workload{Namespace: w.Namespace, Labels: w.Labels},
			Peer: peer, SourceIP: netip.MustParseAddr("10.0.0.9"), DestPort: 8080}).Allowed
	}
	web, db := lc.Workloads[0], lc.Workloads[1]
	for _, tc := range []struct {
		w     proxy.Workload
		peer  string
		allow bool
	}{
		{web, "cluster.local/ns/shop/sa/frontend", true},
		{web, "cluster.local/ns/shop/sa/other", false},
		{web, "", false},
		{db, "cluster.local/ns/shop/sa/other", true},
		{db, "", false}, // STRICT
	} {
		if got := decide(tc.w, tc.peer); got != tc.allow {
			t.Errorf("%s from %q: allowed %v, want %v", tc.w.Name, tc.peer, got, tc.allow)
		}
	}
}

func TestAuthzConvertPoliciesOnly(t *testing.T) {
	pol := writeFile(t, "p.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mtls-only, namespace: mesh-root}
spec:
  action: DENY
  rules:
  - from:
    - source: {notPrincipals: ["*"]}
`)
	code, out, errs := convert(t, "-root-namespace", "mesh-root", pol)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	auths, err := ztunnel.Parse([]byte(out))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(auths) != 1 || auths[0].Scope != ztunnel.Global || auths[0].Action != ztunnel.Deny {
		t.Fatalf("got %+v", auths)
	}
	if errs != "" {
		t.Errorf("stderr: %s", errs)
	}
	// With the default root namespace the same policy is namespace-wide.
	_, out, _ = convert(t, pol)
	if !strings.Contains(out, "scope: Namespace") {
		t.Errorf("%s", out)
	}
}

func TestAuthzConvertInvalidFailsClosed(t *testing.T) {
	pol := writeFile(t, "p.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: shop}
spec:
  rules:
  - from:
    - source: {ipBlocks: ["10.0.0.300"]}
`)
	code, out, errs := convert(t, pol)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(errs, `shop/bad: spec.rules[0].from[0].source.ipBlocks[0]: "10.0.0.300" is not an IP or CIDR`) {
		t.Errorf("stderr: %s", errs)
	}
	auths, err := ztunnel.Parse([]byte(out))
	if err != nil || len(auths) != 1 || auths[0].Action != ztunnel.Deny || len(auths[0].Rules) != 1 || len(auths[0].Rules[0]) != 0 {
		t.Fatalf("want a deny-all, got %+v (%v)\n%s", auths, err, out)
	}
}

func TestAuthzConvertBadInput(t *testing.T) {
	pol := writeFile(t, "p.yaml", convertPolicies)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no files", nil, "usage: meshctl authz convert"},
		{"missing file", []string{filepath.Join(t.TempDir(), "nope.yaml")}, "no such file"},
		{"unreadable document", []string{writeFile(t, "x.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: [1]\n")}, "x.yaml"},
		{"bad config", []string{"-config", writeFile(t, "m.yaml", "workloads: [{name: a}]"), pol}, "workloads[0].namespace: required"},
		{"config not a mapping", []string{"-config", writeFile(t, "m.yaml", "[]"), pol}, "a local config is a mapping"},
		{"bad flag", []string{"-nope", pol}, "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := convert(t, tc.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if out != "" {
				t.Errorf("stdout: %q", out)
			}
			if !strings.Contains(errs, tc.want) {
				t.Errorf("stderr %q lacks %q", errs, tc.want)
			}
		})
	}
}

// TestDemoMeshIsCurrent: the ztunnel demo's local config is what convert
// writes from its Istio YAML (the command is in the file's header).
func TestDemoMeshIsCurrent(t *testing.T) {
	dir := "../ztunnel/testdata/demo"
	istioFiles, err := filepath.Glob(filepath.Join(dir, "istio", "*.yaml"))
	if err != nil || len(istioFiles) == 0 {
		t.Fatalf("no Istio YAML in %s/istio (%v)", dir, err)
	}
	want, err := os.ReadFile(filepath.Join(dir, "mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs := convert(t, append([]string{"-config", filepath.Join(dir, "mesh.yaml")}, istioFiles...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if out != string(want) {
		t.Errorf("mesh.yaml is stale; regenerate it as its header says. convert writes:\n%s", out)
	}
}
