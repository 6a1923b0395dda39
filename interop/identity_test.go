package interop_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"istio.io/istio/pkg/spiffe"
	"istio.io/istio/security/pkg/pki/util"
)

var sleepID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")

func localCA(t *testing.T) *identity.CA {
	t.Helper()
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: sleepID.TrustDomain(), TTL: 2 * time.Hour})
	require.NoError(t, err)
	return ca
}

func pemFiles(t *testing.T, s *x509svid.SVID, bundle []*x509.Certificate) (certPEM, keyPEM, rootPEM []byte) {
	t.Helper()
	keyPEM, err := identity.EncodePrivateKeyPEM(s.PrivateKey)
	require.NoError(t, err)
	return identity.EncodeCertificatesPEM(s.Certificates), keyPEM, identity.EncodeCertificatesPEM(bundle)
}

// Istio's SAN helpers find exactly our SPIFFE ID in our leaf, and its
// certificate verifier accepts the leaf with the fields Istio expects of
// a workload certificate.
func TestIstioAcceptsOurWorkloadCertificate(t *testing.T) {
	ca := localCA(t)
	s, err := ca.Issue(context.Background(), sleepID, 0)
	require.NoError(t, err)
	leaf := s.Certificates[0]

	ids, err := util.ExtractIDs(leaf.Extensions)
	require.NoError(t, err)
	assert.Equal(t, []string{sleepID.String()}, ids)

	certPEM, keyPEM, rootPEM := pemFiles(t, s, ca.Bundle().X509Authorities())
	require.NoError(t, util.VerifyCertificate(keyPEM, certPEM, rootPEM, &util.VerifyFields{
		TTL:         2*time.Hour + identity.Backdate,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		IsCA:        false,
		Host:        sleepID.String(),
	}))
	// And Istio's KeyCertBundle check (chain, key parse, key/cert match).
	require.NoError(t, util.Verify(certPEM, keyPEM, certPEM, rootPEM, nil))

	// A Host that is not in the certificate fails, so the check above is real.
	err = util.VerifyCertificate(keyPEM, certPEM, rootPEM, &util.VerifyFields{
		ExtKeyUsage: leaf.ExtKeyUsage, KeyUsage: leaf.KeyUsage, Host: "spiffe://cluster.local/ns/default/sa/other",
	})
	assert.ErrorContains(t, err, "doesn't have the expected SAN")
}

// Istio's SPIFFE parser reads our leaf's SAN as the same trust domain,
// namespace and service account as our parser, and Istio's peer verifier
// accepts our chain with our bundle's roots for the trust domain.
func TestIstioSPIFFEParsesOurIdentity(t *testing.T) {
	ca := localCA(t)
	inter := identitytest.NewCA(t, "cluster.local").IssueIntermediate(t)
	for name, s := range map[string]*x509svid.SVID{
		"root-signed": func() *x509svid.SVID {
			s, err := ca.Issue(context.Background(), sleepID, 0)
			require.NoError(t, err)
			return s
		}(),
		"via intermediate": inter.SVID(t, "ns/default/sa/sleep"),
	} {
		t.Run(name, func(t *testing.T) {
			leaf := s.Certificates[0]
			require.Len(t, leaf.URIs, 1)
			got, err := spiffe.ParseIdentity(leaf.URIs[0].String())
			require.NoError(t, err)
			ours, err := identity.ParseWorkloadID(leaf.URIs[0].String())
			require.NoError(t, err)
			assert.Equal(t, spiffe.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sleep"}, got)
			assert.Equal(t, got.TrustDomain, ours.TrustDomain().Name())
			assert.Equal(t, got.Namespace, ours.Namespace())
			assert.Equal(t, got.ServiceAccount, ours.ServiceAccount())
			assert.Equal(t, got.String(), ours.String())
			td, err := spiffe.GetTrustDomainFromURISAN(leaf.URIs[0].String())
			require.NoError(t, err)
			assert.Equal(t, "cluster.local", td)

			roots := ca.Bundle().X509Authorities()
			if name == "via intermediate" {
				roots = []*x509.Certificate{inter.Root()}
			}
			v := spiffe.NewPeerCertVerifier()
			v.AddMapping("cluster.local", roots)
			raw := make([][]byte, len(s.Certificates))
			for i, c := range s.Certificates {
				raw[i] = c.Raw
			}
			require.NoError(t, v.VerifyPeerCert(raw, nil))

			// Under a foreign root Istio refuses, as we do.
			v2 := spiffe.NewPeerCertVerifier()
			v2.AddMapping("cluster.local", identitytest.NewCA(t, "cluster.local").Bundle().X509Authorities())
			assert.Error(t, v2.VerifyPeerCert(raw, nil))
		})
	}
}

// Our parser and Istio's agree on which strings are workload identities
// (Istio's is laxer about characters; both require the ns/sa shape).
func TestWorkloadIDShapeAgreesWithIstio(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"spiffe://cluster.local/ns/default/sa/sleep", true},
		{"spiffe://example.org/ns/istio-system/sa/ztunnel", true},
		{"spiffe://cluster.local/ns/default/sa", false},
		{"spiffe://cluster.local/ns/default/sa/sleep/extra", false},
		{"spiffe://cluster.local/namespace/default/sa/sleep", false},
		{"spiffe://cluster.local/ns/default/serviceaccount/sleep", false},
		{"cluster.local/ns/default/sa/sleep", false},
		{"spiffe://cluster.local", false},
	} {
		_, istioErr := spiffe.ParseIdentity(tc.in)
		_, ourErr := identity.ParseWorkloadID(tc.in)
		assert.Equal(t, tc.want, istioErr == nil, "istio on %q: %v", tc.in, istioErr)
		assert.Equal(t, tc.want, ourErr == nil, "ours on %q: %v", tc.in, ourErr)
	}
}

// Istio's CA tooling accepts the cacerts directory our CA writes.
func TestIstioLoadsOurCADir(t *testing.T) {
	root := identitytest.NewCA(t, "cluster.local")
	for name, ca := range map[string]*identity.CA{
		"self-signed":  localCA(t),
		"intermediate": root.IssueIntermediate(t).Local(),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, ca.WriteDir(dir))
			kcb, err := util.NewVerifiedKeyCertBundleFromFile(
				filepath.Join(dir, identity.CACertFileName),
				filepath.Join(dir, identity.CAKeyFileName),
				[]string{filepath.Join(dir, identity.CertChainFileName)},
				filepath.Join(dir, identity.RootCertFileName), "")
			require.NoError(t, err)
			cert, _, _, rootPEM := kcb.GetAll()
			assert.True(t, cert.Equal(ca.Certificate()))
			roots, err := identity.ParseCertificatesPEM(rootPEM)
			require.NoError(t, err)
			assert.True(t, roots[0].Equal(ca.Bundle().X509Authorities()[0]))
		})
	}
}

// A CSR made by Istio's own CSR code (as istio-agent makes them) is signed
// by our CA for the authorised identity and refused for another one.
func TestOurCASignsIstioCSR(t *testing.T) {
	ca := localCA(t)
	for _, alg := range []util.SupportedECSignatureAlgorithms{util.EcdsaSigAlg, ""} {
		csrPEM, _, err := util.GenCSR(util.CertOptions{Host: sleepID.String(), ECSigAlg: alg, RSAKeySize: 2048, Org: "cluster.local"})
		require.NoError(t, err)
		chain, err := ca.SignCSR(context.Background(), csrPEM, sleepID, time.Hour)
		require.NoError(t, err, "alg %q", alg)
		ids, err := util.ExtractIDs(chain[0].Extensions)
		require.NoError(t, err)
		assert.Equal(t, []string{sleepID.String()}, ids)

		_, err = ca.SignCSR(context.Background(), csrPEM, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/other"), time.Hour)
		assert.ErrorIs(t, err, identity.ErrCSRRejected)
	}
}

// A root made by Istio's cert tooling (as in istioctl / plugged-in CA
// certs) drives our CA, and a workload certificate Istio's tooling signs
// with it passes our mTLS verification.
func TestIstioGeneratedCAWithOurCA(t *testing.T) {
	rootPEM, rootKeyPEM, err := util.GenCertKeyFromOptions(util.CertOptions{
		Org: "Istio", IsCA: true, IsSelfSigned: true, TTL: 24 * time.Hour,
		ECSigAlg: util.EcdsaSigAlg, PKCS8Key: true,
	})
	require.NoError(t, err)
	dir := t.TempDir()
	for name, b := range map[string][]byte{
		identity.CACertFileName: rootPEM, identity.CAKeyFileName: rootKeyPEM, identity.RootCertFileName: rootPEM,
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o600))
	}
	ca, err := identity.LoadCADir(identity.CAConfig{TrustDomain: sleepID.TrustDomain()}, dir)
	require.NoError(t, err)
	s, err := ca.Issue(context.Background(), sleepID, time.Hour)
	require.NoError(t, err)
	_, err = identity.VerifyServerCert(s.Certificates, ca.Bundle(), []spiffeid.ID{sleepID}, time.Now())
	require.NoError(t, err)

	// Istio signs a workload certificate with the same root.
	signer, err := identity.ParseCertificatesPEM(rootPEM)
	require.NoError(t, err)
	block, _ := pem.Decode(rootKeyPEM)
	signerKey, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(t, err)
	client := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
	certPEM, _, err := util.GenCertKeyFromOptions(util.CertOptions{
		Host: client.String(), TTL: time.Hour, SignerCert: signer[0], SignerPriv: signerKey,
		IsClient: true, IsServer: true, ECSigAlg: util.EcdsaSigAlg, PKCS8Key: true,
	})
	require.NoError(t, err)
	istioLeaf, err := identity.ParseCertificatesPEM(certPEM)
	require.NoError(t, err)
	got, err := identity.VerifyClientCert(istioLeaf, ca.Bundle(), time.Now())
	require.NoError(t, err)
	assert.Equal(t, client, got)
}
