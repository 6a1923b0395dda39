package ztunnel_test

import (
	"errors"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz/ztunnel"
)

// FuzzParse feeds arbitrary documents to Parse. Whatever parses must
// survive Marshal and Parse unchanged, and whatever ToAuthz accepts must
// decide like ztunnel's own procedure on a grid of connections.
func FuzzParse(f *testing.F) {
	for _, p := range []string{"testdata/policies.yaml", "testdata/istio.golden.yaml"} {
		data, err := os.ReadFile(p)
		require.NoError(f, err)
		f.Add(data)
	}
	f.Add([]byte(`{"policies": [{"name": "p", "namespace": "default", "scope": "WorkloadSelector", "action": "Deny", "rules": [[[{"notPrincipals": [{"Presence": []}], "destinationPorts": [80]}]]], "dryRun": false}]}`))
	f.Add([]byte("policies:\n- {name: a, namespace: team-a, scope: Namespace, action: Allow, dryRun: false, rules: [[[{namespaces: [!Suffix -a]}, {sourceIps: [10.0.0.0/8]}], [{destinationPorts: [80]}, {notDestinationPorts: [9999]}]]]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		auths, err := ztunnel.Parse(data)
		if err != nil {
			if !errors.Is(err, ztunnel.ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		out, err := ztunnel.Marshal(auths)
		require.NoError(t, err)
		back, err := ztunnel.Parse(out)
		require.NoError(t, err, "%s", out)
		again, err := ztunnel.Marshal(back)
		require.NoError(t, err)
		require.Equal(t, string(out), string(again))
		checkAgainstReference(t, auths)
	})
}
