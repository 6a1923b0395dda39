package gatewayapi_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/route"
	"github.com/meshblocks/meshblocks/route/gatewayapi"
)

const reviews9010 = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 90
    - name: reviews-v2
      port: 9080
      weight: 10
`

func TestConvertAppliesDefaults(t *testing.T) {
	objs, err := gatewayapi.Decode([]byte(reviews9010))
	require.NoError(t, err)
	rcs, err := gatewayapi.Convert(objs, "")
	require.NoError(t, err)
	require.Len(t, rcs, 1)
	rc := rcs[0]
	assert.True(t, rc.GatewayAPI)
	assert.Equal(t, []string{"reviews.default.svc.cluster.local"}, rc.Hosts)
	require.Len(t, rc.HTTP, 1)
	hr := rc.HTTP[0]
	// Rule without matches: one PathPrefix "/" match on the parent port.
	assert.Equal(t, []route.Match{{PathKind: route.PathSegmentPrefix, Path: "/", Port: 9080}}, hr.Matches)
	assert.Equal(t, 500, hr.MissingBackendStatus)
	require.Len(t, hr.Backends, 2)
	assert.Equal(t, "reviews-v1.default.svc.cluster.local", hr.Backends[0].Host)
	assert.EqualValues(t, 90, hr.Backends[0].Weight)
}

func TestConvertSortsByPrecedence(t *testing.T) {
	objs, err := gatewayapi.Decode([]byte(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - matches:
    - path: {type: RegularExpression, value: "/.*"}
    - path: {type: PathPrefix, value: /a}
    - path: {type: PathPrefix, value: /a}
      method: GET
    - path: {type: Exact, value: /a}
    - headers: [{name: x, value: "1"}]
    - path: {type: PathPrefix, value: /abc}
    backendRefs: [{name: svc, port: 80}]
`))
	require.NoError(t, err)
	rcs, err := gatewayapi.Convert(objs, "")
	require.NoError(t, err)
	var got []string
	for _, hr := range rcs[0].HTTP {
		m := hr.Matches[0]
		s := m.Path
		if m.Method != nil {
			s += " " + m.Method.Value
		}
		if len(m.Headers) > 0 {
			s += " +h"
		}
		got = append(got, s)
	}
	assert.Equal(t, []string{"/a", "/abc", "/a GET", "/a", "/ +h", "/.*"}, got)
}

func TestValidationFieldPaths(t *testing.T) {
	objs, err := gatewayapi.Decode([]byte(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - matches:
    - path: {type: RegularExpression, value: "(x"}
      headers: [{name: x, type: Fuzzy, value: "1"}]
    filters:
    - type: RequestRedirect
      requestRedirect: {statusCode: 305}
    - type: RequestHeaderModifier
    backendRefs: [{name: svc}]
  - backendRefs: [{name: svc, port: 80, weight: -1}]
`))
	require.NoError(t, err)
	_, err = gatewayapi.Convert(objs, "")
	require.Error(t, err)
	assert.ErrorIs(t, err, route.ErrInvalidConfig)
	for _, want := range []string{
		"HTTPRoute shop/bad: spec.rules[0].matches[0].path.value: \"(x\" is not a valid RE2 expression",
		"HTTPRoute shop/bad: spec.rules[0].matches[0].headers[0].type: unknown type \"Fuzzy\"",
		"HTTPRoute shop/bad: spec.rules[0].filters[0].requestRedirect.statusCode: unsupported value 305",
		"HTTPRoute shop/bad: spec.rules[0].filters[1].requestHeaderModifier: required by the filter type",
		"HTTPRoute shop/bad: spec.rules[1].backendRefs[0].weight: must be in 0..1000000",
	} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestValidationL4AndDuplicateMatches(t *testing.T) {
	objs, err := gatewayapi.Decode([]byte(`
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: db, port: 70000}, {group: "", kind: Service, name: ""}]
  rules: [{backendRefs: [{name: db, port: 0}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: tls, port: 0}]
  rules: [{backendRefs: [{name: tls, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: g}]
  rules:
  - matches: [{headers: [{name: x-env, value: a}, {name: x-env, value: b}]}]
    backendRefs: [{name: g, port: 7070}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: h}]
  rules:
  - matches: [{headers: [{name: x, value: a}, {name: x, value: b}], queryParams: [{name: q, value: a}, {name: q, value: b}]}]
    backendRefs: [{name: h, port: 80}]
`))
	require.NoError(t, err)
	_, err = gatewayapi.Convert(objs, "")
	require.Error(t, err)
	for _, want := range []string{
		"TCPRoute shop/: metadata.name: required",
		"TCPRoute shop/: spec.parentRefs[0].port: must be in 1..65535, got 70000",
		"TCPRoute shop/: spec.parentRefs[1].name: required",
		"TCPRoute shop/: spec.rules[0].backendRefs[0].port: must be in 1..65535, got 0",
		"TLSRoute shop/: metadata.name: required",
		"TLSRoute shop/: spec.parentRefs[0].port: must be in 1..65535, got 0",
		`GRPCRoute shop/g: spec.rules[0].matches[0].headers[1].name: duplicate entry for header "x-env"`,
		`HTTPRoute shop/h: spec.rules[0].matches[0].headers[1].name: duplicate entry for header "x"`,
		`HTTPRoute shop/h: spec.rules[0].matches[0].queryParams[1].name: duplicate entry for query parameter "q"`,
	} {
		assert.Contains(t, err.Error(), want)
	}
}

// A GRPCRoute match without a method has no path match: it ranks below
// every method match (Istio's getURIRank -1), and a rule without matches
// sorts last.
func TestGRPCRouteWithoutMethodSortsLast(t *testing.T) {
	objs, err := gatewayapi.Decode([]byte(`
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: g}]
  rules:
  - backendRefs: [{name: catch-all, port: 7070}]
  - matches: [{headers: [{name: X-A, value: "1"}, {name: x-a, value: "2"}]}]
    backendRefs: [{name: header, port: 7070}]
  - matches: [{method: {method: Check}}]
    backendRefs: [{name: method, port: 7070}]
`))
	require.NoError(t, err)
	rcs, err := gatewayapi.Convert(objs, "")
	require.NoError(t, err)
	require.Len(t, rcs, 1)
	var got []string
	for _, hr := range rcs[0].HTTP {
		got = append(got, hr.Backends[0].Name)
	}
	assert.Equal(t, []string{"method", "header", "catch-all"}, got)
	assert.Equal(t, route.PathAny, rcs[0].HTTP[2].Matches[0].PathKind)
	assert.Len(t, rcs[0].HTTP[1].Matches[0].Headers, 1, "the later equivalent header name is ignored")
}

func TestDecodeRejectsUnknownFields(t *testing.T) {
	_, err := gatewayapi.Decode([]byte("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: x}\nspec: {rulez: []}\n"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "rulez")
	_, err = gatewayapi.Decode([]byte("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: x}\n"))
	assert.ErrorIs(t, err, gatewayapi.ErrUnsupported)
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(reviews9010))
	f.Add([]byte("apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec: {parentRefs: [{group: '', kind: Service, name: g}], rules: [{matches: [{method: {method: M}}], backendRefs: [{name: g, port: 1}]}]}"))
	f.Add([]byte("apiVersion: gateway.networking.k8s.io/v1\nkind: TCPRoute\nmetadata: {name: t}\nspec: {parentRefs: [{group: '', kind: Service, name: t, port: 9}], rules: [{backendRefs: [{name: t, port: 9, weight: 0}]}]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := gatewayapi.Decode(data)
		if err != nil {
			return
		}
		rcs, err := gatewayapi.Convert(objs, "")
		if err != nil {
			return
		}
		tbl, err := route.Build(route.Config{Routes: rcs, Services: []route.Service{
			{Host: "reviews.default.svc.cluster.local", Ports: []route.Port{{Port: 9080}}, Endpoints: []route.Endpoint{{IP: "10.0.0.1"}}},
		}})
		if err != nil {
			return
		}
		r := tbl.Pick(&route.Request{Host: "reviews.default.svc.cluster.local", Port: 9080, Path: "/a/b"}, nil)
		r.Done()
	})
}
