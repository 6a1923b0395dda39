package route_test

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/route"
)

// In a waypoint, "close" is relative to the waypoint's locality, not the
// client's (spec §7).
func TestWaypointLocalityIsRelativeToWaypoint(t *testing.T) {
	svc := route.Service{
		Host:                "db.default.svc.cluster.local",
		Ports:               []route.Port{{Port: 5432, Name: "http"}},
		TrafficDistribution: "PreferClose",
		Endpoints: []route.Endpoint{
			{IP: "10.0.0.1", Locality: route.Locality{Region: "r1", Zone: "z1"}},
			{IP: "10.0.0.2", Locality: route.Locality{Region: "r1", Zone: "z2"}},
			{IP: "10.0.0.3", Locality: route.Locality{Region: "r2", Zone: "z3"}},
		},
	}
	tests := []struct {
		name     string
		waypoint route.Locality
		client   route.Locality
		want     map[string]bool
	}{
		{"waypoint in z2, client in z1", route.Locality{Region: "r1", Zone: "z2"}, route.Locality{Region: "r1", Zone: "z1"}, map[string]bool{"10.0.0.2": true}},
		{"waypoint in r2", route.Locality{Region: "r2", Zone: "z9"}, route.Locality{Region: "r1", Zone: "z1"}, map[string]bool{"10.0.0.3": true}},
		{"no waypoint locality", route.Locality{}, route.Locality{Region: "r1", Zone: "z1"}, map[string]bool{"10.0.0.1": true, "10.0.0.2": true, "10.0.0.3": true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tbl, err := route.Build(route.Config{Services: []route.Service{svc}, WaypointLocality: tc.waypoint})
			require.NoError(t, err)
			r := rand.New(rand.NewPCG(7, 7))
			got := map[string]bool{}
			for range 300 {
				res := tbl.Pick(&route.Request{Host: svc.Host, Port: 5432, Source: tc.client}, r)
				require.Equal(t, route.Forward, res.Kind)
				got[res.Endpoint.IP] = true
				res.Done()
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestLeastRequestPrefersIdleEndpoint(t *testing.T) {
	tbl, err := route.Build(route.Config{Services: []route.Service{{
		Host:      "a.default.svc.cluster.local",
		Ports:     []route.Port{{Port: 80}},
		Endpoints: []route.Endpoint{{IP: "10.0.0.1"}, {IP: "10.0.0.2"}},
	}}})
	require.NoError(t, err)
	req := &route.Request{Host: "a.default.svc.cluster.local", Port: 80}
	// Keep 10.0.0.1 busy: whenever the two choices differ, the idle one wins.
	busy := tbl.Pick(req, &seq{v: []uint64{0, 0}})
	require.Equal(t, "10.0.0.1", busy.Endpoint.IP)
	res := tbl.Pick(req, &seq{v: []uint64{0, 1}})
	assert.Equal(t, "10.0.0.2", res.Endpoint.IP)
	res.Done()
	res = tbl.Pick(req, &seq{v: []uint64{1, 0}})
	assert.Equal(t, "10.0.0.2", res.Endpoint.IP)
	res.Done()
	busy.Done()
	res = tbl.Pick(req, &seq{v: []uint64{0, 1}})
	assert.Equal(t, "10.0.0.1", res.Endpoint.IP, "after Done both are idle and the first choice wins")
	res.Done()
}
