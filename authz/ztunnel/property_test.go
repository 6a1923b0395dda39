package ztunnel_test

import (
	"maps"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/authztest"
	"github.com/meshblocks/meshblocks/authz/istio"
	"github.com/meshblocks/meshblocks/authz/ztunnel"
)

// TestConvertRoundTripMatchesEngine is the package's core property: for
// every L4 case of the authz test suites, converting the case's Istio
// policies (and PeerAuthentications) to ztunnel's format, writing them as
// YAML, reading them back with Parse and evaluating the result of ToAuthz
// decides exactly as the authz engine does on the Istio objects (with
// PeerAuthentication applied first, as ztunnel does). Each case is
// checked as written, in plaintext, and from another identity.
//
// Policies with extension (CEL) conditions cannot be expressed in the
// format; for them the converted decision must never be more permissive.
func TestConvertRoundTripMatchesEngine(t *testing.T) {
	files, err := filepath.Glob("../testdata/*.yaml")
	require.NoError(t, err)
	files = append(files, "../testdata/peerauthn/mtls.yaml")
	exact, restrictive := 0, 0
	for _, f := range files {
		s, err := authztest.LoadFile(f)
		require.NoError(t, err)
		for i := range s.Cases {
			c := &s.Cases[i]
			req, err := c.BuildRequest()
			require.NoError(t, err)
			if req.Layer != authz.L4 {
				continue
			}
			t.Run(filepath.Base(f)+"/"+c.Name, func(t *testing.T) {
				pols, _ := istio.Parse([]byte(c.Policies), istio.Options{})
				pas, _ := istio.ParsePeerAuthentications([]byte(c.PeerAuthentications), istio.Options{})
				eng, _ := authz.New(authz.Config{RootNamespace: c.RootNamespace, Providers: c.ExtensionProviders}, pols)
				var pa *authz.PeerAuthn
				if c.PeerAuthentications != "" {
					pa, _ = authz.NewPeerAuthn(authz.PeerAuthnConfig{RootNamespace: c.RootNamespace}, pas)
				}
				direct := func(r *authz.Request) authz.Decision {
					d := eng.Evaluate(r)
					if pa != nil {
						if _, ok := pa.Admit(r); !ok {
							d.Allowed = false
						}
					}
					return d
				}

				out, _ := ztunnel.Convert(ztunnel.Config{RootNamespace: c.RootNamespace}, ztunnel.Input{
					Policies: pols, PeerAuthentications: pas, Workloads: []authz.Workload{req.Workload},
				})
				require.NotNil(t, out)
				data, err := ztunnel.Marshal(out.Policies)
				require.NoError(t, err)
				back, err := ztunnel.Parse(data)
				require.NoError(t, err, "%s", data)
				again, err := ztunnel.Marshal(back)
				require.NoError(t, err)
				require.Equal(t, string(data), string(again), "Marshal(Parse(x)) != x")
				az, err := ztunnel.ToAuthz(back, []ztunnel.Binding{{Name: "w", Namespace: req.Workload.Namespace, Policies: out.Bindings[0]}})
				require.NoError(t, err, "%s", data)
				eng2, err := authz.New(authz.Config{RootNamespace: az.RootNamespace}, az.Policies)
				require.NoError(t, err, "%s", data)
				converted := func(r *authz.Request) authz.Decision {
					r2 := *r
					r2.Workload.Labels = maps.Clone(r.Workload.Labels)
					if r2.Workload.Labels == nil {
						r2.Workload.Labels = map[string]string{}
					}
					maps.Copy(r2.Workload.Labels, az.Labels[0])
					return eng2.Evaluate(&r2)
				}

				hasExtra := false
				for _, p := range pols {
					hasExtra = hasExtra || len(p.Extra) > 0
				}
				other := "cluster.local/ns/elsewhere/sa/stranger"
				if req.Peer == other {
					other = "cluster.local/ns/elsewhere/sa/someone"
				}
				for _, v := range []struct {
					name string
					peer string
				}{{"as written", req.Peer}, {"plaintext", ""}, {"other identity", other}} {
					r := *req
					r.Peer = v.peer
					d, cv := direct(&r), converted(&r)
					if hasExtra {
						if cv.Allowed && !d.Allowed {
							t.Errorf("%s: converted ALLOWs (%v) what the engine DENIES (%v)\n%s", v.name, cv, d, data)
						}
						restrictive++
						continue
					}
					if d.Allowed != cv.Allowed {
						t.Errorf("%s: engine %v, converted %v\n%s", v.name, d, cv, data)
					}
					exact++
				}
			})
		}
	}
	t.Logf("%d exact comparisons, %d never-more-permissive comparisons (CEL)", exact, restrictive)
	require.Greater(t, exact, 300, "too few L4 cases: the suites moved?")
	require.Greater(t, restrictive, 0)
}
