package authztest_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/authztest"
)

const meshStrict = `apiVersion: security.istio.io/v1
      kind: PeerAuthentication
      metadata: {name: default, namespace: istio-system}
      spec: {mtls: {mode: STRICT}}`

func mtlsSuite(fields string) string {
	return `cases:
  - name: c
    peerAuthentications: |
      ` + meshStrict + `
    workload: {namespace: test}
    request: {destination: {port: 80}}
` + fields
}

func TestMTLSCases(t *testing.T) {
	tests := []struct {
		name     string
		fields   string
		code     int
		contains string
	}{
		{"mode only", "    expectMTLS: STRICT\n    expectMTLSBy: istio-system/default\n", authztest.ExitPass, "1 passed, 0 failed"},
		{"wrong mode", "    expectMTLS: PERMISSIVE\n", authztest.ExitFail, ": c: mTLS STRICT by mesh PeerAuthentication istio-system/default, want PERMISSIVE"},
		{"wrong decider", "    expectMTLS: STRICT\n    expectMTLSBy: default\n", authztest.ExitFail, "want it decided by default"},
		{"plaintext rejected", "    expect: ALLOW\n", authztest.ExitFail, "got DENY (plaintext rejected: STRICT by mesh PeerAuthentication istio-system/default), want ALLOW"},
		{"plaintext denied", "    expect: DENY\n    expectMTLS: STRICT\n", authztest.ExitPass, "1 passed"},
		{"bad mode", "    expectMTLS: strict\n", authztest.ExitInvalid, `cases[0].expectMTLS: "strict" must be DISABLE, PERMISSIVE or STRICT`},
		{"by without mode", "    expect: DENY\n    expectMTLSBy: default\n", authztest.ExitInvalid, "cases[0].expectMTLSBy: requires expectMTLS"},
		{"no expectation", "", authztest.ExitInvalid, `.expect: "" must be ALLOW or DENY`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			code := authztest.RunFiles(&out, write(t, mtlsSuite(tt.fields)))
			assert.Equal(t, tt.code, code, out.String())
			assert.Contains(t, out.String(), tt.contains)
		})
	}
}

func TestMTLSInvalidPeerAuthentication(t *testing.T) {
	body := strings.ReplaceAll(mtlsSuite("    expectMTLS: STRICT\n    expectError: \"spec.portLevelMtls: requires spec.selector\"\n"),
		"spec: {mtls: {mode: STRICT}}", "spec: {mtls: {mode: DISABLE}, portLevelMtls: {80: {mode: DISABLE}}}")
	var out bytes.Buffer
	code := authztest.RunFiles(&out, write(t, body))
	assert.Equal(t, authztest.ExitPass, code, out.String())

	s, err := authztest.Load("x", []byte(body))
	require.NoError(t, err)
	d, err := s.Cases[0].EvaluateMTLS()
	require.ErrorIs(t, err, authz.ErrInvalidPeerAuthentication)
	assert.Equal(t, authz.LevelInvalid, d.Level)
	assert.False(t, d.AllowsPlaintext())
	r := s.Run()
	assert.Equal(t, "STRICT", r[0].MTLS.Mode.String())
}
