package authz_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
)

func names(ps []*authz.Policy) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Namespace+"/"+p.Name)
	}
	return out
}

func TestDecisionNamesUnmatchedAllowPolicies(t *testing.T) {
	onlyFrom := func(ns, name, sa string) authz.Policy {
		return authz.Policy{Namespace: ns, Name: name,
			Rules: []authz.Rule{{From: []*authz.Source{{Principals: []string{"cluster.local/ns/test/sa/" + sa}}}}}}
	}
	var six []authz.Policy
	for i := 6; i >= 1; i-- { // given in reverse: the decision lists them in name order
		six = append(six, onlyFrom("test", fmt.Sprintf("allow-%d", i), fmt.Sprintf("sa-%d", i)))
	}
	twoRefs := onlyFrom("test", "two-services", "sleep")
	twoRefs.TargetRefs = []authz.TargetRef{{Kind: "Service", Name: "a"}, {Kind: "Service", Name: "b"}}
	tests := []struct {
		name     string
		policies []authz.Policy
		req      authz.Request
		want     []string
		more     bool
		text     string
	}{
		{"more than MaxUnmatched", six,
			authz.Request{Layer: authz.L4, Workload: authz.Workload{Namespace: "test"}, Peer: "cluster.local/ns/test/sa/curl"},
			[]string{"test/allow-1", "test/allow-2", "test/allow-3", "test/allow-4"}, true,
			"DENY (no ALLOW policy matched: test/allow-1, test/allow-2, test/allow-3, test/allow-4 and more)"},
		{"visited once per Service, named once", []authz.Policy{twoRefs},
			authz.Request{Layer: authz.L7, Workload: authz.Workload{Namespace: "test", Services: []string{"a", "b"}}, Peer: "cluster.local/ns/test/sa/curl"},
			[]string{"test/two-services"}, false, "DENY (no ALLOW policy matched: test/two-services)"},
		{"allowed names none", six,
			authz.Request{Layer: authz.L4, Workload: authz.Workload{Namespace: "test"}, Peer: "cluster.local/ns/test/sa/sa-5"},
			nil, false, "ALLOW by ALLOW test/allow-5 rules[0] (ALLOW policy matched)"},
		{"denied by a DENY names none", append([]authz.Policy{{Namespace: "test", Name: "deny-all", Action: authz.Deny, Rules: []authz.Rule{{}}}}, six...),
			authz.Request{Layer: authz.L4, Workload: authz.Workload{Namespace: "test"}, Peer: "cluster.local/ns/test/sa/curl"},
			nil, false, "DENY by DENY test/deny-all rules[0] (DENY policy matched)"},
		{"no policy", nil,
			authz.Request{Layer: authz.L4, Workload: authz.Workload{Namespace: "test"}},
			nil, false, "ALLOW (no ALLOW policy applies)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			eng, err := authz.New(authz.Config{}, tc.policies)
			require.NoError(t, err)
			d := eng.Evaluate(&tc.req)
			ps, more := d.Unmatched()
			assert.Equal(t, tc.want, names(ps))
			assert.Equal(t, tc.more, more)
			assert.Equal(t, tc.text, d.String())
		})
	}
}

func ExampleDecision_Unmatched() {
	eng, _ := authz.New(authz.Config{}, []authz.Policy{
		{Namespace: "test", Name: "from-sleep", Rules: []authz.Rule{{From: []*authz.Source{{Principals: []string{"cluster.local/ns/test/sa/sleep"}}}}}},
		{Namespace: "test", Name: "to-8080", Rules: []authz.Rule{{To: []*authz.Operation{{Ports: []string{"8080"}}}}}},
	})
	d := eng.Evaluate(&authz.Request{Layer: authz.L4, Workload: authz.Workload{Namespace: "test"}, Peer: "cluster.local/ns/test/sa/curl", DestPort: 9090})
	ps, more := d.Unmatched()
	for _, p := range ps {
		fmt.Println("applied, did not match:", p.Name)
	}
	fmt.Println(more)
	fmt.Println(d)
	// Output:
	// applied, did not match: from-sleep
	// applied, did not match: to-8080
	// false
	// DENY (no ALLOW policy matched: test/from-sleep, test/to-8080)
}
