package proxy_test

import (
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/proxy"
)

var (
	ip  = netip.MustParseAddr
	ap  = netip.MustParseAddrPort
	sid = spiffeid.RequireFromString
)

func fixture(t testing.TB) *proxy.State {
	t.Helper()
	reviews := "default/reviews.default.svc.cluster.local"
	ws := []proxy.Workload{
		{UID: "sleep", Name: "sleep", Namespace: "default", ServiceAccount: "sleep", Addresses: []netip.Addr{ip("10.0.0.5")}, Protocol: proxy.TunnelHBONE},
		{UID: "web", Namespace: "test", ServiceAccount: "web-api", Addresses: []netip.Addr{ip("10.0.0.9"), ip("fd00::9")}, Protocol: proxy.TunnelHBONE},
		{UID: "legacy", Namespace: "legacy", ServiceAccount: "default", Addresses: []netip.Addr{ip("10.0.0.20")}},
		{UID: "reviews-v1", Namespace: "default", ServiceAccount: "bookinfo-reviews", Addresses: []netip.Addr{ip("10.0.1.1")}, Protocol: proxy.TunnelHBONE,
			Services: map[string][]proxy.PortMapping{reviews: {{ServicePort: 9080, TargetPort: 9080}}}},
		{UID: "reviews-v2", Namespace: "default", ServiceAccount: "bookinfo-reviews", Addresses: []netip.Addr{ip("10.0.1.2")}, Protocol: proxy.TunnelHBONE,
			Services: map[string][]proxy.PortMapping{reviews: {{ServicePort: 9080, TargetPort: 9080}}}},
		{UID: "api-v1", Namespace: "default", ServiceAccount: "api", Addresses: []netip.Addr{ip("10.0.2.1")}, Protocol: proxy.TunnelHBONE,
			Services: map[string][]proxy.PortMapping{"default/api.default.svc.cluster.local": {{ServicePort: 80, TargetPort: 9999}}}},
		{UID: "api-v2", Namespace: "default", ServiceAccount: "api", Addresses: []netip.Addr{ip("10.0.2.2")}, Protocol: proxy.TunnelHBONE,
			Services: map[string][]proxy.PortMapping{"default/api.default.svc.cluster.local": nil}},
		{UID: "sick", Namespace: "default", ServiceAccount: "sick", Addresses: []netip.Addr{ip("10.0.3.1")}, Protocol: proxy.TunnelHBONE, Unhealthy: true,
			Services: map[string][]proxy.PortMapping{"default/sick.default.svc.cluster.local": nil}},
		{UID: "waypoint", Namespace: "default", ServiceAccount: "waypoint", Addresses: []netip.Addr{ip("10.0.0.50")}, Protocol: proxy.TunnelHBONE,
			Services: map[string][]proxy.PortMapping{"default/waypoint.default.svc.cluster.local": nil}},
		{UID: "behind-wp", Namespace: "default", ServiceAccount: "pod", Addresses: []netip.Addr{ip("10.0.4.1")}, Protocol: proxy.TunnelHBONE,
			Waypoint: &proxy.Gateway{Address: ip("10.0.0.50")}},
		{UID: "lost-wp", Namespace: "default", ServiceAccount: "pod", Addresses: []netip.Addr{ip("10.0.4.2")}, Protocol: proxy.TunnelHBONE,
			Waypoint: &proxy.Gateway{Address: ip("10.9.9.9")}},
	}
	ss := []proxy.Service{
		{Name: "reviews", Namespace: "default", Hostname: "reviews.default.svc.cluster.local", Addresses: []netip.Addr{ip("10.96.0.10")},
			Ports: []proxy.ServicePort{{Port: 9080}}, SubjectAltNames: []string{"spiffe://cluster.local/ns/default/sa/reviews-canonical"}},
		{Name: "api", Namespace: "default", Hostname: "api.default.svc.cluster.local", Addresses: []netip.Addr{ip("10.96.0.11")},
			Ports: []proxy.ServicePort{{Port: 80, TargetPort: 8080}}},
		{Name: "sick", Namespace: "default", Hostname: "sick.default.svc.cluster.local", Addresses: []netip.Addr{ip("10.96.0.12")},
			Ports: []proxy.ServicePort{{Port: 80}}},
		{Name: "empty", Namespace: "default", Hostname: "empty.default.svc.cluster.local", Addresses: []netip.Addr{ip("10.96.0.13")},
			Ports: []proxy.ServicePort{{Port: 80}}},
		{Name: "productpage", Namespace: "default", Hostname: "productpage.default.svc.cluster.local", Addresses: []netip.Addr{ip("10.96.0.14")},
			Ports: []proxy.ServicePort{{Port: 9080}}, Waypoint: &proxy.Gateway{Service: "default/waypoint.default.svc.cluster.local"}},
		{Name: "waypoint", Namespace: "default", Hostname: "waypoint.default.svc.cluster.local", Addresses: []netip.Addr{ip("10.96.0.50")},
			Ports: []proxy.ServicePort{{Port: 15008}}},
		{Name: "details", Namespace: "default", Hostname: "details.default.svc.cluster.local", Addresses: []netip.Addr{ip("10.96.0.15")},
			Ports: []proxy.ServicePort{{Port: 9080}}, Waypoint: &proxy.Gateway{Service: "default/missing.default.svc.cluster.local"}},
	}
	st, err := proxy.NewState(ws, ss)
	require.NoError(t, err)
	return st
}

func TestResolve(t *testing.T) {
	st := fixture(t)
	sleep, _ := st.WorkloadByUID("sleep")
	wp, _ := st.WorkloadByUID("waypoint")
	tests := []struct {
		name      string
		src       *proxy.Workload
		dst       string
		kind      proxy.PlanKind
		nextHops  []string // any of
		authority []string // any of, parallel to nextHops
		expected  []string
		err       error
	}{
		{name: "outside the mesh", src: sleep, dst: "8.8.8.8:443", kind: proxy.Passthrough, nextHops: []string{"8.8.8.8:443"}},
		{name: "pod ip in the mesh", src: sleep, dst: "10.0.0.9:8080", kind: proxy.Direct,
			nextHops: []string{"10.0.0.9:15008"}, authority: []string{"10.0.0.9:8080"}, expected: []string{"spiffe://cluster.local/ns/test/sa/web-api"}},
		{name: "pod ipv6", src: sleep, dst: "[fd00::9]:8080", kind: proxy.Direct,
			nextHops: []string{"[fd00::9]:15008"}, authority: []string{"[fd00::9]:8080"}, expected: []string{"spiffe://cluster.local/ns/test/sa/web-api"}},
		{name: "ipv4-mapped destination", src: sleep, dst: "[::ffff:10.0.0.9]:8080", kind: proxy.Direct,
			nextHops: []string{"10.0.0.9:15008"}, authority: []string{"10.0.0.9:8080"}, expected: []string{"spiffe://cluster.local/ns/test/sa/web-api"}},
		{name: "pod not in the mesh", src: sleep, dst: "10.0.0.20:80", kind: proxy.Passthrough, nextHops: []string{"10.0.0.20:80"}},
		{name: "service vip balanced over endpoints", src: sleep, dst: "10.96.0.10:9080", kind: proxy.Direct,
			nextHops: []string{"10.0.1.1:15008", "10.0.1.2:15008"}, authority: []string{"10.0.1.1:9080", "10.0.1.2:9080"},
			expected: []string{"spiffe://cluster.local/ns/default/sa/bookinfo-reviews", "spiffe://cluster.local/ns/default/sa/reviews-canonical"}},
		{name: "target port: workload mapping wins, else service target port", src: sleep, dst: "10.96.0.11:80", kind: proxy.Direct,
			nextHops: []string{"10.0.2.1:15008", "10.0.2.2:15008"}, authority: []string{"10.0.2.1:9999", "10.0.2.2:8080"},
			expected: []string{"spiffe://cluster.local/ns/default/sa/api"}},
		{name: "unknown service port", src: sleep, dst: "10.96.0.11:81", err: proxy.ErrUnknownPort},
		{name: "only unhealthy endpoints", src: sleep, dst: "10.96.0.12:80", err: proxy.ErrNoHealthyEndpoint},
		{name: "no endpoints", src: nil, dst: "10.96.0.13:80", err: proxy.ErrNoHealthyEndpoint},
		{name: "service with waypoint", src: sleep, dst: "10.96.0.14:9080", kind: proxy.ViaWaypoint,
			nextHops: []string{"10.0.0.50:15008"}, authority: []string{"10.96.0.14:9080"}, expected: []string{"spiffe://cluster.local/ns/default/sa/waypoint"}},
		{name: "unknown source still uses the waypoint", src: nil, dst: "10.96.0.14:9080", kind: proxy.ViaWaypoint,
			nextHops: []string{"10.0.0.50:15008"}, authority: []string{"10.96.0.14:9080"}, expected: []string{"spiffe://cluster.local/ns/default/sa/waypoint"}},
		{name: "the waypoint itself skips the waypoint", src: wp, dst: "10.96.0.14:9080", err: proxy.ErrNoHealthyEndpoint},
		{name: "missing waypoint service", src: sleep, dst: "10.96.0.15:9080", err: proxy.ErrUnknownWaypoint},
		{name: "workload with waypoint by address", src: sleep, dst: "10.0.4.1:8080", kind: proxy.ViaWaypoint,
			nextHops: []string{"10.0.0.50:15008"}, authority: []string{"10.0.4.1:8080"}, expected: []string{"spiffe://cluster.local/ns/default/sa/waypoint"}},
		{name: "waypoint itself to workload behind it", src: wp, dst: "10.0.4.1:8080", kind: proxy.Direct,
			nextHops: []string{"10.0.4.1:15008"}, authority: []string{"10.0.4.1:8080"}, expected: []string{"spiffe://cluster.local/ns/default/sa/pod"}},
		{name: "waypoint address not a workload", src: sleep, dst: "10.0.4.2:8080", err: proxy.ErrUnknownWaypoint},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]bool{}
			for range 200 {
				p, err := st.Resolve(tc.src, ap(tc.dst), nil)
				if tc.err != nil {
					require.ErrorIs(t, err, tc.err)
					return
				}
				require.NoError(t, err)
				require.Equal(t, tc.kind, p.Kind)
				i := indexOf(tc.nextHops, p.NextHop.String())
				require.GreaterOrEqual(t, i, 0, "next hop %s not in %v", p.NextHop, tc.nextHops)
				seen[p.NextHop.String()] = true
				if tc.kind == proxy.Passthrough {
					require.False(t, p.Authority.IsValid())
					continue
				}
				require.Equal(t, tc.authority[i], p.Authority.String())
				var got []string
				for _, id := range p.Expected {
					got = append(got, id.String())
				}
				require.Equal(t, tc.expected, got)
			}
			require.Len(t, seen, len(tc.nextHops), "every candidate is picked some time in 200 tries")
		})
	}
}

func indexOf(l []string, s string) int {
	for i, x := range l {
		if x == s {
			return i
		}
	}
	return -1
}

func TestResolveUsesBalancer(t *testing.T) {
	st := fixture(t)
	last := func(_ *proxy.Service, c []proxy.Endpoint, _ *proxy.Workload) (proxy.Endpoint, bool) {
		return c[len(c)-1], true
	}
	p, err := st.Resolve(nil, ap("10.96.0.10:9080"), last)
	require.NoError(t, err)
	require.Equal(t, "10.0.1.2:9080", p.Authority.String())
	none := func(*proxy.Service, []proxy.Endpoint, *proxy.Workload) (proxy.Endpoint, bool) {
		return proxy.Endpoint{}, false
	}
	_, err = st.Resolve(nil, ap("10.96.0.10:9080"), none)
	require.ErrorIs(t, err, proxy.ErrNoHealthyEndpoint)
}

func TestRandomHealthyCapacity(t *testing.T) {
	a := &proxy.Workload{UID: "a", Capacity: 3}
	b := &proxy.Workload{UID: "b"}
	c := &proxy.Workload{UID: "c", Capacity: 100, Unhealthy: true}
	counts := map[string]int{}
	for range 4000 {
		ep, ok := proxy.RandomHealthy(nil, []proxy.Endpoint{{Workload: a}, {Workload: b}, {Workload: c}}, nil)
		require.True(t, ok)
		counts[ep.Workload.UID]++
	}
	require.Zero(t, counts["c"], "unhealthy endpoints are never picked")
	// Expect 3:1; allow wide statistical slack (p(fail) is negligible).
	require.InDelta(t, 3000, counts["a"], 250)
}

func TestNewStateValidation(t *testing.T) {
	_, err := proxy.NewState([]proxy.Workload{
		{UID: "a", Namespace: "ns", ServiceAccount: "sa", Addresses: []netip.Addr{ip("10.0.0.1")}},
		{UID: "a", Namespace: "ns", ServiceAccount: "sa"},
		{UID: "b", Namespace: "ns", ServiceAccount: "sa", Addresses: []netip.Addr{ip("10.0.0.1")}},
		{UID: "", Namespace: "ns"},
		{UID: "c", Namespace: "ns", ServiceAccount: "sa", TrustDomain: "Bad Domain"},
		{UID: "d", Namespace: "ns", ServiceAccount: "sa", Waypoint: &proxy.Gateway{}},
		{UID: "e", Namespace: "ns", ServiceAccount: "sa", Services: map[string][]proxy.PortMapping{"nokey": nil}},
	}, []proxy.Service{
		{Namespace: "ns", Hostname: "x", Ports: []proxy.ServicePort{{Port: 0}}},
		{Namespace: "ns", Hostname: "x"},
		{Hostname: "y"},
	})
	require.Error(t, err)
	for _, want := range []string{
		"workloads[1] (a): duplicate uid",
		"workloads[2] (b): addresses[0]: 10.0.0.1 already belongs to a",
		"workloads[3]: uid is required",
		"workloads[4] (c): proxy: workload c: trust domain",
		"workloads[5] (d): waypoint: exactly one of address and service must be set",
		`workloads[6] (e): services["nokey"]: key must be namespace/hostname`,
		"services[0] (ns/x): ports[0].port: must not be 0",
		"services[1] (ns/x): duplicate service",
		"services[2] (/y): namespace and hostname are required",
	} {
		require.ErrorContains(t, err, want)
	}
}

func TestStateHolder(t *testing.T) {
	var h proxy.StateHolder
	_, ok := h.Load().WorkloadByAddr(ip("10.0.0.5"))
	require.False(t, ok, "the zero holder serves an empty state")
	h.Store(fixture(t))
	w, ok := h.Load().WorkloadByAddr(ip("10.0.0.5"))
	require.True(t, ok)
	require.Equal(t, sid("spiffe://cluster.local/ns/default/sa/sleep"), h.Load().IdentityOf(w))
}
