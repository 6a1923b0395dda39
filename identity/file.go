package identity

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// FileSourceConfig configures a FileSource. The zero value of every field
// but the three file names is a documented default.
type FileSourceConfig struct {
	// CertFile holds the PEM certificate chain, leaf first. Required.
	CertFile string
	// KeyFile holds the PEM private key (PKCS#8). Required.
	KeyFile string
	// BundleFile holds the PEM roots of the leaf's trust domain. Required.
	BundleFile string

	// PollInterval is how often Run re-reads the files. If zero, 5s.
	PollInterval time.Duration

	// Logger receives reload events (Info) and failures (Warn). If nil,
	// logs are discarded.
	Logger *slog.Logger

	// Hooks are called for metrics. Nil funcs are skipped.
	Hooks FileSourceHooks
}

// FileSourceHooks are metric callbacks of a FileSource.
type FileSourceHooks struct {
	// Reloaded is called after new file contents were loaded.
	Reloaded func(*x509svid.SVID)
	// ReloadFailed is called when changed files do not parse; the
	// previous certificate stays in use.
	ReloadFailed func(error)
}

// FileSource is a Source backed by PEM files, e.g. certificates that
// cert-manager or an agent writes into a volume. It reads the files when
// created and again whenever their contents change (Run polls them; Reload
// re-reads at once). Files that fail to parse, such as a half-rotated
// certificate and key pair, leave the previous certificate in use.
type FileSource struct {
	cfg FileSourceConfig
	log *slog.Logger

	mu  sync.Mutex // serialises reloads
	raw [3][]byte  // last loaded contents: cert, key, bundle
	cur atomic.Pointer[fileState]
}

type fileState struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

// NewFileSource reads and validates the files. It starts nothing; call Run
// to watch for changes.
func NewFileSource(cfg FileSourceConfig) (*FileSource, error) {
	switch {
	case cfg.CertFile == "":
		return nil, errors.New("identity: FileSourceConfig.CertFile is empty")
	case cfg.KeyFile == "":
		return nil, errors.New("identity: FileSourceConfig.KeyFile is empty")
	case cfg.BundleFile == "":
		return nil, errors.New("identity: FileSourceConfig.BundleFile is empty")
	case cfg.PollInterval < 0:
		return nil, fmt.Errorf("identity: FileSourceConfig.PollInterval is negative (%v)", cfg.PollInterval)
	}
	cfg.PollInterval = cmp.Or(cfg.PollInterval, 5*time.Second)
	s := &FileSource{cfg: cfg, log: cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler))}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload re-reads the files and, if their contents changed and parse,
// switches to the new certificate. It reports whether it did.
func (s *FileSource) Reload() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var raw [3][]byte
	for i, name := range []string{s.cfg.CertFile, s.cfg.KeyFile, s.cfg.BundleFile} {
		b, err := os.ReadFile(name)
		if err != nil {
			return false, fmt.Errorf("identity: file source: %w", err)
		}
		raw[i] = b
	}
	if s.cur.Load() != nil && bytes.Equal(raw[0], s.raw[0]) && bytes.Equal(raw[1], s.raw[1]) && bytes.Equal(raw[2], s.raw[2]) {
		return false, nil
	}
	svid, err := x509svid.Parse(raw[0], raw[1])
	if err != nil {
		return false, fmt.Errorf("identity: file source: %s and %s: %w", s.cfg.CertFile, s.cfg.KeyFile, err)
	}
	roots, err := ParseCertificatesPEM(raw[2])
	if err != nil {
		return false, fmt.Errorf("identity: file source: %s: %w", s.cfg.BundleFile, err)
	}
	bundle := x509bundle.FromX509Authorities(svid.ID.TrustDomain(), roots)
	s.raw = raw
	s.cur.Store(&fileState{svid: svid, bundle: bundle})
	return true, nil
}

// Run re-reads the files every PollInterval until ctx is done, then
// returns nil.
func (s *FileSource) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		changed, err := s.Reload()
		switch {
		case err != nil:
			s.log.Warn("identity: certificate files did not reload; keeping the previous certificate", "cert", s.cfg.CertFile, "error", err)
			if h := s.cfg.Hooks.ReloadFailed; h != nil {
				h(err)
			}
		case changed:
			svid := s.cur.Load().svid
			s.log.Info("identity: certificate files reloaded", "cert", s.cfg.CertFile, "id", svid.ID.String(), "not_after", svid.Certificates[0].NotAfter)
			if h := s.cfg.Hooks.Reloaded; h != nil {
				h(svid)
			}
		}
	}
}

// SVID implements Source. It fails with ErrExpired once the certificate
// in the files has expired.
func (s *FileSource) SVID(context.Context) (*x509svid.SVID, error) {
	st := s.cur.Load()
	if na := st.svid.Certificates[0].NotAfter; !time.Now().Before(na) {
		return nil, fmt.Errorf("%w: the certificate in %s expired at %s", ErrExpired, s.cfg.CertFile, na.UTC().Format(time.RFC3339))
	}
	return st.svid, nil
}

// Bundle implements Source.
func (s *FileSource) Bundle(context.Context) (*x509bundle.Bundle, error) {
	return s.cur.Load().bundle, nil
}

var _ Source = (*FileSource)(nil)
