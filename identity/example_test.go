package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func ExamplePrincipalFromID() {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	fmt.Println(identity.PrincipalFromID(id))
	// Output: cluster.local/ns/default/sa/sleep
}

func ExampleIDFromPrincipal() {
	id, err := identity.IDFromPrincipal("cluster.local/ns/default/sa/sleep")
	fmt.Println(id, err)
	_, err = identity.IDFromPrincipal("cluster.local/ns/default/sa/*")
	fmt.Println(err)
	// Output:
	// spiffe://cluster.local/ns/default/sa/sleep <nil>
	// identity: invalid principal "cluster.local/ns/default/sa/*": contains a wildcard '*' at byte 28; only exact principals name an identity
}

func ExampleParseWorkloadID() {
	w, err := identity.ParseWorkloadID("spiffe://cluster.local/ns/default/sa/sleep")
	if err != nil {
		panic(err)
	}
	fmt.Println(w.Namespace(), w.ServiceAccount(), w.TrustDomain())
	_, err = identity.ParseWorkloadID("spiffe://cluster.local/ns/default/serviceaccount/sleep")
	fmt.Println(err)
	// Output:
	// default sleep cluster.local
	// identity: not a workload ID: "spiffe://cluster.local/ns/default/serviceaccount/sleep": path segment 3 is "serviceaccount", want "sa"; want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
}

func ExampleNewCA() {
	ca, err := identity.NewCA(identity.CAConfig{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		TTL:         time.Hour,
	})
	if err != nil {
		panic(err)
	}
	svid, err := ca.Issue(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"), 0)
	if err != nil {
		panic(err)
	}
	leaf := svid.Certificates[0]
	fmt.Println(leaf.URIs, leaf.NotAfter.Sub(leaf.NotBefore)-identity.Backdate)
	fmt.Println(leaf.ExtKeyUsage[0] == x509.ExtKeyUsageServerAuth, leaf.ExtKeyUsage[1] == x509.ExtKeyUsageClientAuth)
	// Output:
	// [spiffe://cluster.local/ns/default/sa/sleep] 1h0m0s
	// true true
}

func ExampleCA_SignCSR() {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		panic(err)
	}
	// The workload keeps its key and sends a CSR naming its identity.
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)

	// The CA signs it only for the identity the caller was authenticated as.
	chain, err := ca.SignCSR(context.Background(), csr, id, 0)
	fmt.Println(chain[0].URIs, err)
	_, err = ca.SignCSR(context.Background(), csr, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/other"), 0)
	fmt.Println(err)
	// Output:
	// [spiffe://cluster.local/ns/default/sa/sleep] <nil>
	// identity: certificate request rejected: URI SAN is spiffe://cluster.local/ns/default/sa/sleep, but the caller is authorised for spiffe://cluster.local/ns/default/sa/other
}

func ExampleManager() {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		panic(err)
	}
	certs, err := identity.NewManager(identity.ManagerConfig{Fetcher: ca})
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- certs.Run(ctx) }()

	sleep := certs.Source(spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	if err := certs.WaitReady(ctx); err != nil {
		panic(err)
	}
	svid, err := sleep.SVID(ctx)
	fmt.Println(svid.ID, err)

	stop()
	fmt.Println(<-done)
	// Output:
	// spiffe://cluster.local/ns/default/sa/sleep <nil>
	// <nil>
}

// A mutual TLS connection between two workloads, with the configs ztunnel
// uses on the HBONE port.
func ExampleClientTLSConfig() {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		panic(err)
	}
	serverID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/server")
	clientID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
	source := func(id spiffeid.ID) identity.Source {
		svid, bundle, err := ca.Fetch(context.Background(), id)
		if err != nil {
			panic(err)
		}
		s, err := identity.NewStatic(svid, bundle)
		if err != nil {
			panic(err)
		}
		return s
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", identity.ServerTLSConfig(source(serverID)))
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			return
		}
		peer, _ := identity.PeerID(tc.ConnectionState())
		fmt.Fprintf(tc, "hello %s\n", identity.PrincipalFromID(peer))
	}()

	conn, err := tls.Dial("tcp", ln.Addr().String(), identity.ClientTLSConfig(source(clientID), serverID))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	buf := make([]byte, 100)
	n, _ := conn.Read(buf)
	peer, _ := identity.PeerID(conn.ConnectionState())
	fmt.Printf("%s%s %s\n", buf[:n], peer, conn.ConnectionState().NegotiatedProtocol)
	// Output:
	// hello cluster.local/ns/default/sa/client
	// spiffe://cluster.local/ns/default/sa/server h2
}

func ExampleServerTLSConfig() {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		panic(err)
	}
	certs, err := identity.NewManager(identity.ManagerConfig{Fetcher: ca})
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go certs.Run(ctx)

	// A node proxy serves each local workload with its own certificate,
	// renewed by the Manager behind the config's back.
	conf := identity.ServerTLSConfig(certs.Source(spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/server")))
	fmt.Println(conf.MinVersion == tls.VersionTLS13, conf.NextProtos, conf.ClientAuth == tls.RequireAnyClientCert)
	// Output: true [h2] true
}

func ExamplePeerID() {
	// After a handshake made with ServerTLSConfig:
	var conn *tls.Conn
	if conn == nil {
		return
	}
	peer, err := identity.PeerID(conn.ConnectionState())
	if err != nil {
		return
	}
	fmt.Println(identity.PrincipalFromID(peer)) // e.g. cluster.local/ns/default/sa/sleep
}

func ExampleNewFileSource() {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		panic(err)
	}
	dir, err := os.MkdirTemp("", "certs")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	svid, bundle, err := ca.Fetch(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	if err != nil {
		panic(err)
	}
	if err := identity.WriteFiles(dir, svid, bundle); err != nil {
		panic(err)
	}

	src, err := identity.NewFileSource(identity.FileSourceConfig{
		CertFile:   filepath.Join(dir, identity.CertFileName),
		KeyFile:    filepath.Join(dir, identity.KeyFileName),
		BundleFile: filepath.Join(dir, identity.BundleFileName),
	})
	if err != nil {
		panic(err)
	}
	// go src.Run(ctx) would pick up rewritten files.
	got, err := src.SVID(context.Background())
	fmt.Println(got.ID, err)
	// Output: spiffe://cluster.local/ns/default/sa/sleep <nil>
}

func ExampleNewStatic() {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		panic(err)
	}
	svid, bundle, err := ca.Fetch(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	if err != nil {
		panic(err)
	}
	src, err := identity.NewStatic(svid, bundle)
	fmt.Println(src != nil, err)
	// Output: true <nil>
}

func ExampleFromX509Source() {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		panic(err)
	}
	svid, bundle, err := ca.Fetch(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	if err != nil {
		panic(err)
	}
	// Any go-spiffe x509svid.Source and x509bundle.Source, e.g. a
	// workloadapi.X509Source, or the SVID and bundle themselves.
	src := identity.FromX509Source(svid, bundle)
	b, err := src.Bundle(context.Background())
	fmt.Println(b.TrustDomain(), err)
	// Output: cluster.local <nil>
}

func ExampleToX509Source() {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		panic(err)
	}
	svid, bundle, err := ca.Fetch(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"))
	if err != nil {
		panic(err)
	}
	src, _ := identity.NewStatic(svid, bundle)
	// The adapter plugs into go-spiffe's tlsconfig builders.
	x := identity.ToX509Source(context.Background(), src)
	got, err := x.GetX509SVID()
	fmt.Println(got.ID, err)
	// Output: spiffe://cluster.local/ns/default/sa/sleep <nil>
}

func ExampleLoadCADir() {
	dir, err := os.MkdirTemp("", "cacerts")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	cfg := identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}
	ca, err := identity.NewCA(cfg)
	if err != nil {
		panic(err)
	}
	// Istio's cacerts layout: ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem.
	if err := ca.WriteDir(dir); err != nil {
		panic(err)
	}
	again, err := identity.LoadCADir(cfg, dir)
	fmt.Println(again.Certificate().Equal(ca.Certificate()), err)
	// Output: true <nil>
}
