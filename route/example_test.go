package route_test

import (
	"fmt"
	"math/rand/v2"

	"github.com/meshblocks/meshblocks/route"
)

func ExampleBuild() {
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
			{Name: "v2", Labels: map[string]string{"version": "v2"}},
		}}},
		Routes: []route.RouteConfig{{
			Kind: "VirtualService", Name: "reviews", Namespace: "default",
			Hosts: []string{"reviews.default.svc.cluster.local"},
			HTTP: []route.HTTPRoute{{
				Matches:  []route.Match{{Headers: []route.HeaderMatch{{Name: "end-user", StringMatch: route.StringMatch{Kind: route.Exact, Value: "jason"}}}}},
				Backends: []route.Backend{{Host: "reviews.default.svc.cluster.local", Subset: "v2"}},
			}},
		}},
	}
	tbl, err := route.Build(cfg)
	if err != nil {
		panic(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	res := tbl.Pick(&route.Request{Host: "reviews.default.svc.cluster.local", Port: 9080, Path: "/reviews/1",
		Header: map[string][]string{"End-User": {"jason"}}}, r)
	fmt.Println(res.Cluster.Destination, res.Endpoint.IP)
	res.Done()

	res = tbl.Pick(&route.Request{Host: "reviews.default.svc.cluster.local", Port: 9080, Path: "/reviews/1"}, r)
	fmt.Println(res.Status)
	// Output:
	// reviews.default.svc.cluster.local:9080/v2 10.1.0.2
	// 404
}

func ExampleHolder_Update() {
	var tables route.Holder[route.Table]
	good := route.Config{Services: []route.Service{{Host: "a.default.svc.cluster.local", Ports: []route.Port{{Port: 80}}}}}
	if err := tables.Update(func() (*route.Table, error) { return route.Build(good) }); err != nil {
		panic(err)
	}
	before := tables.Load()

	bad := route.Config{Services: []route.Service{{Host: "a.default.svc.cluster.local"}}}
	err := tables.Update(func() (*route.Table, error) { return route.Build(bad) })
	fmt.Println(err)
	fmt.Println(tables.Load() == before)
	// Output:
	// route: invalid config: Service a.default.svc.cluster.local: services[0].ports: at least one port is required
	// true
}

func ExampleNewWeighted() {
	w := route.NewWeighted([]string{"v1", "v2", "v3"}, []uint32{80, 19, 1})
	for _, r := range []uint64{0, 79, 80, 98, 99} {
		fmt.Print(w.Item(w.Pick(r)), " ")
	}
	fmt.Println()
	// Output: v1 v1 v2 v2 v3
}
