package proxy_test

import (
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
		{"ztunnel policies", "policies: [{name: p}]", "policies"},
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

func FuzzParseLocalConfig(f *testing.F) {
	data, err := os.ReadFile("testdata/localhost.yaml")
	require.NoError(f, err)
	f.Add(data)
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
		// Whatever parses must either build a State or be rejected by it
		// with an error, never panic.
		proxy.NewState(cfg.Workloads, cfg.Services)
	})
}
