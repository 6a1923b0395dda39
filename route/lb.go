package route

import (
	"math"
	"net/textproto"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
)

// cluster returns (creating once) the cluster for d, or nil when it cannot
// exist: unknown host, unknown port or undefined subset.
func (t *Table) cluster(from *service, d Destination, policies map[string]*Policy, wl Locality) *Cluster {
	s := t.services[d.Host]
	if s == nil {
		return nil
	}
	if d.Port == 0 {
		return nil
	}
	pi := slices.IndexFunc(s.Ports, func(p Port) bool { return p.Port == d.Port })
	if pi < 0 {
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
	lb, outlier := mergePolicy(pol, sub, d.Port)
	c := &Cluster{Destination: d}
	if lb != nil {
		c.LB = *lb
	}
	c.hashHeader = textproto.CanonicalMIMEHeaderKey(c.LB.Hash.Header)
	var eps []*Endpoint
	for i := range s.Endpoints {
		ep := &s.Endpoints[i]
		if ep.Unhealthy || !servesPort(ep, s.Ports[pi]) || !reachable(ep, wl.Network) {
			continue
		}
		if sub != nil && !labelsContain(ep.Labels, sub.Labels) {
			continue
		}
		eps = append(eps, ep)
	}
	plan := planLocality(lb, outlier, s.TrafficDistribution, wl)
	c.Endpoints, c.localities = plan.apply(wl, eps)
	if len(c.localities) > 0 {
		idx := make([]int, len(c.localities))
		w := make([]uint32, len(c.localities))
		for i, g := range c.localities {
			idx[i], w[i] = i, g.weight
		}
		c.groups = NewWeighted(idx, w)
	}
	c.rr = make([]atomic.Uint64, max(len(c.localities), 1))
	c.active = make([]atomic.Int64, len(c.Endpoints))
	if c.LB.Kind == ConsistentHash {
		weights := c.endpointWeights()
		if c.LB.Maglev {
			c.maglev = buildMaglev(c.Endpoints, weights, c.LB.RingSize)
		} else {
			c.ring = buildRing(c.Endpoints, weights, c.LB.RingSize)
		}
	}
	s.clusters[d] = c
	return c
}

// servesPort reports whether ep serves Service port p: a named target port
// must be defined by the workload.
func servesPort(ep *Endpoint, p Port) bool {
	return p.TargetPortName == "" || ep.Ports[p.TargetPortName] != 0
}

// reachable reports whether ep can be reached from network: a workload
// without an address only through its network gateway, and only from
// another network (ztunnel's load_balance; a gateway is never used inside
// its own network).
func reachable(ep *Endpoint, network string) bool {
	return ep.IP != "" || (ep.NetworkGateway != "" && ep.Network != network)
}

// mergePolicy is Istio's MergeSubsetTrafficPolicy for the fields that
// matter here: a port-level entry replaces its level wholesale (an unset
// loadBalancer there means the default, not the level's), and the subset's
// loadBalancer and outlierDetection, when set, replace the parent's.
func mergePolicy(pol *Policy, sub *Subset, port int) (lb *LB, outlier bool) {
	if pol == nil {
		return nil, false
	}
	lb, outlier = pol.Policy.LB, pol.Policy.OutlierDetection
	if pl, ok := pol.Policy.Ports[port]; ok {
		lb, outlier = pl.LB, pl.OutlierDetection
	}
	if sub == nil {
		return lb, outlier
	}
	if pl, ok := sub.Policy.Ports[port]; ok {
		return pl.LB, pl.OutlierDetection
	}
	if sub.Policy.LB != nil {
		lb = sub.Policy.LB
	}
	if sub.Policy.OutlierDetection {
		outlier = true
	}
	return lb, outlier
}

func labelsContain(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// ---- locality ----

// localityGroup is a run of Cluster.Endpoints in one locality with its
// share of traffic (DestinationRule distribute).
type localityGroup struct {
	lo, hi int
	weight uint32
}

// localityPlan is how a cluster treats locality, decided as Istio's
// GetLocalityLbSetting and ApplyLocalityLoadBalancer do.
type localityPlan struct {
	distribute *LocalityDistribute
	failover   bool
	labels     []FailoverLabel
	regions    []RegionFailover
}

// planLocality picks the locality setting: the DestinationRule's (if set
// and enabled), else the Service's trafficDistribution (which forces
// failover), else the mesh default (enabled, no settings). Failover needs
// outlier detection unless forced; distribute does not.
func planLocality(lb *LB, outlier bool, trafficDistribution string, wl Locality) localityPlan {
	var plan localityPlan
	if wl == (Locality{}) {
		return plan // locality preference disabled
	}
	set, forced := &LocalityLB{}, false
	switch {
	case lb != nil && lb.Locality != nil:
		if lb.Locality.Disabled {
			return plan
		}
		set = lb.Locality
	case trafficDistribution == "PreferClose" || trafficDistribution == "PreferSameZone":
		set, forced = &LocalityLB{FailoverPriority: []FailoverLabel{{Label: LabelNetwork}, {Label: LabelRegion}, {Label: LabelZone}}}, true
	case trafficDistribution == "PreferSameNode":
		set, forced = &LocalityLB{FailoverPriority: []FailoverLabel{{Label: LabelNetwork}, {Label: LabelRegion}, {Label: LabelZone}, {Label: LabelSubzone}, {Label: LabelHostname}}}, true
	}
	if len(set.Distribute) > 0 {
		for i := range set.Distribute {
			if localityMatch(wl, set.Distribute[i].From) {
				plan.distribute = &set.Distribute[i]
				break
			}
		}
		return plan
	}
	if outlier || forced {
		plan.failover = true
		plan.labels, plan.regions = set.FailoverPriority, set.Failover
	}
	return plan
}

// localityMatch is Istio's LocalityMatch: pattern is "region/zone/subzone"
// where "*" (or an omitted zone or subzone) matches anything.
func localityMatch(l Locality, pattern string) bool {
	region, rest, _ := strings.Cut(pattern, "/")
	zone, subzone, _ := strings.Cut(rest, "/")
	return (region == "*" || region == l.Region) &&
		(zone == "*" || zone == "" || zone == l.Zone) &&
		(subzone == "*" || subzone == "" || subzone == l.Subzone)
}

// apply selects and orders the endpoints of a cluster: with failover only
// the best priority level is kept (a level without endpoints has no
// health, so Envoy sends everything to the next); with distribute the
// endpoints are grouped by locality, each group weighted.
func (p *localityPlan) apply(wl Locality, eps []*Endpoint) ([]*Endpoint, []localityGroup) {
	switch {
	case p.distribute != nil:
		return p.distributed(eps)
	case p.failover:
		best := -1
		var out []*Endpoint
		for _, ep := range eps {
			prio := p.priority(wl, ep)
			if best < 0 || prio < best {
				best, out = prio, out[:0]
			}
			if prio == best {
				out = append(out, ep)
			}
		}
		return out, nil
	}
	return eps, nil
}

// priority is the Envoy priority (0 best) of ep: with FailoverPriority, the
// number of labels after the first mismatch (applyFailoverPriorities),
// refined by the region failover when Failover is also set; otherwise
// Istio's LbPriority (region, zone, subzone) with the region failover
// (applyLocalityFailover).
func (p *localityPlan) priority(wl Locality, ep *Endpoint) int {
	prio := 0
	if len(p.labels) > 0 {
		matched := 0
		for _, l := range p.labels {
			want := l.Value
			if !l.HasValue {
				want = topologyValue(l.Label, wl)
			}
			if endpointLabel(ep, l.Label) != want {
				break
			}
			matched++
		}
		prio = len(p.labels) - matched
		if len(p.regions) == 0 {
			return prio
		}
		prio *= 5
	}
	lp := 3
	switch {
	case wl.Region != ep.Region:
		for _, f := range p.regions {
			if f.From == wl.Region {
				if ep.Region != f.To {
					lp = 4
				}
				break
			}
		}
	case wl.Zone != ep.Zone:
		lp = 2
	case wl.Subzone != ep.Subzone:
		lp = 1
	default:
		lp = 0
	}
	return prio + lp
}

// topologyValue is the value of a topology label for locality l.
func topologyValue(label string, l Locality) string {
	switch label {
	case LabelNetwork:
		return l.Network
	case LabelRegion:
		return l.Region
	case LabelZone:
		return l.Zone
	case LabelSubzone:
		return l.Subzone
	case LabelHostname:
		return l.Node
	}
	return ""
}

func isTopologyLabel(label string) bool {
	switch label {
	case LabelNetwork, LabelRegion, LabelZone, LabelSubzone, LabelHostname:
		return true
	}
	return false
}

// endpointLabel is an endpoint's label value; topology labels come from
// its locality, as Istio adds them to every endpoint.
func endpointLabel(ep *Endpoint, label string) string {
	if isTopologyLabel(label) {
		return topologyValue(label, ep.Locality)
	}
	return ep.Labels[label]
}

// distributed groups eps by locality and weights the groups as Istio's
// applyLocalityWeights: each To entry's weight is split over the
// localities it matches in proportion to their endpoints (rounded up);
// localities no entry matches get no traffic.
func (p *localityPlan) distributed(eps []*Endpoint) ([]*Endpoint, []localityGroup) {
	type key struct{ region, zone, subzone string }
	type group struct {
		eps   []*Endpoint
		share int // index into To, -1 for none
	}
	var order []key
	groups := map[key]*group{}
	for _, ep := range eps {
		k := key{ep.Region, ep.Zone, ep.Subzone}
		g := groups[k]
		if g == nil {
			g = &group{share: -1}
			for i, to := range p.distribute.To {
				if localityMatch(ep.Locality, to.Locality) {
					g.share = i
					break
				}
			}
			groups[k] = g
			order = append(order, k)
		}
		g.eps = append(g.eps, ep)
	}
	total := make([]int, len(p.distribute.To))
	for _, k := range order {
		if g := groups[k]; g.share >= 0 {
			total[g.share] += len(g.eps)
		}
	}
	var out []*Endpoint
	var locs []localityGroup
	for _, k := range order {
		g := groups[k]
		if g.share < 0 {
			continue
		}
		w := uint64(p.distribute.To[g.share].Weight)
		weight := (w*uint64(len(g.eps)) + uint64(total[g.share]) - 1) / uint64(total[g.share])
		if weight == 0 {
			continue // a zero weight (rejected by Istio's validation) gets nothing
		}
		locs = append(locs, localityGroup{lo: len(out), hi: len(out) + len(g.eps), weight: uint32(weight)})
		out = append(out, g.eps...)
	}
	return out, locs
}

// endpointWeights are the endpoints' shares for the hash tables: equal, or
// with distribute each locality's weight split over its endpoints (Envoy
// normalises host weights by locality weights for ring hash and Maglev).
func (c *Cluster) endpointWeights() []float64 {
	w := make([]float64, len(c.Endpoints))
	if len(c.localities) == 0 {
		for i := range w {
			w[i] = 1
		}
		return w
	}
	for _, g := range c.localities {
		for i := g.lo; i < g.hi; i++ {
			w[i] = float64(g.weight) / float64(g.hi-g.lo)
		}
	}
	return w
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

const (
	defaultRingSize   = 1024
	maxRingSize       = 8 << 20
	defaultMaglevSize = 65537
)

// buildRing builds a ring as Envoy's ring hash does: the least weighted
// endpoint gets a whole number of points, at least minSize points in all
// (capped at 8M), points handed out over running sums in endpoint order,
// endpoint i's points hashed from "<ip>_0", "<ip>_1", ... So, as in Envoy,
// an endpoint keeps its first points when others join or leave, but each
// endpoint has about minSize/n of them: adding an endpoint moves the keys
// it takes over plus those of the points the others give up.
func buildRing(eps []*Endpoint, weights []float64, minSize int) []ringEntry {
	if minSize <= 0 {
		minSize = defaultRingSize
	}
	if len(eps) == 0 {
		return nil
	}
	var sum float64
	for _, w := range weights {
		sum += w
	}
	minW := 1.0
	for _, w := range weights {
		minW = min(minW, w/sum)
	}
	scale := min(math.Ceil(minW*float64(minSize))/minW, maxRingSize)
	ring := make([]ringEntry, 0, int(math.Ceil(scale)))
	var current float64
	target := 0
	for i, ep := range eps {
		base := fnv(ep.IP+"_", fnvOffset)
		current += scale * weights[i] / sum
		for j := 0; float64(target) < current; j++ {
			ring = append(ring, ringEntry{hash: mix(fnv(strconv.Itoa(j), base)), ep: i})
			target++
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

// buildMaglev fills a Maglev lookup table of the given prime size (0 means
// 65537) as Envoy does: every endpoint walks its own permutation of the
// table (an offset and a skip derived from its address) and takes the next
// free slot in turn; an endpoint with a fraction of the largest weight takes
// a turn only that often. A key's endpoint is table[hash % size].
func buildMaglev(eps []*Endpoint, weights []float64, size int) []int32 {
	if size <= 0 {
		size = defaultMaglevSize
	}
	if len(eps) == 0 {
		return nil
	}
	m := uint64(size)
	type entry struct {
		offset, skip, next uint64
		weight, target     float64
	}
	var sum, maxW float64
	for _, w := range weights {
		sum += w
	}
	es := make([]entry, len(eps))
	for i, ep := range eps {
		es[i] = entry{
			offset: mix(fnv(ep.IP, fnvOffset)) % m,
			skip:   mix(fnv(ep.IP, fnvOffset^0x9e3779b97f4a7c15))%(m-1) + 1,
			weight: weights[i] / sum,
		}
		maxW = max(maxW, es[i].weight)
	}
	table := make([]int32, size)
	for i := range table {
		table[i] = -1
	}
	filled := 0
	for turn := 1.0; filled < size; turn++ {
		for i := range es {
			if filled == size {
				break
			}
			e := &es[i]
			if turn*e.weight < e.target {
				continue
			}
			e.target += maxW
			slot := (e.offset + e.skip*e.next) % m
			for table[slot] >= 0 {
				e.next++
				slot = (e.offset + e.skip*e.next) % m
			}
			table[slot] = int32(i)
			e.next++
			filled++
		}
	}
	return table
}

// isPrime reports whether n is prime (Maglev table sizes must be).
func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// hashLookup maps a hash to an endpoint index of c's ring or Maglev table.
func (c *Cluster) hashLookup(h uint64) int {
	if c.maglev != nil {
		return int(c.maglev[h%uint64(len(c.maglev))])
	}
	return ringLookup(c.ring, h)
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
