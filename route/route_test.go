package route_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/meshblocks/meshblocks/route"
)

// seq is a Rand returning fixed values in turn.
type seq struct {
	v []uint64
	i int
}

func (s *seq) Uint64() uint64 { x := s.v[s.i%len(s.v)]; s.i++; return x }

func TestWeightedIntervals(t *testing.T) {
	w := route.NewWeighted([]string{"v1", "v2", "v3"}, []uint32{80, 19, 1})
	require.EqualValues(t, 100, w.Total())
	tests := []struct {
		r    uint64
		want string
	}{{0, "v1"}, {79, "v1"}, {80, "v2"}, {98, "v2"}, {99, "v3"}, {100, "v1"}, {199, "v3"}}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.r), func(t *testing.T) {
			assert.Equal(t, tc.want, w.Item(w.Pick(tc.r)))
		})
	}
	zero := route.NewWeighted([]int{1}, []uint32{0})
	assert.Equal(t, -1, zero.Pick(5))
	// binary search path
	items := make([]int, 20)
	ws := make([]uint32, 20)
	for i := range items {
		items[i], ws[i] = i, uint32(i%3)
	}
	big := route.NewWeighted(items, ws)
	var cum uint64
	for i := range items {
		for r := cum; r < cum+uint64(ws[i]); r++ {
			assert.Equal(t, i, big.Item(big.Pick(r)), "r=%d", r)
		}
		cum += uint64(ws[i])
	}
}

func reviewsConfig(weights ...uint32) route.Config {
	cfg := route.Config{
		Services: []route.Service{{
			Host:  "reviews.default.svc.cluster.local",
			Ports: []route.Port{{Port: 9080, Name: "http"}},
			Endpoints: []route.Endpoint{
				{IP: "10.1.0.1", Labels: map[string]string{"version": "v1"}},
				{IP: "10.1.0.2", Labels: map[string]string{"version": "v2"}},
			},
		}},
		Policies: []route.Policy{{Host: "reviews.default.svc.cluster.local", Subsets: []route.Subset{
			{Name: "v1", Labels: map[string]string{"version": "v1"}},
			{Name: "v2", Labels: map[string]string{"version": "v2"}},
		}}},
	}
	hr := route.HTTPRoute{}
	for i, w := range weights {
		hr.Backends = append(hr.Backends, route.Backend{Host: "reviews.default.svc.cluster.local", Subset: fmt.Sprintf("v%d", i+1), Weight: w})
	}
	cfg.Routes = []route.RouteConfig{{Kind: "VirtualService", Name: "reviews", Namespace: "default", Hosts: []string{"reviews.default.svc.cluster.local"}, HTTP: []route.HTTPRoute{hr}}}
	return cfg
}

func TestPickUsesIntervalsInOrder(t *testing.T) {
	tbl, err := route.Build(reviewsConfig(90, 10))
	require.NoError(t, err)
	req := &route.Request{Host: "reviews.default.svc.cluster.local", Port: 9080, Path: "/"}
	// The first random value selects the weighted cluster, the next two the
	// least-request candidates.
	res := tbl.Pick(req, &seq{v: []uint64{89, 0, 0}})
	require.Equal(t, route.Forward, res.Kind)
	assert.Equal(t, "v1", res.Cluster.Subset)
	res.Done()
	res = tbl.Pick(req, &seq{v: []uint64{90, 0, 0}})
	assert.Equal(t, "v2", res.Cluster.Subset)
	res.Done()
}

func TestHolderKeepsPreviousTableOnInvalidConfig(t *testing.T) {
	var h route.Holder[route.Table]
	require.Nil(t, h.Load())
	require.NoError(t, h.Update(func() (*route.Table, error) { return route.Build(reviewsConfig(90, 10)) }))
	good := h.Load()
	require.NotNil(t, good)

	bad := reviewsConfig(90, 10)
	bad.Routes[0].HTTP[0].Matches = []route.Match{{PathKind: route.PathRegex, Path: "(unclosed"}}
	err := h.Update(func() (*route.Table, error) { return route.Build(bad) })
	require.Error(t, err)
	assert.ErrorIs(t, err, route.ErrInvalidConfig)
	assert.Contains(t, err.Error(), "VirtualService default/reviews: spec.http[0].match[0]")
	assert.Contains(t, err.Error(), "invalid RE2")
	assert.Same(t, good, h.Load(), "invalid config must leave the previous table in force")
}

func TestBuildAggregatesErrors(t *testing.T) {
	cfg := route.Config{Services: []route.Service{
		{Host: "a.default.svc.cluster.local", Ports: []route.Port{{Port: 70000}}, Endpoints: []route.Endpoint{{IP: "not-an-ip"}}},
		{Host: "b.default.svc.cluster.local"},
		{Host: "c.default.svc.cluster.local", Ports: []route.Port{{Port: 80}}, Endpoints: []route.Endpoint{{}, {NetworkGateway: "gw"}}},
	}}
	_, err := route.Build(cfg)
	require.Error(t, err)
	var fe *route.FieldError
	require.True(t, errors.As(err, &fe))
	for _, want := range []string{
		"Service c.default.svc.cluster.local: services[2].endpoints[0].ip: required unless the endpoint has a networkGateway",
		`Service c.default.svc.cluster.local: services[2].endpoints[1].networkGateway: not an IP address: "gw"`,
		"Service a.default.svc.cluster.local: services[0].ports[0].port: must be in 1..65535, got 70000",
		"Service a.default.svc.cluster.local: services[0].endpoints[0].ip: not an IP address",
		"Service b.default.svc.cluster.local: services[1].ports: at least one port is required",
	} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestPickUnknownHostAndPodIP(t *testing.T) {
	tbl, err := route.Build(reviewsConfig(1))
	require.NoError(t, err)
	res := tbl.Pick(&route.Request{Host: "nope.default.svc.cluster.local", Port: 80}, nil)
	assert.Equal(t, route.Refused, res.Kind)
	assert.Equal(t, route.ReasonUnknownHost, res.Reason)
	res = tbl.Pick(&route.Request{Host: "10.1.0.2", Port: 9080}, nil)
	require.Equal(t, route.Forward, res.Kind)
	assert.Equal(t, "10.1.0.2", res.Endpoint.IP)
}

// bigTable builds a Service with n prefix/exact routes, the last of which
// the benchmark request matches.
func bigTable(tb testing.TB, n int) *route.Table {
	cfg := reviewsConfig(1)
	hr := cfg.Routes[0].HTTP[0]
	var rules []route.HTTPRoute
	for i := 0; i < n; i++ {
		r := hr
		switch i % 4 {
		case 0:
			r.Matches = []route.Match{{PathKind: route.PathPrefix, Path: fmt.Sprintf("/svc-%d/", i)}}
		case 1:
			r.Matches = []route.Match{{PathKind: route.PathExact, Path: fmt.Sprintf("/exact/%d", i)}}
		case 2:
			r.Matches = []route.Match{{PathKind: route.PathPrefix, Path: fmt.Sprintf("/api/v%d", i), Headers: []route.HeaderMatch{{Name: "x-tenant", StringMatch: route.StringMatch{Kind: route.Exact, Value: "t"}}}}}
		case 3:
			r.Matches = []route.Match{{PathKind: route.PathSegmentPrefix, Path: fmt.Sprintf("/seg%d", i)}}
		}
		rules = append(rules, r)
	}
	last := hr
	last.Matches = []route.Match{{PathKind: route.PathPrefix, Path: "/target/", Headers: []route.HeaderMatch{{Name: "x-user", StringMatch: route.StringMatch{Kind: route.Exact, Value: "jason"}}}}}
	last.Backends = []route.Backend{
		{Host: "reviews.default.svc.cluster.local", Subset: "v1", Weight: 80},
		{Host: "reviews.default.svc.cluster.local", Subset: "v2", Weight: 20},
	}
	rules = append(rules, last)
	cfg.Routes[0].HTTP = rules
	tbl, err := route.Build(cfg)
	require.NoError(tb, err)
	return tbl
}

func benchPick(b *testing.B, n int) {
	tbl := bigTable(b, n-1)
	req := &route.Request{Host: "reviews.default.svc.cluster.local", Port: 9080, Method: "GET", Path: "/target/items?id=7",
		Header: map[string][]string{"X-User": {"jason"}}}
	r := rand.New(rand.NewPCG(1, 2))
	if res := tbl.Pick(req, r); res.Kind != route.Forward || res.Rule.Match.Path != "/target/" {
		b.Fatalf("bad pick: %+v", res)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res := tbl.Pick(req, r)
		res.Done()
	}
}

// BenchmarkPick measures a full pick (match, weighted cluster, endpoint)
// against the last of n routes; compare 1000 with the 10-route baseline.
func BenchmarkPick(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) { benchPick(b, n) })
	}
}

func BenchmarkPickParallel(b *testing.B) {
	tbl := bigTable(b, 999)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req := &route.Request{Host: "reviews.default.svc.cluster.local", Port: 9080, Path: "/target/x", Header: map[string][]string{"X-User": {"jason"}}}
		r := rand.New(rand.NewPCG(3, 4))
		for pb.Next() {
			res := tbl.Pick(req, r)
			res.Done()
		}
	})
}

func TestPickDoesNotAllocate(t *testing.T) {
	const host = "reviews.default.svc.cluster.local"
	hdr := func(name string, kind route.StringKind, v string) route.HeaderMatch {
		return route.HeaderMatch{Name: name, StringMatch: route.StringMatch{Kind: kind, Value: v}}
	}
	query := func(name string, kind route.StringKind, v string) route.QueryMatch {
		return route.QueryMatch{Name: name, StringMatch: route.StringMatch{Kind: kind, Value: v}}
	}
	// withRule replaces the route of reviewsConfig(80, 20) with one rule:
	// the match m, the given mutation, and a catch-all 404 behind it so a
	// non-matching request is noticed.
	withRule := func(m *route.Match, mut func(*route.HTTPRoute), lb *route.LB) *route.Table {
		cfg := reviewsConfig(80, 20)
		hr := &cfg.Routes[0].HTTP[0]
		if m != nil {
			hr.Matches = []route.Match{*m}
		}
		if mut != nil {
			mut(hr)
		}
		cfg.Policies[0].Policy.LB = lb
		tbl, err := route.Build(cfg)
		require.NoError(t, err)
		return tbl
	}
	hashOn := func(k route.HashKey) *route.LB { return &route.LB{Kind: route.ConsistentHash, Hash: k} }
	tests := []struct {
		name string
		tbl  *route.Table
		req  route.Request
		// want checks the result once before counting allocations.
		want route.Kind
	}{
		{"1000 routes", bigTable(t, 999), route.Request{Path: "/target/x?q=1", Header: map[string][]string{"X-User": {"jason"}}}, route.Forward},
		{"hash on header", withRule(nil, nil, hashOn(route.HashKey{Header: "x-user"})),
			route.Request{Header: map[string][]string{"X-User": {"jason"}}}, route.Forward},
		{"hash on cookie", withRule(nil, nil, hashOn(route.HashKey{Cookie: "session"})),
			route.Request{Header: map[string][]string{"Cookie": {"a=1; session=abc; b=2"}}}, route.Forward},
		{"hash on escaped query parameter", withRule(nil, nil, hashOn(route.HashKey{Query: "user id"})),
			route.Request{Path: "/p?user+id=j%C3%A4son&x=1"}, route.Forward},
		{"hash on source IP", withRule(nil, nil, hashOn(route.HashKey{SourceIP: true})),
			route.Request{SourceIP: "10.9.9.9"}, route.Forward},
		{"mirrors", withRule(nil, func(hr *route.HTTPRoute) {
			hr.Mirrors = []route.Mirror{{Host: host, Subset: "v2", PerMillion: 500000}, {Host: host, Subset: "v1", PerMillion: 1000000}}
		}, nil), route.Request{}, route.Forward},
		{"fault delay", withRule(nil, func(hr *route.HTTPRoute) {
			hr.Fault = &route.Fault{Delay: time.Second, DelayPerMillion: 1000000}
		}, nil), route.Request{}, route.Forward},
		{"fault abort", withRule(nil, func(hr *route.HTTPRoute) {
			hr.Fault = &route.Fault{HasAbort: true, AbortStatus: 503, AbortPerMillion: 1000000}
		}, nil), route.Request{}, route.Local},
		{"regex path", withRule(&route.Match{PathKind: route.PathRegex, Path: "/api/v[0-9]+/items/.*"}, nil, nil),
			route.Request{Path: "/api/v2/items/42?x=1"}, route.Forward},
		{"escaped query exact", withRule(&route.Match{Query: []route.QueryMatch{query("q", route.Exact, "a b/c")}}, nil, nil),
			route.Request{Path: "/?q=a+b%2Fc"}, route.Forward},
		{"escaped query prefix", withRule(&route.Match{Query: []route.QueryMatch{query("na me", route.Prefix, "jä")}}, nil, nil),
			route.Request{Path: "/?na%20me=j%C3%A4son"}, route.Forward},
		{"escaped query regex", withRule(&route.Match{Query: []route.QueryMatch{query("q", route.Regex, "[a-z]+ [0-9]+")}}, nil, nil),
			route.Request{Path: "/?q=abc%2042"}, route.Forward},
		{"repeated header exact", withRule(&route.Match{Headers: []route.HeaderMatch{hdr("x-tag", route.Exact, "a,b")}}, nil, nil),
			route.Request{Header: map[string][]string{"X-Tag": {"a", "b"}}}, route.Forward},
		{"repeated header regex", withRule(&route.Match{Headers: []route.HeaderMatch{hdr("x-tag", route.Regex, "a,[b-c]")}}, nil, nil),
			route.Request{Header: map[string][]string{"X-Tag": {"a", "c"}}}, route.Forward},
	}
	zt, err := route.Build(route.Config{Services: []route.Service{{
		Host: host, Ports: []route.Port{{Port: 9080, TargetPortName: "web"}}, NoWaypoint: true, TrafficDistribution: "PreferClose",
		Endpoints: []route.Endpoint{
			{IP: "10.1.0.1", Ports: map[string]int{"web": 8080}, Locality: route.Locality{Network: "n1", Zone: "z1"}},
			{Ports: map[string]int{"web": 8080}, NetworkGateway: "172.16.0.1", Locality: route.Locality{Network: "n2", Zone: "z1"}},
			{IP: "10.1.0.3", Locality: route.Locality{Network: "n1", Zone: "z1"}},
		},
	}}})
	require.NoError(t, err)
	tests = append(tests, struct {
		name string
		tbl  *route.Table
		req  route.Request
		want route.Kind
	}{"ztunnel", zt, route.Request{Protocol: route.TCP, Source: route.Locality{Network: "n1", Zone: "z1"}}, route.Forward})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			req.Host, req.Port = host, 9080
			r := rand.New(rand.NewPCG(1, 2))
			res := tc.tbl.Pick(&req, r)
			require.Equal(t, tc.want, res.Kind, "%+v", res)
			res.Done()
			allocs := testing.AllocsPerRun(200, func() {
				res := tc.tbl.Pick(&req, r)
				res.Done()
			})
			assert.Zero(t, allocs)
		})
	}
}

// The header index also serves repeated headers (joined with ",").
func TestIndexedRepeatedHeader(t *testing.T) {
	cfg := reviewsConfig(1)
	hr := cfg.Routes[0].HTTP[0]
	var rules []route.HTTPRoute
	for i := range 40 {
		r := hr
		r.Matches = []route.Match{{Headers: []route.HeaderMatch{{Name: "x-tenant", StringMatch: route.StringMatch{Kind: route.Exact, Value: fmt.Sprintf("t%d,eu", i)}}}}}
		rules = append(rules, r)
	}
	cfg.Routes[0].HTTP = rules
	tbl, err := route.Build(cfg)
	require.NoError(t, err)
	vh := tbl.VirtualHost("reviews.default.svc.cluster.local", 9080)
	req := &route.Request{Host: "reviews.default.svc.cluster.local", Port: 9080, Header: map[string][]string{"X-Tenant": {"t17", "eu"}}}
	got := vh.Match(req)
	require.NotNil(t, got)
	assert.Same(t, vh.Rules[17], got)
	assert.Same(t, vh.MatchLinear(req), got)
	assert.Zero(t, testing.AllocsPerRun(100, func() { vh.Match(req) }))
}

func FuzzMatch(f *testing.F) {
	cfg := reviewsConfig(1)
	hr := cfg.Routes[0].HTTP[0]
	var rules []route.HTTPRoute
	add := func(m route.Match) {
		r := hr
		r.Matches = []route.Match{m}
		rules = append(rules, r)
	}
	add(route.Match{PathKind: route.PathExact, Path: "/a"})
	add(route.Match{PathKind: route.PathPrefix, Path: "/a"})
	add(route.Match{PathKind: route.PathPrefix, Path: "/A", IgnoreCase: true})
	add(route.Match{PathKind: route.PathSegmentPrefix, Path: "/seg/"})
	add(route.Match{PathKind: route.PathRegex, Path: "/r/[0-9]+"})
	add(route.Match{Query: []route.QueryMatch{{Name: "k", StringMatch: route.StringMatch{Kind: route.Exact}}}})
	add(route.Match{Headers: []route.HeaderMatch{{Name: "x-h", StringMatch: route.StringMatch{Kind: route.Prefix, Value: "p"}}}})
	add(route.Match{Headers: []route.HeaderMatch{{Name: "x-w", StringMatch: route.StringMatch{Kind: route.Exact, Value: "v"}, Invert: true}}})
	add(route.Match{Method: &route.StringMatch{Kind: route.Exact, Value: "POST"}})
	add(route.Match{PathKind: route.PathRegex, Path: "/h.*", Headers: []route.HeaderMatch{{Name: "x-h", StringMatch: route.StringMatch{Kind: route.Exact, Value: "p1"}}}})
	add(route.Match{Headers: []route.HeaderMatch{{Name: "x-w", StringMatch: route.StringMatch{Kind: route.Exact, Value: "v"}}, {Name: "x-h", StringMatch: route.StringMatch{Kind: route.Exact, Value: "p2"}}}})
	add(route.Match{Headers: []route.HeaderMatch{{Name: "x-h", StringMatch: route.StringMatch{Kind: route.Exact, Value: "p2"}}}})
	for i := 0; i < 20; i++ {
		add(route.Match{PathKind: route.PathPrefix, Path: fmt.Sprintf("/p%d", i)})
		add(route.Match{PathKind: route.PathExact, Path: fmt.Sprintf("/e%d", i)})
		add(route.Match{PathKind: route.PathSegmentPrefix, Path: fmt.Sprintf("/s%d", i)})
	}
	cfg.Routes[0].HTTP = rules
	tbl, err := route.Build(cfg)
	require.NoError(f, err)
	vh := tbl.VirtualHost("reviews.default.svc.cluster.local", 9080)
	for _, s := range []string{"/a", "/abc", "/A/x", "/seg", "/seg/x", "/segx", "/r/12", "/?k", "/?k=1&k", "/p1", "/p12/x", "/e3?x", "/s4/", "/s4x", "%zz?k=%41"} {
		f.Add(s, "p1", "", "GET")
	}
	f.Fuzz(func(t *testing.T, path, h, w, method string) {
		req := &route.Request{Host: "reviews.default.svc.cluster.local", Port: 9080, Method: method, Path: path,
			Header: map[string][]string{"X-H": {h}, "X-W": {w}}}
		got, want := vh.Match(req), vh.MatchLinear(req)
		if got != want {
			t.Fatalf("indexed match %v != linear match %v for %q", got, want, path)
		}
		if !strings.HasPrefix(path, "/") && got != nil && got.Match != nil && got.Match.PathKind == route.PathExact {
			t.Fatalf("exact match on %q", path)
		}
		_ = tbl.Pick(req, rand.New(rand.NewPCG(1, 1)))
	})
}

func TestHolderConcurrentSwap(t *testing.T) {
	leakcheck.Check(t)
	var h route.Holder[route.Table]
	t1, err := route.Build(reviewsConfig(100, 0))
	require.NoError(t, err)
	t2, err := route.Build(reviewsConfig(0, 100))
	require.NoError(t, err)
	h.Store(t1)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(i), 1))
			req := &route.Request{Host: "reviews.default.svc.cluster.local", Port: 9080}
			for {
				select {
				case <-stop:
					return
				default:
				}
				tbl := h.Load()
				res := tbl.Pick(req, r)
				// Each snapshot is complete: its whole traffic goes to one subset.
				want := "v1"
				if tbl == t2 {
					want = "v2"
				}
				if res.Kind != route.Forward || res.Cluster.Subset != want {
					t.Errorf("torn snapshot: got %+v", res.Cluster)
				}
				res.Done()
			}
		})
	}
	for i := range 2000 {
		if i%2 == 0 {
			h.Store(t2)
		} else {
			h.Store(t1)
		}
	}
	close(stop)
	wg.Wait()
}

// BenchmarkPickHeaderRules: 1000 header-only rules (one exact header value
// each), narrowed by the header index.
func BenchmarkPickHeaderRules(b *testing.B) { benchRules(b, false) }

// BenchmarkPickUnindexed is the worst case: 1000 regex rules that no index
// can narrow, scanned in order.
func BenchmarkPickUnindexed(b *testing.B) { benchRules(b, true) }

func benchRules(b *testing.B, regex bool) {
	cfg := reviewsConfig(1)
	hr := cfg.Routes[0].HTTP[0]
	var rules []route.HTTPRoute
	for i := 0; i < 999; i++ {
		r := hr
		r.Matches = []route.Match{{Headers: []route.HeaderMatch{{Name: "x-tenant", StringMatch: route.StringMatch{Kind: route.Exact, Value: fmt.Sprintf("t%d", i)}}}}}
		if regex {
			r.Matches = []route.Match{{PathKind: route.PathRegex, Path: fmt.Sprintf("/r%d/[a-z]+", i)}}
		}
		rules = append(rules, r)
	}
	rules = append(rules, hr)
	cfg.Routes[0].HTTP = rules
	tbl, err := route.Build(cfg)
	require.NoError(b, err)
	req := &route.Request{Host: "reviews.default.svc.cluster.local", Port: 9080, Path: "/x", Header: map[string][]string{"X-Tenant": {"none"}}}
	r := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	for b.Loop() {
		res := tbl.Pick(req, r)
		res.Done()
	}
}
