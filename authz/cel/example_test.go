package cel_test

import (
	"fmt"
	"net/netip"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/cel"
)

func ExampleCompiler_Compile() {
	c, err := cel.NewCompiler()
	if err != nil {
		panic(err)
	}
	cond, err := c.Compile(`request.path.startsWith("/api/") && "x-user" in request.headers`)
	if err != nil {
		panic(err)
	}
	for _, r := range []*authz.Request{
		{Layer: authz.L7, Path: "/api/v1", Headers: map[string]string{"x-user": "alice"}},
		{Layer: authz.L7, Path: "/api/v1"},
	} {
		ok, err := cond.Match(r)
		fmt.Println(ok, err)
	}
	_, err = c.Compile(`"GET"`)
	fmt.Println(err)
	// Output:
	// true <nil>
	// false <nil>
	// cel: expression has type string, want bool
}

// A compiled condition is a Predicate: attached to a policy's Extra, it is
// ANDed into every rule (authz/istio does this for the
// authz.meshblocks.io/cel annotation).
func ExampleNewCompiler() {
	c, err := cel.NewCompiler()
	if err != nil {
		panic(err)
	}
	office, err := c.Compile(`remote.ip.startsWith("192.0.2.")`)
	if err != nil {
		panic(err)
	}
	eng, err := authz.New(authz.Config{}, []authz.Policy{{
		Namespace: "test", Name: "admin-from-office",
		TargetRefs: []authz.TargetRef{{Kind: "Service", Name: "admin"}},
		Rules:      []authz.Rule{{}},
		Extra:      []authz.Predicate{office},
	}})
	if err != nil {
		panic(err)
	}
	for _, ip := range []string{"192.0.2.10", "203.0.113.9"} {
		d := eng.Evaluate(&authz.Request{
			Layer:    authz.L7,
			Workload: authz.Workload{Namespace: "test", Services: []string{"admin"}},
			RemoteIP: netip.MustParseAddr(ip), Method: "GET", Path: "/",
		})
		fmt.Println(ip, d.Allowed)
	}
	// Output:
	// 192.0.2.10 true
	// 203.0.113.9 false
}

func ExampleActivation() {
	vars := cel.Activation(&authz.Request{
		Layer:    authz.L7,
		Workload: authz.Workload{Namespace: "test", Labels: map[string]string{"app": "web"}},
		Peer:     "cluster.local/ns/test/sa/sleep",
		SourceIP: netip.MustParseAddr("10.0.0.5"), DestPort: 8080,
		Method: "GET", Path: "/api?x=1", Headers: map[string]string{"x-user": "alice"},
	})
	src := vars["source"].(map[string]any)
	dst := vars["destination"].(map[string]any)
	req := vars["request"].(map[string]any)
	fmt.Println(vars["layer"], src["namespace"], src["serviceAccount"], src["ip"])
	fmt.Println(dst["port"], dst["labels"])
	fmt.Println(req["method"], req["path"], req["headers"])
	// Output:
	// L7 test sleep 10.0.0.5
	// 8080 map[app:web]
	// GET /api?x=1 map[x-user:alice]
}
