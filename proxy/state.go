package proxy

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-multierror"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshblocks/meshblocks/authz"
)

// TunnelProtocol says how a workload receives mesh traffic.
type TunnelProtocol uint8

const (
	// TunnelNone: the workload is not in the mesh; traffic to it is sent
	// as plain TCP.
	TunnelNone TunnelProtocol = iota
	// TunnelHBONE: the workload receives HBONE on its address, port 15008.
	TunnelHBONE
)

// DefaultHBONEPort is the HBONE port when a Gateway leaves it zero.
const DefaultHBONEPort = 15008

// Gateway is where a workload's or service's traffic detours to: a waypoint
// (or network gateway), given either by address or by the namespaced host
// name of its Service.
type Gateway struct {
	// Address is the waypoint's address, or invalid when Service is set.
	Address netip.Addr
	// Service is "namespace/hostname" of the waypoint's Service.
	Service string
	// HBONEPort is the waypoint's HBONE port; zero means 15008.
	HBONEPort uint16
}

func (g *Gateway) port() uint16 {
	if g.HBONEPort == 0 {
		return DefaultHBONEPort
	}
	return g.HBONEPort
}

// PortMapping maps a service port to the workload's target port.
type PortMapping struct {
	ServicePort uint16
	// TargetPort zero means the same as ServicePort.
	TargetPort uint16
}

// Locality places a workload for locality-aware balancing.
type Locality struct {
	Region, Zone, Subzone string
}

// Workload is one workload (a pod, a VM entry) the proxy knows about. It
// mirrors istio.workload.Workload.
type Workload struct {
	UID            string // unique; for pods "cluster//Pod/namespace/name"
	Name           string
	Namespace      string
	ServiceAccount string
	// TrustDomain of the workload's identity; empty means "cluster.local".
	TrustDomain string
	Addresses   []netip.Addr
	Network     string
	Node        string
	Protocol    TunnelProtocol
	Waypoint    *Gateway
	Labels      map[string]string
	// Services maps "namespace/hostname" of each Service the workload
	// backs to its port mappings (overriding the Service's target ports).
	Services  map[string][]PortMapping
	Unhealthy bool
	Locality  Locality
	// Capacity weighs the workload in balancing; zero means 1.
	Capacity uint32
	// WorkloadName (the owning Deployment, for example), CanonicalName,
	// CanonicalRevision and ClusterID describe the workload in telemetry,
	// as in istio.workload.Workload; they may be empty.
	WorkloadName, CanonicalName, CanonicalRevision, ClusterID string
}

// Identity returns the workload's SPIFFE ID,
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
func (w *Workload) Identity() (spiffeid.ID, error) {
	td := w.TrustDomain
	if td == "" {
		td = "cluster.local"
	}
	t, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("proxy: workload %s: trust domain: %w", w.UID, err)
	}
	id, err := spiffeid.FromSegments(t, "ns", w.Namespace, "sa", w.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("proxy: workload %s: identity: %w", w.UID, err)
	}
	return id, nil
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Port uint16
	// TargetPort zero means the same as Port.
	TargetPort uint16
}

// Service is a Service the proxy knows about. It mirrors
// istio.workload.Service.
type Service struct {
	Name      string
	Namespace string
	Hostname  string // e.g. reviews.default.svc.cluster.local
	Addresses []netip.Addr
	Ports     []ServicePort
	// SubjectAltNames are extra identities accepted for the service's
	// endpoints, as SPIFFE IDs.
	SubjectAltNames []string
	Waypoint        *Gateway
	// LoadBalancing selects ztunnel's balancing mode for the service's
	// endpoints; nil means STANDARD with ONLY_HEALTHY.
	LoadBalancing *LoadBalancing

	lb *lbCache // set by NewState
}

// Key returns "namespace/hostname", the Service's resource name.
func (s *Service) Key() string { return s.Namespace + "/" + s.Hostname }

// Endpoint is one workload backing a service port.
type Endpoint struct {
	Workload   *Workload
	TargetPort uint16
}

// State is an immutable snapshot of the workloads and services a proxy
// knows. Build one with [NewState] and publish it through a [StateHolder];
// the data path reads it without locks.
type State struct {
	byUID     map[string]*Workload
	byAddr    map[netip.Addr]*Workload
	svcByAddr map[netip.Addr]*Service
	svcByKey  map[string]*Service
	// endpoints per service key, in workload order.
	endpoints map[string][]*Workload
	ids       map[*Workload]spiffeid.ID
	workloads []Workload
	services  []Service
	authz     *authz.Engine
	peerAuthn *authz.PeerAuthn
}

// StateOption adds optional parts to a State built by [NewState].
type StateOption func(*State)

// WithAuthz makes the State carry the L4 authorization engine, so that
// policies and workloads are swapped together. Without it every connection
// is allowed (no policy exists).
func WithAuthz(e *authz.Engine) StateOption { return func(s *State) { s.authz = e } }

// WithPeerAuthn makes the State carry PeerAuthentication: the inbound
// plaintext path refuses plaintext where the effective mode is STRICT.
// Without it (and without Config.PlaintextAllowed) plaintext is allowed
// (PERMISSIVE).
func WithPeerAuthn(pa *authz.PeerAuthn) StateOption { return func(s *State) { s.peerAuthn = pa } }

// PeerAuthn returns the State's PeerAuthentication evaluator, or nil.
func (s *State) PeerAuthn() *authz.PeerAuthn { return s.peerAuthn }

// Authz returns the State's authorization engine, or nil.
func (s *State) Authz() *authz.Engine { return s.authz }

// Workloads returns the workloads of the State in their original order. The
// slice must not be modified.
func (s *State) Workloads() []Workload { return s.workloads }

// Services returns the services of the State in their original order. The
// slice must not be modified.
func (s *State) Services() []Service { return s.services }

// NewState validates workloads and services and indexes them. Errors name
// the object and field at fault; all of them are reported together.
func NewState(workloads []Workload, services []Service, opts ...StateOption) (*State, error) {
	// The State owns its services (it caches balancing tables in them).
	services = append([]Service(nil), services...)
	for i := range services {
		services[i].lb = &lbCache{}
	}
	s := &State{
		workloads: workloads,
		services:  services,
		byUID:     make(map[string]*Workload, len(workloads)),
		byAddr:    make(map[netip.Addr]*Workload, len(workloads)),
		svcByAddr: make(map[netip.Addr]*Service, len(services)),
		svcByKey:  make(map[string]*Service, len(services)),
		endpoints: make(map[string][]*Workload),
		ids:       make(map[*Workload]spiffeid.ID, len(workloads)),
	}
	var errs *multierror.Error
	for i := range services {
		svc := &services[i]
		where := fmt.Sprintf("services[%d] (%s)", i, svc.Key())
		if svc.Namespace == "" || svc.Hostname == "" {
			errs = multierror.Append(errs, fmt.Errorf("proxy: %s: namespace and hostname are required", where))
			continue
		}
		if _, dup := s.svcByKey[svc.Key()]; dup {
			errs = multierror.Append(errs, fmt.Errorf("proxy: %s: duplicate service", where))
			continue
		}
		s.svcByKey[svc.Key()] = svc
		for j, a := range svc.Addresses {
			if other, dup := s.svcByAddr[a.Unmap()]; dup {
				errs = multierror.Append(errs, fmt.Errorf("proxy: %s: addresses[%d]: %s already belongs to %s", where, j, a, other.Key()))
				continue
			}
			s.svcByAddr[a.Unmap()] = svc
		}
		for j, p := range svc.Ports {
			if p.Port == 0 {
				errs = multierror.Append(errs, fmt.Errorf("proxy: %s: ports[%d].port: must not be 0", where, j))
			}
		}
		if err := checkGateway(svc.Waypoint); err != nil {
			errs = multierror.Append(errs, fmt.Errorf("proxy: %s: waypoint: %w", where, err))
		}
	}
	for i := range workloads {
		w := &workloads[i]
		where := fmt.Sprintf("workloads[%d] (%s)", i, w.UID)
		if w.UID == "" {
			errs = multierror.Append(errs, fmt.Errorf("proxy: workloads[%d]: uid is required", i))
			continue
		}
		if _, dup := s.byUID[w.UID]; dup {
			errs = multierror.Append(errs, fmt.Errorf("proxy: %s: duplicate uid", where))
			continue
		}
		id, err := w.Identity()
		if err != nil {
			errs = multierror.Append(errs, fmt.Errorf("proxy: %s: %w", where, err))
			continue
		}
		s.ids[w] = id
		s.byUID[w.UID] = w
		for j, a := range w.Addresses {
			if other, dup := s.byAddr[a.Unmap()]; dup {
				errs = multierror.Append(errs, fmt.Errorf("proxy: %s: addresses[%d]: %s already belongs to %s", where, j, a, other.UID))
				continue
			}
			s.byAddr[a.Unmap()] = w
		}
		if err := checkGateway(w.Waypoint); err != nil {
			errs = multierror.Append(errs, fmt.Errorf("proxy: %s: waypoint: %w", where, err))
		}
		for key := range w.Services {
			if !strings.Contains(key, "/") {
				errs = multierror.Append(errs, fmt.Errorf("proxy: %s: services[%q]: key must be namespace/hostname", where, key))
				continue
			}
			s.endpoints[key] = append(s.endpoints[key], w)
		}
	}
	if err := errs.ErrorOrNil(); err != nil {
		return nil, err
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

func checkGateway(g *Gateway) error {
	if g == nil {
		return nil
	}
	if g.Address.IsValid() == (g.Service != "") {
		return fmt.Errorf("exactly one of address and service must be set")
	}
	if g.Service != "" && !strings.Contains(g.Service, "/") {
		return fmt.Errorf("service %q must be namespace/hostname", g.Service)
	}
	return nil
}

// WorkloadByAddr returns the workload that owns address a.
func (s *State) WorkloadByAddr(a netip.Addr) (*Workload, bool) {
	w, ok := s.byAddr[a.Unmap()]
	return w, ok
}

// WorkloadByUID returns the workload with the given uid.
func (s *State) WorkloadByUID(uid string) (*Workload, bool) {
	w, ok := s.byUID[uid]
	return w, ok
}

// ServiceByAddr returns the service with virtual IP a.
func (s *State) ServiceByAddr(a netip.Addr) (*Service, bool) {
	svc, ok := s.svcByAddr[a.Unmap()]
	return svc, ok
}

// ServiceByKey returns the service "namespace/hostname".
func (s *State) ServiceByKey(key string) (*Service, bool) {
	svc, ok := s.svcByKey[key]
	return svc, ok
}

// IdentityOf returns the SPIFFE ID of a workload in this state.
func (s *State) IdentityOf(w *Workload) spiffeid.ID { return s.ids[w] }

// Endpoints returns the workloads backing port of svc, with the target
// port each listens on. Unhealthy workloads are included; balancers decide.
// The returned slice is shared and must not be modified.
func (s *State) Endpoints(svc *Service, port uint16) []Endpoint {
	// Services of this State cache the list per port; the State never
	// changes, so neither does the list. Callers must not modify it.
	if svc.lb != nil && s.svcByKey[svc.Key()] == svc {
		if v, ok := svc.lb.eps.Load(port); ok {
			return v.([]Endpoint)
		}
		eps := s.endpointsOf(svc, port)
		svc.lb.eps.Store(port, eps)
		return eps
	}
	return s.endpointsOf(svc, port)
}

func (s *State) endpointsOf(svc *Service, port uint16) []Endpoint {
	var svcTarget uint16
	found := false
	for _, p := range svc.Ports {
		if p.Port == port {
			svcTarget, found = p.TargetPort, true
			break
		}
	}
	var out []Endpoint
	for _, w := range s.endpoints[svc.Key()] {
		target, ok := uint16(0), false
		for _, m := range w.Services[svc.Key()] {
			if m.ServicePort == port {
				target, ok = m.TargetPort, true
				break
			}
		}
		if !ok && found {
			target, ok = svcTarget, true
		}
		if !ok {
			continue
		}
		if target == 0 {
			target = port
		}
		out = append(out, Endpoint{Workload: w, TargetPort: target})
	}
	return out
}

// StateHolder publishes the current State. The zero value holds an empty
// state. Readers never block writers or each other.
type StateHolder struct {
	p atomic.Pointer[State]

	mu sync.Mutex
	// changed is closed (and cleared) by Store; Changed makes it.
	changed chan struct{}
}

var emptyState = &State{}

// Load returns the current state.
func (h *StateHolder) Load() *State {
	if s := h.p.Load(); s != nil {
		return s
	}
	return emptyState
}

// Store replaces the current state and wakes every waiter on Changed.
// A [Proxy] re-authorizes its open inbound connections against the new
// state (see Config.DisablePolicyRecheck).
func (h *StateHolder) Store(s *State) {
	h.p.Store(s)
	h.mu.Lock()
	if h.changed != nil {
		close(h.changed)
		h.changed = nil
	}
	h.mu.Unlock()
}

// Changed returns a channel that is closed by the next Store. To miss no
// change, call Changed before Load: a Store that lands after the Load
// closes the channel, and one that landed before it is what Load returns.
func (h *StateHolder) Changed() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.changed == nil {
		h.changed = make(chan struct{})
	}
	return h.changed
}
