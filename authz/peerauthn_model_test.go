package authz_test

import (
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/go-multierror"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
)

func TestPeerAuthnMode(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	mesh := func(m authz.MTLSMode) authz.PeerAuthentication {
		return authz.PeerAuthentication{Namespace: "istio-system", Name: "default", Mode: m}
	}
	ns := func(n string, m authz.MTLSMode) authz.PeerAuthentication {
		return authz.PeerAuthentication{Namespace: n, Name: "default", Mode: m}
	}
	wl := func(name string, sel map[string]string, m authz.MTLSMode, ports map[uint32]authz.MTLSMode) authz.PeerAuthentication {
		return authz.PeerAuthentication{Namespace: "shop", Name: name, Selector: sel, HasSelector: true, Mode: m, PortModes: ports}
	}
	web := map[string]string{"app": "web"}
	tests := []struct {
		name   string
		root   string
		pas    []authz.PeerAuthentication
		ns     string
		labels map[string]string
		port   uint16
		want   authz.MTLSMode
		level  authz.MTLSLevel
		by     string
		errs   int
	}{
		{name: "nothing", ns: "shop", port: 80, want: authz.MTLSPermissive, level: authz.LevelDefault},
		{name: "mesh unset is default", pas: []authz.PeerAuthentication{mesh(authz.MTLSUnset)}, ns: "shop", port: 80,
			want: authz.MTLSPermissive, level: authz.LevelDefault},
		{name: "mesh strict", pas: []authz.PeerAuthentication{mesh(authz.MTLSStrict)}, ns: "shop", port: 80,
			want: authz.MTLSStrict, level: authz.LevelMesh, by: "istio-system/default"},
		{name: "namespace over mesh", pas: []authz.PeerAuthentication{mesh(authz.MTLSStrict), ns("shop", authz.MTLSDisable)},
			ns: "shop", port: 80, want: authz.MTLSDisable, level: authz.LevelNamespace, by: "shop/default"},
		{name: "other namespace keeps mesh", pas: []authz.PeerAuthentication{mesh(authz.MTLSStrict), ns("shop", authz.MTLSDisable)},
			ns: "bank", port: 80, want: authz.MTLSStrict, level: authz.LevelMesh, by: "istio-system/default"},
		{name: "workload unset inherits namespace", pas: []authz.PeerAuthentication{ns("shop", authz.MTLSStrict), wl("w", web, authz.MTLSUnset, nil)},
			ns: "shop", labels: web, port: 80, want: authz.MTLSStrict, level: authz.LevelNamespace, by: "shop/default"},
		{name: "workload over namespace", pas: []authz.PeerAuthentication{ns("shop", authz.MTLSStrict), wl("w", web, authz.MTLSPermissive, nil)},
			ns: "shop", labels: map[string]string{"app": "web", "v": "1"}, port: 80, want: authz.MTLSPermissive, level: authz.LevelWorkload, by: "shop/w"},
		{name: "port over workload", pas: []authz.PeerAuthentication{wl("w", web, authz.MTLSPermissive, map[uint32]authz.MTLSMode{443: authz.MTLSStrict})},
			ns: "shop", labels: web, port: 443, want: authz.MTLSStrict, level: authz.LevelPort, by: "shop/w"},
		{name: "port unset falls back", pas: []authz.PeerAuthentication{mesh(authz.MTLSStrict), wl("w", web, authz.MTLSUnset, map[uint32]authz.MTLSMode{443: authz.MTLSUnset, 80: authz.MTLSPermissive})},
			ns: "shop", labels: web, port: 443, want: authz.MTLSStrict, level: authz.LevelMesh, by: "istio-system/default"},
		{name: "custom root", root: "mesh", pas: []authz.PeerAuthentication{{Namespace: "mesh", Name: "m", Mode: authz.MTLSStrict}, mesh(authz.MTLSDisable)},
			ns: "shop", port: 80, want: authz.MTLSStrict, level: authz.LevelMesh, by: "mesh/m"},
		{name: "oldest by Created", pas: []authz.PeerAuthentication{
			{Namespace: "shop", Name: "b", Mode: authz.MTLSStrict, Created: t0.Add(time.Hour)},
			{Namespace: "shop", Name: "a", Mode: authz.MTLSDisable, Created: t0, Order: 5},
		}, ns: "shop", port: 80, want: authz.MTLSDisable, level: authz.LevelNamespace, by: "shop/a"},
		{name: "oldest by Order then name", pas: []authz.PeerAuthentication{
			{Namespace: "shop", Name: "z", Mode: authz.MTLSStrict, Order: 1},
			{Namespace: "shop", Name: "y", Mode: authz.MTLSDisable, Order: 1},
		}, ns: "shop", port: 80, want: authz.MTLSDisable, level: authz.LevelNamespace, by: "shop/y"},
		{name: "invalid namespace policy forces strict over workload", pas: []authz.PeerAuthentication{
			wl("w", web, authz.MTLSDisable, nil),
			{Namespace: "shop", Name: "bad", Mode: authz.MTLSPermissive, PortModes: map[uint32]authz.MTLSMode{80: authz.MTLSDisable}},
		}, ns: "shop", labels: web, port: 80, want: authz.MTLSStrict, level: authz.LevelInvalid, by: "shop/bad", errs: 1},
		{name: "decode error forces strict", pas: []authz.PeerAuthentication{
			ns("shop", authz.MTLSDisable),
			{Namespace: "shop", Name: "broken", Err: errors.New("cannot decode")},
		}, ns: "shop", port: 80, want: authz.MTLSStrict, level: authz.LevelInvalid, by: "shop/broken", errs: 1},
		{name: "invalid mesh policy", pas: []authz.PeerAuthentication{
			{Namespace: "istio-system", Name: "x", Mode: authz.MTLSMode(9)}, ns("shop", authz.MTLSDisable),
		}, ns: "shop", port: 80, want: authz.MTLSStrict, level: authz.LevelInvalid, by: "istio-system/x", errs: 1},
		{name: "several problems are aggregated", pas: []authz.PeerAuthentication{
			{Namespace: "shop", Name: "", Mode: authz.MTLSMode(7), PortModes: map[uint32]authz.MTLSMode{0: authz.MTLSMode(8), 70000: authz.MTLSStrict}},
		}, ns: "shop", port: 80, want: authz.MTLSStrict, level: authz.LevelInvalid, by: "shop/", errs: 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{RootNamespace: tt.root}, tt.pas)
			if tt.errs == 0 {
				require.NoError(t, err)
			} else {
				var me *multierror.Error
				require.ErrorAs(t, err, &me)
				assert.Len(t, me.Errors, tt.errs, "%v", err)
				assert.ErrorIs(t, err, authz.ErrInvalidPeerAuthentication)
			}
			d := e.Mode(&authz.Workload{Namespace: tt.ns, Labels: tt.labels}, tt.port)
			assert.Equal(t, tt.want, d.Mode, "%v", d)
			assert.Equal(t, tt.level, d.Level, "%v", d)
			assert.Equal(t, tt.want != authz.MTLSStrict, d.AllowsPlaintext())
			assert.Equal(t, tt.port, d.Port)
			if tt.by == "" {
				assert.Nil(t, d.By)
			} else {
				require.NotNil(t, d.By)
				assert.Equal(t, tt.by, d.By.String())
			}
		})
	}
}

func TestValidatePeerAuthenticationFields(t *testing.T) {
	err := authz.ValidatePeerAuthentication(&authz.PeerAuthentication{
		Namespace: "foo", Name: "bar", Selector: map[string]string{"": "x"}, HasSelector: true,
		PortModes: map[uint32]authz.MTLSMode{0: authz.MTLSStrict},
	})
	require.Error(t, err)
	assert.Equal(t, "authz: PeerAuthentication foo/bar: spec.selector.matchLabels: label keys must not be empty\n"+
		"authz: PeerAuthentication foo/bar: spec.portLevelMtls[0]: port must be in 1-65535", err.Error())

	err = authz.ValidatePeerAuthentication(&authz.PeerAuthentication{Namespace: "foo", Name: "bar",
		HasSelector: true, PortModes: map[uint32]authz.MTLSMode{80: authz.MTLSStrict}})
	assert.EqualError(t, err, "authz: PeerAuthentication foo/bar: spec.portLevelMtls: requires spec.selector (mesh- and namespace-wide policies cannot set port-level mTLS)")
	var pe *authz.PeerAuthenticationError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "spec.portLevelMtls", pe.Field)

	assert.NoError(t, authz.ValidatePeerAuthentication(&authz.PeerAuthentication{Namespace: "foo", Name: "bar",
		Selector: map[string]string{"app": "x"}, HasSelector: true, Mode: authz.MTLSStrict,
		PortModes: map[uint32]authz.MTLSMode{65535: authz.MTLSDisable}}))
}

func TestMTLSModeStrings(t *testing.T) {
	for _, m := range []authz.MTLSMode{authz.MTLSUnset, authz.MTLSDisable, authz.MTLSPermissive, authz.MTLSStrict} {
		got, err := authz.ParseMTLSMode(m.String())
		require.NoError(t, err)
		assert.Equal(t, m, got)
	}
	_, err := authz.ParseMTLSMode("strict")
	assert.ErrorContains(t, err, `unknown mTLS mode "strict"`)
	assert.Equal(t, "MTLSMode(9)", authz.MTLSMode(9).String())

	e, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{}, []authz.PeerAuthentication{{
		Namespace: "test", Name: "web", Selector: map[string]string{"app": "web"}, HasSelector: true,
		Mode: authz.MTLSPermissive, PortModes: map[uint32]authz.MTLSMode{8080: authz.MTLSStrict},
	}})
	require.NoError(t, err)
	w := &authz.Workload{Namespace: "test", Labels: map[string]string{"app": "web"}}
	assert.Equal(t, "STRICT by port PeerAuthentication test/web portLevelMtls[8080]", e.Mode(w, 8080).String())
	assert.Equal(t, "PERMISSIVE by workload PeerAuthentication test/web", e.Mode(w, 80).String())
	assert.Equal(t, "PERMISSIVE (default)", e.Mode(&authz.Workload{Namespace: "x"}, 80).String())
	d, ok := e.Admit(&authz.Request{Workload: *w, DestPort: 8080})
	assert.False(t, ok, "plaintext to a STRICT port")
	assert.Equal(t, authz.LevelPort, d.Level)
	_, ok = e.Admit(&authz.Request{Workload: *w, DestPort: 8080, Peer: "cluster.local/ns/test/sa/sleep"})
	assert.True(t, ok, "mTLS to a STRICT port")
	_, ok = e.Admit(&authz.Request{Workload: *w, DestPort: 80})
	assert.True(t, ok, "plaintext to a PERMISSIVE port")
	assert.Equal(t, "istio-system", e.RootNamespace())
	assert.Len(t, e.PeerAuthentications(), 1)
}

func TestPeerAuthnModeDoesNotAllocate(t *testing.T) {
	e, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{}, peerAuthnBenchSet(50))
	require.NoError(t, err)
	w := &authz.Workload{Namespace: "ns-7", Labels: map[string]string{"app": "app-3", "version": "v1"}}
	var d authz.MTLSDecision
	allocs := testing.AllocsPerRun(100, func() { d = e.Mode(w, 9003) })
	assert.Zero(t, allocs)
	r := &authz.Request{Workload: *w, DestPort: 9003}
	var ok bool
	assert.Zero(t, testing.AllocsPerRun(100, func() { d, ok = e.Admit(r) }))
	assert.False(t, ok)
	assert.Equal(t, authz.LevelPort, d.Level, "%v", d)
}
