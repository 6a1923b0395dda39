package routetest_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/route"
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

// Problems in the Istio and the Gateway API objects of one case are
// reported together, and a config that does not build makes the file
// invalid rather than failing the case.
func TestConfigErrorsAreAggregatedAndInvalid(t *testing.T) {
	f, err := routetest.Parse([]byte(`
cases:
- name: both-bad
  source: test
  config: |
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews, namespace: default}
    spec:
      hosts: [reviews]
      http:
      - route: [{destination: {host: reviews}, weight: -1}, {destination: {host: reviews}}]
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: echo, namespace: default}
    spec:
      parentRefs: [{group: "", kind: Service, name: echo}]
      rules: [{backendRefs: [{name: echo}]}]
  services:
  - {host: reviews.default.svc.cluster.local, port: 9080, endpoints: [{ip: 10.1.0.1}]}
  request: {host: reviews.default.svc.cluster.local}
  expect:
    destination: {host: reviews.default.svc.cluster.local}
- name: table-rejects
  source: test
  config: |
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews, namespace: default}
    spec:
      hosts: [reviews]
      http:
      - redirect: {uri: /x, redirectCode: 305}
  services:
  - {host: reviews.default.svc.cluster.local, port: 9080, endpoints: [{ip: 10.1.0.1}]}
  request: {host: reviews.default.svc.cluster.local}
  expect:
    response: {status: 305}
`))
	require.NoError(t, err)
	err = f.Cases[0].Run()
	require.Error(t, err)
	assert.ErrorIs(t, err, routetest.ErrInvalidFile)
	assert.Contains(t, err.Error(), "VirtualService default/reviews: spec.http[0].route[0].weight: must be >= 0")
	assert.Contains(t, err.Error(), "HTTPRoute default/echo: spec.rules[0].backendRefs[0].port: required when referring to a Service")

	err = f.Cases[1].Run()
	assert.ErrorIs(t, err, routetest.ErrInvalidFile)
	assert.ErrorIs(t, err, route.ErrInvalidConfig)
	_, err = f.Cases[1].Explain()
	assert.ErrorIs(t, err, routetest.ErrInvalidFile)
}

func TestExplainShowsResponseHeadersTimeoutAndRetries(t *testing.T) {
	f, err := routetest.Parse([]byte(`
cases:
- name: explain
  source: test
  config: |
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews, namespace: default}
    spec:
      hosts: [reviews]
      http:
      - match: [{uri: {prefix: /slow}}]
        route: [{destination: {host: reviews}}]
        timeout: 2s
        retries: {attempts: 3, retryOn: "5xx,503", perTryTimeout: 0.5s}
        headers:
          response:
            set: {x-served-by: waypoint}
            remove: [server]
      - route:
        - destination: {host: reviews}
          headers: {response: {add: {x-backend: a}}}
  services:
  - {host: reviews.default.svc.cluster.local, port: 9080, endpoints: [{ip: 10.1.0.1}]}
  request: {host: reviews.default.svc.cluster.local, path: /slow/x}
  expect:
    destination: {host: reviews.default.svc.cluster.local}
`))
	require.NoError(t, err)
	c := &f.Cases[0]
	out, err := c.Explain()
	require.NoError(t, err)
	for _, want := range []string{
		"rule:        VirtualService default/reviews spec.http[0]\n",
		"response:    remove server; set x-served-by: waypoint\n",
		"timeout:     2s\n",
		"retries:     3 on 5xx,retriable-status-codes (codes 503), per try 500ms\n",
	} {
		assert.Contains(t, out, want)
	}
	c.Request.Path = "/other"
	out, err = c.Explain()
	require.NoError(t, err)
	for _, want := range []string{
		"response:    add x-backend: a\n",
		"timeout:     none\n",
		"retries:     2 on connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes (mesh default)\n",
	} {
		assert.Contains(t, out, want)
	}
}
