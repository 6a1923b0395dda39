package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshblocks/meshblocks/identity"
)

// exampleCA is the CA the examples below share.
func exampleCA() *identity.CA {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		panic(err)
	}
	return ca
}

func ExampleNewWorkloadID() {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	w, err := identity.NewWorkloadID(td, "default", "sleep")
	fmt.Println(w, w.Principal(), err)
	_, err = identity.NewWorkloadID(td, "default", "")
	fmt.Println(err != nil)
	// Output:
	// spiffe://cluster.local/ns/default/sa/sleep cluster.local/ns/default/sa/sleep <nil>
	// true
}

func ExampleWorkloadIDFromID() {
	// Any SPIFFE ID converts, but only the ns/N/sa/S shape names a workload.
	_, err := identity.WorkloadIDFromID(spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	fmt.Println(err)
	_, err = identity.WorkloadIDFromID(spiffeid.RequireFromString("spiffe://cluster.local/gateway"))
	fmt.Println(errors.Is(err, identity.ErrNotWorkloadID))
	// Output:
	// <nil>
	// true
}

func ExampleCA_Issue() {
	ca := exampleCA()
	// A TTL of 0 means the CA's default (CAConfig.TTL, else DefaultTTL).
	svid, err := ca.Issue(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"), 10*time.Minute)
	if err != nil {
		panic(err)
	}
	leaf := svid.Certificates[0]
	fmt.Println(leaf.URIs, leaf.NotAfter.Sub(leaf.NotBefore)-identity.Backdate, len(svid.Certificates))
	// Output: [spiffe://cluster.local/ns/default/sa/sleep] 10m0s 1
}

func ExampleCA_Fetch() {
	ca := exampleCA()
	// Fetch makes a CA a Fetcher: the SVID and the bundle to verify peers with.
	svid, bundle, err := ca.Fetch(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	if err != nil {
		panic(err)
	}
	fmt.Println(svid.ID, bundle.TrustDomain(), bundle.HasX509Authority(ca.Certificate()))
	// Output: spiffe://cluster.local/ns/default/sa/sleep cluster.local true
}

func ExampleCA_WriteDir() {
	dir, err := os.MkdirTemp("", "cacerts")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	if err := exampleCA().WriteDir(dir); err != nil {
		panic(err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		fmt.Println(e.Name())
	}
	// Output:
	// ca-cert.pem
	// ca-key.pem
	// cert-chain.pem
	// root-cert.pem
}

func ExampleWriteFiles() {
	dir, err := os.MkdirTemp("", "svid")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	svid, bundle, err := exampleCA().Fetch(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	if err != nil {
		panic(err)
	}
	if err := identity.WriteFiles(filepath.Join(dir, "sleep"), svid, bundle); err != nil {
		panic(err)
	}
	key, _ := os.Stat(filepath.Join(dir, "sleep", identity.KeyFileName))
	fmt.Println(key.Mode().Perm())
	// Output: -rw-------
}

func ExampleParseCSR() {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	// PEM (as Istio's agents send it) or DER.
	csr, err := identity.ParseCSR(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	fmt.Println(csr.URIs, err)
	_, err = identity.ParseCSR([]byte("not a CSR"))
	fmt.Println(err != nil)
	// Output:
	// [spiffe://cluster.local/ns/default/sa/sleep] <nil>
	// true
}

func ExampleVerifyServerCert() {
	ca := exampleCA()
	server := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/server")
	svid, bundle, _ := ca.Fetch(context.Background(), server)
	// What a client configured with ClientTLSConfig(src, server) checks.
	got, err := identity.VerifyServerCert(svid.Certificates, bundle, []spiffeid.ID{server}, time.Now())
	fmt.Println(got, err)
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/other")
	_, err = identity.VerifyServerCert(svid.Certificates, bundle, []spiffeid.ID{other}, time.Now())
	fmt.Println(errors.Is(err, identity.ErrPeerRejected))
	// Output:
	// spiffe://cluster.local/ns/default/sa/server <nil>
	// true
}

func ExampleVerifyClientCert() {
	ca := exampleCA()
	svid, bundle, _ := ca.Fetch(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	// What a server configured with ServerTLSConfig checks: the chain
	// verifies to the bundle; the peer is the first URI SAN.
	peer, err := identity.VerifyClientCert(svid.Certificates, bundle, time.Now())
	fmt.Println(peer, err)
	_, err = identity.VerifyClientCert(svid.Certificates, bundle, time.Now().Add(48*time.Hour))
	fmt.Println(errors.Is(err, identity.ErrPeerRejected))
	// Output:
	// spiffe://cluster.local/ns/default/sa/sleep <nil>
	// true
}

func ExampleTLSCertificate() {
	svid, _, _ := exampleCA().Fetch(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	cert, err := identity.TLSCertificate(svid)
	fmt.Println(len(cert.Certificate), cert.Leaf.URIs, err)
	// Output: 1 [spiffe://cluster.local/ns/default/sa/sleep] <nil>
}

func ExampleFetcherFunc() {
	ca := exampleCA()
	// A Fetcher that only hands out identities of one namespace.
	onlyDefault := identity.FetcherFunc(func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
		w, err := identity.WorkloadIDFromID(id)
		if err != nil || w.Namespace() != "default" {
			return nil, nil, fmt.Errorf("no certificate for %s here", id)
		}
		return ca.Fetch(ctx, id)
	})
	_, _, err := onlyDefault.Fetch(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	fmt.Println(err)
	_, _, err = onlyDefault.Fetch(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/prod/sa/db"))
	fmt.Println(err)
	// Output:
	// <nil>
	// no certificate for spiffe://cluster.local/ns/prod/sa/db here
}

func ExampleParseCertificatesPEM() {
	svid, _, _ := exampleCA().Fetch(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	certs, err := identity.ParseCertificatesPEM(identity.EncodeCertificatesPEM(svid.Certificates))
	fmt.Println(len(certs), certs[0].Equal(svid.Certificates[0]), err)
	// Output: 1 true <nil>
}

func ExampleParsePrivateKeyPEM() {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b, err := identity.EncodePrivateKeyPEM(key)
	if err != nil {
		panic(err)
	}
	back, err := identity.ParsePrivateKeyPEM(b)
	fmt.Println(back.Public().(*ecdsa.PublicKey).Equal(&key.PublicKey), err)
	// Output: true <nil>
}

// A node proxy registers the identities of the workloads scheduled on its
// node, and drops them when the workloads leave.
func ExampleManager_Add() {
	certs, err := identity.NewManager(identity.ManagerConfig{Fetcher: exampleCA()})
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- certs.Run(ctx) }()

	sleep := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	web := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/web")
	if err := certs.Add(sleep, web); err != nil {
		panic(err)
	}
	if err := certs.WaitReady(ctx); err != nil {
		panic(err)
	}
	fmt.Println(certs.Len())
	certs.Remove(web)
	fmt.Println(certs.Len())

	stop()
	fmt.Println(<-done)
	// Output:
	// 2
	// 1
	// <nil>
}

func ExampleManager_Fetch() {
	certs, err := identity.NewManager(identity.ManagerConfig{Fetcher: exampleCA()})
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- certs.Run(ctx) }()

	// Fetch registers the identity if needed and waits for its first
	// certificate; later calls are answered from the cache.
	svid, bundle, err := certs.Fetch(ctx, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	fmt.Println(svid.ID, bundle.TrustDomain(), err)

	stop()
	<-done
	// Output: spiffe://cluster.local/ns/default/sa/sleep cluster.local <nil>
}

func ExampleOpenCADir() {
	parent, err := os.MkdirTemp("", "mesh")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(parent)
	cfg := identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}
	// The first process creates the CA; every later one (or a racing
	// one) loads the same CA.
	first, err := identity.OpenCADir(cfg, filepath.Join(parent, "ca"))
	if err != nil {
		panic(err)
	}
	second, err := identity.OpenCADir(cfg, filepath.Join(parent, "ca"))
	fmt.Println(second.Certificate().Equal(first.Certificate()), err)
	// Output: true <nil>
}
