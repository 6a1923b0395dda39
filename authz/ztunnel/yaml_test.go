package ztunnel_test

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz/ztunnel"
)

func TestParseZtunnelSpelling(t *testing.T) {
	data, err := os.ReadFile("testdata/policies.yaml")
	require.NoError(t, err)
	got, err := ztunnel.Parse(data)
	require.NoError(t, err)
	require.Len(t, got, 4)

	assert.Equal(t, ztunnel.Authorization{
		Name: "deny-9999", Namespace: "default", Scope: ztunnel.Namespace, Action: ztunnel.Allow,
		Rules: []ztunnel.Rule{{{{NotDestinationPorts: []uint16{9999}}}}},
	}, got[0])
	assert.Equal(t, ztunnel.Global, got[1].Scope)
	assert.Equal(t, ztunnel.Deny, got[1].Action)
	assert.Equal(t, []ztunnel.StringMatch{{Kind: ztunnel.Presence}}, got[1].Rules[0][0][0].NotPrincipals)

	e := got[2]
	assert.Equal(t, "default/echo-from-sleep", e.Key())
	assert.Equal(t, ztunnel.WorkloadSelector, e.Scope)
	require.Len(t, e.Rules, 2)
	require.Len(t, e.Rules[0], 4)
	assert.Equal(t, []uint16{8081}, e.Rules[0][0][1].DestinationPorts)
	assert.Equal(t, []ztunnel.StringMatch{
		{Kind: ztunnel.Exact, Value: "cluster.local/ns/default/sa/sleep"},
		{Kind: ztunnel.Suffix, Value: "/sa/curl"},
	}, e.Rules[0][1][0].Principals)
	assert.Equal(t, []ztunnel.StringMatch{{Kind: ztunnel.Prefix, Value: "team-"}}, e.Rules[0][1][1].Namespaces)
	assert.Equal(t, []ztunnel.ServiceAccountMatch{{Namespace: "other", ServiceAccount: "client"}}, e.Rules[0][1][2].ServiceAccounts)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, e.Rules[0][2][0].SourceIPs)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, e.Rules[0][2][0].NotSourceIPs)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("127.0.10.3/32")}, e.Rules[0][3][0].DestinationIPs)
	assert.Empty(t, e.Rules[1], "an empty rule matches everything")
	assert.True(t, got[3].DryRun)

	// Writing and reading again is the identity.
	out, err := ztunnel.Marshal(got)
	require.NoError(t, err)
	back, err := ztunnel.Parse(out)
	require.NoError(t, err, "%s", out)
	assert.Equal(t, got, back)
	assert.Contains(t, string(out), "- !Exact cluster.local/ns/default/sa/sleep")
	assert.Contains(t, string(out), "- !Presence []")
	assert.Contains(t, string(out), "dryRun: true")
}

// TestParseJSONSpelling reads serde's JSON form (what ztunnel's config dump
// shows): string matches as single-key objects.
func TestParseJSONSpelling(t *testing.T) {
	got, err := ztunnel.Parse([]byte(`{"policies": [{"name": "p", "namespace": "ns", "scope": "Namespace", "action": "Deny",
	  "rules": [[[{"principals": [{"Exact": "a"}, {"Prefix": "b"}, {"Suffix": "c"}, {"Presence": []}]}]]], "dryRun": false}]}`))
	require.NoError(t, err)
	assert.Equal(t, []ztunnel.StringMatch{
		{Kind: ztunnel.Exact, Value: "a"}, {Kind: ztunnel.Prefix, Value: "b"},
		{Kind: ztunnel.Suffix, Value: "c"}, {Kind: ztunnel.Presence},
	}, got[0].Rules[0][0][0].Principals)
}

func TestParseErrors(t *testing.T) {
	const ok = "name: p\n  namespace: ns\n  scope: Namespace\n  action: Allow\n  dryRun: false\n  "
	tests := []struct {
		name, yaml, want string
	}{
		{"not a list", "policies: {name: p}", "policies (line 1): must be a list"},
		{"missing dryRun", "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: []", "policies[0].dryRun (line 2): required"},
		{"missing rules", "policies:\n- " + ok + "\n", "policies[0].rules"},
		{"unknown policy field", "policies:\n- " + ok + "rules: []\n  selector: {app: x}", "policies[0].selector (line 8): unknown field"},
		{"unknown match field", "policies:\n- " + ok + "rules: [[[{ports: [80]}]]]", "policies[0].rules[0][0][0].ports (line 7): unknown field"},
		{"bad scope", "policies:\n- name: p\n  namespace: ns\n  scope: Mesh\n  action: Allow\n  rules: []\n  dryRun: false", `policies[0].scope (line 4): "Mesh" is not Global, Namespace or WorkloadSelector`},
		{"istio action", "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: ALLOW\n  rules: []\n  dryRun: false", `policies[0].action (line 5): "ALLOW" is not Allow or Deny`},
		{"audit", "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Audit\n  rules: []\n  dryRun: false", `"Audit" is not Allow or Deny`},
		{"untagged string", "policies:\n- " + ok + "rules: [[[{principals: [foo]}]]]", "policies[0].rules[0][0][0].principals[0] (line 7): must be a tagged string match"},
		{"unknown tag", "policies:\n- " + ok + "rules: [[[{principals: [!Regex 'a.*']}]]]", `unknown string match "Regex"`},
		{"presence value", "policies:\n- " + ok + "rules: [[[{principals: [!Presence x]}]]]", "Presence takes no value"},
		{"bare ip", "policies:\n- " + ok + "rules: [[[{sourceIps: [10.0.0.1]}]]]", `policies[0].rules[0][0][0].sourceIps[0] (line 7): "10.0.0.1" is not a CIDR`},
		{"port range", "policies:\n- " + ok + "rules: [[[{destinationPorts: [70000]}]]]", "destinationPorts[0] (line 7): 70000 is not a port number"},
		{"port string", "policies:\n- " + ok + "rules: [[[{destinationPorts: ['80']}]]]", "destinationPorts[0] (line 7): must be a port number"},
		{"sa fields", "policies:\n- " + ok + "rules: [[[{serviceAccounts: [{namespace: a}]}]]]", "serviceAccounts[0] (line 7): namespace and serviceAccount are required"},
		{"dryRun string", "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: []\n  dryRun: 'no'", "policies[0].dryRun (line 7): must be true or false"},
		{"empty name", "policies:\n- name: ''\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: []\n  dryRun: false", "policies[0].name (line 2): must not be empty"},
		{"duplicate", "policies:\n- " + ok + "rules: []\n- " + ok + "rules: []", "policies[1] (line 8): duplicate policy ns/p"},
		{"duplicate key", "policies:\n- " + ok + "rules: []\n  name: q", "policies[0].name (line 8): duplicate key"},
		{"other section", "workloads: []", "workloads (line 1): unknown field"},
		// Valid ztunnel, but not expressible for the authz engine.
		{"exact star", "policies:\n- " + ok + "rules: [[[{principals: [!Exact 'a*']}]]]", "policies[0].rules[0][0][0].principals[0]: an exact value that begins or ends with '*'"},
		{"empty prefix", "policies:\n- " + ok + "rules: [[[{namespaces: [!Prefix '']}]]]", "namespaces[0]: an empty Prefix value"},
		{"mixed clause", "policies:\n- " + ok + "rules: [[[{principals: [!Presence []], destinationPorts: [80]}, {destinationPorts: [81]}]]]", "policies[0].rules[0][0]: a clause of several matches that mixes"},
		{"two from clauses", "policies:\n- " + ok + "rules: [[[{principals: [!Exact a]}, {namespaces: [!Exact b]}], [{principals: [!Exact c]}, {namespaces: [!Exact d]}]]]", "policies[0].rules[0][1]: a second clause of several source matches"},
		{"sa with principals", "policies:\n- " + ok + "rules: [[[{principals: [!Exact a], serviceAccounts: [{namespace: n, serviceAccount: s}]}, {namespaces: [!Exact b]}]]]", "serviceAccounts cannot be combined with principals or namespaces"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ztunnel.Parse([]byte(tc.yaml))
			require.Error(t, err)
			assert.True(t, errors.Is(err, ztunnel.ErrInvalid), "%v", err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "policies:", "policies: []", "# nothing\n"} {
		got, err := ztunnel.Parse([]byte(in))
		require.NoError(t, err, "%q", in)
		assert.Empty(t, got, "%q", in)
	}
}

func TestMarshalQuotes(t *testing.T) {
	in := []ztunnel.Authorization{{Name: "p", Namespace: "ns", Rules: []ztunnel.Rule{{{{
		Principals: []ztunnel.StringMatch{{Kind: ztunnel.Exact, Value: "a: b"}, {Kind: ztunnel.Prefix, Value: "- x"}, {Kind: ztunnel.Suffix, Value: "#c"}, {Kind: ztunnel.Exact, Value: "80"}},
	}}}}}}
	out, err := ztunnel.Marshal(in)
	require.NoError(t, err)
	back, err := ztunnel.Parse(out)
	require.NoError(t, err, "%s", out)
	assert.Equal(t, in[0].Rules, back[0].Rules, "%s", out)
	assert.True(t, strings.HasPrefix(string(out), "policies:\n"))
}
