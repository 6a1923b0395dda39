package proxy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Errors from [Resolve]; match them with errors.Is.
var (
	// ErrNoHealthyEndpoint: the service has no endpoint for the port.
	ErrNoHealthyEndpoint = errors.New("proxy: no healthy endpoint")
	// ErrUnknownWaypoint: a waypoint is configured but cannot be resolved.
	ErrUnknownWaypoint = errors.New("proxy: unknown waypoint")
	// ErrUnknownPort: the service does not expose the requested port.
	ErrUnknownPort = errors.New("proxy: service has no such port")
)

// PlanKind says how an outbound connection leaves the node.
type PlanKind uint8

const (
	// Passthrough: plain TCP to the original destination (not in the mesh).
	Passthrough PlanKind = iota
	// Direct: HBONE to the destination workload itself.
	Direct
	// ViaWaypoint: HBONE to the waypoint serving the destination.
	ViaWaypoint
)

func (k PlanKind) String() string {
	switch k {
	case Passthrough:
		return "passthrough"
	case Direct:
		return "direct"
	case ViaWaypoint:
		return "waypoint"
	}
	return fmt.Sprintf("PlanKind(%d)", k)
}

// Plan is where an outbound connection goes.
type Plan struct {
	Kind PlanKind
	// NextHop is the address to dial: ip:15008 for HBONE, or the plain
	// destination for Passthrough.
	NextHop netip.AddrPort
	// Authority is the CONNECT :authority (HBONE only): the endpoint
	// ip:targetPort, or for a waypoint the original destination.
	Authority netip.AddrPort
	// Expected lists the identities the next hop may present (HBONE only).
	Expected []spiffeid.ID
	// Service is the destination service, if the destination was a VIP.
	Service *Service
	// Workload is the destination workload (the endpoint or the
	// waypoint's workload), if known.
	Workload *Workload
}

// Balancer picks one endpoint among candidates for a new connection from
// src (nil when the source is not a known workload). It returns false when
// none is acceptable. Balancers must not retain candidates.
type Balancer func(svc *Service, candidates []Endpoint, src *Workload) (Endpoint, bool)

// RandomHealthy picks uniformly among healthy candidates, weighted by
// Capacity: ztunnel's STANDARD mode with the ONLY_HEALTHY policy.
func RandomHealthy(_ *Service, candidates []Endpoint, _ *Workload) (Endpoint, bool) {
	total := uint64(0)
	for _, c := range candidates {
		if !c.Workload.Unhealthy {
			total += capacity(c.Workload)
		}
	}
	if total == 0 {
		return Endpoint{}, false
	}
	n := rand.Uint64N(total)
	for _, c := range candidates {
		if c.Workload.Unhealthy {
			continue
		}
		if n < capacity(c.Workload) {
			return c, true
		}
		n -= capacity(c.Workload)
	}
	return Endpoint{}, false
}

func capacity(w *Workload) uint64 {
	if w.Capacity == 0 {
		return 1
	}
	return uint64(w.Capacity)
}

// Resolve decides where a connection from src (nil if unknown) to dst goes,
// with ztunnel's outbound semantics:
//
//   - a service VIP whose service has a waypoint goes to the waypoint, with
//     the VIP:port as the authority (unless src is that waypoint);
//   - otherwise a service VIP is balanced over its endpoints, and the
//     connection goes to the chosen endpoint (HBONE to ip:15008 with
//     ip:targetPort as the authority, or plain TCP if the endpoint is not in
//     the mesh);
//   - a workload address goes to the workload's waypoint if it has one,
//     otherwise straight to the workload (HBONE or plain);
//   - a service in PASSTHROUGH balancing mode goes to the original
//     destination as plain TCP;
//   - anything else passes through as plain TCP.
//
// pick chooses among service endpoints; nil means [RandomHealthy].
func (s *State) Resolve(src *Workload, dst netip.AddrPort, pick Balancer) (Plan, error) {
	if pick == nil {
		pick = RandomHealthy
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if svc, ok := s.ServiceByAddr(dst.Addr()); ok {
		if svc.Waypoint != nil && !s.isWaypoint(src, svc.Waypoint) {
			return s.viaWaypoint(svc.Waypoint, dst, svc, src)
		}
		if svc.LoadBalancing != nil && svc.LoadBalancing.Mode == LBPassthrough {
			return Plan{Kind: Passthrough, NextHop: dst, Service: svc}, nil
		}
		if !hasPort(svc, dst.Port()) {
			return Plan{}, fmt.Errorf("proxy: %s port %d: %w", svc.Key(), dst.Port(), ErrUnknownPort)
		}
		ep, ok := pick(svc, s.Endpoints(svc, dst.Port()), src)
		if !ok {
			return Plan{}, fmt.Errorf("proxy: %s port %d: %w", svc.Key(), dst.Port(), ErrNoHealthyEndpoint)
		}
		addr, ok := endpointAddr(ep.Workload, dst.Addr())
		if !ok {
			return Plan{}, fmt.Errorf("proxy: %s: endpoint %s has no address: %w", svc.Key(), ep.Workload.UID, ErrNoHealthyEndpoint)
		}
		return s.toWorkload(ep.Workload, netip.AddrPortFrom(addr, ep.TargetPort), svc), nil
	}
	if w, ok := s.WorkloadByAddr(dst.Addr()); ok {
		if w.Waypoint != nil && !s.isWaypoint(src, w.Waypoint) {
			return s.viaWaypoint(w.Waypoint, dst, nil, src)
		}
		return s.toWorkload(w, dst, nil), nil
	}
	return Plan{Kind: Passthrough, NextHop: dst}, nil
}

func (s *State) toWorkload(w *Workload, target netip.AddrPort, svc *Service) Plan {
	p := Plan{Service: svc, Workload: w}
	if w.Protocol != TunnelHBONE {
		p.Kind, p.NextHop = Passthrough, target
		return p
	}
	p.Kind = Direct
	p.NextHop = netip.AddrPortFrom(target.Addr(), DefaultHBONEPort)
	p.Authority = target
	p.Expected = s.expected(w, svc)
	return p
}

// viaWaypoint sends dst through gateway g. The authority stays the original
// destination; the expected identities are the waypoint's.
func (s *State) viaWaypoint(g *Gateway, dst netip.AddrPort, svc *Service, src *Workload) (Plan, error) {
	var wpw *Workload
	var wpSvc *Service
	var addr netip.Addr
	if g.Address.IsValid() {
		addr = g.Address.Unmap()
		wpw, _ = s.WorkloadByAddr(addr)
	} else {
		var ok bool
		wpSvc, ok = s.ServiceByKey(g.Service)
		if !ok {
			return Plan{}, fmt.Errorf("proxy: waypoint service %s: %w", g.Service, ErrUnknownWaypoint)
		}
		// A waypoint named by its Service is reached at one of the
		// Service's endpoints.
		ep, ok := RandomHealthy(wpSvc, s.Endpoints(wpSvc, g.port()), src)
		if !ok {
			return Plan{}, fmt.Errorf("proxy: waypoint service %s: %w", g.Service, ErrNoHealthyEndpoint)
		}
		wpw = ep.Workload
		if addr, ok = endpointAddr(wpw, netip.Addr{}); !ok {
			return Plan{}, fmt.Errorf("proxy: waypoint %s has no address: %w", wpw.UID, ErrUnknownWaypoint)
		}
	}
	if wpw == nil {
		return Plan{}, fmt.Errorf("proxy: waypoint %s is not a known workload: %w", addr, ErrUnknownWaypoint)
	}
	return Plan{
		Kind:      ViaWaypoint,
		NextHop:   netip.AddrPortFrom(addr, g.port()),
		Authority: dst,
		Expected:  s.expected(wpw, wpSvc),
		Service:   svc,
		Workload:  wpw,
	}, nil
}

// isWaypoint reports whether src is the waypoint g (a waypoint's own
// traffic to its backends must not loop back to itself).
func (s *State) isWaypoint(src *Workload, g *Gateway) bool {
	if src == nil {
		return false
	}
	if g.Address.IsValid() {
		for _, a := range src.Addresses {
			if a.Unmap() == g.Address.Unmap() {
				return true
			}
		}
		return false
	}
	_, ok := src.Services[g.Service]
	return ok
}

// expected returns the identities accepted for workload w reached for
// service svc: the workload's own identity plus the service's SANs.
func (s *State) expected(w *Workload, svc *Service) []spiffeid.ID {
	ids := []spiffeid.ID{s.IdentityOf(w)}
	if svc != nil {
		for _, san := range svc.SubjectAltNames {
			if id, err := spiffeid.FromString(san); err == nil && id != ids[0] {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

func hasPort(svc *Service, port uint16) bool {
	for _, p := range svc.Ports {
		if p.Port == port {
			return true
		}
	}
	return false
}

// endpointAddr picks the workload address of the same family as like (or
// the first address when like is invalid).
func endpointAddr(w *Workload, like netip.Addr) (netip.Addr, bool) {
	for _, a := range w.Addresses {
		if !like.IsValid() || a.Unmap().Is4() == like.Is4() {
			return a.Unmap(), true
		}
	}
	if len(w.Addresses) > 0 {
		return w.Addresses[0].Unmap(), true
	}
	return netip.Addr{}, false
}
