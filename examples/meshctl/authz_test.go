package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const checkPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: bookinfo}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-from-sleep, namespace: bookinfo}
spec:
  selector:
    matchLabels: {app: productpage}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/bookinfo/sa/sleep"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: bookinfo}
spec:
  targetRefs: [{kind: Service, group: "", name: productpage}]
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/bookinfo/sa/sleep"]}
    to:
    - operation: {methods: ["GET"]}
`

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAuthzCheck(t *testing.T) {
	pol := writeFile(t, "p.yaml", checkPolicies)
	reqFile := writeFile(t, "r.yaml", `layer: L7
workload: {namespace: bookinfo, services: [productpage]}
request:
  source: {principal: cluster.local/ns/bookinfo/sa/sleep}
  method: POST
  path: /productpage
`)
	tests := []struct {
		name string
		args []string
		code int
		out  string
	}{
		{"l4 allow", []string{"check", "-policies", pol, "-namespace", "bookinfo", "-label", "app=productpage",
			"-principal", "cluster.local/ns/bookinfo/sa/sleep", "-port", "9080"}, 0,
			"ALLOW by ALLOW bookinfo/productpage-from-sleep rules[0] (ALLOW policy matched)"},
		{"l4 deny", []string{"check", "-policies", pol, "-namespace", "bookinfo", "-label", "app=productpage",
			"-principal", "cluster.local/ns/bookinfo/sa/ratings"}, 1, "DENY (no ALLOW policy matched: bookinfo/allow-nothing, bookinfo/productpage-from-sleep)"},
		{"l7 get", []string{"check", "-policies", pol, "-layer", "L7", "-namespace", "bookinfo", "-service", "productpage",
			"-principal", "cluster.local/ns/bookinfo/sa/sleep", "-method", "GET", "-path", "/productpage"}, 0,
			"ALLOW by ALLOW bookinfo/get-only rules[0]"},
		{"request file", []string{"check", "-policies", pol, "-request", reqFile}, 1, "DENY (no ALLOW policy matched: bookinfo/get-only)"},
		{"bad layer", []string{"check", "-policies", pol, "-layer", "L3", "-namespace", "x"}, 2, ""},
		{"missing namespace", []string{"check", "-policies", pol}, 2, ""},
		{"bad flag", []string{"check", "-nope"}, 2, ""},
		{"unknown subcommand", []string{"frobnicate"}, 2, ""},
		{"no subcommand", nil, 2, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), append([]string{"authz"}, tc.args...), &out, &errb)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tc.code, out.String(), errb.String())
			}
			if !strings.Contains(out.String(), tc.out) {
				t.Fatalf("stdout %q does not contain %q", out.String(), tc.out)
			}
		})
	}
}

func TestAuthzCheckInvalidPolicyFailsClosed(t *testing.T) {
	pol := writeFile(t, "p.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: test}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source: {ipBlocks: [\"10.0.0.300/8\"]}\n")
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"authz", "check", "-policies", pol, "-namespace", "test"}, &out, &errb)
	if code != 1 || !strings.Contains(out.String(), "DENY by invalid policy test/bad") {
		t.Fatalf("exit %d stdout %q", code, out.String())
	}
	if !strings.Contains(errb.String(), `test/bad: spec.rules[0].from[0].source.ipBlocks[0]: "10.0.0.300/8" is not an IP or CIDR`) {
		t.Fatalf("stderr %q", errb.String())
	}
}

func TestAuthzTest(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"authz", "test", "../../authz/testdata/seed.yaml", "../../authz/testdata/precedence.yaml"}, &out, &errb)
	if code != 0 || !strings.HasSuffix(out.String(), " passed, 0 failed\n") {
		t.Fatalf("exit %d stdout %q", code, out.String())
	}
	bad := writeFile(t, "bad.yaml", "cases:\n  - name: x\n    bogus: 1\n")
	out.Reset()
	if code := run(context.Background(), []string{"authz", "test", bad}, &out, &errb); code != 2 {
		t.Fatalf("invalid file: exit %d, stdout %q", code, out.String())
	}
}

func TestAuthzCheckUndecodablePolicyIsBadInput(t *testing.T) {
	good := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: test}\nspec: {rules: [{}]}\n"
	tests := []struct {
		name   string
		policy string
		stderr []string
	}{
		{"broken yaml", good + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: test\nspec: {action: DENY, rules: [{}]}\n",
			[]string{"istio: document 1 (line 6): cannot decode: yaml: line "}},
		{"not a mapping", "- " + strings.ReplaceAll(good, "\n", "\n  "),
			[]string{"istio: document 0 (line 1): cannot decode: an object must be a mapping, got a list"}},
		{"unknown field", good + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: test}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {method: [POST]}\n",
			[]string{`authz: test/deny: spec.rules[0].to[0].operation: unknown field "method" (did you mean "methods"?)`}},
		{"number for a string", good + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: test}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {ports: [8080]}\n",
			[]string{"authz: test/deny: spec.rules[0].to[0].operation.ports[0]: must be a string, got number 8080"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pol := writeFile(t, "p.yaml", tc.policy)
			var out, errb bytes.Buffer
			code := run(context.Background(), []string{"authz", "check", "-policies", pol, "-namespace", "test", "-port", "8080",
				"-principal", "cluster.local/ns/test/sa/sleep"}, &out, &errb)
			if code != 2 || out.Len() != 0 {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 2 and no decision", code, out.String(), errb.String())
			}
			for _, s := range append([]string{"meshctl authz check: " + pol + ": cannot decode the policies:"}, tc.stderr...) {
				if !strings.Contains(errb.String(), s) {
					t.Errorf("stderr %q does not contain %q", errb.String(), s)
				}
			}
		})
	}
	t.Run("inline policies of a request file", func(t *testing.T) {
		req := writeFile(t, "r.yaml", "layer: L4\nworkload: {namespace: test}\nrequest: {destination: {port: 8080}}\npolicies: |\n  - not: an object\n")
		var out, errb bytes.Buffer
		code := run(context.Background(), []string{"authz", "check", "-request", req}, &out, &errb)
		if code != 2 || !strings.Contains(errb.String(), req+": policies: cannot decode the policies:") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
		}
	})
}
