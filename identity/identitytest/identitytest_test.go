package identitytest_test

import (
	"context"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCA(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	assert.Equal(t, "spiffe://cluster.local/ns/a/sa/b", ca.ID("ns/a/sa/b").String())
	assert.Equal(t, ca.ID("/ns/a/sa/b"), ca.ID("ns/a/sa/b"))

	src := ca.Source(t, "ns/a/sa/b")
	s, err := src.SVID(context.Background())
	require.NoError(t, err)
	id, _, err := x509svid.Verify(s.Certificates, ca.Bundle())
	require.NoError(t, err)
	assert.Equal(t, ca.ID("ns/a/sa/b"), id)

	inter := ca.IssueIntermediate(t)
	s2 := inter.SVID(t, "ns/a/sa/c")
	require.Len(t, s2.Certificates, 2)
	_, _, err = x509svid.Verify(s2.Certificates, ca.Bundle())
	require.NoError(t, err)
	custom := inter.Issue(t, inter.Template("ns/a/sa/d"))
	require.Len(t, custom.Certificates, 2)
	_, _, err = x509svid.Verify(custom.Certificates, ca.Bundle())
	require.NoError(t, err)

	tmpl := ca.Template("ns/a/sa/b")
	tmpl.NotAfter = time.Now().Add(-time.Second)
	expired := ca.Issue(t, tmpl)
	_, _, err = x509svid.Verify(expired.Certificates, ca.Bundle())
	assert.Error(t, err)
	got, err := ca.SourceFor(expired).SVID(context.Background())
	require.NoError(t, err)
	assert.Same(t, expired, got)
}
