package identitytest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is an in-memory certificate authority for one trust domain. It wraps
// an *identity.CA (see CA.Local) and keeps the root key, so that tests can
// also sign arbitrary templates.
type CA struct {
	td    spiffeid.TrustDomain
	key   *ecdsa.PrivateKey   // signs
	cert  *x509.Certificate   // the signing certificate
	chain []*x509.Certificate // intermediates sent after the leaf
	root  *x509.Certificate
	local *identity.CA
}

// NewCA creates a CA with a fresh self-signed root for trustDomain (e.g.
// "cluster.local"). It fails the test on error.
func NewCA(t testing.TB, trustDomain string) *CA {
	t.Helper()
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		t.Fatalf("identitytest: trust domain %q: %v", trustDomain, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"identitytest"}, CommonName: "test root " + td.Name()},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		URIs:                  []*url.URL{td.ID().URL()},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	local, err := identity.NewCA(identity.CAConfig{
		TrustDomain:  td,
		TTL:          time.Hour,
		Certificates: []*x509.Certificate{root},
		Key:          key,
	})
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	return &CA{td: td, key: key, cert: root, root: root, local: local}
}

// TrustDomain returns the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Local returns the *identity.CA behind this CA (it implements
// identity.Fetcher and issues certificates valid for one hour).
func (ca *CA) Local() *identity.CA { return ca.local }

// Root returns the root certificate.
func (ca *CA) Root() *x509.Certificate { return ca.root }

// Bundle returns the trust bundle (the root).
func (ca *CA) Bundle() *x509bundle.Bundle { return ca.local.Bundle() }

// ID returns the SPIFFE ID for a path in the CA's trust domain, e.g.
// ca.ID("ns/default/sa/client") is spiffe://<td>/ns/default/sa/client. A
// leading slash is optional. It panics on an invalid path, like
// spiffeid.RequireFromPath: paths in tests are constants.
func (ca *CA) ID(path string) spiffeid.ID {
	return spiffeid.RequireFromPath(ca.td, "/"+strings.TrimPrefix(path, "/"))
}

// SVID issues a valid one-hour certificate for ca.ID(path).
func (ca *CA) SVID(t testing.TB, path string) *x509svid.SVID {
	t.Helper()
	s, err := ca.local.Issue(context.Background(), ca.ID(path), 0)
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	return s
}

// Source returns a static identity.Source holding a fresh one-hour
// certificate for ca.ID(path) and the CA's bundle.
func (ca *CA) Source(t testing.TB, path string) identity.Source {
	t.Helper()
	s, err := identity.NewStatic(ca.SVID(t, path), ca.Bundle())
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	return s
}

// Template returns the template the CA would use for a workload
// certificate for ca.ID(path), valid from an hour ago for two hours: ECDSA
// key usage digitalSignature, EKU serverAuth and clientAuth, one URI SAN.
// Change it and pass it to Issue to make a broken certificate.
func (ca *CA) Template(path string) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		URIs:                  []*url.URL{ca.ID(path).URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
}

// Issue signs tmpl with the CA's root key for a fresh ECDSA P-256 key, as
// it is: no check is made, so tests can produce expired, not-yet-valid,
// SAN-less or wrong-EKU certificates. A nil SerialNumber gets a random
// one. The SVID's ID is the first URI SAN if it is a SPIFFE ID, else zero.
func (ca *CA) Issue(t testing.TB, tmpl *x509.Certificate) *x509svid.SVID {
	t.Helper()
	s := signTemplate(t, tmpl, ca.cert, ca.key)
	s.Certificates = append(s.Certificates, ca.chain...)
	return s
}

// IssueIntermediate creates an intermediate CA signed by this CA's root.
// The returned CA issues through the intermediate (its SVIDs carry the
// intermediate in their chain) and shares this CA's bundle.
func (ca *CA) IssueIntermediate(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"identitytest"}, CommonName: "test intermediate " + ca.td.Name()},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		URIs:                  []*url.URL{ca.td.ID().URL()},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	inter := signTemplateKey(t, tmpl, ca.cert, ca.key, key)
	local, err := identity.NewCA(identity.CAConfig{
		TrustDomain:  ca.td,
		TTL:          time.Hour,
		Certificates: append(append([]*x509.Certificate{inter}, ca.chain...), ca.root),
		Key:          key,
	})
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	return &CA{td: ca.td, key: key, cert: inter, chain: append([]*x509.Certificate{inter}, ca.chain...), root: ca.root, local: local}
}

// SourceFor returns a static Source with svid and the CA's bundle, without
// the consistency checks of identity.NewStatic, so that a test can serve
// a broken certificate.
func (ca *CA) SourceFor(svid *x509svid.SVID) identity.Source {
	return &rawSource{svid: svid, bundle: ca.Bundle()}
}

// SourceWithBundle returns a static Source with svid and bundle, without
// consistency checks (e.g. a certificate from one CA and the roots of
// another).
func SourceWithBundle(svid *x509svid.SVID, bundle *x509bundle.Bundle) identity.Source {
	return &rawSource{svid: svid, bundle: bundle}
}

type rawSource struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (s *rawSource) SVID(context.Context) (*x509svid.SVID, error)       { return s.svid, nil }
func (s *rawSource) Bundle(context.Context) (*x509bundle.Bundle, error) { return s.bundle, nil }

func signTemplate(t testing.TB, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	cert := signTemplateKey(t, tmpl, parent, parentKey, key)
	var id spiffeid.ID
	if len(cert.URIs) > 0 {
		id, _ = spiffeid.FromURI(cert.URIs[0])
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

func signTemplateKey(t testing.TB, tmpl, parent *x509.Certificate, parentKey, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	tmpl = copyTemplate(tmpl)
	if tmpl.SerialNumber == nil {
		s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
		if err != nil {
			t.Fatalf("identitytest: %v", err)
		}
		tmpl.SerialNumber = s.Add(s, big.NewInt(2))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatalf("identitytest: sign template: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	return cert
}

func copyTemplate(t *x509.Certificate) *x509.Certificate {
	c := *t
	return &c
}

var _ identity.Source = (*rawSource)(nil)
