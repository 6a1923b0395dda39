package identity_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var sleepID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")

func TestCAIssuesWorkloadCertificates(t *testing.T) {
	ca := newLocalCA(t, 0)
	assert.Equal(t, identity.DefaultTTL, ca.TTL())
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		want time.Duration
	}{
		{"default TTL", 0, identity.DefaultTTL},
		{"explicit TTL", 90 * time.Minute, 90 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ca.Issue(t.Context(), sleepID, tc.ttl)
			require.NoError(t, err)
			require.Len(t, s.Certificates, 1, "a root-signed leaf travels alone")
			leaf := s.Certificates[0]
			require.Len(t, leaf.URIs, 1)
			assert.Equal(t, sleepID.String(), leaf.URIs[0].String())
			assert.Empty(t, leaf.DNSNames)
			assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, leaf.ExtKeyUsage)
			assert.Equal(t, x509.KeyUsageDigitalSignature, leaf.KeyUsage)
			assert.False(t, leaf.IsCA)
			pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
			require.True(t, ok)
			assert.Equal(t, elliptic.P256(), pub.Curve)
			assert.Equal(t, tc.want+identity.Backdate, leaf.NotAfter.Sub(leaf.NotBefore))

			// go-spiffe agrees it is a valid X509-SVID of our bundle.
			id, _, err := x509svid.Verify(s.Certificates, ca.Bundle())
			require.NoError(t, err)
			assert.Equal(t, sleepID, id)
			certPEM, keyPEM, err := s.Marshal()
			require.NoError(t, err)
			_, err = x509svid.Parse(certPEM, keyPEM)
			require.NoError(t, err)
		})
	}
}

func TestCAIssueErrors(t *testing.T) {
	ca := newLocalCA(t, 0)
	for _, tc := range []struct {
		id   spiffeid.ID
		ttl  time.Duration
		want string
	}{
		{spiffeid.ID{}, 0, "is empty"},
		{spiffeid.RequireFromString("spiffe://cluster.local"), 0, "has no path"},
		{spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b"), 0, `not in the CA's trust domain "cluster.local"`},
		{sleepID, -time.Second, "negative TTL"},
	} {
		_, err := ca.Issue(t.Context(), tc.id, tc.ttl)
		assert.ErrorContains(t, err, tc.want)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := ca.Issue(ctx, sleepID, 0)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestCALeafNeverOutlivesCA(t *testing.T) {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: td, RootTTL: time.Hour, TTL: 24 * time.Hour})
	require.NoError(t, err)
	s, err := ca.Issue(t.Context(), sleepID, 0)
	require.NoError(t, err)
	assert.Equal(t, ca.Certificate().NotAfter, s.Certificates[0].NotAfter)
}

func TestCAFromIntermediateDir(t *testing.T) {
	leakcheck.Check(t)
	root := identitytest.NewCA(t, "cluster.local")
	inter := root.IssueIntermediate(t)
	dir := t.TempDir()
	require.NoError(t, inter.Local().WriteDir(dir))
	info, err := os.Stat(filepath.Join(dir, identity.CAKeyFileName))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	ca, err := identity.LoadCADir(identity.CAConfig{TrustDomain: td}, dir)
	require.NoError(t, err)
	assert.True(t, ca.Bundle().Equal(root.Bundle()), "the bundle is the root, not the intermediate")
	s, err := ca.Issue(t.Context(), sleepID, time.Hour)
	require.NoError(t, err)
	require.Len(t, s.Certificates, 2, "leaf and intermediate")
	assert.True(t, s.Certificates[1].IsCA)
	_, _, err = x509svid.Verify(s.Certificates, root.Bundle())
	require.NoError(t, err)

	// A real handshake between a workload of this CA and one of the root.
	src, err := identity.NewStatic(s, ca.Bundle())
	require.NoError(t, err)
	res := handshake(t, identity.ServerTLSConfig(src), identity.ClientTLSConfig(root.Source(t, "ns/default/sa/client"), sleepID))
	require.NoError(t, res.clientErr)
	require.NoError(t, res.serverErr)

	// Without cert-chain.pem, ca-cert.pem alone still chains to the root.
	require.NoError(t, os.Remove(filepath.Join(dir, identity.CertChainFileName)))
	_, err = identity.LoadCADir(identity.CAConfig{TrustDomain: td}, dir)
	require.NoError(t, err)
}

func TestCAWriteLoadRoundTrip(t *testing.T) {
	ca := newLocalCA(t, time.Hour)
	dir := t.TempDir()
	require.NoError(t, ca.WriteDir(dir))
	again, err := identity.LoadCADir(identity.CAConfig{TrustDomain: td}, dir)
	require.NoError(t, err)
	assert.True(t, again.Certificate().Equal(ca.Certificate()))
	s, err := again.Issue(t.Context(), sleepID, 0)
	require.NoError(t, err)
	_, _, err = x509svid.Verify(s.Certificates, ca.Bundle())
	require.NoError(t, err)
}

// Processes started together with one -ca-dir must end up with one CA:
// each either installs its own or loads the winner's.
func TestOpenCADirAgreesOnOneCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "cacerts")
	cfg := identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}
	const n = 8
	cas := make(chan *identity.CA, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			ca, err := identity.OpenCADir(cfg, dir)
			if err != nil {
				errs <- err
				return
			}
			cas <- ca
		}()
	}
	var first *identity.CA
	for range n {
		select {
		case err := <-errs:
			t.Fatal(err)
		case ca := <-cas:
			if first == nil {
				first = ca
				continue
			}
			require.True(t, ca.Certificate().Equal(first.Certificate()), "two different CAs for one directory")
		}
	}
	again, err := identity.OpenCADir(cfg, dir)
	require.NoError(t, err)
	require.True(t, again.Certificate().Equal(first.Certificate()), "reopening must load the installed CA")
	leftovers, err := filepath.Glob(filepath.Join(filepath.Dir(dir), ".ca-*"))
	require.NoError(t, err)
	require.Empty(t, leftovers, "temporary directories left behind")
}

func TestOpenCADirRefusesABrokenDir(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, identity.CACertFileName), []byte("not PEM"), 0o600))
	_, err := identity.OpenCADir(identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}, dir)
	require.Error(t, err, "a directory with a broken CA must not be replaced by a new one")
}

func TestNewCAErrors(t *testing.T) {
	good := identitytest.NewCA(t, "cluster.local")
	other := identitytest.NewCA(t, "cluster.local")
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := good.SVID(t, "ns/a/sa/b")
	inter := good.IssueIntermediate(t)
	interDir := t.TempDir()
	require.NoError(t, inter.Local().WriteDir(interDir))
	interKeyPEM, _ := os.ReadFile(filepath.Join(interDir, identity.CAKeyFileName))
	interKey, err := identity.ParsePrivateKeyPEM(interKeyPEM)
	require.NoError(t, err)
	interCert := inter.Local().Certificate()

	tests := []struct {
		name string
		cfg  identity.CAConfig
		want string
	}{
		{"no trust domain", identity.CAConfig{}, "TrustDomain is empty"},
		{"negative TTL", identity.CAConfig{TrustDomain: td, TTL: -1}, "TTL is negative"},
		{"no key", identity.CAConfig{TrustDomain: td, Certificates: []*x509.Certificate{good.Root()}}, "Key is nil"},
		{"wrong key", identity.CAConfig{TrustDomain: td, Certificates: []*x509.Certificate{good.Root()}, Key: leafKey}, "does not match"},
		{"leaf as CA", identity.CAConfig{TrustDomain: td, Certificates: leaf.Certificates, Key: leaf.PrivateKey}, "not a CA certificate"},
		{"intermediate without roots", identity.CAConfig{TrustDomain: td, Certificates: []*x509.Certificate{interCert}, Key: interKey}, "not a self-signed root"},
		{"intermediate with foreign root", identity.CAConfig{TrustDomain: td, Certificates: []*x509.Certificate{interCert}, Key: interKey, Roots: []*x509.Certificate{other.Root()}}, "does not chain to the roots"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.NewCA(tc.cfg)
			assert.ErrorContains(t, err, tc.want)
		})
	}

	_, err = identity.LoadCADir(identity.CAConfig{TrustDomain: td}, t.TempDir())
	assert.ErrorContains(t, err, identity.CACertFileName)
}

func newCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestCASignCSR(t *testing.T) {
	ca := newLocalCA(t, time.Hour)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	csr := newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{sleepID.URL()}})

	chain, err := ca.SignCSR(t.Context(), csr, sleepID, 0)
	require.NoError(t, err)
	require.Len(t, chain, 1)
	leaf := chain[0]
	assert.True(t, leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()))
	assert.Equal(t, sleepID.String(), leaf.URIs[0].String())
	assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, leaf.ExtKeyUsage)
	_, _, err = x509svid.Verify(chain, ca.Bundle())
	require.NoError(t, err)

	// DER works as well as PEM.
	block, _ := pem.Decode(csr)
	_, err = ca.SignCSR(t.Context(), block.Bytes, sleepID, time.Minute)
	require.NoError(t, err)

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	chain, err = ca.SignCSR(t.Context(), newCSR(t, rsaKey, &x509.CertificateRequest{URIs: []*url.URL{sleepID.URL()}}), sleepID, 0)
	require.NoError(t, err)
	assert.Equal(t, x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment, chain[0].KeyUsage)
}

func TestCASignCSRRejects(t *testing.T) {
	ca := newLocalCA(t, time.Hour)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	weakEC, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/other")
	foreign := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/sleep")
	notSPIFFE, _ := url.Parse("https://example.org/sleep")

	tampered := func() []byte {
		b := newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{sleepID.URL()}})
		block, _ := pem.Decode(b)
		der := block.Bytes
		der[len(der)-5] ^= 0xff // inside the signature
		return der
	}()

	tests := []struct {
		name string
		csr  []byte
		id   spiffeid.ID
		want string
	}{
		{"URI SAN is another identity", newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{other.URL()}}), sleepID,
			"URI SAN is spiffe://cluster.local/ns/default/sa/other, but the caller is authorised for spiffe://cluster.local/ns/default/sa/sleep"},
		{"no URI SAN", newCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "sleep"}}), sleepID, "no URI SAN"},
		{"two URI SANs", newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{sleepID.URL(), other.URL()}}), sleepID, "2 URI SANs"},
		{"DNS SAN", newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{sleepID.URL()}, DNSNames: []string{"sleep.default"}}), sleepID, `DNS SAN "sleep.default"`},
		{"email SAN", newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{sleepID.URL()}, EmailAddresses: []string{"a@b"}}), sleepID, "email SAN"},
		{"not SPIFFE", newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{notSPIFFE}}), sleepID, "is not a SPIFFE ID"},
		{"weak EC key", newCSR(t, weakEC, &x509.CertificateRequest{URIs: []*url.URL{sleepID.URL()}}), sleepID, "P-224 is too weak"},
		{"bad signature", tampered, sleepID, "signature does not verify"},
		{"certificate instead of CSR", identity.EncodeCertificatesPEM([]*x509.Certificate{ca.Certificate()}), sleepID, `PEM block is "CERTIFICATE"`},
		{"garbage", []byte("not a csr"), sleepID, "neither PEM nor a DER PKCS#10 request"},
		{"broken PEM", []byte("-----BEGIN CERTIFICATE REQUEST-----\n!!!\n"), sleepID, "malformed PEM"},
		{"identity outside trust domain", newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{foreign.URL()}}), foreign, "not in the CA's trust domain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			chain, err := ca.SignCSR(t.Context(), tc.csr, tc.id, 0)
			require.Error(t, err)
			assert.Nil(t, chain)
			assert.ErrorContains(t, err, tc.want)
			if tc.name != "identity outside trust domain" {
				assert.True(t, errors.Is(err, identity.ErrCSRRejected), "%v should wrap ErrCSRRejected", err)
			}
		})
	}
}

func TestParsePEMErrors(t *testing.T) {
	ca := newLocalCA(t, time.Hour)
	s, err := ca.Issue(t.Context(), sleepID, 0)
	require.NoError(t, err)
	certPEM := identity.EncodeCertificatesPEM(s.Certificates)
	keyPEM, err := identity.EncodePrivateKeyPEM(s.PrivateKey)
	require.NoError(t, err)

	certs, err := identity.ParseCertificatesPEM(append(certPEM, identity.EncodeCertificatesPEM([]*x509.Certificate{ca.Certificate()})...))
	require.NoError(t, err)
	assert.Len(t, certs, 2)
	k, err := identity.ParsePrivateKeyPEM(keyPEM)
	require.NoError(t, err)
	assert.True(t, k.Public().(*ecdsa.PublicKey).Equal(s.PrivateKey.Public()))

	ecDER, _ := x509.MarshalECPrivateKey(s.PrivateKey.(*ecdsa.PrivateKey))
	_, err = identity.ParsePrivateKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))
	require.NoError(t, err)

	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "no CERTIFICATE block"},
		{"text", []byte("hello"), "no PEM block found"},
		{"key among certs", append(append([]byte{}, certPEM...), keyPEM...), `block 2 is "PRIVATE KEY"`},
		{"bad DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), "block 1"},
	} {
		_, err := identity.ParseCertificatesPEM(tc.in)
		assert.ErrorIs(t, err, identity.ErrInvalidPEM, tc.name)
		assert.ErrorContains(t, err, tc.want, tc.name)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "no PEM block"},
		{"cert", certPEM, `private key block is "CERTIFICATE"`},
		{"bad DER", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}), "PRIVATE KEY block"},
	} {
		_, err := identity.ParsePrivateKeyPEM(tc.in)
		assert.ErrorIs(t, err, identity.ErrInvalidPEM, tc.name)
		assert.ErrorContains(t, err, tc.want, tc.name)
	}
}

func FuzzParseCSR(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := newCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{sleepID.URL()}})
	f.Add(good)
	block, _ := pem.Decode(good)
	f.Add(block.Bytes)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: td})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, err := identity.ParseCSR(b)
		if err != nil {
			if !errors.Is(err, identity.ErrCSRRejected) {
				t.Fatalf("error %v does not wrap ErrCSRRejected", err)
			}
			return
		}
		if csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
		// Whatever parses, SignCSR only ever issues for exactly sleepID.
		chain, err := ca.SignCSR(context.Background(), b, sleepID, time.Minute)
		if err == nil && (len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != sleepID.String()) {
			t.Fatalf("issued for %v", chain[0].URIs)
		}
	})
}

func FuzzParseCertificatesPEM(f *testing.F) {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: td})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(identity.EncodeCertificatesPEM([]*x509.Certificate{ca.Certificate()}))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := identity.ParseCertificatesPEM(b)
		if err != nil {
			if !errors.Is(err, identity.ErrInvalidPEM) {
				t.Fatalf("error %v does not wrap ErrInvalidPEM", err)
			}
			return
		}
		if len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
		again, err := identity.ParseCertificatesPEM(identity.EncodeCertificatesPEM(certs))
		if err != nil || len(again) != len(certs) {
			t.Fatalf("re-encoding: %v", err)
		}
	})
}

func FuzzParsePrivateKeyPEM(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p, _ := identity.EncodePrivateKeyPEM(key)
	f.Add(p)
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := identity.ParsePrivateKeyPEM(b)
		if err != nil {
			if !errors.Is(err, identity.ErrInvalidPEM) {
				t.Fatalf("error %v does not wrap ErrInvalidPEM", err)
			}
			return
		}
		if k == nil || k.Public() == nil {
			t.Fatal("nil key without error")
		}
	})
}
