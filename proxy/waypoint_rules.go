package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/route"
)

// WaypointRules is what a [Waypoint] enforces on top of its [State]: the
// L7 authorization policies, the routes and destination policies, and the
// application protocol of Service ports. Package authz/istio decodes
// AuthorizationPolicy YAML into Policies; route/istio and route/gatewayapi
// decode VirtualService, DestinationRule and Gateway API routes into
// Routes and Destinations. The zero value allows everything, routes every
// request to its Service's endpoints and sniffs every port.
type WaypointRules struct {
	// Authz configures the authorization engine (root namespace, known
	// extension providers).
	Authz authz.Config
	// Policies are the AuthorizationPolicies. A waypoint applies only
	// those with targetRefs naming the Service a request is addressed to,
	// the waypoint's Gateway or the istio-waypoint GatewayClass
	// (authz.md §3.2); the others are ignored here.
	Policies []authz.Policy
	// Routes are VirtualServices and Gateway API routes converted to
	// route configurations.
	Routes []route.RouteConfig
	// Destinations are the DestinationRules (subsets, load balancing).
	Destinations []route.Policy
	// AppProtocols gives Service ports their protocol, keyed by
	// "hostname:port", with Istio's protocol selection: the appProtocol,
	// else the port name ("http", "http2", "grpc", "grpc-web", "tcp",
	// "tls", "https", or those followed by "-suffix"). A port that is not
	// listed, or whose value names no protocol, is sniffed: HTTP/1.1 and
	// HTTP/2 prior knowledge are served as HTTP, anything else is
	// relayed as TCP.
	AppProtocols map[string]string
	// Domain is the cluster DNS suffix; if empty, "cluster.local".
	Domain string
}

// wpRules are installed rules with their compiled engines.
type wpRules struct {
	WaypointRules
	l7  *authz.Engine // HTTP semantics
	tcp *authz.Engine // the same policies with Envoy's forTCP semantics
}

// portProto is the protocol of a Service port as the waypoint serves it.
type portProto uint8

const (
	protoAuto  portProto = iota // sniffed
	protoHTTP                   // HTTP/1.1 upstream
	protoHTTP2                  // HTTP/2 upstream (http2, h2c)
	protoGRPC                   // HTTP/2 upstream, gRPC local replies
	protoTCP                    // L4 relay
	protoTLS                    // L4 relay, TLS routes
)

// parseAppProtocol applies Istio's protocol selection to an appProtocol or
// port name.
func parseAppProtocol(s string) portProto {
	s = strings.ToLower(s)
	is := func(p string) bool { return s == p || strings.HasPrefix(s, p+"-") }
	switch {
	case s == "grpc-web" || strings.HasPrefix(s, "grpc-web-"):
		return protoHTTP
	case is("grpc"):
		return protoGRPC
	case is("http2") || s == "h2c" || s == "kubernetes.io/h2c":
		return protoHTTP2
	case is("http"):
		return protoHTTP
	case is("tcp") || s == "mongo" || s == "mysql" || s == "redis":
		return protoTCP
	case is("tls") || is("https"):
		return protoTLS
	}
	return protoAuto
}

// appProtocolKey is the AppProtocols key of a Service port.
func appProtocolKey(host string, port uint16) string {
	return host + ":" + strconv.Itoa(int(port))
}

// targetPortName is the named target port the route table uses for each
// Service port, so that every endpoint carries its own target port (a
// workload may map a Service port differently, see Workload.Services).
func targetPortName(port int) string { return "#" + strconv.Itoa(port) }

// compileRules builds the authorization engines of r. The engines are
// always usable: invalid policies deny their scope (authz.New), and their
// errors are returned.
func compileRules(r WaypointRules) (*wpRules, error) {
	l7, err := authz.New(r.Authz, r.Policies)
	tcp, _ := authz.New(r.Authz, tcpPolicies(r.Policies))
	return &wpRules{WaypointRules: r, l7: l7, tcp: tcp}, err
}

// tcpPolicies rewrites policies the way istiod builds the network RBAC
// filter of a TCP port behind a waypoint (authz.md §5.3, Istio's
// generators with forTCP): attributes that only exist in HTTP (hosts,
// methods, paths, request principals, request.headers and request.auth.*
// conditions) make an ALLOW or AUDIT rule that uses them never match, and
// are dropped from DENY and CUSTOM rules, which widens them: a DENY of
// "methods: [POST]" on a TCP port denies every connection.
func tcpPolicies(in []authz.Policy) []authz.Policy {
	out := make([]authz.Policy, 0, len(in))
	for _, p := range in {
		if p.Err != nil {
			out = append(out, p)
			continue
		}
		q := p
		q.Rules = nil
		for _, r := range p.Rules {
			if !ruleUsesHTTP(r) {
				q.Rules = append(q.Rules, r)
				continue
			}
			if p.Action == authz.Allow || p.Action == authz.Audit {
				continue // the rule is skipped: it can never match TCP
			}
			q.Rules = append(q.Rules, stripHTTP(r))
		}
		if len(p.Rules) > 0 && len(q.Rules) == 0 {
			// Every rule used HTTP: keep the policy (so that an ALLOW
			// policy still counts as one) with a rule that never matches.
			q.Rules = []authz.Rule{neverRule()}
		}
		out = append(out, q)
	}
	return out
}

// neverRule is a rule no connection matches: a source must both have
// and not have an identity.
func neverRule() authz.Rule {
	return authz.Rule{From: []*authz.Source{{Principals: []string{"*"}, NotPrincipals: []string{"*"}}}}
}

func isHTTPKey(key string) bool {
	return strings.HasPrefix(key, "request.")
}

func ruleUsesHTTP(r authz.Rule) bool {
	for _, s := range r.From {
		if s != nil && (len(s.RequestPrincipals) > 0 || len(s.NotRequestPrincipals) > 0) {
			return true
		}
	}
	for _, o := range r.To {
		if o != nil && (len(o.Hosts) > 0 || len(o.NotHosts) > 0 || len(o.Methods) > 0 || len(o.NotMethods) > 0 ||
			len(o.Paths) > 0 || len(o.NotPaths) > 0) {
			return true
		}
	}
	for _, c := range r.When {
		if isHTTPKey(c.Key) {
			return true
		}
	}
	return false
}

// stripHTTP removes the HTTP-only attributes of a DENY or CUSTOM rule. A
// source or operation left with nothing matches everything, so its whole
// list stops constraining the rule.
func stripHTTP(r authz.Rule) authz.Rule {
	var out authz.Rule
	for _, s := range r.From {
		if s == nil {
			out.From = append(out.From, s)
			continue
		}
		c := *s
		c.RequestPrincipals, c.NotRequestPrincipals = nil, nil
		if emptySource(&c) {
			out.From = nil // an empty source matches every peer
			break
		}
		out.From = append(out.From, &c)
	}
	for _, o := range r.To {
		if o == nil {
			out.To = append(out.To, o)
			continue
		}
		c := *o
		c.Hosts, c.NotHosts, c.Methods, c.NotMethods, c.Paths, c.NotPaths = nil, nil, nil, nil, nil, nil
		if len(c.Ports)+len(c.NotPorts) == 0 {
			out.To = nil
			break
		}
		out.To = append(out.To, &c)
	}
	for _, c := range r.When {
		if !isHTTPKey(c.Key) {
			out.When = append(out.When, c)
		}
	}
	return out
}

func emptySource(s *authz.Source) bool {
	return len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces)+
		len(s.ServiceAccounts)+len(s.NotServiceAccounts)+len(s.IPBlocks)+len(s.NotIPBlocks)+
		len(s.RemoteIPBlocks)+len(s.NotRemoteIPBlocks)+len(s.TrustDomains)+len(s.NotTrustDomains) == 0
}

// wpSnapshot is what requests are served from: one State, the installed
// rules, and the route table built from both.
type wpSnapshot struct {
	// stateKey and rulesKey are the State and rules the snapshot was
	// made for (the cache key); state and rules are what it serves,
	// which differ only when the routes did not build.
	stateKey *State
	rulesKey *wpRules
	state    *State
	rules    *wpRules
	table    *route.Table
	byHost   map[string]*Service
	protos   map[string]portProto // by appProtocolKey
	subset   map[string]*route.Policy
}

// routeConfig builds the route table's input from the state and rules:
// every Service of the state with its endpoints (each workload's target
// port carried as a named port), the routes and the destination
// policies.
func routeConfig(st *State, r *WaypointRules, self waypointSelf) route.Config {
	cfg := route.Config{
		Domain:           r.Domain,
		Routes:           r.Routes,
		Policies:         r.Destinations,
		WaypointLocality: self.locality,
	}
	seen := map[string]bool{}
	svcs := st.Services()
	for i := range svcs {
		s := &svcs[i]
		if seen[s.Hostname] || len(s.Ports) == 0 {
			continue // route needs unique hosts and at least one port
		}
		seen[s.Hostname] = true
		rs := route.Service{
			Host:              s.Hostname,
			Namespace:         s.Namespace,
			NoWaypoint:        s.Waypoint == nil,
			WaypointNamespace: self.namespace,
		}
		if len(s.Addresses) > 0 {
			rs.VIP = s.Addresses[0].String()
		}
		if lb := s.LoadBalancing; lb != nil {
			switch {
			case lb.Mode == LBStrict && slices.Equal(lb.RoutingPreference, []string{"node"}):
				rs.InternalTrafficPolicy = "Local"
			case lb.Mode == LBFailover && slices.Contains(lb.RoutingPreference, "node"):
				rs.TrafficDistribution = "PreferSameNode"
			case lb.Mode == LBFailover:
				rs.TrafficDistribution = "PreferClose"
			}
			rs.PublishNotReadyAddresses = lb.AllowUnhealthy
		}
		eps := map[*Workload]*route.Endpoint{}
		var order []*Workload
		for _, p := range s.Ports {
			rs.Ports = append(rs.Ports, route.Port{
				Port:           int(p.Port),
				TargetPortName: targetPortName(int(p.Port)),
				AppProtocol:    r.AppProtocols[appProtocolKey(s.Hostname, p.Port)],
			})
			for _, ep := range st.Endpoints(s, p.Port) {
				w := ep.Workload
				if len(w.Addresses) == 0 {
					continue
				}
				e, ok := eps[w]
				if !ok {
					e = &route.Endpoint{
						IP:     w.Addresses[0].String(),
						Labels: w.Labels,
						Ports:  map[string]int{},
						Locality: route.Locality{
							Network: w.Network, Region: w.Locality.Region, Zone: w.Locality.Zone,
							Subzone: w.Locality.Subzone, Node: w.Node,
						},
						Unhealthy: w.Unhealthy,
						Capacity:  w.Capacity,
					}
					eps[w] = e
					order = append(order, w)
				}
				e.Ports[targetPortName(int(p.Port))] = int(ep.TargetPort)
			}
		}
		for _, w := range order {
			rs.Endpoints = append(rs.Endpoints, *eps[w])
		}
		cfg.Services = append(cfg.Services, rs)
	}
	return cfg
}

// buildSnapshot compiles the route table of st and r.
func buildSnapshot(st *State, r *wpRules, self waypointSelf) (*wpSnapshot, error) {
	t, err := route.Build(routeConfig(st, &r.WaypointRules, self))
	if err != nil {
		return nil, fmt.Errorf("proxy: waypoint routes: %w", err)
	}
	snap := &wpSnapshot{
		stateKey: st, rulesKey: r,
		state: st, rules: r, table: t,
		byHost: map[string]*Service{},
		protos: map[string]portProto{},
		subset: map[string]*route.Policy{},
	}
	svcs := st.Services()
	for i := range svcs {
		if _, dup := snap.byHost[svcs[i].Hostname]; !dup {
			snap.byHost[svcs[i].Hostname] = &svcs[i]
		}
	}
	for k, v := range r.AppProtocols {
		snap.protos[k] = parseAppProtocol(v)
	}
	for i := range r.Destinations {
		if _, ok := snap.subset[r.Destinations[i].Host]; !ok {
			snap.subset[r.Destinations[i].Host] = &r.Destinations[i]
		}
	}
	return snap, nil
}

// proto returns the protocol of a Service port.
func (s *wpSnapshot) proto(host string, port uint16) portProto {
	return s.protos[appProtocolKey(host, port)]
}

// endpointTarget returns the address a route endpoint serves Service port
// port on.
func endpointTarget(ep *route.Endpoint, port int) (netip.AddrPort, error) {
	ip, err := netip.ParseAddr(ep.IP)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy: waypoint endpoint %q: %w", ep.IP, err)
	}
	tp := ep.Ports[targetPortName(port)]
	if tp == 0 {
		tp = port
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(tp)), nil
}

// mirrorEndpoint chooses the endpoint a mirrored copy goes to: a usable
// endpoint of the mirror's Service (in its subset) on the mirror's port,
// else the Service's only port, else the port the request arrived on.
// pick chooses among the candidates.
func (s *wpSnapshot) mirrorEndpoint(m *route.Mirror, arrived int, pick func(n int) int) (netip.AddrPort, portProto, error) {
	svc, ok := s.table.Service(m.Host)
	if !ok {
		return netip.AddrPort{}, 0, fmt.Errorf("proxy: waypoint mirror: unknown host %s", m.Host)
	}
	port := m.Port
	if port == 0 {
		port = arrived
		if len(svc.Ports) == 1 {
			port = svc.Ports[0].Port
		}
	}
	var labels map[string]string
	if m.Subset != "" {
		p := s.subset[m.Host]
		found := false
		if p != nil {
			for _, ss := range p.Subsets {
				if ss.Name == m.Subset {
					labels, found = ss.Labels, true
				}
			}
		}
		if !found {
			return netip.AddrPort{}, 0, fmt.Errorf("proxy: waypoint mirror: %s has no subset %q", m.Host, m.Subset)
		}
	}
	var cands []*route.Endpoint
	for i := range svc.Endpoints {
		ep := &svc.Endpoints[i]
		if ep.Unhealthy || ep.IP == "" || ep.Ports[targetPortName(port)] == 0 {
			continue
		}
		match := true
		for k, v := range labels {
			if ep.Labels[k] != v {
				match = false
				break
			}
		}
		if match {
			cands = append(cands, ep)
		}
	}
	if len(cands) == 0 {
		return netip.AddrPort{}, 0, fmt.Errorf("proxy: waypoint mirror: %w: %s", ErrNoHealthyEndpoint, m.Host)
	}
	addr, err := endpointTarget(cands[pick(len(cands))], port)
	return addr, s.proto(m.Host, uint16(port)), err
}
