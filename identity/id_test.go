package identity_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPrincipalRoundTrip(t *testing.T) {
	tests := []struct {
		principal string
		id        string
	}{
		{"cluster.local/ns/default/sa/sleep", "spiffe://cluster.local/ns/default/sa/sleep"},
		{"example.org/ns/istio-system/sa/istio-ingressgateway-service-account", "spiffe://example.org/ns/istio-system/sa/istio-ingressgateway-service-account"},
		{"td/workload", "spiffe://td/workload"},
		{"td/a/b/c/d/e/f", "spiffe://td/a/b/c/d/e/f"},
	}
	for _, tc := range tests {
		t.Run(tc.principal, func(t *testing.T) {
			id, err := identity.IDFromPrincipal(tc.principal)
			require.NoError(t, err)
			assert.Equal(t, tc.id, id.String())
			assert.Equal(t, tc.principal, identity.PrincipalFromID(id))
		})
	}
	assert.Empty(t, identity.PrincipalFromID(spiffeid.ID{}))
}

func TestIDFromPrincipalErrors(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"", "empty"},
		{"spiffe://cluster.local/ns/a/sa/b", "URI scheme"},
		{"cluster.local/ns/*/sa/b", "wildcard '*' at byte 17"},
		{"*", "wildcard"},
		{"/ns/a/sa/b", "trust domain is empty"},
		{"cluster.local", "no path after trust domain"},
		{"cluster.local/", "no path after trust domain"},
		{"Cluster.Local/ns/a/sa/b", "trust domain \"Cluster.Local\""},
		{"cluster.local/ns//sa/b", "path \"/ns//sa/b\""},
		{"cluster.local/ns/a/sa/b/", "path \"/ns/a/sa/b/\""},
		{"cluster.local/ns/a b/sa/c", "path"},
		{"cluster.local/ns/./sa/c", "path"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			_, err := identity.IDFromPrincipal(tc.in)
			require.Error(t, err)
			assert.ErrorIs(t, err, identity.ErrInvalidPrincipal)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}

func TestParseWorkloadID(t *testing.T) {
	w, err := identity.ParseWorkloadID("spiffe://cluster.local/ns/default/sa/sleep")
	require.NoError(t, err)
	assert.Equal(t, "default", w.Namespace())
	assert.Equal(t, "sleep", w.ServiceAccount())
	assert.Equal(t, "cluster.local", w.TrustDomain().Name())
	assert.Equal(t, "cluster.local/ns/default/sa/sleep", w.Principal())
	assert.Equal(t, "spiffe://cluster.local/ns/default/sa/sleep", w.String())
	assert.Equal(t, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"), w.ID())
	assert.False(t, w.IsZero())

	n, err := identity.NewWorkloadID(w.TrustDomain(), "default", "sleep")
	require.NoError(t, err)
	assert.Equal(t, w, n)

	tests := []struct {
		in, want string
	}{
		{"", "empty"},
		{"cluster.local/ns/a/sa/b", "scheme is missing or invalid"},
		{"spiffe://cluster.local", "the path is empty"},
		{"spiffe://cluster.local/ns/a/sa", "3 segments, want 4"},
		{"spiffe://cluster.local/ns/a/sa/b/c", "5 segments, want 4"},
		{"spiffe://cluster.local/namespace/a/sa/b", `segment 1 is "namespace", want "ns"`},
		{"spiffe://cluster.local/ns/a/serviceaccount/b", `segment 3 is "serviceaccount", want "sa"`},
		{"spiffe://cluster.local/ns//sa/b", "empty segments"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			_, err := identity.ParseWorkloadID(tc.in)
			require.Error(t, err)
			assert.ErrorIs(t, err, identity.ErrNotWorkloadID)
			assert.ErrorContains(t, err, tc.want)
		})
	}

	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	for _, tc := range []struct {
		td       spiffeid.TrustDomain
		ns, sa   string
		wantText string
	}{
		{spiffeid.TrustDomain{}, "a", "b", "trust domain is empty"},
		{td, "", "b", "namespace is empty"},
		{td, "a", "", "service account is empty"},
		{td, "a/b", "c", "namespace \"a/b\""},
	} {
		_, err := identity.NewWorkloadID(tc.td, tc.ns, tc.sa)
		assert.ErrorIs(t, err, identity.ErrNotWorkloadID)
		assert.ErrorContains(t, err, tc.wantText)
	}
	_, err = identity.WorkloadIDFromID(spiffeid.ID{})
	assert.ErrorContains(t, err, "SPIFFE ID is empty")
}

func FuzzIDFromPrincipal(f *testing.F) {
	for _, s := range []string{
		"cluster.local/ns/default/sa/sleep", "td/x", "", "/", "a//b", "spiffe://a/b", "a/*", "A/b",
		"cluster.local/ns/a/sa/b/", "x.y-z_1/ns/%41/sa/b", "td/ns/a/sa/b\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		id, err := identity.IDFromPrincipal(p)
		if err != nil {
			if !errors.Is(err, identity.ErrInvalidPrincipal) {
				t.Fatalf("error %v does not wrap ErrInvalidPrincipal", err)
			}
			if id != (spiffeid.ID{}) {
				t.Fatalf("non-zero ID with error")
			}
			return
		}
		// A principal that parses round-trips exactly and is a valid ID.
		if got := identity.PrincipalFromID(id); got != p {
			t.Fatalf("round trip: %q -> %s -> %q", p, id, got)
		}
		if _, err := spiffeid.FromString(id.String()); err != nil {
			t.Fatalf("%q produced invalid ID %s: %v", p, id, err)
		}
	})
}

func FuzzParseWorkloadID(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/default/sa/sleep", "spiffe://td/ns/a/sa", "spiffe://td/ns/a/sa/b/c",
		"spiffe://td/sa/a/ns/b", "spiffe://td", "", "spiffe://td/ns/ns/sa/sa", "SPIFFE://td/ns/a/sa/b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := identity.ParseWorkloadID(s)
		if err != nil {
			if !errors.Is(err, identity.ErrNotWorkloadID) {
				t.Fatalf("error %v does not wrap ErrNotWorkloadID", err)
			}
			return
		}
		if w.String() != s {
			t.Fatalf("round trip: %q -> %q", s, w.String())
		}
		want := "/ns/" + w.Namespace() + "/sa/" + w.ServiceAccount()
		if w.ID().Path() != want || strings.Contains(w.Namespace(), "/") || w.Namespace() == "" || w.ServiceAccount() == "" {
			t.Fatalf("%q: namespace %q, service account %q, path %q", s, w.Namespace(), w.ServiceAccount(), w.ID().Path())
		}
		again, err := identity.NewWorkloadID(w.TrustDomain(), w.Namespace(), w.ServiceAccount())
		if err != nil || again != w {
			t.Fatalf("NewWorkloadID disagrees: %v %v", again, err)
		}
	})
}
