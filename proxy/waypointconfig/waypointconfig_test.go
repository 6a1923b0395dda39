package waypointconfig_test

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/proxy/waypointconfig"
)

func TestParseTestMesh(t *testing.T) {
	data, err := os.ReadFile("../testdata/waypoint/istio.yaml")
	require.NoError(t, err)
	res, err := waypointconfig.Parse(waypointconfig.Options{}, waypointconfig.File{Name: "istio.yaml", Data: data})
	require.NoError(t, err)
	r := res.Rules
	var names []string
	for _, p := range r.Policies {
		names = append(names, p.Namespace+"/"+p.Name)
	}
	assert.ElementsMatch(t, []string{"default/ratings-viewer", "default/tcp-echo-sleep", "default/waypoint-block", "default/deny-all-selector"}, names)
	assert.Equal(t, map[string]string{
		"echo-h2.default.svc.cluster.local:80":    "http2",
		"tcp-echo.default.svc.cluster.local:9000": "tcp",
		"ratings.default.svc.cluster.local:80":    "http",
	}, r.AppProtocols)
	var hosts []string
	for _, rc := range r.Routes {
		hosts = append(hosts, rc.Kind+" "+strings.Join(rc.Hosts, ","))
	}
	assert.Contains(t, hosts, "VirtualService purchase-history.default.svc.cluster.local")
	assert.Contains(t, hosts, "VirtualService echo.default.svc.cluster.local")
	require.Len(t, r.Destinations, 1)
	assert.Equal(t, "purchase-history.default.svc.cluster.local", r.Destinations[0].Host)
	assert.Len(t, r.Destinations[0].Subsets, 3)
	assert.Empty(t, res.Skipped)
}

func TestParseSkipsOtherKindsAndExpandsLists(t *testing.T) {
	in := `
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    ports: [{name: grpc-api, port: 9090}, {port: 8080}]
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web, port: 8080}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec: {mtls: {mode: STRICT}}
`
	res, err := waypointconfig.Parse(waypointconfig.Options{Domain: "example.org"}, waypointconfig.File{Name: "in.yaml", Data: []byte(in)})
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"web.shop.svc.example.org:9090": "grpc-api"}, res.Rules.AppProtocols)
	require.Len(t, res.Rules.Routes, 1)
	assert.Equal(t, []string{"web.default.svc.example.org"}, res.Rules.Routes[0].Hosts)
	assert.Equal(t, []string{
		"in.yaml: document 0: apps/v1 Deployment default/web",
		"in.yaml: document 2: security.istio.io/v1 PeerAuthentication default/strict",
	}, res.Skipped)
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		policy         bool // only an invalid AuthorizationPolicy
		object         bool // named by its object, not its file
	}{
		{"not an object", "- a\n- b\n", "document 0", false, false},
		{"invalid VirtualService", `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad}
spec: {hosts: [web], http: [{route: [{destination: {host: web}, weight: -1}]}]}
`, "VirtualService default/bad: spec.http[0].route[0].weight", false, true},
		{"Service port out of range", `
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 70000}]}
`, "spec.ports[0].port", false, false},
		{"invalid policy fails closed", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{from: [{source: {ipBlocks: ["10.0.0.300/8"]}}]}]
`, "ipBlocks", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := waypointconfig.Parse(waypointconfig.Options{}, waypointconfig.File{Name: "f.yaml", Data: []byte(tc.in)})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			if !tc.object {
				assert.Contains(t, err.Error(), "f.yaml")
			}
			assert.Equal(t, tc.policy, !errors.Is(err, waypointconfig.ErrInvalid), err.Error())
			if tc.policy {
				require.ErrorIs(t, err, authz.ErrInvalidPolicy)
				require.Len(t, res.Rules.Policies, 1)
				_, aerr := authz.New(authz.Config{}, res.Rules.Policies)
				assert.Error(t, aerr, "the policy is kept, to fail closed")
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	data, err := os.ReadFile("../testdata/waypoint/istio.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1}]}\n"))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Service}]\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		res, err := waypointconfig.Parse(waypointconfig.Options{}, waypointconfig.File{Data: in})
		if err != nil {
			return
		}
		// Whatever parses builds an engine without complaint.
		if _, err := authz.New(res.Rules.Authz, res.Rules.Policies); err != nil {
			t.Fatalf("valid input, invalid policies: %v", err)
		}
	})
}
