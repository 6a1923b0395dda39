package proxy_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/meshblocks/meshblocks/proxy"
)

func TestZtunnelBalancer(t *testing.T) {
	mk := func(name, node, region, zone string, unhealthy bool) *proxy.Workload {
		return &proxy.Workload{UID: name, Name: name, Node: node, Unhealthy: unhealthy,
			Locality: proxy.Locality{Region: region, Zone: zone}}
	}
	src := mk("src", "n1", "r1", "z1", false)
	sameNode := mk("same-node", "n1", "r1", "z1", false)
	sameZone := mk("same-zone", "n2", "r1", "z1", false)
	otherZone := mk("other-zone", "n3", "r1", "z2", false)
	sick := mk("sick", "n1", "r1", "z1", true)
	eps := func(ws ...*proxy.Workload) []proxy.Endpoint {
		out := make([]proxy.Endpoint, len(ws))
		for i, w := range ws {
			out[i] = proxy.Endpoint{Workload: w, TargetPort: 8080}
		}
		return out
	}
	tests := []struct {
		name string
		lb   *proxy.LoadBalancing
		cand []proxy.Endpoint
		want []string // acceptable picks; empty = none
	}{
		{"standard skips unhealthy", nil, eps(sick, otherZone), []string{"other-zone"}},
		{"standard only unhealthy", nil, eps(sick), nil},
		{"allow all", &proxy.LoadBalancing{AllowUnhealthy: true}, eps(sick), []string{"sick"}},
		{"strict node", &proxy.LoadBalancing{Mode: proxy.LBStrict, RoutingPreference: []string{"node"}},
			eps(sameZone, sameNode, otherZone), []string{"same-node"}},
		{"strict node, none local", &proxy.LoadBalancing{Mode: proxy.LBStrict, RoutingPreference: []string{"node"}},
			eps(sameZone, otherZone), nil},
		{"failover prefers zone", &proxy.LoadBalancing{Mode: proxy.LBFailover, RoutingPreference: []string{"network", "region", "zone"}},
			eps(otherZone, sameZone), []string{"same-zone"}},
		{"failover falls back", &proxy.LoadBalancing{Mode: proxy.LBFailover, RoutingPreference: []string{"network", "region", "zone"}},
			eps(otherZone), []string{"other-zone"}},
		{"failover same node", &proxy.LoadBalancing{Mode: proxy.LBFailover, RoutingPreference: []string{"network", "region", "zone", "subzone", "node"}},
			eps(otherZone, sameZone, sameNode), []string{"same-node"}},
		{"unsupported preference fails closed", &proxy.LoadBalancing{Mode: proxy.LBStrict, RoutingPreference: []string{"zone"}},
			eps(sameNode), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := &proxy.Service{Namespace: "default", Hostname: "s.default.svc.cluster.local", LoadBalancing: tc.lb}
			for i := 0; i < 50; i++ {
				ep, ok := proxy.ZtunnelBalancer(svc, tc.cand, src)
				if len(tc.want) == 0 {
					assert.False(t, ok)
					return
				}
				if assert.True(t, ok) {
					assert.Contains(t, tc.want, ep.Workload.Name)
				}
			}
		})
	}
}

func TestResolvePassthroughMode(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.9")
	st, err := proxy.NewState(nil, []proxy.Service{{Namespace: "d", Hostname: "ext.d", Addresses: []netip.Addr{vip},
		Ports: []proxy.ServicePort{{Port: 443}}, LoadBalancing: &proxy.LoadBalancing{Mode: proxy.LBPassthrough}}})
	assert.NoError(t, err)
	p, err := st.Resolve(nil, netip.AddrPortFrom(vip, 443), nil)
	assert.NoError(t, err)
	assert.Equal(t, proxy.Passthrough, p.Kind)
	assert.Equal(t, netip.AddrPortFrom(vip, 443), p.NextHop)
	assert.Equal(t, "ext.d", p.Service.Hostname)
}
