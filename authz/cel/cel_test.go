package cel_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/cel"
)

func TestCompileErrors(t *testing.T) {
	c, err := cel.NewCompiler()
	require.NoError(t, err)
	for _, tc := range []struct{ name, expr, want string }{
		{"empty", "  ", "empty expression"},
		{"syntax", "request.method ==", "Syntax error"},
		{"unknown variable", "pod.name == 'x'", "undeclared reference"},
		{"not bool", "1 + 2", "want bool"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Compile(tc.expr)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestMatch(t *testing.T) {
	c, err := cel.NewCompiler()
	require.NoError(t, err)
	r := &authz.Request{
		Layer:    authz.L7,
		Workload: authz.Workload{Namespace: "test", Labels: map[string]string{"app": "web"}, ServiceAccount: "web"},
		Peer:     "cluster.local/ns/prod/sa/sleep",
		SourceIP: netip.MustParseAddr("10.0.0.5"), DestIP: netip.MustParseAddr("10.0.0.9"), DestPort: 8080,
		Method: "GET", Path: "/a?b", Host: "web", Headers: map[string]string{"x-user": "alice"},
		Auth: &authz.JWT{Principal: "iss/sub", Audiences: []string{"api"}, Claims: map[string]any{"groups": []any{"admin"}}},
	}
	for _, tc := range []struct {
		expr    string
		want    bool
		wantErr bool
	}{
		{`layer == "L7"`, true, false},
		{`source.namespace == "prod" && source.serviceAccount == "sleep" && source.trustDomain == "cluster.local"`, true, false},
		{`source.ip == "10.0.0.5" && remote.ip == "10.0.0.5"`, true, false},
		{`destination.port == 8080 && destination.labels.app == "web" && destination.namespace == "test"`, true, false},
		{`request.path == "/a?b" && request.host == "web"`, true, false},
		{`request.headers["x-user"] == "bob"`, false, false},
		{`request.headers["missing"] == "x"`, false, true},
		{`"api" in request.auth.audiences && "admin" in request.auth.claims.groups`, true, false},
		{`request.auth.principal.startsWith("iss/")`, true, false},
		{`connection.sni == ""`, true, false},
	} {
		t.Run(tc.expr, func(t *testing.T) {
			cond, err := c.Compile(tc.expr)
			require.NoError(t, err)
			got, err := cond.Match(r)
			if tc.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestConditionIsCompiledOnce(t *testing.T) {
	c, err := cel.NewCompiler()
	require.NoError(t, err)
	cond, err := c.Compile(`request.method == "GET"`)
	require.NoError(t, err)
	eng, err := authz.New(authz.Config{}, []authz.Policy{{
		Namespace: "test", Name: "p", TargetRefs: []authz.TargetRef{{Kind: "Service", Name: "web"}},
		Rules: []authz.Rule{{}}, Extra: []authz.Predicate{cond},
	}})
	require.NoError(t, err)
	w := authz.Workload{Namespace: "test", Services: []string{"web"}}
	assert.True(t, eng.Evaluate(&authz.Request{Layer: authz.L7, Workload: w, Method: "GET"}).Allowed)
	assert.False(t, eng.Evaluate(&authz.Request{Layer: authz.L7, Workload: w, Method: "PUT"}).Allowed)
}
