package authz_test

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/meshblocks/meshblocks/authz"
)

func ExampleEngine_Evaluate() {
	eng, err := authz.New(authz.Config{RootNamespace: "istio-system"}, []authz.Policy{
		{Namespace: "bookinfo", Name: "allow-nothing"},
		{
			Namespace: "bookinfo", Name: "productpage-from-sleep",
			HasSelector: true, Selector: map[string]string{"app": "productpage"},
			Rules: []authz.Rule{{From: []*authz.Source{{Principals: []string{"cluster.local/ns/bookinfo/sa/sleep"}}}}},
		},
	})
	if err != nil {
		panic(err)
	}
	productpage := authz.Workload{Namespace: "bookinfo", Labels: map[string]string{"app": "productpage"}}
	for _, peer := range []string{"cluster.local/ns/bookinfo/sa/sleep", "cluster.local/ns/bookinfo/sa/ratings", ""} {
		d := eng.Evaluate(&authz.Request{
			Layer: authz.L4, Workload: productpage, Peer: peer,
			SourceIP: netip.MustParseAddr("10.0.0.5"), DestPort: 9080,
		})
		fmt.Printf("%q: %v\n", peer, d)
	}
	// Output:
	// "cluster.local/ns/bookinfo/sa/sleep": ALLOW by ALLOW bookinfo/productpage-from-sleep rules[0] (ALLOW policy matched)
	// "cluster.local/ns/bookinfo/sa/ratings": DENY (no ALLOW policy matched: bookinfo/allow-nothing, bookinfo/productpage-from-sleep)
	// "": DENY (no ALLOW policy matched: bookinfo/allow-nothing, bookinfo/productpage-from-sleep)
}

func ExampleNew_invalidPolicy() {
	eng, err := authz.New(authz.Config{}, []authz.Policy{{
		Namespace: "test", Name: "bad", Action: authz.Deny,
		Rules: []authz.Rule{{From: []*authz.Source{{IPBlocks: []string{"10.0.0.300/8"}}}}},
	}})
	fmt.Println(err)
	fmt.Println(errors.Is(err, authz.ErrInvalidPolicy))
	d := eng.Evaluate(&authz.Request{Layer: authz.L4, Workload: authz.Workload{Namespace: "test"}})
	fmt.Println(d)
	// Output:
	// authz: test/bad: spec.rules[0].from[0].source.ipBlocks[0]: "10.0.0.300/8" is not an IP or CIDR
	// true
	// DENY by invalid policy test/bad (invalid policy applies (fail closed))
}

func ExampleValidate() {
	err := authz.Validate(&authz.Policy{
		Namespace: "test", Name: "p",
		Rules: []authz.Rule{{
			From: []*authz.Source{{ServiceAccounts: []string{"sleep"}, Principals: []string{"x"}}},
			When: []authz.Condition{{Key: "destination.labels", Values: []string{"a"}}},
		}},
	})
	fmt.Println(err)
	// Output:
	// authz: test/p: spec.rules[0].from[0].source: serviceAccounts cannot be combined with principals or namespaces
	// authz: test/p: spec.rules[0].when[0].key: unknown condition key "destination.labels"
}
