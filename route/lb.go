package route

import (
	"net/textproto"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
)

func (t *Table) cluster(from *service, d Destination, policies map[string]*Policy, wl Locality) *Cluster {
	s := t.services[d.Host]
	if s == nil {
		return nil
	}
	if d.Port == 0 {
		return nil
	}
	if !slices.ContainsFunc(s.Ports, func(p Port) bool { return p.Port == d.Port }) {
		return nil
	}
	if c, ok := s.clusters[d]; ok {
		return c
	}
	pol := policies[d.Host]
	var sub *Subset
	if d.Subset != "" {
		if pol != nil {
			for i := range pol.Subsets {
				if pol.Subsets[i].Name == d.Subset {
					sub = &pol.Subsets[i]
				}
			}
		}
		if sub == nil {
			s.clusters[d] = nil
			return nil
		}
	}
	c := &Cluster{Destination: d, LB: effectiveLB(pol, sub, d.Port)}
	c.hashHeader = textproto.CanonicalMIMEHeaderKey(c.LB.Hash.Header)
	if len(c.LB.Failover) == 0 && (s.TrafficDistribution == "PreferClose" || s.TrafficDistribution == "PreferSameZone") {
		c.LB.Failover = []string{"network", "region", "zone"}
	}
	if len(c.LB.Failover) == 0 && s.TrafficDistribution == "PreferSameNode" {
		c.LB.Failover = []string{"network", "region", "zone", "subzone", "node"}
	}
	best := -1
	for i := range s.Endpoints {
		ep := &s.Endpoints[i]
		if ep.Unhealthy {
			continue
		}
		if sub != nil && !labelsContain(ep.Labels, sub.Labels) {
			continue
		}
		rank := 0
		if wl != (Locality{}) {
			rank = localityRank(c.LB.Failover, wl, ep.Locality)
		}
		if rank > best {
			best = rank
			c.Endpoints = c.Endpoints[:0]
		}
		if rank == best {
			c.Endpoints = append(c.Endpoints, ep)
		}
	}
	c.active = make([]atomic.Int64, len(c.Endpoints))
	if c.LB.Kind == ConsistentHash {
		c.ring = buildRing(c.Endpoints, c.LB.RingSize)
	}
	s.clusters[d] = c
	return c
}

func effectiveLB(pol *Policy, sub *Subset, port int) LB {
	// Istio's MergeSubsetTrafficPolicy: a port-level setting replaces its
	// level wholesale; then the subset's fields override the parent's.
	if pol == nil {
		return LB{}
	}
	level := func(tp TrafficPolicy) *LB {
		if lb, ok := tp.Ports[port]; ok {
			return lb
		}
		return tp.LB
	}
	if sub != nil {
		if lb := level(sub.Policy); lb != nil {
			return *lb
		}
	}
	if lb := level(pol.Policy); lb != nil {
		return *lb
	}
	return LB{}
}

func labelsContain(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// ---- consistent hashing ----

type ringEntry struct {
	hash uint64
	ep   int
}

func fnv(s string, h uint64) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

const fnvOffset = 14695981039346656037

// fnvUnescaped is fnv over the decoded form of a query component.
func fnvUnescaped(s string, h uint64) uint64 {
	for i := 0; i < len(s); {
		b, n := decodeAt(s, i)
		h ^= uint64(b)
		h *= 1099511628211
		i += n
	}
	return h
}

func mix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

func buildRing(eps []*Endpoint, size int) []ringEntry {
	if size <= 0 {
		size = 1024
	}
	if len(eps) == 0 {
		return nil
	}
	per := (size + len(eps) - 1) / len(eps)
	ring := make([]ringEntry, 0, per*len(eps))
	for i, ep := range eps {
		for j := 0; j < per; j++ {
			ring = append(ring, ringEntry{hash: mix(fnv(strconv.Itoa(j), fnv(ep.IP+"_", fnvOffset))), ep: i})
		}
	}
	sort.Slice(ring, func(a, b int) bool { return ring[a].hash < ring[b].hash })
	return ring
}

func ringLookup(ring []ringEntry, h uint64) int {
	i := sort.Search(len(ring), func(i int) bool { return ring[i].hash >= h })
	if i == len(ring) {
		i = 0
	}
	return ring[i].ep
}

// hashRequest computes the consistent-hash key of req for the cluster's
// hash policy; ok is false when the request lacks the key. It does not
// allocate: the header name was canonicalised when the cluster was built.
func (c *Cluster) hashRequest(req *Request) (uint64, bool) {
	k := &c.LB.Hash
	switch {
	case k.Header != "":
		v, ok := req.Header[c.hashHeader]
		if !ok || len(v) == 0 {
			return 0, false
		}
		return mix(fnv(v[0], fnvOffset)), true
	case k.Cookie != "":
		for _, line := range req.Header["Cookie"] {
			for line != "" {
				var part string
				part, line, _ = strings.Cut(line, ";")
				name, val, _ := strings.Cut(strings.TrimSpace(part), "=")
				if name == k.Cookie {
					return mix(fnv(val, fnvOffset)), true
				}
			}
		}
		return 0, false
	case k.SourceIP:
		if req.SourceIP == "" {
			return 0, false
		}
		return mix(fnv(req.SourceIP, fnvOffset)), true
	case k.Query != "":
		_, q := splitQuery(req.Path)
		v, ok := queryValue(q, k.Query)
		if !ok {
			return 0, false
		}
		return mix(fnvUnescaped(v, fnvOffset)), true
	}
	return 0, false
}
