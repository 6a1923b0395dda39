package spire

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshblocks/meshblocks/identity"
)

// Config configures a Source.
type Config struct {
	// Addr is the Workload API endpoint, "unix:///path/to/socket" or
	// "tcp://127.0.0.1:port". Required: the library reads no environment
	// variable (a binary may pass SPIFFE_ENDPOINT_SOCKET here).
	Addr string

	// ID selects which of the workload's SVIDs to use. If zero, the first
	// (the Workload API's default).
	ID spiffeid.ID
}

// Source is an identity.Source over the SPIFFE Workload API (for example
// a SPIRE agent), built on go-spiffe's workloadapi.X509Source: it holds a
// streaming connection and always has the latest SVID and bundle.
type Source struct {
	x  *workloadapi.X509Source
	id spiffeid.ID
}

// New connects to the Workload API and blocks until the
// first SVID arrives or ctx is done. Close releases the connection.
func New(ctx context.Context, cfg Config) (*Source, error) {
	if cfg.Addr == "" {
		return nil, errors.New("spire: Config.Addr is empty")
	}
	if err := workloadapi.ValidateAddress(cfg.Addr); err != nil {
		return nil, fmt.Errorf("spire: Config.Addr %q: %w", cfg.Addr, err)
	}
	opts := []workloadapi.X509SourceOption{
		workloadapi.WithClientOptions(workloadapi.WithAddr(cfg.Addr)),
	}
	if !cfg.ID.IsZero() {
		want := cfg.ID
		opts = append(opts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.ID == want {
					return s
				}
			}
			return nil
		}))
	}
	x, err := workloadapi.NewX509Source(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("spire: workload API %s: %w", cfg.Addr, err)
	}
	return &Source{x: x, id: cfg.ID}, nil
}

// SVID implements identity.Source.
func (s *Source) SVID(ctx context.Context) (*x509svid.SVID, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("spire: %w", err)
	}
	svid, err := s.x.GetX509SVID()
	if err != nil {
		if !s.id.IsZero() {
			return nil, fmt.Errorf("spire: workload API: no SVID for %s: %w", s.id, err)
		}
		return nil, fmt.Errorf("spire: workload API: %w", err)
	}
	return svid, nil
}

// Bundle implements identity.Source: the bundle of the SVID's trust domain.
func (s *Source) Bundle(ctx context.Context) (*x509bundle.Bundle, error) {
	svid, err := s.SVID(ctx)
	if err != nil {
		return nil, err
	}
	b, err := s.x.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return nil, fmt.Errorf("spire: workload API: %w", err)
	}
	return b, nil
}

// X509Source returns the underlying go-spiffe source, e.g. for
// WaitUntilUpdated or go-spiffe's tlsconfig builders.
func (s *Source) X509Source() *workloadapi.X509Source { return s.x }

// Close closes the connection to the Workload API. It is idempotent.
func (s *Source) Close() error {
	if err := s.x.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("spire: workload API: %w", err)
	}
	return nil
}

var _ identity.Source = (*Source)(nil)
