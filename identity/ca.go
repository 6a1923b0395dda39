package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const (
	// DefaultTTL is the lifetime of workload certificates when
	// CAConfig.TTL is zero: 24 hours, as Istio's default workload
	// certificate TTL.
	DefaultTTL = 24 * time.Hour

	// DefaultRootTTL is the lifetime of a generated self-signed root when
	// CAConfig.RootTTL is zero: ten years.
	DefaultRootTTL = 10 * 365 * 24 * time.Hour

	// Backdate is how far before the moment of issuance a certificate's
	// NotBefore is set, to tolerate small clock differences between peers.
	Backdate = time.Minute
)

// CAConfig configures a local CA. The zero value of every field except
// TrustDomain is a usable default.
type CAConfig struct {
	// TrustDomain is the trust domain the CA issues identities in.
	// Required.
	TrustDomain spiffeid.TrustDomain

	// TTL is the lifetime of the workload certificates the CA issues when
	// the caller asks for none. If zero, DefaultTTL (24h). A certificate
	// never outlives the CA's own certificate chain.
	TTL time.Duration

	// RootTTL is the lifetime of the self-signed root generated when
	// Certificates is empty. If zero, DefaultRootTTL (10 years).
	RootTTL time.Duration

	// Certificates is the CA's own chain: the signing certificate first,
	// then any intermediates, optionally ending in the root. If empty, a
	// self-signed ECDSA P-256 root is generated and signs directly.
	Certificates []*x509.Certificate

	// Key is the private key of Certificates[0]. Required with
	// Certificates, ignored without.
	Key crypto.Signer

	// Roots are the trust anchors published in the bundle. If empty, the
	// last certificate of Certificates, which must then be self-signed.
	Roots []*x509.Certificate
}

// CA is a local certificate authority: the embedded default when no Istio
// CA or SPIRE is at hand. It issues ECDSA P-256 workload certificates with
// exactly one URI SAN and EKU serverAuth+clientAuth, and signs CSRs for an
// authorised identity. It implements Fetcher. A CA is safe for concurrent
// use.
type CA struct {
	td     spiffeid.TrustDomain
	ttl    time.Duration
	key    crypto.Signer
	cert   *x509.Certificate   // signing certificate
	chain  []*x509.Certificate // signing certificate and intermediates, no roots
	roots  []*x509.Certificate
	bundle *x509bundle.Bundle
}

// NewCA validates cfg and returns a CA. With no Certificates it generates a
// self-signed root; otherwise it checks that Key matches the signing
// certificate, that the signing certificate may sign certificates, and that
// it chains to Roots now.
func NewCA(cfg CAConfig) (*CA, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("identity: CAConfig.TrustDomain is empty")
	}
	if cfg.TTL < 0 {
		return nil, fmt.Errorf("identity: CAConfig.TTL is negative (%v)", cfg.TTL)
	}
	ca := &CA{td: cfg.TrustDomain, ttl: cfg.TTL}
	if ca.ttl == 0 {
		ca.ttl = DefaultTTL
	}
	if len(cfg.Certificates) == 0 {
		rootTTL := cfg.RootTTL
		if rootTTL <= 0 {
			rootTTL = DefaultRootTTL
		}
		cert, key, err := newRoot(cfg.TrustDomain, rootTTL)
		if err != nil {
			return nil, err
		}
		// A self-signed root signs directly: no intermediates to send.
		ca.key, ca.cert, ca.roots = key, cert, []*x509.Certificate{cert}
	} else {
		if err := ca.load(cfg); err != nil {
			return nil, err
		}
	}
	ca.bundle = x509bundle.FromX509Authorities(ca.td, ca.roots)
	return ca, nil
}

func (ca *CA) load(cfg CAConfig) error {
	cert := cfg.Certificates[0]
	if cfg.Key == nil {
		return errors.New("identity: CAConfig.Key is nil but Certificates is set")
	}
	if !publicKeyEqual(cfg.Key.Public(), cert.PublicKey) {
		return errors.New("identity: CAConfig.Key does not match the public key of Certificates[0]")
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return fmt.Errorf("identity: CAConfig.Certificates[0] (%s) is not a CA certificate", cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("identity: CAConfig.Certificates[0] (%s) lacks the keyCertSign key usage", cert.Subject)
	}
	roots := cfg.Roots
	if len(roots) == 0 {
		last := cfg.Certificates[len(cfg.Certificates)-1]
		if !selfSigned(last) {
			return errors.New("identity: CAConfig.Roots is empty and the last of CAConfig.Certificates is not a self-signed root")
		}
		roots = []*x509.Certificate{last}
	}
	rootPool := x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	inter := x509.NewCertPool()
	var chain []*x509.Certificate
	for _, c := range cfg.Certificates {
		if isIn(c, roots) {
			continue
		}
		chain = append(chain, c)
		inter.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots: rootPool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return fmt.Errorf("identity: CAConfig.Certificates[0] does not chain to the roots: %w", err)
	}
	ca.key, ca.cert, ca.chain, ca.roots = cfg.Key, cert, chain, roots
	return nil
}

// Istio's "cacerts" file names, which LoadCADir reads and WriteDir writes.
const (
	CACertFileName    = "ca-cert.pem"    // the signing certificate
	CAKeyFileName     = "ca-key.pem"     // its private key
	RootCertFileName  = "root-cert.pem"  // the roots
	CertChainFileName = "cert-chain.pem" // signing certificate, intermediates, root (optional when loading)
)

// OpenCADir loads the CA in dir (see LoadCADir) or, when dir holds no
// ca-cert.pem yet, creates a CA with a new self-signed root and installs it
// there. The new CA is written to a temporary directory beside dir and
// renamed into place, so that processes started together with the same dir
// agree on one CA: the loser of the rename loads the winner's. The parent of
// dir is created (mode 0700) if needed.
func OpenCADir(cfg CAConfig, dir string) (*CA, error) {
	if _, err := os.Stat(filepath.Join(dir, CACertFileName)); err == nil {
		return LoadCADir(cfg, dir)
	}
	ca, err := NewCA(cfg)
	if err != nil {
		return nil, err
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("identity: CA directory: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, ".ca-")
	if err != nil {
		return nil, fmt.Errorf("identity: CA directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := ca.WriteDir(tmp); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another process installed its CA first (or dir exists and is
		// not empty): use what is there.
		return LoadCADir(cfg, dir)
	}
	return ca, nil
}

// LoadCADir loads a CA from a directory in Istio's "cacerts" layout:
// ca-cert.pem, ca-key.pem, root-cert.pem and, optionally, cert-chain.pem.
// cfg.TrustDomain and TTL are used as given; Certificates, Key and Roots
// are replaced by the files' contents.
func LoadCADir(cfg CAConfig, dir string) (*CA, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("identity: load CA: %w", err)
		}
		return b, nil
	}
	certPEM, err := read(CACertFileName)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read(CAKeyFileName)
	if err != nil {
		return nil, err
	}
	rootPEM, err := read(RootCertFileName)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: load CA: %s: %w", CACertFileName, err)
	}
	if chainPEM, err := os.ReadFile(filepath.Join(dir, CertChainFileName)); err == nil {
		chain, err := ParseCertificatesPEM(chainPEM)
		if err != nil {
			return nil, fmt.Errorf("identity: load CA: %s: %w", CertChainFileName, err)
		}
		if !chain[0].Equal(certs[0]) {
			return nil, fmt.Errorf("identity: load CA: %s does not start with the certificate in %s", CertChainFileName, CACertFileName)
		}
		certs = chain
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("identity: load CA: %w", err)
	}
	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: load CA: %s: %w", CAKeyFileName, err)
	}
	roots, err := ParseCertificatesPEM(rootPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: load CA: %s: %w", RootCertFileName, err)
	}
	cfg.Certificates, cfg.Key, cfg.Roots = certs, key, roots
	return NewCA(cfg)
}

// WriteDir writes the CA's certificates and key into dir in Istio's
// "cacerts" layout (see LoadCADir), creating dir if needed. The key file
// gets mode 0600.
func (ca *CA) WriteDir(dir string) error {
	keyPEM, err := EncodePrivateKeyPEM(ca.key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	full := append(append([]*x509.Certificate{}, ca.chain...), ca.roots...)
	if len(ca.chain) == 0 {
		full = []*x509.Certificate{ca.cert}
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{CAKeyFileName, keyPEM, 0o600},
		{CACertFileName, EncodeCertificatesPEM([]*x509.Certificate{ca.cert}), 0o644},
		{RootCertFileName, EncodeCertificatesPEM(ca.roots), 0o644},
		{CertChainFileName, EncodeCertificatesPEM(full), 0o644},
	} {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// TrustDomain returns the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle returns the CA's trust bundle. The caller must not modify it.
func (ca *CA) Bundle() *x509bundle.Bundle { return ca.bundle }

// Certificate returns the CA's signing certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// TTL returns the default workload certificate lifetime.
func (ca *CA) TTL() time.Duration { return ca.ttl }

// Issue generates an ECDSA P-256 key and a certificate for id valid for ttl
// (if zero, the CA's TTL). The SVID's chain holds the leaf and any
// intermediates, never the root.
func (ca *CA) Issue(ctx context.Context, id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("identity: issue %s: %w", id, err)
	}
	if err := ca.checkID(id); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: issue %s: %w", id, err)
	}
	chain, err := ca.sign(id, key.Public(), ttl)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

// Fetch implements Fetcher: it issues a certificate with the CA's TTL and
// returns it with the CA's bundle.
func (ca *CA) Fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
	s, err := ca.Issue(ctx, id, 0)
	if err != nil {
		return nil, nil, err
	}
	return s, ca.bundle, nil
}

// ParseCSR parses a PKCS#10 certificate signing request given as PEM
// ("CERTIFICATE REQUEST" or "NEW CERTIFICATE REQUEST") or DER, and checks
// its self-signature.
func ParseCSR(b []byte) (*x509.CertificateRequest, error) {
	der, form := b, "input is neither PEM nor a DER PKCS#10 request"
	if block, _ := pem.Decode(b); block != nil {
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block is %q, want \"CERTIFICATE REQUEST\"", ErrCSRRejected, block.Type)
		}
		der, form = block.Bytes, "PEM block does not hold a PKCS#10 request"
	} else if bytes.HasPrefix(bytes.TrimSpace(b), []byte("-----BEGIN")) {
		return nil, fmt.Errorf("%w: malformed PEM", ErrCSRRejected)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCSRRejected, form, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrCSRRejected, err)
	}
	return csr, nil
}

// SignCSR signs a certificate signing request (PEM or DER) for the
// identity the caller has authorised, id, valid for ttl (if zero, the CA's
// TTL). It rejects, wrapping ErrCSRRejected, a CSR whose signature does not
// verify, whose URI SANs are not exactly id, that asks for DNS, IP or email
// SANs, or whose key is weak (RSA below 2048 bits, ECDSA below P-256). It
// returns the leaf followed by any intermediates.
func (ca *CA) SignCSR(ctx context.Context, csrBytes []byte, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("identity: sign CSR for %s: %w", id, err)
	}
	if err := ca.checkID(id); err != nil {
		return nil, err
	}
	csr, err := ParseCSR(csrBytes)
	if err != nil {
		return nil, err
	}
	switch {
	case len(csr.URIs) == 0:
		return nil, fmt.Errorf("%w: no URI SAN; want exactly %s", ErrCSRRejected, id)
	case len(csr.URIs) > 1:
		return nil, fmt.Errorf("%w: %d URI SANs; want exactly one, %s", ErrCSRRejected, len(csr.URIs), id)
	case len(csr.DNSNames) > 0:
		return nil, fmt.Errorf("%w: DNS SAN %q not allowed", ErrCSRRejected, csr.DNSNames[0])
	case len(csr.IPAddresses) > 0:
		return nil, fmt.Errorf("%w: IP SAN %s not allowed", ErrCSRRejected, csr.IPAddresses[0])
	case len(csr.EmailAddresses) > 0:
		return nil, fmt.Errorf("%w: email SAN %q not allowed", ErrCSRRejected, csr.EmailAddresses[0])
	}
	got, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("%w: URI SAN %q is not a SPIFFE ID: %v", ErrCSRRejected, csr.URIs[0], err)
	}
	if got != id {
		return nil, fmt.Errorf("%w: URI SAN is %s, but the caller is authorised for %s", ErrCSRRejected, got, id)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return ca.sign(id, csr.PublicKey, ttl)
}

func checkPublicKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve.Params().BitSize < 256 {
			return fmt.Errorf("%w: ECDSA key on %s is too weak; want P-256 or larger", ErrCSRRejected, k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("%w: RSA key of %d bits is too weak; want 2048 or more", ErrCSRRejected, k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("%w: unsupported public key type %T", ErrCSRRejected, pub)
	}
	return nil
}

func (ca *CA) checkID(id spiffeid.ID) error {
	switch {
	case id.IsZero():
		return errors.New("identity: the SPIFFE ID to issue for is empty")
	case id.Path() == "":
		return fmt.Errorf("identity: %s has no path; a workload SPIFFE ID needs one", id)
	case !id.MemberOf(ca.td):
		return fmt.Errorf("identity: %s is not in the CA's trust domain %q", id, ca.td)
	}
	return nil
}

// sign issues the leaf for id and pub and returns it with the CA chain.
func (ca *CA) sign(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration) ([]*x509.Certificate, error) {
	if ttl < 0 {
		return nil, fmt.Errorf("identity: negative TTL %v", ttl)
	}
	if ttl == 0 {
		ttl = ca.ttl
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	for _, c := range append([]*x509.Certificate{ca.cert}, ca.chain...) {
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("identity: the CA certificate expired at %s", notAfter.UTC().Format(time.RFC3339))
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-Backdate),
		NotAfter:              notAfter,
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if _, ok := pub.(*rsa.PublicKey); !ok {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("identity: sign certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: sign certificate for %s: %w", id, err)
	}
	return append([]*x509.Certificate{leaf}, ca.chain...), nil
}

func newRoot(td spiffeid.TrustDomain, ttl time.Duration) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: generate root key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"meshblocks"}, CommonName: "meshblocks root CA " + td.Name()},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(ttl),
		URIs:                  []*url.URL{td.ID().URL()},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: create root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: create root: %w", err)
	}
	return cert, key, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("identity: serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

func isIn(c *x509.Certificate, set []*x509.Certificate) bool {
	for _, s := range set {
		if s.Equal(c) {
			return true
		}
	}
	return false
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

var _ Fetcher = (*CA)(nil)
