package istio_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-multierror"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
)

func loadPA(t *testing.T, files ...string) ([]authz.PeerAuthentication, error) {
	t.Helper()
	var all []byte
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join("..", "testdata", "peerauthn", "objects", f))
		require.NoError(t, err)
		all = append(append(all, b...), "\n---\n"...)
	}
	return istio.ParsePeerAuthentications(all, istio.Options{})
}

func TestParsePeerAuthenticationsFiles(t *testing.T) {
	pas, err := loadPA(t, "mesh.yaml", "workloads.yaml")
	require.NoError(t, err)
	require.Len(t, pas, 5)
	assert.Equal(t, "istio-system/default", pas[0].String())
	assert.Equal(t, time.Date(2024, 6, 7, 14, 35, 59, 0, time.UTC), pas[0].Created)
	assert.Equal(t, authz.MTLSStrict, pas[0].Mode)
	assert.Equal(t, authz.MTLSPermissive, pas[1].Mode) // v1beta1
	assert.Equal(t, authz.MTLSUnset, pas[2].Mode)
	assert.Equal(t, map[uint32]authz.MTLSMode{15020: authz.MTLSPermissive, 9080: authz.MTLSDisable}, pas[3].PortModes)
	assert.Equal(t, map[string]string{"app": "ratings", "version": "v1"}, pas[4].Selector)
	for i, pa := range pas {
		assert.Equal(t, i, pa.Order)
		assert.NoError(t, pa.Err)
	}

	e, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{}, pas)
	require.NoError(t, err)
	tests := []struct {
		ns     string
		labels map[string]string
		port   uint16
		want   string
	}{
		{"default", nil, 80, "STRICT by mesh PeerAuthentication istio-system/default"},
		{"legacy", nil, 80, "PERMISSIVE by namespace PeerAuthentication legacy/legacy-permissive"},
		{"bookinfo", map[string]string{"app": "productpage"}, 9080, "STRICT by mesh PeerAuthentication istio-system/default"},
		{"bookinfo", map[string]string{"app": "reviews"}, 15020, "PERMISSIVE by port PeerAuthentication bookinfo/reviews-metrics portLevelMtls[15020]"},
		// A PERMISSIVE port exists, so istiod's converted policy exempts the DISABLE port too.
		{"bookinfo", map[string]string{"app": "reviews"}, 9080, "DISABLE by port PeerAuthentication bookinfo/reviews-metrics portLevelMtls[9080]"},
		{"bookinfo", map[string]string{"app": "reviews"}, 9081, "STRICT by mesh PeerAuthentication istio-system/default"},
		{"bookinfo", map[string]string{"app": "ratings", "version": "v1"}, 9080, "STRICT by port PeerAuthentication bookinfo/ratings portLevelMtls[9080]"},
		{"bookinfo", map[string]string{"app": "ratings", "version": "v1"}, 8080, "DISABLE by workload PeerAuthentication bookinfo/ratings"},
		{"bookinfo", map[string]string{"app": "ratings", "version": "v2"}, 8080, "STRICT by mesh PeerAuthentication istio-system/default"},
	}
	for _, tt := range tests {
		got := e.Mode(&authz.Workload{Namespace: tt.ns, Labels: tt.labels}, tt.port)
		assert.Equal(t, tt.want, got.String(), "%s %v :%d", tt.ns, tt.labels, tt.port)
	}
}

func TestParsePeerAuthenticationsInvalid(t *testing.T) {
	pas, perr := loadPA(t, "invalid.yaml")
	require.Len(t, pas, 3)
	require.Error(t, perr)
	assert.ErrorContains(t, perr, "authz: PeerAuthentication orders/lower-case-mode: spec: istio: cannot decode:")
	assert.Error(t, pas[1].Err)
	assert.False(t, pas[1].HasSelector, "a spec that does not decode has no usable selector")

	e, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{}, pas)
	var me *multierror.Error
	require.ErrorAs(t, err, &me)
	require.Len(t, me.Errors, 3, "%v", err)
	assert.Equal(t, "authz: PeerAuthentication payments/port-level-without-selector: spec.portLevelMtls: requires spec.selector (mesh- and namespace-wide policies cannot set port-level mTLS)", me.Errors[0].Error())
	assert.Contains(t, me.Errors[1].Error(), "orders/lower-case-mode: spec:")
	assert.Equal(t, "authz: PeerAuthentication orders/port-zero: spec.portLevelMtls[0]: port must be in 1-65535", me.Errors[2].Error())
	assert.ErrorIs(t, err, authz.ErrInvalidPeerAuthentication)

	for _, tt := range []struct {
		ns   string
		want string
	}{
		{"payments", "STRICT by invalid PeerAuthentication payments/port-level-without-selector"},
		{"orders", "STRICT by invalid PeerAuthentication orders/lower-case-mode"},
		{"other", "PERMISSIVE (default)"},
	} {
		assert.Equal(t, tt.want, e.Mode(&authz.Workload{Namespace: tt.ns}, 8080).String())
	}
}

func TestParsePeerAuthenticationsDocuments(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		want    []string // ns/name:mode
		wantErr string
	}{
		{name: "skips other kinds and groups", yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: x}
---
apiVersion: example.com/v1
kind: PeerAuthentication
metadata: {name: b, namespace: x}
`},
		{name: "default namespace and null spec", yaml: `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a}
`, want: []string{"default/a:UNSET"}},
		{name: "last document wins for one name", yaml: `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: x}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: x}
spec: {mtls: {mode: DISABLE}}
`, want: []string{"x/a:DISABLE"}},
		{name: "bad timestamp", yaml: `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: x, creationTimestamp: yesterday}
`, want: []string{"x/a:UNSET"}, wantErr: `x/a: metadata.creationTimestamp: istio: cannot decode: "yesterday" is not an RFC 3339 time`},
		{name: "unknown field", yaml: `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: x}
spec: {mtls: {mode: STRICT}, portLevelMTLS: {}}
`, want: []string{"x/a:UNSET"}, wantErr: "x/a: spec: istio: cannot decode"},
		{name: "null port entry", yaml: `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: x}
spec:
  selector: {matchLabels: {app: a}}
  portLevelMtls: {"80": null}
`, want: []string{"x/a:UNSET"}, wantErr: "x/a:"},
		{name: "broken yaml", yaml: "a: [\n", wantErr: "istio: document 0 (line 1): cannot decode: yaml: line 1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pas, err := istio.ParsePeerAuthentications([]byte(tt.yaml), istio.Options{})
			var got []string
			for _, pa := range pas {
				got = append(got, pa.String()+":"+pa.Mode.String())
			}
			assert.Equal(t, tt.want, got)
			if tt.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, tt.wantErr)
			if len(pas) > 0 {
				e, nerr := authz.NewPeerAuthn(authz.PeerAuthnConfig{}, pas)
				assert.Error(t, nerr)
				assert.Equal(t, authz.MTLSStrict, e.Mode(&authz.Workload{Namespace: pas[0].Namespace, Labels: map[string]string{"app": "a"}}, 80).Mode)
			}
		})
	}
}
