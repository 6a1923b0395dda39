package istio_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/route"
	"github.com/meshblocks/meshblocks/route/istio"
)

func TestDecodeBookinfo(t *testing.T) {
	data, err := os.ReadFile("testdata/bookinfo.yaml")
	require.NoError(t, err)
	objs, err := istio.Decode(data)
	require.NoError(t, err)
	require.Len(t, objs, 4)
	res, err := istio.Convert(objs, "")
	require.NoError(t, err)
	require.Len(t, res.Routes, 2)
	require.Len(t, res.Policies, 2)

	reviews := res.Routes[0]
	assert.Equal(t, []string{"reviews.default.svc.cluster.local"}, reviews.Hosts)
	require.Len(t, reviews.HTTP, 1)
	b := reviews.HTTP[0].Backends
	require.Len(t, b, 2)
	assert.Equal(t, route.Backend{Host: "reviews.default.svc.cluster.local", Subset: "v1", Weight: 90}, b[0])
	assert.EqualValues(t, 10, b[1].Weight)

	ratings := res.Routes[1]
	require.Len(t, ratings.HTTP, 2)
	f := ratings.HTTP[0].Fault
	require.NotNil(t, f)
	assert.Equal(t, 7*time.Second, f.Delay)
	assert.EqualValues(t, 1000000, f.DelayPerMillion)
	assert.Equal(t, []route.HeaderMatch{{Name: "end-user", StringMatch: route.StringMatch{Kind: route.Exact, Value: "jason"}}}, ratings.HTTP[0].Matches[0].Headers)

	assert.Equal(t, route.RoundRobin, res.Policies[1].Policy.LB.Kind)
	assert.Equal(t, "ratings.default.svc.cluster.local", res.Policies[1].Host)
}

// Istio's validation accepts any 3xx redirect code; the waypoint can only
// send 301, 302, 303, 307 and 308 and rejects the route configuration for
// the others (the route would have no action).
func TestRedirectCodes(t *testing.T) {
	vs := func(code int) string {
		return fmt.Sprintf(`
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /a}}, {uri: {prefix: /b}}]
    redirect: {uri: /new, redirectCode: %d}
`, code)
	}
	svc := route.Service{Host: "web.default.svc.cluster.local", Ports: []route.Port{{Port: 80, Name: "http"}, {Port: 8080, Name: "http-alt"}}, Endpoints: []route.Endpoint{{IP: "10.0.0.1"}}}
	tests := []struct {
		code       int
		convertErr string
		buildErr   string
	}{
		{301, "", ""}, {302, "", ""}, {303, "", ""}, {307, "", ""}, {308, "", ""},
		{300, "", "VirtualService default/web: spec.http[0].redirect.redirectCode: redirect code 300 is not supported by the waypoint"},
		{304, "", "redirect code 304 is not supported"},
		{305, "", "redirect code 305 is not supported"},
		{399, "", "redirect code 399 is not supported"},
		{200, "spec.http[0].redirect.redirectCode: 200 is not a valid redirect code, must be 3xx", ""},
		{400, "spec.http[0].redirect.redirectCode: 400 is not a valid redirect code, must be 3xx", ""},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.code), func(t *testing.T) {
			objs, err := istio.Decode([]byte(vs(tc.code)))
			require.NoError(t, err)
			res, err := istio.Convert(objs, "")
			if tc.convertErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.convertErr)
				return
			}
			require.NoError(t, err)
			tbl, err := route.Build(route.Config{Services: []route.Service{svc}, Routes: res.Routes})
			if tc.buildErr == "" {
				require.NoError(t, err)
				got := tbl.Pick(&route.Request{Host: svc.Host, Port: 80, Path: "/b"}, nil)
				assert.Equal(t, route.RedirectResponse, got.Kind)
				assert.Equal(t, tc.code, got.Status)
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, route.ErrInvalidConfig)
			assert.Contains(t, err.Error(), tc.buildErr)
			assert.Equal(t, 1, strings.Count(err.Error(), "redirectCode"), "reported once, not per match block and port: %v", err)
		})
	}
}

func TestRedirectValidation(t *testing.T) {
	objs, err := istio.Decode([]byte(`
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - redirect: {}
  - match: [{uri: {exact: /x}}]
    redirect: {prefixRewrite: /y, scheme: ftp, port: 70000}
    fault: {abort: {httpStatus: 500, percentage: {value: 1}}}
    rewrite: {uri: /z}
`))
	require.NoError(t, err)
	_, err = istio.Convert(objs, "")
	require.Error(t, err)
	for _, want := range []string{
		"spec.http[0].redirect: redirect must specify uri, prefixRewrite, authority, scheme or port",
		`spec.http[1].redirect.scheme: "ftp" is not a valid redirect scheme`,
		"spec.http[1].redirect.port: must be in 1..65535, got 70000",
		"spec.http[1].match[0].uri: redirect prefixRewrite requires all uri matches to be prefix matches",
		"spec.http[1].fault: HTTP route cannot contain both fault and redirect",
		"spec.http[1].rewrite: HTTP route rule cannot contain both rewrite and redirect",
	} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestLocalityAndHashSettings(t *testing.T) {
	objs, err := istio.Decode([]byte(`
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shop, namespace: default}
spec:
  host: shop
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3}
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 1021}}
      localityLbSetting:
        distribute:
        - from: r1/z1/*
          to: {"r2/*": 30, "r1/z1/*": 70}
    portLevelSettings:
    - port: {number: 8080}
      loadBalancer:
        localityLbSetting:
          failover: [{from: r1, to: r2}]
          failoverPriority: [topology.istio.io/network, "tier=gold"]
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {localityLbSetting: {enabled: false}}
`))
	require.NoError(t, err)
	res, err := istio.Convert(objs, "")
	require.NoError(t, err)
	p := res.Policies[0].Policy
	assert.True(t, p.OutlierDetection)
	assert.True(t, p.LB.Maglev)
	assert.Equal(t, 1021, p.LB.RingSize)
	assert.Equal(t, []route.LocalityDistribute{{From: "r1/z1/*", To: []route.LocalityShare{{Locality: "r1/z1/*", Weight: 70}, {Locality: "r2/*", Weight: 30}}}}, p.LB.Locality.Distribute)
	pl := p.Ports[8080]
	assert.False(t, pl.OutlierDetection, "a port-level entry does not inherit outlier detection")
	assert.Equal(t, []route.RegionFailover{{From: "r1", To: "r2"}}, pl.LB.Locality.Failover)
	assert.Equal(t, []route.FailoverLabel{{Label: route.LabelNetwork}, {Label: "tier", Value: "gold", HasValue: true}}, pl.LB.Locality.FailoverPriority)
	assert.True(t, res.Policies[0].Subsets[0].Policy.LB.Locality.Disabled)
}

func TestLocalityValidation(t *testing.T) {
	objs, err := istio.Decode([]byte(`
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shop, namespace: default}
spec:
  host: shop
  trafficPolicy:
    loadBalancer:
      consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}
      zoneAwareLbSetting: {}
      localityLbSetting:
        distribute:
        - from: "r1/*/z"
          to: {"r1/*": 60, "r1/z1": 30}
        failover: [{from: r1, to: r1}, {from: "r1/z1", to: r2}, {from: r1, to: "r*"}]
        failoverPriority: [topology.kubernetes.io/zone, tier]
`))
	require.NoError(t, err)
	_, err = istio.Convert(objs, "")
	require.Error(t, err)
	for _, want := range []string{
		"spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 must be a prime number",
		"spec.trafficPolicy.loadBalancer.zoneAwareLbSetting: not supported",
		"spec.trafficPolicy.loadBalancer.localityLbSetting: can not simultaneously specify 'distribute' and 'failover'",
		"localityLbSetting.distribute[0].from: locality r1/*/z wildcard '*' number can not exceed 1 and must be in the end",
		"localityLbSetting.distribute[0].to: total locality weight 90 != 100",
		"localityLbSetting.distribute[0].to: locality r1/* overlaps with r1/z1",
		"localityLbSetting.failover[0]: locality lb failover settings must specify different regions",
		"localityLbSetting.failover[1]: locality lb failover only specify region",
		"localityLbSetting.failover[2]: locality lb failover region should not contain '*' wildcard",
		"localityLbSetting.failoverPriority[0]: can not simultaneously set 'failover' and topology label 'topology.kubernetes.io/zone'",
		`localityLbSetting.failoverPriority[1]: label "tier" needs a value`,
	} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestValidationFieldPaths(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"negative weight", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 10
    - destination: {host: reviews, subset: v2}
      weight: -1
`, []string{"VirtualService default/reviews: spec.http[0].route[1].weight: must be >= 0"}},
		{"all zero weights", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 0
    - destination: {host: reviews, subset: v2}
      weight: 0
`, []string{"VirtualService default/reviews: spec.http[0].route: total destination weight = 0"}},
		{"regex star under headers", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {x-a: {regex: "*"}}
    route: [{destination: {host: reviews}}]
`, []string{"spec.http[0].match[0].headers.x-a.regex: \"*\" is not a valid RE2 expression"}},
		{"uppercase header and bad uri regex", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {X-User: {exact: a}}
      uri: {regex: "(bad"}
    route: [{destination: {host: reviews}}]
`, []string{"spec.http[0].match[0].headers.X-User: header name must be lowercase", "spec.http[0].match[0].uri.regex"}},
		{"redirect and route", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - redirect: {uri: /x}
    route: [{destination: {host: reviews}}]
`, []string{"spec.http[0]: must not specify both redirect and route"}},
		{"missing hosts and destination host", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  http:
  - route: [{destination: {subset: v1}}]
`, []string{"spec.hosts: at least one host is required", "spec.http[0].route[0].destination.host: destination host is required"}},
		{"fault percentage and abort status", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - fault:
      abort:
        percentage: {value: 120}
        httpStatus: 99
    route: [{destination: {host: reviews}}]
`, []string{"spec.http[0].fault.abort.percentage.value: percentage 120 is not in range 0..100", "spec.http[0].fault.abort.httpStatus: 99 is not a valid HTTP status"}},
		{"retries", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - retries: {attempts: -2, perTryTimeout: 0.0001s}
    route: [{destination: {host: reviews}}]
`, []string{"spec.http[0].retries.attempts: must be >= 0", "spec.http[0].retries.perTryTimeout: must be at least 1ms"}},
		{"tls sni not in hosts", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  tls:
  - match: [{sniHosts: [other.example.com]}]
    route: [{destination: {host: echo}}]
`, []string{"spec.tls[0].match[0].sniHosts[0]: SNI host \"other.example.com\" is not a compatible subset"}},
		{"destination rule", `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v1, labels: {version: v2}}
`, []string{"DestinationRule default/reviews: spec.host: required", "spec.subsets[1].name: duplicate subset name \"v1\""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := istio.Decode([]byte(tc.yaml))
			require.NoError(t, err)
			_, err = istio.Convert(objs, "")
			require.Error(t, err)
			assert.ErrorIs(t, err, route.ErrInvalidConfig)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	_, err := istio.Decode([]byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {hostz: [a]}\n"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "VirtualService default/x: spec")
	_, err = istio.Decode([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"))
	assert.ErrorIs(t, err, istio.ErrUnsupported)
	_, err = istio.Decode([]byte("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: x}\n"))
	assert.ErrorIs(t, err, istio.ErrUnsupported)
}

func FuzzDecode(f *testing.F) {
	seed, err := os.ReadFile("testdata/bookinfo.yaml")
	require.NoError(f, err)
	f.Add(seed)
	for _, doc := range strings.Split(string(seed), "---") {
		f.Add([]byte(doc))
	}
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}, weight: -5}]}]}"))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec: {host: a, trafficPolicy: {outlierDetection: {}, loadBalancer: {consistentHash: {httpHeaderName: x, maglev: {tableSize: 7}}, localityLbSetting: {distribute: [{from: 'r1/*', to: {'r1/*': 60, 'r2': 40}}]}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}"))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec: {host: a, trafficPolicy: {outlierDetection: {}, loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r2}], failoverPriority: ['topology.istio.io/network', 'x=y']}}}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := istio.Decode(data)
		if err != nil {
			return
		}
		res, err := istio.Convert(objs, "")
		if err != nil {
			return
		}
		cfg := route.Config{Routes: res.Routes, Policies: res.Policies, WaypointLocality: route.Locality{Region: "r1", Zone: "z1"},
			Services: []route.Service{{Host: "a.default.svc.cluster.local", Ports: []route.Port{{Port: 80}}, Endpoints: []route.Endpoint{
				{IP: "10.0.0.1", Locality: route.Locality{Region: "r1", Zone: "z1"}},
				{IP: "10.0.0.2", Locality: route.Locality{Region: "r2", Zone: "z2"}},
			}}}}
		tbl, err := route.Build(cfg)
		if err != nil {
			return
		}
		r := tbl.Pick(&route.Request{Host: "a.default.svc.cluster.local", Port: 80, Path: "/x?y=z", Header: map[string][]string{"X": {"k"}}}, nil)
		r.Done()
	})
}
