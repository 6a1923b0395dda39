package istio_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
)

const full = `apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: full
  namespace: test
  annotations:
    istio.io/dry-run: "true"
spec:
  selector:
    matchLabels: {app: web}
  action: DENY
  rules:
  - from:
    - source:
        principals: [a]
        notPrincipals: [b]
        requestPrincipals: [c]
        notRequestPrincipals: [d]
        namespaces: [e]
        notNamespaces: [f]
        ipBlocks: [10.0.0.1]
        notIpBlocks: [10.0.0.2]
        remoteIpBlocks: [10.0.0.3]
        notRemoteIpBlocks: [10.0.0.4]
        trustDomains: [g]
        notTrustDomains: [h]
    to:
    - operation:
        hosts: [i]
        notHosts: [j]
        ports: ["1"]
        notPorts: ["2"]
        methods: [K]
        notMethods: [L]
        paths: [/m]
        notPaths: [/n]
    when:
    - key: request.headers[x]
      values: [o]
      notValues: [p]
`

func TestParseAllFields(t *testing.T) {
	ps, err := istio.Parse([]byte(full), istio.Options{})
	require.NoError(t, err)
	require.Len(t, ps, 1)
	p := ps[0]
	assert.Equal(t, "test", p.Namespace)
	assert.Equal(t, "full", p.Name)
	assert.True(t, p.DryRun)
	assert.True(t, p.HasSelector)
	assert.Equal(t, map[string]string{"app": "web"}, p.Selector)
	assert.Equal(t, authz.Deny, p.Action)
	require.Len(t, p.Rules, 1)
	want := authz.Rule{
		From: []*authz.Source{{
			Principals: []string{"a"}, NotPrincipals: []string{"b"},
			RequestPrincipals: []string{"c"}, NotRequestPrincipals: []string{"d"},
			Namespaces: []string{"e"}, NotNamespaces: []string{"f"},
			IPBlocks: []string{"10.0.0.1"}, NotIPBlocks: []string{"10.0.0.2"},
			RemoteIPBlocks: []string{"10.0.0.3"}, NotRemoteIPBlocks: []string{"10.0.0.4"},
			TrustDomains: []string{"g"}, NotTrustDomains: []string{"h"},
		}},
		To: []*authz.Operation{{
			Hosts: []string{"i"}, NotHosts: []string{"j"}, Ports: []string{"1"}, NotPorts: []string{"2"},
			Methods: []string{"K"}, NotMethods: []string{"L"}, Paths: []string{"/m"}, NotPaths: []string{"/n"},
		}},
		When: []authz.Condition{{Key: "request.headers[x]", Values: []string{"o"}, NotValues: []string{"p"}}},
	}
	assert.Equal(t, want, p.Rules[0])
}

func TestParseDocuments(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		names   []string
		wantErr string
	}{
		{"empty", "", nil, ""},
		{"separators only", "---\n---\n", nil, ""},
		{"other kinds skipped", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa}\n", nil, ""},
		{"default namespace", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {}\n", []string{"default/a"}, ""},
		{"two documents", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: x}\n---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: b, namespace: ns-y}\nspec:\n  action: ALLOW\n", []string{"x/a", "ns-y/b"}, ""},
		{"list", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: a, namespace: x}\n  spec: {}\n", []string{"x/a"}, ""},
		{"unknown field", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: x}\nspec: {rulez: []}\n", []string{"x/a"}, `x/a: spec: unknown field "rulez" (did you mean "rules"?)`},
		{"bad enum", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: x}\nspec: {action: MAYBE}\n", []string{"x/a"}, `x/a: spec.action: "MAYBE" is not one of ALLOW, DENY, AUDIT, CUSTOM`},
		{"bad yaml", "apiVersion: [\n", nil, "document 0"},
		{"validation error", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  rules:\n  - to:\n    - operation: {ports: [\"0x50\"]}\n", []string{"x/a"}, `x/a: spec.rules[0].to[0].operation.ports[0]: "0x50" is not a port number`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := istio.Parse([]byte(tc.yaml), istio.Options{})
			var names []string
			for _, p := range ps {
				names = append(names, p.Namespace+"/"+p.Name)
			}
			assert.Equal(t, tc.names, names)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
}

func TestDecodeFailureFailsClosed(t *testing.T) {
	ps, err := istio.Parse([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: x}\nspec: {selectr: {}}\n"), istio.Options{})
	require.Error(t, err)
	assert.True(t, errors.Is(err, istio.ErrDecode))
	var pe *authz.PolicyError
	require.True(t, errors.As(err, &pe))
	assert.Equal(t, "spec", pe.Field)
	eng, _ := authz.New(authz.Config{}, ps)
	for _, l := range []authz.Layer{authz.L4, authz.L7} {
		d := eng.Evaluate(&authz.Request{Layer: l, Workload: authz.Workload{Namespace: "x", Services: []string{"s"}}})
		assert.False(t, d.Allowed, l)
		assert.Equal(t, authz.ReasonInvalidPolicy, d.Reason)
	}
	d := eng.Evaluate(&authz.Request{Layer: authz.L4, Workload: authz.Workload{Namespace: "y"}})
	assert.True(t, d.Allowed)
}

func TestSplitDocuments(t *testing.T) {
	docs := istio.SplitDocuments([]byte("a: 1\n---\nb: 2\n--- # comment\nc: 3\n---\n"))
	require.Len(t, docs, 3)
	assert.Equal(t, "b: 2\n", string(docs[1]))
	assert.True(t, strings.HasPrefix(string(docs[2]), "c: 3"))
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(full))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {targetRefs: [{kind: Service, name: x}], rules: [{}]}\n"))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: [1, {kind: AuthorizationPolicy, apiVersion: security.istio.io/v1}]\n"))
	f.Add([]byte("metadata: {annotations: {authz.meshblocks.io/cel: 'request.method =='}}\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, _ := istio.Parse(data, istio.Options{})
		eng, _ := authz.New(authz.Config{}, ps)
		for _, l := range []authz.Layer{authz.L4, authz.L7} {
			_ = eng.Evaluate(&authz.Request{Layer: l, Workload: authz.Workload{Namespace: "default", Services: []string{"x"}}, Method: "GET", Path: "/"})
		}
	})
}
