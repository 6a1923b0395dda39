package authztest_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz/authztest"
)

const policy = `apiVersion: security.istio.io/v1
      kind: AuthorizationPolicy
      metadata: {name: allow-sleep, namespace: test}
      spec:
        rules:
        - from:
          - source: {principals: ["cluster.local/ns/test/sa/sleep"]}`

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "suite.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func suite(expectSleep, expectCurl string) string {
	return `x-pol: &pol |
      ` + policy + `
cases:
  - name: sleep
    layer: L4
    policies: *pol
    workload: {namespace: test}
    request: {source: {principal: cluster.local/ns/test/sa/sleep}, destination: {port: 80}}
    expect: ` + expectSleep + `
  - name: curl
    layer: L4
    policies: *pol
    workload: {namespace: test}
    request: {source: {principal: cluster.local/ns/test/sa/curl}, destination: {port: 80}}
    expect: ` + expectCurl + "\n"
}

func TestRunFiles(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		code     int
		contains []string
	}{
		{"pass", suite("ALLOW", "DENY"), authztest.ExitPass, []string{"2 passed, 0 failed"}},
		{"fail", suite("ALLOW", "ALLOW"), authztest.ExitFail, []string{"FAIL ", ": curl: got DENY (no ALLOW policy matched: test/allow-sleep), want ALLOW", "1 passed, 1 failed"}},
		{"unknown field", "cases:\n  - name: a\n    layr: L4\n", authztest.ExitInvalid, []string{`unknown field "layr"`}},
		{"duplicate name", strings.ReplaceAll(suite("ALLOW", "DENY"), "name: curl", "name: sleep"), authztest.ExitInvalid, []string{`duplicate name "sleep"`}},
		{"bad expect", suite("MAYBE", "DENY"), authztest.ExitInvalid, []string{`cases[0].expect: "MAYBE" must be ALLOW or DENY`}},
		{"bad layer", strings.Replace(suite("ALLOW", "DENY"), "layer: L4", "layer: L5", 1), authztest.ExitInvalid, []string{`layer: "L5" must be L4 or L7`}},
		{"bad ip", strings.Replace(suite("ALLOW", "DENY"), "destination: {port: 80}", "destination: {ip: 1.2.3, port: 80}", 1), authztest.ExitInvalid, []string{`request.destination.ip: "1.2.3" is not an IP address`}},
		{"no cases", "cases: []\n", authztest.ExitInvalid, []string{"no cases"}},
		{"not yaml", "cases: [\n", authztest.ExitInvalid, []string{"invalid test file"}},
		{"unexpected policy error", strings.Replace(suite("ALLOW", "DENY"), `principals: ["cluster.local/ns/test/sa/sleep"]`, `ipBlocks: ["x"]`, 1), authztest.ExitFail, []string{`policy error: authz: test/allow-sleep: spec.rules[0].from[0].source.ipBlocks[0]: "x" is not an IP or CIDR`, "0 passed, 2 failed"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			code := authztest.RunFiles(&out, write(t, tc.body))
			assert.Equal(t, tc.code, code, out.String())
			for _, c := range tc.contains {
				assert.Contains(t, out.String(), c)
			}
		})
	}
}

func TestRunFilesMissing(t *testing.T) {
	var out bytes.Buffer
	assert.Equal(t, authztest.ExitInvalid, authztest.RunFiles(&out, filepath.Join(t.TempDir(), "nope.yaml")))
	assert.Equal(t, authztest.ExitInvalid, authztest.RunFiles(&out))
}

func TestLoadError(t *testing.T) {
	_, err := authztest.Load("x.yaml", []byte("cases:\n  - {name: a, layer: L4, workload: {namespace: ns1}, expect: ALLOW}\n  - {name: a, layer: L4, workload: {}, expect: ALLOW}\n"))
	require.Error(t, err)
	assert.True(t, errors.Is(err, authztest.ErrInvalidFile))
	assert.Contains(t, err.Error(), "x.yaml: cases[1].name: duplicate")
	assert.Contains(t, err.Error(), "x.yaml: cases[1]: workload.namespace: must not be empty")
}

func TestExpectAssertions(t *testing.T) {
	body := strings.Replace(suite("ALLOW", "DENY"), "expect: ALLOW", "expect: ALLOW\n    expectPolicy: test/other\n    expectRule: 3", 1)
	var out bytes.Buffer
	assert.Equal(t, authztest.ExitFail, authztest.RunFiles(&out, write(t, body)))
	assert.Contains(t, out.String(), "want policy test/other")
}

func TestRunT(t *testing.T) {
	authztest.RunT(t, write(t, suite("ALLOW", "DENY")))
}

func TestCaseNamesUniqueAcrossFiles(t *testing.T) {
	a, b := write(t, suite("ALLOW", "DENY")), write(t, strings.ReplaceAll(suite("ALLOW", "DENY"), "name: sleep", "name: sleep-2"))
	var out bytes.Buffer
	assert.Equal(t, authztest.ExitInvalid, authztest.RunFiles(&out, a, b), out.String())
	assert.Contains(t, out.String(), b+`: cases[1].name: duplicate name "curl" (first used at `+a+`: cases[1])`)
	assert.NotContains(t, out.String(), "passed")

	out.Reset()
	c := write(t, strings.NewReplacer("name: sleep", "name: sleep-3", "name: curl", "name: curl-3").Replace(suite("ALLOW", "DENY")))
	assert.Equal(t, authztest.ExitPass, authztest.RunFiles(&out, a, c), out.String())
	assert.Contains(t, out.String(), "4 passed, 0 failed")
}

func TestUnreadablePolicyDocumentDenies(t *testing.T) {
	c := authztest.Case{
		Name: "x", Layer: "L4",
		Policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: test}\nspec: {rules: [{}]}\n" +
			"---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: test\nspec: {action: DENY, rules: [{}]}\n",
		Workload: authztest.Workload{Namespace: "test"},
	}
	d, err := c.Evaluate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "istio: document 1 (line 6): cannot decode: yaml: line ")
	assert.False(t, d.Allowed, "a policy document that cannot be read must not be ignored: %v", d)
	assert.Equal(t, "DENY (invalid policy applies (fail closed))", d.String())
}
