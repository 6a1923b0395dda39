package proxy

import (
	"net/netip"
	"strings"
	"sync"

	"github.com/meshblocks/meshblocks/route"
)

// LBMode is ztunnel's load-balancing mode for a service
// (istio.workload.LoadBalancing.Mode).
type LBMode uint8

const (
	// LBStandard balances over every usable endpoint.
	LBStandard LBMode = iota
	// LBStrict only uses endpoints that match every routing preference
	// scope; with none the connection fails.
	LBStrict
	// LBFailover prefers the endpoints that match the most scopes, in
	// order.
	LBFailover
	// LBPassthrough does not pick an endpoint: the connection goes to the
	// original destination address.
	LBPassthrough
)

// LoadBalancing is a service's balancing configuration.
type LoadBalancing struct {
	Mode LBMode
	// RoutingPreference lists the locality scopes in order: "network",
	// "region", "zone", "subzone", "node".
	RoutingPreference []string
	// AllowUnhealthy is the ALLOW_ALL health policy: unhealthy endpoints
	// are candidates too.
	AllowUnhealthy bool
}

// ZtunnelBalancer picks an endpoint the way ztunnel does for a service
// without a waypoint: candidates pass the health policy (ONLY_HEALTHY
// unless AllowUnhealthy), STRICT keeps those matching every routing
// preference scope, FAILOVER keeps the best-ranked ones, and one is chosen
// at random weighted by capacity. Ranking is route's (see route.Table for
// the rules and their tests).
func ZtunnelBalancer(svc *Service, candidates []Endpoint, src *Workload) (Endpoint, bool) {
	lb := svc.LoadBalancing
	if lb == nil || (lb.Mode == LBStandard && !lb.AllowUnhealthy) {
		return RandomHealthy(svc, candidates, src)
	}
	return routePick(svc, candidates, src)
}

// routeSettings maps a LoadBalancing onto the Kubernetes Service settings
// from which Istio derives it (route.Service), or false when the routing
// preference is not one Istio produces.
func routeSettings(lb *LoadBalancing) (internal, distribution string, ok bool) {
	pref := strings.Join(lb.RoutingPreference, ",")
	switch lb.Mode {
	case LBStandard:
		return "", "", true
	case LBStrict:
		if pref == "node" {
			return "Local", "", true
		}
	case LBFailover:
		switch pref {
		case "network,region,zone":
			return "", "PreferClose", true
		case "network,region,zone,subzone,node":
			return "", "PreferSameNode", true
		}
	}
	return "", "", false
}

func routeLocality(w *Workload) route.Locality {
	return route.Locality{
		Network: w.Network, Region: w.Locality.Region, Zone: w.Locality.Zone,
		Subzone: w.Locality.Subzone, Node: w.Node,
	}
}

// lbCache keeps, per service of a State, the route table built for its
// candidate list, so that STRICT/FAILOVER picks do not rebuild it per
// connection. Entries are immutable; a changed candidate list replaces one.
type lbCache struct {
	m   sync.Map // uint16 (first candidate's target port) -> *lbEntry
	eps sync.Map // uint16 service port -> []Endpoint
}

type lbEntry struct {
	cands []Endpoint
	table *route.Table
	host  string
}

func sameCandidates(a, b []Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// routePick balances candidates with route's ztunnel L4 modes. Endpoints
// are named by their index so that workloads with several addresses stay
// distinct.
func routePick(svc *Service, candidates []Endpoint, src *Workload) (Endpoint, bool) {
	if len(candidates) == 0 || len(candidates) > 1<<16 {
		return Endpoint{}, false
	}
	var e *lbEntry
	key := candidates[0].TargetPort
	if svc.lb != nil {
		if v, ok := svc.lb.m.Load(key); ok && sameCandidates(v.(*lbEntry).cands, candidates) {
			e = v.(*lbEntry)
		}
	}
	if e == nil {
		var ok bool
		if e, ok = buildLB(svc, candidates); !ok {
			return Endpoint{}, false
		}
		if svc.lb != nil {
			svc.lb.m.Store(key, e)
		}
	}
	req := route.Request{Host: e.host, Port: 1, Protocol: route.TCP}
	if src != nil {
		req.Source = routeLocality(src)
	}
	res := e.table.Pick(&req, nil)
	if res.Kind != route.Forward || res.Endpoint == nil {
		return Endpoint{}, false
	}
	a, err := netip.ParseAddr(res.Endpoint.IP)
	if err != nil {
		return Endpoint{}, false
	}
	b := a.As4()
	i := int(b[2])<<8 | int(b[3])
	if i >= len(e.cands) {
		return Endpoint{}, false
	}
	return e.cands[i], true
}

func buildLB(svc *Service, candidates []Endpoint) (*lbEntry, bool) {
	internal, distribution, ok := routeSettings(svc.LoadBalancing)
	if !ok {
		return nil, false
	}
	eps := make([]route.Endpoint, len(candidates))
	for i, c := range candidates {
		eps[i] = route.Endpoint{
			IP:        netip.AddrFrom4([4]byte{127, 255, byte(i >> 8), byte(i)}).String(),
			Locality:  routeLocality(c.Workload),
			Unhealthy: c.Workload.Unhealthy,
			Capacity:  c.Workload.Capacity,
		}
	}
	host := "lb." + svc.Namespace + ".svc.cluster.local"
	t, err := route.Build(route.Config{Services: []route.Service{{
		Host: host, Namespace: svc.Namespace, Ports: []route.Port{{Port: 1}},
		Endpoints: eps, NoWaypoint: true,
		InternalTrafficPolicy: internal, TrafficDistribution: distribution,
		PublishNotReadyAddresses: svc.LoadBalancing.AllowUnhealthy,
	}}})
	if err != nil {
		return nil, false
	}
	return &lbEntry{cands: append([]Endpoint(nil), candidates...), table: t, host: host}, true
}
