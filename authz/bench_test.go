package authz_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/meshblocks/meshblocks/authz"
)

// benchPolicies builds n policies spread over n/10 namespaces: in every
// namespace a namespace-wide DENY, selector-based ALLOWs, and waypoint
// (targetRefs) ALLOW/DENY policies, plus a few root-namespace policies.
func benchPolicies(n int) []authz.Policy {
	var ps []authz.Policy
	ps = append(ps,
		authz.Policy{Namespace: "istio-system", Name: "global-deny-plaintext-ssh", Action: authz.Deny,
			Rules: []authz.Rule{{To: []*authz.Operation{{Ports: []string{"22"}}}}}},
		authz.Policy{Namespace: "istio-system", Name: "waypoints-deny-debug", Action: authz.Deny,
			TargetRefs: []authz.TargetRef{{Group: "gateway.networking.k8s.io", Kind: "GatewayClass", Name: "istio-waypoint"}},
			Rules:      []authz.Rule{{To: []*authz.Operation{{Paths: []string{"/debug*"}}}}}},
	)
	for i := 0; len(ps) < n; i++ {
		ns := fmt.Sprintf("ns-%d", i)
		ps = append(ps, authz.Policy{Namespace: ns, Name: "deny-outside", Action: authz.Deny,
			Rules: []authz.Rule{{From: []*authz.Source{{NotIPBlocks: []string{"10.0.0.0/8", "fd00::/8"}}}}}})
		for j := 0; j < 5 && len(ps) < n; j++ {
			app := fmt.Sprintf("app-%d", j)
			ps = append(ps, authz.Policy{Namespace: ns, Name: "allow-" + app, HasSelector: true,
				Selector: map[string]string{"app": app},
				Rules: []authz.Rule{{
					From: []*authz.Source{{Principals: []string{
						fmt.Sprintf("cluster.local/ns/%s/sa/client-%d", ns, j), "cluster.local/ns/" + ns + "/sa/sleep"}}},
					To: []*authz.Operation{{Ports: []string{"8080", "9090"}}},
				}}})
		}
		for j := 0; j < 4 && len(ps) < n; j++ {
			svc := fmt.Sprintf("svc-%d", j)
			ps = append(ps, authz.Policy{Namespace: ns, Name: "waypoint-" + svc,
				TargetRefs: []authz.TargetRef{{Kind: "Service", Name: svc}},
				Rules: []authz.Rule{{
					From: []*authz.Source{{Namespaces: []string{ns}}},
					To:   []*authz.Operation{{Methods: []string{"GET", "HEAD"}, Paths: []string{"/api/*", "/users/{*}/profile"}}},
					When: []authz.Condition{{Key: "request.headers[x-tenant]", Values: []string{"t-*"}}},
				}}})
		}
	}
	return ps
}

func BenchmarkEvaluate(b *testing.B) {
	for _, n := range []int{10, 10000} {
		eng, err := authz.New(authz.Config{}, benchPolicies(n))
		if err != nil {
			b.Fatal(err)
		}
		l4 := &authz.Request{
			Layer:    authz.L4,
			Workload: authz.Workload{Namespace: "ns-0", Labels: map[string]string{"app": "app-3", "version": "v1"}, ServiceAccount: "app-3"},
			Peer:     "cluster.local/ns/ns-0/sa/sleep",
			SourceIP: netip.MustParseAddr("10.0.0.5"), DestIP: netip.MustParseAddr("10.0.0.9"), DestPort: 8080,
		}
		l7 := &authz.Request{
			Layer:    authz.L7,
			Workload: authz.Workload{Namespace: "ns-0", Labels: map[string]string{"app": "app-3"}, Services: []string{"svc-2"}, Waypoint: "waypoint"},
			Peer:     "cluster.local/ns/ns-0/sa/sleep",
			SourceIP: netip.MustParseAddr("10.0.0.5"), DestIP: netip.MustParseAddr("10.96.0.9"), DestPort: 8080,
			Method: "GET", Path: "/users/alice/profile?x=1", Host: "svc-2.ns-0.svc.cluster.local",
			Headers: map[string]string{"x-tenant": "t-42", "user-agent": "curl"},
		}
		if d := eng.Evaluate(l4); !d.Allowed {
			b.Fatalf("L4 setup: %v", d)
		}
		if d := eng.Evaluate(l7); !d.Allowed {
			b.Fatalf("L7 setup: %v", d)
		}
		b.Run(fmt.Sprintf("L4/policies=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = eng.Evaluate(l4)
			}
		})
		b.Run(fmt.Sprintf("L7/policies=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = eng.Evaluate(l7)
			}
		})
	}
}

func TestL4EvaluateDoesNotAllocate(t *testing.T) {
	eng, err := authz.New(authz.Config{}, benchPolicies(10000))
	if err != nil {
		t.Fatal(err)
	}
	r := &authz.Request{
		Layer:    authz.L4,
		Workload: authz.Workload{Namespace: "ns-7", Labels: map[string]string{"app": "app-1"}},
		Peer:     "cluster.local/ns/ns-7/sa/client-1",
		SourceIP: netip.MustParseAddr("10.0.0.5"), DestPort: 9090,
	}
	var d authz.Decision
	allocs := testing.AllocsPerRun(100, func() { d = eng.Evaluate(r) })
	if !d.Allowed || d.Policy == nil || d.Policy.Name != "allow-app-1" {
		t.Fatalf("decision %v", d)
	}
	if allocs != 0 {
		t.Fatalf("L4 Evaluate allocated %.1f times per call", allocs)
	}
	// A default deny names the ALLOW policies that did not match, still
	// without allocating.
	r.Peer = "cluster.local/ns/ns-7/sa/stranger"
	allocs = testing.AllocsPerRun(100, func() { d = eng.Evaluate(r) })
	if ps, _ := d.Unmatched(); d.Allowed || d.Reason != authz.ReasonNoAllowMatch || len(ps) != 1 || ps[0].Name != "allow-app-1" {
		t.Fatalf("decision %v", d)
	}
	if allocs != 0 {
		t.Fatalf("L4 Evaluate of a default deny allocated %.1f times per call", allocs)
	}
}
