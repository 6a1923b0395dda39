package route_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/route"
)

const lbHost = "shop.default.svc.cluster.local"

// lbTable builds one Service with n endpoints (10.0.0.1...) behind a
// catch-all route, balanced by lb.
func lbTable(t testing.TB, n int, lb *route.LB) *route.Table {
	t.Helper()
	svc := route.Service{Host: lbHost, Ports: []route.Port{{Port: 80, Name: "http"}}}
	for i := range n {
		svc.Endpoints = append(svc.Endpoints, route.Endpoint{IP: fmt.Sprintf("10.0.0.%d", i+1)})
	}
	tbl, err := route.Build(route.Config{
		Services: []route.Service{svc},
		Routes: []route.RouteConfig{{Kind: "VirtualService", Name: "shop", Namespace: "default", Hosts: []string{lbHost},
			HTTP: []route.HTTPRoute{{Backends: []route.Backend{{Host: lbHost}}}}}},
		Policies: []route.Policy{{Kind: "DestinationRule", Name: "shop", Namespace: "default", Host: lbHost, Policy: route.TrafficPolicy{LB: lb}}},
	})
	require.NoError(t, err)
	return tbl
}

// Round robin visits the endpoints in a fixed cycle, whether or not the
// earlier requests have finished.
func TestRoundRobinStrictOrder(t *testing.T) {
	tbl := lbTable(t, 4, &route.LB{Kind: route.RoundRobin})
	r := rand.New(rand.NewPCG(1, 1))
	req := &route.Request{Host: lbHost, Port: 80}
	var seq []string
	var held []route.Result
	for i := range 12 {
		res := tbl.Pick(req, r)
		require.Equal(t, route.Forward, res.Kind)
		seq = append(seq, res.Endpoint.IP)
		if i%2 == 0 {
			res.Done()
		} else {
			held = append(held, res)
		}
	}
	for i := 4; i < len(seq); i++ {
		assert.Equal(t, seq[i-4], seq[i], "position %d: %v", i, seq)
	}
	assert.ElementsMatch(t, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}, seq[:4])
	for i := range held {
		held[i].Done()
	}
}

// With one endpoint busy, least request (two random choices, the less
// loaded wins) sends it only the requests whose two choices both land on
// it: 1/n² of them. Round robin and random keep sending it 1/n.
func TestLeastRequestAvoidsTheBusyEndpoint(t *testing.T) {
	const n, samples = 4, 20000
	tests := []struct {
		name      string
		lb        *route.LB
		want      float64
		tolerance float64
	}{
		{"least request", nil, 1.0 / (n * n), 0.015},
		{"round robin", &route.LB{Kind: route.RoundRobin}, 1.0 / n, 0.01},
		{"random", &route.LB{Kind: route.Random}, 1.0 / n, 0.02},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tbl := lbTable(t, n, tc.lb)
			r := rand.New(rand.NewPCG(7, 9))
			req := &route.Request{Host: lbHost, Port: 80}
			// Load 10.0.0.1 with 50 requests in flight.
			var busy []route.Result
			for len(busy) < 50 {
				res := tbl.Pick(req, r)
				if res.Endpoint.IP == "10.0.0.1" {
					busy = append(busy, res)
				} else {
					res.Done()
				}
			}
			got := 0
			for range samples {
				res := tbl.Pick(req, r)
				if res.Endpoint.IP == "10.0.0.1" {
					got++
				}
				res.Done()
			}
			share := float64(got) / samples
			assert.InDelta(t, tc.want, share, tc.tolerance, "share of the busy endpoint")
			for i := range busy {
				busy[i].Done()
			}
		})
	}
}

// keyOwners maps keys to the endpoint a consistent-hash pick sends them to.
func keyOwners(t *testing.T, tbl *route.Table, keys int) []string {
	t.Helper()
	out := make([]string, keys)
	r := rand.New(rand.NewPCG(3, 3))
	for i := range out {
		req := &route.Request{Host: lbHost, Port: 80, Header: map[string][]string{"X-User": {fmt.Sprintf("user-%d", i)}}}
		res := tbl.Pick(req, r)
		require.Equal(t, route.Forward, res.Kind)
		out[i] = res.Endpoint.IP
		res.Done()
	}
	return out
}

func shares(owners []string) map[string]float64 {
	m := map[string]float64{}
	for _, o := range owners {
		m[o] += 1 / float64(len(owners))
	}
	return m
}

// The ring and the Maglev table spread keys evenly, and adding an endpoint
// moves few keys: the new endpoint takes about 1/n of them. Maglev moves
// almost nothing else. The ring, built as Envoy builds it (each endpoint
// gets about RingSize/n points, so every old endpoint gives up some points
// when one joins), also moves the keys of the points given up: roughly
// another 1/n, still far from the (n-1)/n a modulo hash would move.
func TestConsistentHashSpreadAndDisruption(t *testing.T) {
	const keys = 20000
	tests := []struct {
		name      string
		lb        route.LB
		spreadTol float64
		maxMoved  float64
		minToNew  float64 // share of the moved keys that went to the new endpoint
	}{
		{"ring", route.LB{Kind: route.ConsistentHash, Hash: route.HashKey{Header: "x-user"}}, 0.05, 0.35, 0.6},
		{"ring 64k", route.LB{Kind: route.ConsistentHash, Hash: route.HashKey{Header: "x-user"}, RingSize: 65536}, 0.02, 0.35, 0.6},
		{"maglev", route.LB{Kind: route.ConsistentHash, Hash: route.HashKey{Header: "x-user"}, Maglev: true}, 0.02, 0.22, 0.95},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lb := tc.lb
			before := keyOwners(t, lbTable(t, 4, &lb), keys)
			for ip, s := range shares(before) {
				assert.InDelta(t, 0.25, s, tc.spreadTol, "share of %s with 4 endpoints", ip)
			}
			after := keyOwners(t, lbTable(t, 5, &lb), keys)
			sh := shares(after)
			for ip, s := range sh {
				assert.InDelta(t, 0.2, s, tc.spreadTol, "share of %s with 5 endpoints", ip)
			}
			moved, toNew := 0, 0
			for i := range before {
				if before[i] != after[i] {
					moved++
					if after[i] == "10.0.0.5" {
						toNew++
					}
				}
			}
			frac := float64(moved) / keys
			t.Logf("%s: %.1f%% of keys moved when a 5th endpoint joined, %.1f%% of them to the new one", tc.name, 100*frac, 100*float64(toNew)/float64(moved))
			assert.GreaterOrEqual(t, frac, sh["10.0.0.5"]-0.001, "at least the keys the new endpoint took")
			assert.LessOrEqual(t, frac, tc.maxMoved)
			assert.GreaterOrEqual(t, float64(toNew)/float64(moved), tc.minToNew)
			// The same keys map to the same endpoints in a new table.
			assert.Equal(t, after, keyOwners(t, lbTable(t, 5, &lb), keys))
		})
	}
}

// With locality weights, the hash tables give each locality its share of
// the keys (Envoy scales host weights by locality weight).
func TestConsistentHashFollowsLocalityWeights(t *testing.T) {
	for _, maglev := range []bool{false, true} {
		t.Run(fmt.Sprint("maglev=", maglev), func(t *testing.T) {
			svc := route.Service{Host: lbHost, Ports: []route.Port{{Port: 80, Name: "http"}}, Endpoints: []route.Endpoint{
				{IP: "10.0.0.1", Locality: route.Locality{Region: "r1", Zone: "z1"}},
				{IP: "10.0.0.2", Locality: route.Locality{Region: "r1", Zone: "z1"}},
				{IP: "10.0.0.3", Locality: route.Locality{Region: "r2", Zone: "z2"}},
			}}
			lb := &route.LB{Kind: route.ConsistentHash, Hash: route.HashKey{Header: "x-user"}, Maglev: maglev, Locality: &route.LocalityLB{
				Distribute: []route.LocalityDistribute{{From: "r1/*", To: []route.LocalityShare{{Locality: "r1/*", Weight: 20}, {Locality: "r2/*", Weight: 80}}}},
			}}
			tbl, err := route.Build(route.Config{
				Services:         []route.Service{svc},
				WaypointLocality: route.Locality{Region: "r1", Zone: "z1"},
				Routes: []route.RouteConfig{{Kind: "VirtualService", Name: "shop", Namespace: "default", Hosts: []string{lbHost},
					HTTP: []route.HTTPRoute{{Backends: []route.Backend{{Host: lbHost}}}}}},
				Policies: []route.Policy{{Host: lbHost, Policy: route.TrafficPolicy{LB: lb}}},
			})
			require.NoError(t, err)
			sh := shares(keyOwners(t, tbl, 20000))
			assert.InDelta(t, 0.1, sh["10.0.0.1"], 0.03)
			assert.InDelta(t, 0.1, sh["10.0.0.2"], 0.03)
			assert.InDelta(t, 0.8, sh["10.0.0.3"], 0.03)
			c := tbl.Pick(&route.Request{Host: lbHost, Port: 80}, nil).Cluster
			assert.Equal(t, map[route.Locality]float64{{Region: "r1", Zone: "z1"}: 0.2, {Region: "r2", Zone: "z2"}: 0.8}, c.LocalityShares())
		})
	}
}

func TestBuildRejectsBadHashSettings(t *testing.T) {
	cfg := route.Config{
		Services: []route.Service{{Host: lbHost, Ports: []route.Port{{Port: 80}}}},
		Policies: []route.Policy{{Kind: "DestinationRule", Name: "shop", Namespace: "default", Host: lbHost,
			Policy: route.TrafficPolicy{
				LB: &route.LB{Kind: route.ConsistentHash, Maglev: true, RingSize: 65536},
				Ports: map[int]route.PortPolicy{80: {LB: &route.LB{Locality: &route.LocalityLB{
					FailoverPriority: []route.FailoverLabel{{Label: "tier"}},
				}}}},
			}}},
	}
	_, err := route.Build(cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "DestinationRule default/shop: spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 65536 is not a prime number")
	assert.Contains(t, err.Error(), `DestinationRule default/shop: spec.trafficPolicy.portLevelSettings[port 80].loadBalancer.localityLbSetting.failoverPriority[0]: label "tier" needs a value`)
}

// A zero locality weight (which Istio's validation rejects) sends nothing
// to that locality and does not break the hash tables.
func TestZeroLocalityWeight(t *testing.T) {
	for _, kind := range []route.LBKind{route.LeastRequest, route.ConsistentHash} {
		svc := route.Service{Host: lbHost, Ports: []route.Port{{Port: 80}}, Endpoints: []route.Endpoint{
			{IP: "10.0.0.1", Locality: route.Locality{Region: "r1"}},
			{IP: "10.0.0.2", Locality: route.Locality{Region: "r2"}},
		}}
		lb := &route.LB{Kind: kind, Locality: &route.LocalityLB{Distribute: []route.LocalityDistribute{{From: "*",
			To: []route.LocalityShare{{Locality: "r1", Weight: 0}, {Locality: "r2", Weight: 100}}}}}}
		tbl, err := route.Build(route.Config{Services: []route.Service{svc}, WaypointLocality: route.Locality{Region: "r1"},
			Routes: []route.RouteConfig{{Kind: "VirtualService", Name: "shop", Namespace: "default", Hosts: []string{lbHost},
				HTTP: []route.HTTPRoute{{Backends: []route.Backend{{Host: lbHost}}}}}},
			Policies: []route.Policy{{Host: lbHost, Policy: route.TrafficPolicy{LB: lb}}}})
		require.NoError(t, err)
		r := rand.New(rand.NewPCG(1, 1))
		for range 100 {
			res := tbl.Pick(&route.Request{Host: lbHost, Port: 80}, r)
			require.Equal(t, route.Forward, res.Kind)
			assert.Equal(t, "10.0.0.2", res.Endpoint.IP)
			res.Done()
		}
	}
}
