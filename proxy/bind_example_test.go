package proxy_test

import (
	"fmt"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
	"github.com/meshblocks/meshblocks/authz/ztunnel"
	"github.com/meshblocks/meshblocks/proxy"
)

// Policies as istiod sends them to ztunnel (here converted from Istio
// YAML by ztunnel.Convert), bound to the workloads they select.
func ExampleBindPolicies() {
	pols, err := istio.Parse([]byte(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]
`), istio.Options{})
	if err != nil {
		panic(err)
	}
	workloads := []proxy.Workload{{UID: "c//Pod/default/echo", Name: "echo", Namespace: "default",
		ServiceAccount: "echo", Labels: map[string]string{"app": "echo"}}}
	out, err := ztunnel.Convert(ztunnel.Config{}, ztunnel.Input{Policies: pols,
		Workloads: []authz.Workload{{Namespace: "default", Labels: workloads[0].Labels}}})
	if err != nil {
		panic(err)
	}
	l4, root, err := proxy.BindPolicies(workloads, out.Policies, out.Bindings)
	if err != nil {
		panic(err)
	}
	engine, err := authz.New(authz.Config{RootNamespace: root}, l4)
	if err != nil {
		panic(err)
	}
	st, err := proxy.NewState(workloads, nil, proxy.WithAuthz(engine))
	if err != nil {
		panic(err)
	}
	echo, _ := st.WorkloadByUID("c//Pod/default/echo")
	for _, peer := range []string{"cluster.local/ns/default/sa/sleep", "cluster.local/ns/default/sa/curl"} {
		d := st.Authz().Evaluate(&authz.Request{Layer: authz.L4, Peer: peer, DestPort: 8080,
			Workload: authz.Workload{Namespace: echo.Namespace, Labels: echo.Labels}})
		fmt.Println(peer, d.Allowed)
	}
	// Output:
	// cluster.local/ns/default/sa/sleep true
	// cluster.local/ns/default/sa/curl false
}
