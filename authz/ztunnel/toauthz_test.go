package ztunnel_test

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/ztunnel"
)

// The reference below restates ztunnel's own decision procedure
// (src/rbac.rs Authorization::matches and src/state.rs assert_rbac)
// directly over Authorizations, to check that ToAuthz plus the authz
// engine decide the same.

type refConn struct {
	peer     string // "td/ns/N/sa/S", or "" for plaintext
	src, dst netip.Addr
	port     uint16
}

func (c refConn) nsSA() (ns, sa string, ok bool) {
	parts := strings.Split(c.peer, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return "", "", false
	}
	return parts[2], parts[4], true
}

func refString(m ztunnel.StringMatch, s string) bool {
	switch m.Kind {
	case ztunnel.Prefix:
		return strings.HasPrefix(s, m.Value)
	case ztunnel.Suffix:
		return strings.HasSuffix(s, m.Value)
	case ztunnel.Presence:
		return s != ""
	}
	return s == m.Value
}

func posNeg[T any](pos, neg []T, f func(T) bool) bool {
	any := func(l []T) bool {
		for _, v := range l {
			if f(v) {
				return true
			}
		}
		return false
	}
	return (len(pos) == 0 || any(pos)) && (len(neg) == 0 || !any(neg))
}

func refMatch(m *ztunnel.Match, c refConn) bool {
	if m.IsEmpty() {
		return false
	}
	ns, sa, hasID := c.nsSA()
	return posNeg(m.DestinationIPs, m.NotDestinationIPs, func(p netip.Prefix) bool { return p.Contains(c.dst) }) &&
		posNeg(m.SourceIPs, m.NotSourceIPs, func(p netip.Prefix) bool { return p.Contains(c.src) }) &&
		posNeg(m.DestinationPorts, m.NotDestinationPorts, func(p uint16) bool { return p == c.port }) &&
		posNeg(m.ServiceAccounts, m.NotServiceAccounts, func(s ztunnel.ServiceAccountMatch) bool {
			return hasID && s.Namespace == ns && s.ServiceAccount == sa
		}) &&
		// ztunnel compares principals to "spiffe://..." with the scheme
		// stripped, which fails without an identity.
		posNeg(m.Principals, m.NotPrincipals, func(s ztunnel.StringMatch) bool { return c.peer != "" && refString(s, c.peer) }) &&
		posNeg(m.Namespaces, m.NotNamespaces, func(s ztunnel.StringMatch) bool { return refString(s, ns) })
}

func refPolicy(a *ztunnel.Authorization, c refConn) bool {
	for _, r := range a.Rules {
		ok := true
		for _, cl := range r {
			if len(cl) == 0 {
				continue
			}
			hit := false
			for i := range cl {
				if refMatch(&cl[i], c) {
					hit = true
					break
				}
			}
			if !hit {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// refDecide decides for a workload of namespace ns listing the given keys.
func refDecide(auths []ztunnel.Authorization, ns string, listed []string, c refConn) bool {
	var applied []*ztunnel.Authorization
	for i := range auths {
		a := &auths[i]
		if a.Scope == ztunnel.Global || a.Scope == ztunnel.Namespace && a.Namespace == ns {
			applied = append(applied, a)
			continue
		}
		for _, k := range listed {
			if k == a.Key() {
				applied = append(applied, a)
				break
			}
		}
	}
	anyAllow := false
	for _, a := range applied {
		if a.DryRun {
			continue
		}
		if a.Action == ztunnel.Deny && refPolicy(a, c) {
			return false
		}
		anyAllow = anyAllow || a.Action == ztunnel.Allow
	}
	if !anyAllow {
		return true
	}
	for _, a := range applied {
		if !a.DryRun && a.Action == ztunnel.Allow && refPolicy(a, c) {
			return true
		}
	}
	return false
}

var (
	refPeers = []string{"", "cluster.local/ns/default/sa/sleep", "cluster.local/ns/team-a/sa/web", "td2/ns/default/sa/sleep", "cluster.local/ns/istio-system/sa/x"}
	refSrcs  = []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.9.1.1"), netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::1")}
	refDsts  = []netip.Addr{netip.MustParseAddr("127.0.10.3"), netip.MustParseAddr("10.1.2.3")}
	refPorts = []uint16{80, 8080, 9999}
)

// checkAgainstReference compares engine and reference for every
// combination of the reference connections, for one workload per
// namespace that lists every WorkloadSelector policy it may.
func checkAgainstReference(t *testing.T, auths []ztunnel.Authorization) int {
	t.Helper()
	nss := []string{"default", "team-a", "istio-system"}
	var bindings []ztunnel.Binding
	for _, ns := range nss {
		b := ztunnel.Binding{Name: ns + "/w", Namespace: ns}
		for _, a := range auths {
			if a.Scope == ztunnel.WorkloadSelector && (a.Namespace == ns || a.Namespace == "istio-system") {
				b.Policies = append(b.Policies, a.Key())
			}
		}
		bindings = append(bindings, b)
	}
	az, err := ztunnel.ToAuthz(auths, bindings)
	if err != nil {
		return 0 // not expressible: refused, which the caller may check
	}
	eng, err := authz.New(authz.Config{RootNamespace: az.RootNamespace}, az.Policies)
	require.NoError(t, err)
	n := 0
	for wi, b := range bindings {
		labels := maps.Clone(az.Labels[wi])
		for _, peer := range refPeers {
			for _, src := range refSrcs {
				for _, dst := range refDsts {
					for _, port := range refPorts {
						c := refConn{peer, src, dst, port}
						want := refDecide(auths, b.Namespace, b.Policies, c)
						d := eng.Evaluate(&authz.Request{Layer: authz.L4, Workload: authz.Workload{Namespace: b.Namespace, Labels: labels},
							Peer: peer, SourceIP: src, DestIP: dst, DestPort: port})
						if d.Allowed != want {
							out, _ := ztunnel.Marshal(auths)
							t.Fatalf("workload in %s, %+v: ztunnel %v, engine %v\n%s", b.Namespace, c, want, d, out)
						}
						n++
					}
				}
			}
		}
	}
	return n
}

func TestToAuthzTestdata(t *testing.T) {
	data, err := os.ReadFile("testdata/policies.yaml")
	require.NoError(t, err)
	auths, err := ztunnel.Parse(data)
	require.NoError(t, err)
	require.NotZero(t, checkAgainstReference(t, auths))

	az, err := ztunnel.ToAuthz(auths, []ztunnel.Binding{{Name: "echo", Namespace: "default", Policies: []string{"default/echo-from-sleep"}}})
	require.NoError(t, err)
	assert.Equal(t, "istio-system", az.RootNamespace)
	assert.Equal(t, map[string]string{ztunnel.BindingLabel("default", "echo-from-sleep"): "bound"}, az.Labels[0])
	require.Len(t, az.Policies, 4)
	echo := az.Policies[2]
	assert.Equal(t, map[string]string{"ztunnel.authz.meshblocks.io/default/echo-from-sleep": "bound"}, echo.Selector)
	// The from clause of several sources, the port clause, then conditions.
	assert.Len(t, echo.Rules[0].From, 3)
	assert.Len(t, echo.Rules[0].To, 2)
	assert.Equal(t, []authz.Condition{
		{Key: "source.ip", Values: []string{"10.0.0.0/8"}, NotValues: []string{"10.9.0.0/16"}},
		{Key: "destination.ip", Values: []string{"127.0.10.3/32"}},
	}, echo.Rules[0].When)
}

// TestToAuthzRandom generates random policy sets (of every shape ztunnel
// reads) and checks the engine against the reference wherever ToAuthz
// accepts them; it must accept most.
func TestToAuthzRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	accepted, compared := 0, 0
	const sets = 400
	for i := 0; i < sets; i++ {
		auths := randomAuths(r)
		n := checkAgainstReference(t, auths)
		if n > 0 {
			accepted++
			compared += n
		}
	}
	t.Logf("%d/%d policy sets accepted, %d decisions compared", accepted, sets, compared)
	assert.Greater(t, accepted, sets/2)
}

func randomAuths(r *rand.Rand) []ztunnel.Authorization {
	pick := func(n int) int { return r.IntN(n) }
	strMatch := func(vals ...string) ztunnel.StringMatch {
		switch pick(5) {
		case 0:
			return ztunnel.StringMatch{Kind: ztunnel.Presence}
		case 1:
			v := vals[pick(len(vals))]
			return ztunnel.StringMatch{Kind: ztunnel.Prefix, Value: v[:1+pick(len(v))]}
		case 2:
			v := vals[pick(len(vals))]
			return ztunnel.StringMatch{Kind: ztunnel.Suffix, Value: v[pick(len(v)):]}
		}
		return ztunnel.StringMatch{Kind: ztunnel.Exact, Value: vals[pick(len(vals))]}
	}
	strs := func(vals ...string) []ztunnel.StringMatch {
		var out []ztunnel.StringMatch
		for n := pick(3); n > 0; n-- {
			out = append(out, strMatch(vals...))
		}
		return out
	}
	prefixes := func() []netip.Prefix {
		all := []string{"10.0.0.0/8", "10.9.0.0/16", "192.0.2.7/32", "2001:db8::/32", "127.0.10.3/32", "0.0.0.0/0"}
		var out []netip.Prefix
		for n := pick(3); n > 0; n-- {
			out = append(out, netip.MustParsePrefix(all[pick(len(all))]))
		}
		return out
	}
	ports := func() []uint16 {
		var out []uint16
		for n := pick(3); n > 0; n-- {
			out = append(out, refPorts[pick(len(refPorts))])
		}
		return out
	}
	sas := func() []ztunnel.ServiceAccountMatch {
		var out []ztunnel.ServiceAccountMatch
		for n := pick(2); n > 0; n-- {
			out = append(out, []ztunnel.ServiceAccountMatch{{Namespace: "default", ServiceAccount: "sleep"}, {Namespace: "team-a", ServiceAccount: "web"}}[pick(2)])
		}
		return out
	}
	peers := []string{"cluster.local/ns/default/sa/sleep", "cluster.local/ns/team-a/sa/web", "td2/ns/default/sa/sleep"}
	nsVals := []string{"default", "team-a", "istio-system"}
	match := func(kind int) ztunnel.Match {
		var m ztunnel.Match
		// kind 0: any fields; 1: source fields; 2: ports only
		for f := 0; f < 6; f++ {
			if pick(3) != 0 {
				continue
			}
			switch {
			case f == 0 && kind != 2:
				m.Namespaces, m.NotNamespaces = strs(nsVals...), strs(nsVals...)
			case f == 1 && kind != 2:
				m.ServiceAccounts, m.NotServiceAccounts = sas(), sas()
			case f == 2 && kind != 2:
				m.Principals, m.NotPrincipals = strs(peers...), strs(peers...)
			case f == 3 && kind != 2:
				m.SourceIPs, m.NotSourceIPs = prefixes(), prefixes()
			case f == 4 && kind == 0:
				m.DestinationIPs, m.NotDestinationIPs = prefixes(), prefixes()
			case f == 5 && kind != 1:
				m.DestinationPorts, m.NotDestinationPorts = ports(), ports()
			}
		}
		return m
	}
	var auths []ztunnel.Authorization
	for i, n := 0, 1+pick(4); i < n; i++ {
		a := ztunnel.Authorization{Name: fmt.Sprintf("p%d", i), Namespace: nsVals[pick(3)],
			Scope: ztunnel.Scope(pick(3)), Action: ztunnel.Action(pick(2)), DryRun: pick(8) == 0}
		if a.Scope == ztunnel.Global {
			a.Namespace = "istio-system"
		}
		for nr := pick(3); nr > 0; nr-- {
			var rule ztunnel.Rule
			for nc := pick(4); nc > 0; nc-- {
				kind := pick(3)
				var c ztunnel.Clause
				for nm := pick(3); nm > 0; nm-- {
					c = append(c, match(kind))
				}
				rule = append(rule, c)
			}
			a.Rules = append(a.Rules, rule)
		}
		auths = append(auths, a)
	}
	return auths
}

func TestToAuthzBindingErrors(t *testing.T) {
	pol := func(ns, name string, scope ztunnel.Scope) ztunnel.Authorization {
		return ztunnel.Authorization{Name: name, Namespace: ns, Scope: scope}
	}
	tests := []struct {
		name  string
		auths []ztunnel.Authorization
		bind  []ztunnel.Binding
		want  string
	}{
		{"unknown policy", nil, []ztunnel.Binding{{Name: "w1", Namespace: "a", Policies: []string{"a/missing"}}},
			"workload w1: authorizationPolicies[0]: no policy a/missing"},
		{"selector from another namespace", []ztunnel.Authorization{pol("b", "p", ztunnel.WorkloadSelector), pol("istio-system", "g", ztunnel.Global)},
			[]ztunnel.Binding{{Name: "w1", Namespace: "a", Policies: []string{"b/p"}}},
			"several root namespaces: policy b/p listed by workload w1 of namespace a; Global policy istio-system/g"},
		{"namespace policy elsewhere", []ztunnel.Authorization{pol("b", "p", ztunnel.Namespace)},
			[]ztunnel.Binding{{Name: "w1", Namespace: "a", Policies: []string{"b/p"}}},
			"b/p is a Namespace policy of namespace b; a workload of namespace a cannot list it"},
		{"two global namespaces", []ztunnel.Authorization{pol("x", "p", ztunnel.Global), pol("y", "q", ztunnel.Global)}, nil,
			"several root namespaces"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ztunnel.ToAuthz(tc.auths, tc.bind)
			require.Error(t, err)
			assert.True(t, errors.Is(err, ztunnel.ErrInvalid), "%v", err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// A Global policy outside istio-system makes that namespace the root, and
// Namespace policies of the root namespace stay namespace-scoped.
func TestToAuthzRootInference(t *testing.T) {
	auths := []ztunnel.Authorization{
		{Name: "g", Namespace: "mesh-root", Scope: ztunnel.Global, Action: ztunnel.Allow, Rules: []ztunnel.Rule{{{{Principals: []ztunnel.StringMatch{{Kind: ztunnel.Presence}}}}}}},
		{Name: "n", Namespace: "mesh-root", Scope: ztunnel.Namespace, Action: ztunnel.Deny, Rules: []ztunnel.Rule{{}}},
	}
	az, err := ztunnel.ToAuthz(auths, []ztunnel.Binding{{Name: "a", Namespace: "apps"}, {Name: "r", Namespace: "mesh-root"}})
	require.NoError(t, err)
	assert.Equal(t, "mesh-root", az.RootNamespace)
	assert.Nil(t, az.Labels[0])
	assert.Equal(t, map[string]string{ztunnel.BindingLabel("mesh-root", "n"): "bound"}, az.Labels[1])
	assert.NotZero(t, checkAgainstReference(t, auths))
}
