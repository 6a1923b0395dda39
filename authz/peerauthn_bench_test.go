package authz_test

import (
	"fmt"
	"testing"

	"github.com/meshblocks/meshblocks/authz"
)

// peerAuthnBenchSet builds a mesh policy plus, in each of n namespaces, a
// namespace policy and ten workload policies with port-level modes.
func peerAuthnBenchSet(n int) []authz.PeerAuthentication {
	pas := []authz.PeerAuthentication{{Namespace: "istio-system", Name: "default", Mode: authz.MTLSStrict}}
	for i := range n {
		ns := fmt.Sprintf("ns-%d", i)
		pas = append(pas, authz.PeerAuthentication{Namespace: ns, Name: "default", Mode: authz.MTLSUnset})
		for j := range 10 {
			pas = append(pas, authz.PeerAuthentication{
				Namespace: ns, Name: fmt.Sprintf("app-%d", j), HasSelector: true,
				Selector:  map[string]string{"app": fmt.Sprintf("app-%d", j)},
				Mode:      authz.MTLSPermissive,
				PortModes: map[uint32]authz.MTLSMode{uint32(9000 + j): authz.MTLSStrict},
				Order:     len(pas),
			})
		}
	}
	return pas
}

// BenchmarkPeerAuthnMode measures one mTLS-mode lookup against the L4
// AuthorizationPolicy evaluation of the same destination as the baseline
// (metric "x-of-L4-authz" = lookup time / baseline time).
func BenchmarkPeerAuthnMode(b *testing.B) {
	e, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{}, peerAuthnBenchSet(50))
	if err != nil {
		b.Fatal(err)
	}
	w := authz.Workload{Namespace: "ns-7", Labels: map[string]string{"app": "app-9", "version": "v1"}}
	eng, err := authz.New(authz.Config{}, []authz.Policy{{
		Namespace: "ns-7", Name: "allow", Selector: map[string]string{"app": "app-9"}, HasSelector: true,
		Rules: []authz.Rule{{From: []*authz.Source{{Principals: []string{"cluster.local/ns/ns-7/sa/sleep"}}}}},
	}})
	if err != nil {
		b.Fatal(err)
	}
	req := &authz.Request{Layer: authz.L4, Workload: w, Peer: "cluster.local/ns/ns-7/sa/sleep", DestPort: 9009}
	var base float64
	b.Run("baseline-L4-authz", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = eng.Evaluate(req)
		}
		base = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("mode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = e.Mode(&w, 9009)
		}
		if base > 0 {
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/base, "x-of-L4-authz")
		}
	})
}
