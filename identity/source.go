package identity

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source gives the current certificate of one workload identity and the
// trust bundle (the roots of that identity's trust domain). Implementations
// are safe for concurrent use; callers ask again for every handshake, so a
// Source that rotates its certificate takes effect at once.
type Source interface {
	SVID(ctx context.Context) (*x509svid.SVID, error)
	Bundle(ctx context.Context) (*x509bundle.Bundle, error)
}

// Fetcher issues or fetches certificates for many identities, e.g. a CA
// client on a node proxy that serves every workload on its node. The
// returned bundle holds the roots of id's trust domain.
type Fetcher interface {
	Fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error)
}

// FetcherFunc adapts a function to the Fetcher interface.
type FetcherFunc func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error)

// Fetch calls f(ctx, id).
func (f FetcherFunc) Fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
	return f(ctx, id)
}

// Static is a Source with a fixed SVID and bundle.
type Static struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

// NewStatic returns a Source that always answers with svid and bundle. It
// checks that both are present, that the SVID has a certificate and a key,
// and that the bundle belongs to the SVID's trust domain.
func NewStatic(svid *x509svid.SVID, bundle *x509bundle.Bundle) (*Static, error) {
	if err := checkPair(svid, bundle); err != nil {
		return nil, err
	}
	return &Static{svid: svid, bundle: bundle}, nil
}

func checkPair(svid *x509svid.SVID, bundle *x509bundle.Bundle) error {
	switch {
	case svid == nil:
		return errors.New("identity: SVID is nil")
	case len(svid.Certificates) == 0:
		return errors.New("identity: SVID has no certificate")
	case svid.PrivateKey == nil:
		return errors.New("identity: SVID has no private key")
	case bundle == nil:
		return errors.New("identity: bundle is nil")
	case bundle.Empty():
		return fmt.Errorf("identity: bundle for %q has no X.509 authorities", bundle.TrustDomain())
	case svid.ID.TrustDomain() != bundle.TrustDomain():
		return fmt.Errorf("identity: bundle is for trust domain %q, SVID %s is in %q",
			bundle.TrustDomain(), svid.ID, svid.ID.TrustDomain())
	}
	return nil
}

// SVID returns the fixed SVID.
func (s *Static) SVID(context.Context) (*x509svid.SVID, error) { return s.svid, nil }

// Bundle returns the fixed bundle.
func (s *Static) Bundle(context.Context) (*x509bundle.Bundle, error) { return s.bundle, nil }

// FromX509Source adapts go-spiffe sources (for example a
// workloadapi.X509Source, or an *x509svid.SVID and *x509bundle.Bundle) to a
// Source. The bundle is looked up for the trust domain of the current SVID.
// go-spiffe's interfaces take no context, so ctx is not passed on.
func FromX509Source(svids x509svid.Source, bundles x509bundle.Source) Source {
	return &fromX509{svids: svids, bundles: bundles}
}

type fromX509 struct {
	svids   x509svid.Source
	bundles x509bundle.Source
}

func (a *fromX509) SVID(ctx context.Context) (*x509svid.SVID, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	s, err := a.svids.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("identity: x509svid source: %w", err)
	}
	return s, nil
}

func (a *fromX509) Bundle(ctx context.Context) (*x509bundle.Bundle, error) {
	s, err := a.SVID(ctx)
	if err != nil {
		return nil, err
	}
	b, err := a.bundles.GetX509BundleForTrustDomain(s.ID.TrustDomain())
	if err != nil {
		return nil, fmt.Errorf("identity: x509bundle source: %w", err)
	}
	return b, nil
}

// X509Source adapts a Source to go-spiffe's x509svid.Source and
// x509bundle.Source, so that it plugs into go-spiffe's spiffetls/tlsconfig
// builders. go-spiffe's interfaces take no context: every call made through
// the adapter uses the context given to ToX509Source.
type X509Source struct {
	ctx context.Context
	src Source
}

// ToX509Source returns the go-spiffe view of src. ctx bounds every call the
// adapter makes to src; it is usually the lifetime of the server or client
// that uses the adapter.
func ToX509Source(ctx context.Context, src Source) *X509Source {
	return &X509Source{ctx: ctx, src: src}
}

// GetX509SVID implements x509svid.Source.
func (a *X509Source) GetX509SVID() (*x509svid.SVID, error) { return a.src.SVID(a.ctx) }

// GetX509BundleForTrustDomain implements x509bundle.Source. It fails for any
// trust domain other than that of the Source's bundle.
func (a *X509Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, err := a.src.Bundle(a.ctx)
	if err != nil {
		return nil, err
	}
	if b.TrustDomain() != td {
		return nil, fmt.Errorf("identity: no bundle for trust domain %q (have %q)", td, b.TrustDomain())
	}
	return b, nil
}

var (
	_ Source            = (*Static)(nil)
	_ Fetcher           = FetcherFunc(nil)
	_ x509svid.Source   = (*X509Source)(nil)
	_ x509bundle.Source = (*X509Source)(nil)
)
