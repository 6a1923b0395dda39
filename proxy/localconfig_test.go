package proxy_test

import (
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
	"github.com/meshblocks/meshblocks/proxy"
)

func TestParseLocalConfigZtunnelExample(t *testing.T) {
	data, err := os.ReadFile("testdata/localhost.yaml")
	require.NoError(t, err)
	cfg, err := proxy.ParseLocalConfig(data)
	require.NoError(t, err)
	require.Len(t, cfg.Workloads, 2)
	require.Len(t, cfg.Services, 2)
	w := cfg.Workloads[0]
	assert.Equal(t, "cluster1//v1/Pod/default/local", w.UID)
	assert.Equal(t, []netip.Addr{netip.MustParseAddr("127.0.0.1")}, w.Addresses)
	assert.Equal(t, proxy.TunnelHBONE, w.Protocol)
	assert.Equal(t, []proxy.PortMapping{{ServicePort: 80, TargetPort: 8080}}, w.Services["default/example.com"])
	assert.Equal(t, proxy.TunnelNone, cfg.Workloads[1].Protocol)
	assert.True(t, cfg.Workloads[1].Unhealthy)
	assert.Equal(t, "z1", cfg.Workloads[1].Locality.Zone)
	s := cfg.Services[0]
	assert.Equal(t, []netip.Addr{netip.MustParseAddr("127.10.0.1")}, s.Addresses)
	assert.Equal(t, []proxy.ServicePort{{Port: 80, TargetPort: 8080}}, s.Ports)
	assert.Equal(t, &proxy.LoadBalancing{Mode: proxy.LBFailover, RoutingPreference: []string{"network", "region", "zone"}, AllowUnhealthy: true}, s.LoadBalancing)
	assert.Equal(t, "default/waypoint.default.svc.cluster.local", cfg.Services[1].Waypoint.Service)

	// The result builds a State.
	st, err := proxy.NewState(cfg.Workloads, cfg.Services)
	require.NoError(t, err)
	svc, ok := st.ServiceByAddr(netip.MustParseAddr("127.10.0.1"))
	require.True(t, ok)
	assert.Len(t, st.Endpoints(svc, 80), 2)
}

func TestParseLocalConfigErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"bad ip", "workloads: [{name: a, namespace: d, workloadIps: [x]}]", "workloads[0].workloadIps[0]"},
		{"protocol", "workloads: [{name: a, namespace: d, protocol: QUIC}]", "workloads[0].protocol"},
		{"missing name", "workloads: [{namespace: d}]", "workloads[0].name"},
		{"service key", "workloads: [{name: a, namespace: d, services: {x: {80: 80}}}]", "workloads[0].services"},
		{"port", "services: [{namespace: d, hostname: h, ports: {http: 80}}]", "services[0].ports"},
		{"vip", "services: [{namespace: d, hostname: h, vips: [/nope]}]", "services[0].vips[0]"},
		{"lb mode", "services: [{namespace: d, hostname: h, loadBalancing: {mode: RANDOM}}]", "services[0].loadBalancing.mode"},
		{"lb pref", "services: [{namespace: d, hostname: h, loadBalancing: {mode: STRICT, routingPreference: [ZONE, REGION]}}]", "routingPreference"},
		{"waypoint", "services: [{namespace: d, hostname: h, waypoint: {destination: nowhere}}]", "services[0].waypoint"},
		{"unknown field", "workloads: [{name: a, namespace: d, color: red}]", "color"},
		{"policy field", "policies: [{name: p}]", "policies[0].namespace (line 1): required"},
		{"policy scope", "policies: [{name: p, namespace: d, scope: Cluster, action: Allow, rules: [], dryRun: false}]", `policies[0].scope (line 1): "Cluster" is not Global`},
		{"policy match", "policies: [{name: p, namespace: d, scope: Global, action: Deny, rules: [[[{principals: [sleep]}]]], dryRun: false}]",
			"policies[0].rules[0][0][0].principals[0] (line 1): must be a tagged string match"},
		{"unknown binding", "workloads: [{name: a, namespace: d, authorizationPolicies: [d/nope]}]", "workload //Pod/d/a: authorizationPolicies[0]: no policy d/nope"},
		{"cross-namespace binding", "workloads: [{name: a, namespace: d, authorizationPolicies: [e/p]}]\npolicies: [{name: p, namespace: e, scope: Namespace, action: Allow, rules: [], dryRun: false}]",
			"e/p is a Namespace policy of namespace e"},
		{"two documents", "workloads: []\n---\nservices: []", "one YAML document"},
		{"bad yaml", "workloads: [", "did not find expected"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := proxy.ParseLocalConfig([]byte(tc.yaml))
			require.Error(t, err)
			assert.True(t, errors.Is(err, proxy.ErrLocalConfig))
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestParseLocalConfigPolicies reads ztunnel's policies and their
// bindings and checks the decisions the authz engine then makes.
func TestParseLocalConfigPolicies(t *testing.T) {
	data, err := os.ReadFile("testdata/mesh-policies.yaml")
	require.NoError(t, err)
	cfg, err := proxy.ParseLocalConfig(data)
	require.NoError(t, err)
	assert.Equal(t, "istio-system", cfg.RootNamespace)
	require.Len(t, cfg.Policies, 3)
	eng, err := authz.New(authz.Config{RootNamespace: cfg.RootNamespace}, cfg.Policies)
	require.NoError(t, err)
	st, err := proxy.NewState(cfg.Workloads, cfg.Services, proxy.WithAuthz(eng))
	require.NoError(t, err)
	echo, ok := st.WorkloadByUID("c//Pod/default/echo")
	require.True(t, ok)
	assert.Equal(t, "echo", echo.Labels["app"], "the workload's own labels stay")
	assert.Equal(t, "v1", echo.CanonicalRevision)
	old, _ := st.WorkloadByUID("c//Pod/legacy/old")

	tests := []struct {
		name  string
		w     *proxy.Workload
		peer  string
		src   string
		port  uint16
		allow bool
	}{
		{"sleep to 8080", echo, "cluster.local/ns/default/sa/sleep", "127.0.0.2", 8080, true},
		{"sleep to 8081", echo, "cluster.local/ns/default/sa/sleep", "127.0.0.2", 8081, true},
		{"sleep to 9090", echo, "cluster.local/ns/default/sa/sleep", "127.0.0.2", 9090, false},
		{"curl to 8080", echo, "cluster.local/ns/default/sa/curl", "127.0.0.5", 8080, false},
		{"waypoint to 8081", echo, "cluster.local/ns/default/sa/waypoint", "127.0.0.6", 8081, true},
		{"allowed IP with mTLS", echo, "cluster.local/ns/other/sa/x", "127.77.0.9", 8080, true},
		{"allowed IP in plaintext: STRICT", echo, "", "127.77.0.9", 8080, false},
		{"legacy namespace policy", old, "", "127.0.0.2", 9999, false},
		{"legacy other port", old, "", "127.0.0.2", 80, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := eng.Evaluate(&authz.Request{
				Layer: authz.L4, Workload: authz.Workload{Namespace: tc.w.Namespace, Labels: tc.w.Labels},
				Peer: tc.peer, SourceIP: netip.MustParseAddr(tc.src), DestPort: tc.port,
			})
			assert.Equal(t, tc.allow, d.Allowed, "%v", d)
		})
	}

	// The same decisions as the Istio YAML the policies were written from.
	pols, err := os.ReadFile("testdata/policies.yaml")
	require.NoError(t, err)
	ip, err := istio.Parse(pols, istio.Options{})
	require.NoError(t, err)
	direct, err := authz.New(authz.Config{}, ip)
	require.NoError(t, err)
	for _, tc := range tests[:6] {
		d := direct.Evaluate(&authz.Request{Layer: authz.L4, Workload: authz.Workload{Namespace: "default", Labels: map[string]string{"app": "echo"}},
			Peer: tc.peer, SourceIP: netip.MustParseAddr(tc.src), DestPort: tc.port})
		assert.Equal(t, tc.allow, d.Allowed, "%s: Istio YAML: %v", tc.name, d)
	}
}

func TestParseLocalConfigFiles(t *testing.T) {
	mesh := []byte("workloads:\n- {name: echo, namespace: default, workloadIps: [127.0.0.3], authorizationPolicies: [default/p]}\n")
	pols := []byte("policies:\n- {name: p, namespace: default, scope: WorkloadSelector, action: Deny, rules: [[]], dryRun: false}\n")
	cfg, err := proxy.ParseLocalConfigFiles(proxy.LocalConfigFile{Name: "mesh.yaml", Data: mesh}, proxy.LocalConfigFile{Name: "p.yaml", Data: pols})
	require.NoError(t, err)
	require.Len(t, cfg.Policies, 1)
	assert.Contains(t, cfg.Workloads[0].Labels, "ztunnel.authz.meshblocks.io/default/p")

	_, err = proxy.ParseLocalConfigFiles(proxy.LocalConfigFile{Name: "mesh.yaml", Data: mesh}, proxy.LocalConfigFile{Name: "bad.yaml", Data: []byte("policies: [{name: x}]")})
	require.Error(t, err)
	assert.True(t, errors.Is(err, proxy.ErrLocalConfig))
	assert.Contains(t, err.Error(), "bad.yaml: proxy: local config: ztunnel: policies[0].namespace (line 1): required")

	// Without the policies file the binding dangles.
	_, err = proxy.ParseLocalConfigFiles(proxy.LocalConfigFile{Name: "mesh.yaml", Data: mesh})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no policy default/p")
}

func FuzzParseLocalConfig(f *testing.F) {
	for _, p := range []string{"testdata/localhost.yaml", "testdata/mesh-policies.yaml"} {
		data, err := os.ReadFile(p)
		require.NoError(f, err)
		f.Add(data)
	}
	f.Add([]byte("workloads: [{name: a, namespace: d, workloadIps: ['::1'], waypoint: {destination: /10.0.0.1}}]"))
	f.Add([]byte("services: [{namespace: d, hostname: h, ports: {'65536': 1}}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := proxy.ParseLocalConfig(b)
		if err != nil {
			if !errors.Is(err, proxy.ErrLocalConfig) {
				t.Fatalf("error does not wrap ErrLocalConfig: %v", err)
			}
			return
		}
		// Whatever parses must give policies the engine accepts, and
		// either build a State or be rejected by it with an error, never
		// panic.
		if _, err := authz.New(authz.Config{RootNamespace: cfg.RootNamespace}, cfg.Policies); err != nil {
			t.Fatalf("parsed policies are invalid: %v", err)
		}
		proxy.NewState(cfg.Workloads, cfg.Services)
	})
}
