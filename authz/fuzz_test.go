package authz_test

import (
	"net/netip"
	"testing"

	"github.com/meshblocks/meshblocks/authz"
)

// FuzzEvaluate checks that compiling arbitrary field values and evaluating
// arbitrary requests never panics and that Evaluate is deterministic.
func FuzzEvaluate(f *testing.F) {
	f.Add("cluster.local/ns/test/sa/sleep", "test", "10.0.0.0/8", "8080", "/api/{*}/x", "*.example.com", "GET", "request.headers[x]", "v*",
		"cluster.local/ns/test/sa/sleep", "10.0.0.5", uint16(8080), "/api/a/x?q", "a.example.com", "x", "iss/sub", true)
	f.Add("*", "t*t", "::1", "0", "/{**}", "*", "*", "request.auth.claims[a][b]", "*", "", "", uint16(0), "", "", "", "", false)
	f.Add("a*", "*b", "bad", "x", "/a/{**}/{*}", "h:*", "POST", "source.ip", "1.2.3.4/33", "a/ns/b/sa/c", "fd00::1", uint16(65535), "/", "H", "", "/", true)
	f.Fuzz(func(t *testing.T, principal, ns, ip, port, path, host, method, key, val,
		peer, srcIP string, dport uint16, rpath, rhost, hdr, jwt string, l7 bool) {
		src := &authz.Source{Principals: []string{principal}, NotNamespaces: []string{ns}, IPBlocks: []string{ip}, RequestPrincipals: []string{val}}
		op := &authz.Operation{Ports: []string{port}, Paths: []string{path}, Hosts: []string{host}, NotMethods: []string{method}}
		rules := []authz.Rule{{From: []*authz.Source{src}, To: []*authz.Operation{op}, When: []authz.Condition{{Key: key, Values: []string{val}}}}}
		pols := []authz.Policy{
			{Namespace: "test", Name: "a", Rules: rules},
			{Namespace: "test", Name: "d", Action: authz.Deny, Rules: rules, TargetRefs: []authz.TargetRef{{Kind: "Service", Name: "web"}}},
			{Namespace: "test", Name: "c", Action: authz.Custom, Provider: "p", Rules: rules, TargetRefs: []authz.TargetRef{{Kind: "Service", Name: "web"}}},
		}
		eng, _ := authz.New(authz.Config{}, pols)
		a, _ := netip.ParseAddr(srcIP)
		r := &authz.Request{
			Workload: authz.Workload{Namespace: "test", Services: []string{"web"}},
			Peer:     peer, SourceIP: a, DestPort: dport, Method: method, Path: rpath, Host: rhost,
			Headers: map[string]string{"x": hdr}, Auth: &authz.JWT{Principal: jwt, Claims: map[string]any{"a": map[string]any{"b": []any{hdr, 1.0}}}},
		}
		if l7 {
			r.Layer = authz.L7
		}
		d1, d2 := eng.Evaluate(r), eng.Evaluate(r)
		if d1 != d2 {
			t.Fatalf("non-deterministic: %v vs %v", d1, d2)
		}
	})
}
