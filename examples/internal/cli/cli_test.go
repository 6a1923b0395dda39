package cli

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestYAMLFiles(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"b.yaml", "a.yml", "c.txt", "d.yaml"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), nil, 0o600))
	}
	got, err := YAMLFiles(dir)
	require.NoError(t, err)
	require.Equal(t, []string{filepath.Join(dir, "a.yml"), filepath.Join(dir, "b.yaml"), filepath.Join(dir, "d.yaml")}, got)

	one := filepath.Join(dir, "c.txt")
	got, err = YAMLFiles(one)
	require.NoError(t, err)
	require.Equal(t, []string{one}, got)

	_, err = YAMLFiles(filepath.Join(dir, "missing"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestLoadCASharesTheDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a, err := LoadCA("cluster.local", dir)
	require.NoError(t, err)
	b, err := LoadCA("cluster.local", dir)
	require.NoError(t, err)
	require.True(t, a.Certificate().Equal(b.Certificate()))
	_, err = LoadCA("not a trust domain!", "")
	require.ErrorContains(t, err, "trust domain")
}

func TestReloadOnSIGHUP(t *testing.T) {
	reload, stop := ReloadOnSIGHUP()
	defer stop()
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	select {
	case <-reload:
	case <-time.After(10 * time.Second):
		t.Fatal("no reload after SIGHUP")
	}
}
