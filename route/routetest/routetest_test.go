package routetest_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/route/routetest"
)

const small = `
cases:
- name: reviews-v2
  source: test
  config: |
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews, namespace: default}
    spec:
      hosts: [reviews]
      http:
      - route: [{destination: {host: reviews, subset: v2}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews, namespace: default}
    spec:
      host: reviews
      subsets: [{name: v2, labels: {version: v2}}]
  services:
  - host: reviews.default.svc.cluster.local
    port: 9080
    endpoints:
    - {ip: 10.1.0.1, labels: {version: v1}}
    - {ip: 10.1.0.2, labels: {version: v2}}
  request: {host: reviews.default.svc.cluster.local}
  expect:
    destination: {host: reviews.default.svc.cluster.local, subset: WANT}
`

func write(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "cases.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestRunFilesPassAndFail(t *testing.T) {
	pass := write(t, strings.ReplaceAll(small, "WANT", "v2"))
	res, err := routetest.RunFiles(pass)
	require.NoError(t, err)
	require.Len(t, res, 1)
	assert.NoError(t, res[0].Err)

	fail := write(t, strings.ReplaceAll(small, "WANT", "v1"))
	res, err = routetest.RunFiles(fail)
	require.NoError(t, err)
	require.Error(t, res[0].Err)
	assert.Contains(t, res[0].Err.Error(), `want destination reviews.default.svc.cluster.local subset "v1"`)
}

func TestParseRejectsInvalidFiles(t *testing.T) {
	for name, body := range map[string]string{
		"unknown field":   "cases:\n- name: a\n  source: s\n  reqest: {}\n",
		"no expectation":  "cases:\n- name: a\n  source: s\n  request: {host: h}\n  expect: {}\n",
		"two expectation": "cases:\n- name: a\n  source: s\n  request: {host: h}\n  expect: {response: {status: 1}, destination: {host: h}}\n",
		"duplicate name":  "cases:\n- {name: a, source: s, request: {host: h}, expect: {response: {status: 200}}}\n- {name: a, source: s, request: {host: h}, expect: {response: {status: 200}}}\n",
		"bad sum":         "cases:\n- {name: a, source: s, request: {host: h}, expect: {distribution: {v1: 0.5}}}\n",
		"no source":       "cases:\n- {name: a, request: {host: h}, expect: {response: {status: 200}}}\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := routetest.Parse([]byte(body))
			assert.ErrorIs(t, err, routetest.ErrInvalidFile)
		})
	}
}
