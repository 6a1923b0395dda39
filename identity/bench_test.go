package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// BenchmarkIssue measures certificate issuance by the local CA. The
// keygen sub-benchmark (P-256 key generation alone) is the baseline: the
// rest of Issue is signing and parsing.
func BenchmarkIssue(b *testing.B) {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: td})
	if err != nil {
		b.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	b.Run("keygen", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "keys/s")
	})
	b.Run("issue", func(b *testing.B) {
		b.ReportAllocs()
		ctx := context.Background()
		for b.Loop() {
			if _, err := ca.Issue(ctx, id, 0); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
	})
	b.Run("sign-csr", func(b *testing.B) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		ctx := context.Background()
		for b.Loop() {
			if _, err := ca.SignCSR(ctx, csr, id, 0); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
	})
}

// handshakePair holds a server and a client config for one benchmark arm.
type handshakePair struct {
	server, client *tls.Config
}

// plainPair is the baseline: crypto/tls mutual TLS 1.3 with ECDSA P-256
// certificates from the same CA, verified the standard way (client checks
// the server name and chain, server checks the client chain).
func plainPair(b *testing.B, ca *identitytest.CA) handshakePair {
	srvT := ca.Template("ns/default/sa/server")
	srvT.DNSNames = []string{"server.default"}
	srv := ca.Issue(b, srvT)
	cli := ca.Issue(b, ca.Template("ns/default/sa/client"))
	pool := x509.NewCertPool()
	pool.AddCert(ca.Root())
	srvCert, _ := identity.TLSCertificate(srv)
	cliCert, _ := identity.TLSCertificate(cli)
	return handshakePair{
		server: &tls.Config{
			MinVersion:             tls.VersionTLS13,
			Certificates:           []tls.Certificate{*srvCert},
			ClientAuth:             tls.RequireAndVerifyClientCert,
			ClientCAs:              pool,
			NextProtos:             []string{"h2"},
			SessionTicketsDisabled: true,
		},
		client: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{*cliCert},
			RootCAs:      pool,
			ServerName:   "server.default",
			NextProtos:   []string{"h2"},
		},
	}
}

func meshPair(b *testing.B, ca *identitytest.CA) handshakePair {
	return handshakePair{
		server: identity.ServerTLSConfig(ca.Source(b, "ns/default/sa/server")),
		client: identity.ClientTLSConfig(ca.Source(b, "ns/default/sa/client"), ca.ID("ns/default/sa/server")),
	}
}

// oneHandshake runs one full mutual TLS 1.3 handshake over net.Pipe.
func oneHandshake(b *testing.B, p handshakePair) {
	c1, c2 := net.Pipe()
	done := make(chan error, 1)
	go func() {
		s := tls.Server(c2, p.server)
		err := s.Handshake()
		if err == nil {
			// The server's verification of the client completes only once
			// it has read the client's Finished; make the client wait.
			_, err = s.Write([]byte{1})
		}
		done <- err
		c2.Close() // not s.Close: a close_notify would block on the pipe
	}()
	c := tls.Client(c1, p.client)
	err := c.Handshake()
	if err == nil {
		_, err = c.Read(make([]byte, 1))
	}
	if err != nil {
		b.Fatal(err)
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	c1.Close()
}

// BenchmarkHandshake compares a full mutual TLS 1.3 handshake with the
// mesh configs (SPIFFE verification, certificate fetched per handshake)
// against plain crypto/tls mutual TLS 1.3 with the same key type.
func BenchmarkHandshake(b *testing.B) {
	ca := identitytest.NewCA(b, "cluster.local")
	b.Run("crypto-tls", func(b *testing.B) {
		p := plainPair(b, ca)
		b.ReportAllocs()
		for b.Loop() {
			oneHandshake(b, p)
		}
	})
	b.Run("identity", func(b *testing.B) {
		p := meshPair(b, ca)
		b.ReportAllocs()
		for b.Loop() {
			oneHandshake(b, p)
		}
	})
	// Both arms interleaved in one loop, so that machine noise hits both
	// alike; reports the ratio identity / crypto-tls.
	b.Run("ratio", func(b *testing.B) {
		plain, mesh := plainPair(b, ca), meshPair(b, ca)
		var tPlain, tMesh time.Duration
		for b.Loop() {
			t0 := time.Now()
			oneHandshake(b, plain)
			t1 := time.Now()
			oneHandshake(b, mesh)
			tMesh += time.Since(t1)
			tPlain += t1.Sub(t0)
		}
		b.ReportMetric(float64(tPlain.Nanoseconds())/float64(b.N), "crypto-tls-ns/op")
		b.ReportMetric(float64(tMesh.Nanoseconds())/float64(b.N), "identity-ns/op")
		b.ReportMetric(float64(tMesh)/float64(tPlain), "ratio")
	})
}

// BenchmarkManagerSVID measures the per-handshake certificate lookup of a
// Manager's Source with 1,000 identities cached.
func BenchmarkManagerSVID(b *testing.B) {
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: td})
	if err != nil {
		b.Fatal(err)
	}
	m, err := identity.NewManager(identity.ManagerConfig{Fetcher: ca})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	srcs := make([]*identity.ManagedSource, 1000)
	for i := range srcs {
		id, _ := spiffeid.FromSegments(td, "ns", "bench", "sa", "sa"+string(rune('a'+i%26))+string(rune('a'+i/26%26))+string(rune('a'+i/676)))
		srcs[i] = m.Source(id)
	}
	if err := m.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := srcs[i%len(srcs)].SVID(ctx); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}
