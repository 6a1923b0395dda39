package identity_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func fileConfig(dir string) identity.FileSourceConfig {
	return identity.FileSourceConfig{
		CertFile:   filepath.Join(dir, identity.CertFileName),
		KeyFile:    filepath.Join(dir, identity.KeyFileName),
		BundleFile: filepath.Join(dir, identity.BundleFileName),
	}
}

func TestFileSourceReloadsOnChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := identitytest.NewCA(t, "cluster.local")
		dir := t.TempDir()
		first := ca.SVID(t, "ns/default/sa/sleep")
		require.NoError(t, identity.WriteFiles(dir, first, ca.Bundle()))

		reloaded := make(chan *x509svid.SVID, 10)
		failed := make(chan error, 10)
		cfg := fileConfig(dir)
		cfg.Hooks = identity.FileSourceHooks{
			Reloaded:     func(s *x509svid.SVID) { reloaded <- s },
			ReloadFailed: func(err error) { failed <- err },
		}
		src, err := identity.NewFileSource(cfg)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- src.Run(ctx) }()

		got, err := src.SVID(ctx)
		require.NoError(t, err)
		assert.Equal(t, first.Certificates[0].Raw, got.Certificates[0].Raw)
		b, err := src.Bundle(ctx)
		require.NoError(t, err)
		assert.True(t, b.Equal(ca.Bundle()))

		// Nothing changed: no reload.
		time.Sleep(11 * time.Second)
		synctest.Wait()
		assert.Empty(t, reloaded)

		// Rewrite the files: the next poll picks up the new certificate.
		second := ca.SVID(t, "ns/default/sa/sleep")
		require.NoError(t, identity.WriteFiles(dir, second, ca.Bundle()))
		time.Sleep(6 * time.Second)
		synctest.Wait()
		got, err = src.SVID(ctx)
		require.NoError(t, err)
		assert.Equal(t, second.Certificates[0].Raw, got.Certificates[0].Raw)
		require.Len(t, reloaded, 1)

		// A half-done rotation (new certificate, old key) is refused and
		// the previous certificate stays in use.
		third := ca.SVID(t, "ns/default/sa/sleep")
		require.NoError(t, os.WriteFile(cfg.CertFile, identity.EncodeCertificatesPEM(third.Certificates), 0o644))
		time.Sleep(6 * time.Second)
		synctest.Wait()
		require.Len(t, failed, 1)
		assert.ErrorContains(t, <-failed, "does not match private key")
		got, err = src.SVID(ctx)
		require.NoError(t, err)
		assert.Equal(t, second.Certificates[0].Raw, got.Certificates[0].Raw)

		// Completing the rotation makes it take effect.
		require.NoError(t, identity.WriteFiles(dir, third, ca.Bundle()))
		changed, err := src.Reload()
		require.NoError(t, err)
		assert.True(t, changed)
		got, err = src.SVID(ctx)
		require.NoError(t, err)
		assert.Equal(t, third.Certificates[0].Raw, got.Certificates[0].Raw)

		cancel()
		require.NoError(t, <-done)
	})
}

func TestFileSourceExpired(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	dir := t.TempDir()
	tmpl := ca.Template("ns/default/sa/sleep")
	tmpl.NotAfter = time.Now().Add(-time.Minute)
	require.NoError(t, identity.WriteFiles(dir, ca.Issue(t, tmpl), ca.Bundle()))
	src, err := identity.NewFileSource(fileConfig(dir))
	require.NoError(t, err)
	_, err = src.SVID(t.Context())
	require.ErrorIs(t, err, identity.ErrExpired)
}

func TestNewFileSourceErrors(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	good := t.TempDir()
	require.NoError(t, identity.WriteFiles(good, ca.SVID(t, "ns/default/sa/sleep"), ca.Bundle()))
	junk := filepath.Join(t.TempDir(), "junk.pem")
	require.NoError(t, os.WriteFile(junk, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600))

	tests := []struct {
		name string
		edit func(*identity.FileSourceConfig)
		want string
	}{
		{"no cert file", func(c *identity.FileSourceConfig) { c.CertFile = "" }, "CertFile is empty"},
		{"no key file", func(c *identity.FileSourceConfig) { c.KeyFile = "" }, "KeyFile is empty"},
		{"no bundle file", func(c *identity.FileSourceConfig) { c.BundleFile = "" }, "BundleFile is empty"},
		{"missing file", func(c *identity.FileSourceConfig) { c.CertFile = filepath.Join(good, "nope.pem") }, "no such file"},
		{"key in bundle", func(c *identity.FileSourceConfig) { c.BundleFile = c.KeyFile }, `block 1 is "PRIVATE KEY"`},
		{"corrupt key", func(c *identity.FileSourceConfig) { c.KeyFile = junk }, "private key"},
		{"negative poll", func(c *identity.FileSourceConfig) { c.PollInterval = -time.Second }, "PollInterval is negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fileConfig(good)
			tc.edit(&cfg)
			_, err := identity.NewFileSource(cfg)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}
