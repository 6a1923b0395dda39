package ztunnel_test

import (
	"fmt"
	"maps"
	"net/netip"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/ztunnel"
)

func ExampleParse() {
	auths, err := ztunnel.Parse([]byte(`
policies:
- name: echo-from-sleep
  namespace: default
  scope: WorkloadSelector
  action: Allow
  rules:
  - - - principals:
        - !Exact cluster.local/ns/default/sa/sleep
  dryRun: false
`))
	if err != nil {
		panic(err)
	}
	a := auths[0]
	fmt.Println(a.Key(), a.Scope, a.Action, a.Rules[0][0][0].Principals[0])
	// Output: default/echo-from-sleep WorkloadSelector Allow !Exact "cluster.local/ns/default/sa/sleep"
}

func ExampleToAuthz() {
	auths, err := ztunnel.Parse([]byte(`
policies:
- {name: echo-from-sleep, namespace: default, scope: WorkloadSelector, action: Allow, dryRun: false,
   rules: [[[{principals: [!Exact cluster.local/ns/default/sa/sleep]}]]]}
`))
	if err != nil {
		panic(err)
	}
	// The echo workload lists the policy in its authorizationPolicies.
	az, err := ztunnel.ToAuthz(auths, []ztunnel.Binding{{Name: "echo", Namespace: "default", Policies: []string{"default/echo-from-sleep"}}})
	if err != nil {
		panic(err)
	}
	eng, err := authz.New(authz.Config{RootNamespace: az.RootNamespace}, az.Policies)
	if err != nil {
		panic(err)
	}
	labels := maps.Clone(az.Labels[0]) // plus the workload's own labels
	for _, peer := range []string{"cluster.local/ns/default/sa/sleep", "cluster.local/ns/default/sa/curl"} {
		d := eng.Evaluate(&authz.Request{
			Layer: authz.L4, Workload: authz.Workload{Namespace: "default", Labels: labels},
			Peer: peer, SourceIP: netip.MustParseAddr("10.0.0.5"), DestPort: 8080,
		})
		fmt.Println(d.Allowed)
	}
	// Output:
	// true
	// false
}

func ExampleConvert() {
	out, err := ztunnel.Convert(ztunnel.Config{}, ztunnel.Input{
		Policies: []authz.Policy{{
			Namespace: "default", Name: "echo-from-sleep",
			HasSelector: true, Selector: map[string]string{"app": "echo"},
			Rules: []authz.Rule{
				{From: []*authz.Source{{Principals: []string{"cluster.local/ns/default/sa/sleep"}}}},
				{To: []*authz.Operation{{Methods: []string{"GET"}}}}, // HTTP: needs a waypoint
			},
		}},
		Workloads: []authz.Workload{{Namespace: "default", Labels: map[string]string{"app": "echo"}}},
	})
	if err != nil {
		panic(err)
	}
	data, err := ztunnel.Marshal(out.Policies)
	if err != nil {
		panic(err)
	}
	fmt.Print(string(data))
	fmt.Println("echo lists", out.Bindings[0])
	fmt.Println(out.Warnings[0])
	// Output:
	// policies:
	//   - name: echo-from-sleep
	//     namespace: default
	//     scope: WorkloadSelector
	//     action: Allow
	//     rules:
	//       - - - principals:
	//               - !Exact cluster.local/ns/default/sa/sleep
	//     dryRun: false
	// echo lists [default/echo-from-sleep]
	// default/echo-from-sleep: ztunnel does not support HTTP attributes (found: methods); ALLOW rules using them are left out (more restrictive than requested)
}
