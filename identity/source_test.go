package identity_test

import (
	"context"
	"testing"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNewStaticValidates(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	other := identitytest.NewCA(t, "example.org")
	s := ca.SVID(t, "ns/default/sa/sleep")
	tests := []struct {
		name   string
		svid   *x509svid.SVID
		bundle *x509bundle.Bundle
		want   string
	}{
		{"nil SVID", nil, ca.Bundle(), "SVID is nil"},
		{"no certificate", &x509svid.SVID{ID: s.ID, PrivateKey: s.PrivateKey}, ca.Bundle(), "no certificate"},
		{"no key", &x509svid.SVID{ID: s.ID, Certificates: s.Certificates}, ca.Bundle(), "no private key"},
		{"nil bundle", s, nil, "bundle is nil"},
		{"empty bundle", s, x509bundle.New(ca.TrustDomain()), "no X.509 authorities"},
		{"foreign bundle", s, other.Bundle(), `bundle is for trust domain "example.org"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.NewStatic(tc.svid, tc.bundle)
			assert.ErrorContains(t, err, tc.want)
		})
	}
	st, err := identity.NewStatic(s, ca.Bundle())
	require.NoError(t, err)
	got, err := st.SVID(t.Context())
	require.NoError(t, err)
	assert.Same(t, s, got)
	b, err := st.Bundle(t.Context())
	require.NoError(t, err)
	assert.Same(t, ca.Bundle(), b)
}

func TestFromX509Source(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	s := ca.SVID(t, "ns/default/sa/sleep")
	// *x509svid.SVID and *x509bundle.Bundle are go-spiffe sources themselves.
	src := identity.FromX509Source(s, ca.Bundle())
	got, err := src.SVID(t.Context())
	require.NoError(t, err)
	assert.Same(t, s, got)
	b, err := src.Bundle(t.Context())
	require.NoError(t, err)
	assert.True(t, b.Equal(ca.Bundle()))

	foreign := identity.FromX509Source(s, identitytest.NewCA(t, "example.org").Bundle())
	_, err = foreign.Bundle(t.Context())
	assert.ErrorContains(t, err, "x509bundle source")

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = src.SVID(ctx)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestToX509Source(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	src := ca.Source(t, "ns/default/sa/sleep")
	x := identity.ToX509Source(t.Context(), src)
	s, err := x.GetX509SVID()
	require.NoError(t, err)
	assert.Equal(t, ca.ID("ns/default/sa/sleep"), s.ID)
	_, err = x.GetX509BundleForTrustDomain(ca.TrustDomain())
	require.NoError(t, err)
	_, err = x.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("example.org"))
	assert.ErrorContains(t, err, `no bundle for trust domain "example.org"`)
}

// Our client config interoperates with a server built by go-spiffe's own
// tlsconfig package from our Source, through the adapter.
func TestToX509SourceWithGoSPIFFETLSConfig(t *testing.T) {
	leakcheck.Check(t)
	ca := identitytest.NewCA(t, "cluster.local")
	x := identity.ToX509Source(t.Context(), ca.Source(t, "ns/default/sa/server"))
	serverConf := tlsconfig.MTLSServerConfig(x, x, tlsconfig.AuthorizeMemberOf(ca.TrustDomain()))
	serverConf.NextProtos = []string{"h2"}
	serverConf.MinVersion = 0x0304

	res := handshake(t, serverConf, identity.ClientTLSConfig(ca.Source(t, "ns/default/sa/client"), ca.ID("ns/default/sa/server")))
	require.NoError(t, res.serverErr)
	require.NoError(t, res.clientErr)
	id, err := identity.PeerID(res.server)
	require.NoError(t, err)
	assert.Equal(t, ca.ID("ns/default/sa/client"), id)
}
