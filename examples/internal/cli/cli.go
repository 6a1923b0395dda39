// Package cli holds the small pieces the example binaries share: the
// SIGHUP reload signal, YAML file discovery and the CA directory
// convention. Logic a library user would need lives in the library
// packages instead; this is only process plumbing.
package cli

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshblocks/meshblocks/identity"
)

// ReloadOnSIGHUP returns a channel that receives once per SIGHUP (a signal
// that arrives while the previous reload is still pending is merged into
// it), and a stop function that ends the relay.
func ReloadOnSIGHUP() (<-chan struct{}, func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{})
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-hup:
			case <-done:
				return
			}
			select {
			case reload <- struct{}{}:
			case <-done:
				return
			}
		}
	}()
	return reload, func() {
		signal.Stop(hup)
		close(done)
	}
}

// YAMLFiles returns path itself when it is a file, or the *.yaml and *.yml
// files of the directory path, sorted.
func YAMLFiles(path string) ([]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return []string{path}, nil
	}
	files, err := filepath.Glob(filepath.Join(path, "*.yaml"))
	if err != nil {
		return nil, err
	}
	more, err := filepath.Glob(filepath.Join(path, "*.yml"))
	if err != nil {
		return nil, err
	}
	files = append(files, more...)
	sort.Strings(files)
	return files, nil
}

// LoadCA returns the mesh CA: an in-memory one when dir is empty, else the
// one in dir, created there if it does not exist yet (identity.OpenCADir),
// so that proxies started with the same dir share one CA.
func LoadCA(trustDomain, dir string) (*identity.CA, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust domain: %w", err)
	}
	cfg := identity.CAConfig{TrustDomain: td}
	if dir == "" {
		return identity.NewCA(cfg)
	}
	return identity.OpenCADir(cfg, dir)
}
