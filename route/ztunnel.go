package route

import "slices"

// scopeMatch compares one locality field, as ztunnel does.
func scopeMatch(scope string, a, b Locality) bool {
	switch scope {
	case "network":
		return a.Network == b.Network
	case "region":
		return a.Region == b.Region
	case "zone":
		return a.Zone == b.Zone
	case "subzone":
		return a.Subzone == b.Subzone
	case "node":
		return a.Node == b.Node
	}
	return false
}

// localityRank scores ep relative to src over the ordered scopes, as ztunnel
// ranks FAILOVER endpoints: count matching scopes in order and stop at the
// first mismatch, except that NETWORK as first scope adds a bonus when it
// matches and does not stop the count when it does not.
func localityRank(scopes []string, src, ep Locality) int {
	rank := 0
	for i, sc := range scopes {
		m := scopeMatch(sc, src, ep)
		if i == 0 && sc == "network" {
			if m {
				rank += len(scopes)
			}
			continue
		}
		if !m {
			break
		}
		rank++
	}
	return rank
}

// ztunnel balances a connection to a Service without a waypoint as
// ztunnel's load_balance does: PASSTHROUGH forwards to the address dialled;
// otherwise the candidates are the endpoints that serve the port, are
// reachable from the client's network (an endpoint without an address
// only through its network gateway, from another network) and pass the
// health policy; STRICT keeps those matching every scope, FAILOVER those of
// the best rank; one is chosen at random weighted by capacity.
func (t *Table) ztunnel(s *service, req *Request, r Rand) Result {
	res := Result{slot: -1, Backend: -1}
	if s.Passthrough {
		res.Kind, res.Passthrough = Forward, true
		return res
	}
	pi := slices.IndexFunc(s.Ports, func(p Port) bool { return p.Port == req.Port })
	if pi < 0 {
		res.Kind, res.Reason = Refused, ReasonUnknownHost
		return res
	}
	port := s.Ports[pi]
	// rank returns the endpoint's rank, or -1 when it is not a candidate.
	rank := func(ep *Endpoint) int {
		if (ep.Unhealthy && !s.allowAll) || !servesPort(ep, port) || !reachable(ep, req.Source.Network) {
			return -1
		}
		switch {
		case s.strict != nil:
			for _, sc := range s.strict {
				if !scopeMatch(sc, req.Source, ep.Locality) {
					return -1
				}
			}
		case s.failover != nil:
			return localityRank(s.failover, req.Source, ep.Locality)
		}
		return 0
	}
	best := -1
	var total uint64
	for i := range s.Endpoints {
		ep := &s.Endpoints[i]
		rk := rank(ep)
		if rk < 0 {
			continue
		}
		if rk > best {
			best, total = rk, 0
		}
		if rk == best {
			total += uint64(ep.Capacity)
		}
	}
	if total == 0 {
		res.Kind, res.Reason = Refused, ReasonNoHealthy
		return res
	}
	sel := r.Uint64() % total
	for i := range s.Endpoints {
		ep := &s.Endpoints[i]
		if rank(ep) != best {
			continue
		}
		if sel < uint64(ep.Capacity) {
			res.Kind, res.Endpoint = Forward, ep
			return res
		}
		sel -= uint64(ep.Capacity)
	}
	res.Kind, res.Reason = Refused, ReasonNoHealthy
	return res
}
