package route

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

func (t *Table) ztunnel(s *service, req *Request, r Rand) Result {
	res := Result{slot: -1, Backend: -1}
	usable := func(ep *Endpoint) bool { return !ep.Unhealthy || s.allowAll }
	best := -1
	var total uint64
	for i := range s.Endpoints {
		ep := &s.Endpoints[i]
		if !usable(ep) {
			continue
		}
		rank := 0
		switch {
		case s.strict != nil:
			ok := true
			for _, sc := range s.strict {
				ok = ok && scopeMatch(sc, req.Source, ep.Locality)
			}
			if !ok {
				continue
			}
		case s.failover != nil:
			rank = localityRank(s.failover, req.Source, ep.Locality)
		}
		if rank > best {
			best, total = rank, 0
		}
		if rank == best {
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
		if !usable(ep) {
			continue
		}
		rank := 0
		switch {
		case s.strict != nil:
			ok := true
			for _, sc := range s.strict {
				ok = ok && scopeMatch(sc, req.Source, ep.Locality)
			}
			if !ok {
				continue
			}
		case s.failover != nil:
			rank = localityRank(s.failover, req.Source, ep.Locality)
		}
		if rank != best {
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
