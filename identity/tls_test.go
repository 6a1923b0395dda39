package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type handshakeResult struct {
	server, client       tls.ConnectionState
	serverErr, clientErr error
}

// handshake runs a real TLS handshake over loopback TCP. The server writes
// one byte after its handshake, and the client reads it, so that a client
// rejected by the server (which TLS 1.3 reports only after the client's
// handshake returns) sees the failure.
func handshake(t *testing.T, serverConf, clientConf *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var res handshakeResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			res.serverErr = err
			return
		}
		defer c.Close()
		sc := tls.Server(c, serverConf)
		if res.serverErr = sc.HandshakeContext(ctx); res.serverErr != nil {
			return
		}
		res.server = sc.ConnectionState()
		_, res.serverErr = sc.Write([]byte{1})
		// Wait for the client to close, so the byte is not lost to a reset.
		_, _ = sc.Read(make([]byte, 1))
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	cc := tls.Client(c, clientConf)
	res.clientErr = cc.HandshakeContext(ctx)
	if res.clientErr == nil {
		res.client = cc.ConnectionState()
		_, res.clientErr = cc.Read(make([]byte, 1))
	}
	cc.Close()
	<-done
	return res
}

func TestMTLSAccepts(t *testing.T) {
	leakcheck.Check(t)
	ca := identitytest.NewCA(t, "cluster.local")
	inter := ca.IssueIntermediate(t)
	tests := []struct {
		name           string
		server, client *identitytest.CA
		expected       []string
	}{
		{"root", ca, ca, []string{"ns/default/sa/server"}},
		{"one of several expected", ca, ca, []string{"ns/other/sa/x", "ns/default/sa/server"}},
		{"server via intermediate", inter, ca, []string{"ns/default/sa/server"}},
		{"both via intermediate", inter, inter, []string{"ns/default/sa/server"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var exp []spiffeid.ID
			for _, p := range tc.expected {
				exp = append(exp, ca.ID(p))
			}
			res := handshake(t,
				identity.ServerTLSConfig(tc.server.Source(t, "ns/default/sa/server")),
				identity.ClientTLSConfig(tc.client.Source(t, "ns/default/sa/client"), exp...))
			require.NoError(t, res.serverErr)
			require.NoError(t, res.clientErr)

			for _, cs := range []tls.ConnectionState{res.server, res.client} {
				assert.Equal(t, uint16(tls.VersionTLS13), cs.Version)
				assert.Equal(t, "h2", cs.NegotiatedProtocol)
				assert.False(t, cs.DidResume)
			}
			assert.Empty(t, res.server.ServerName, "the client must not send SNI")
			id, err := identity.PeerID(res.server)
			require.NoError(t, err)
			assert.Equal(t, ca.ID("ns/default/sa/client"), id)
			id, err = identity.PeerID(res.client)
			require.NoError(t, err)
			assert.Equal(t, ca.ID("ns/default/sa/server"), id)
		})
	}
}

func TestMTLSRejects(t *testing.T) {
	leakcheck.Check(t)
	ca := identitytest.NewCA(t, "cluster.local")
	other := identitytest.NewCA(t, "cluster.local") // same trust domain, unknown root
	now := time.Now()
	server := ca.ID("ns/default/sa/server")

	tmpl := func(path string, edit func(*x509.Certificate)) *x509.Certificate {
		c := ca.Template(path)
		edit(c)
		return c
	}
	foreign, _ := url.Parse("spiffe://example.org/ns/default/sa/client")
	notSPIFFE, _ := url.Parse("https://example.org/client")

	tests := []struct {
		name string
		// serverSrc/clientSrc nil means a valid certificate from ca.
		serverSrc, clientSrc identity.Source
		clientConf           func(*tls.Config)
		expected             []spiffeid.ID
		rejectedBy           string // "client" (server cert refused) or "server"
		want                 string // in the rejecting side's error
	}{
		{
			name:       "server cert from unknown root",
			serverSrc:  other.Source(t, "ns/default/sa/server"),
			rejectedBy: "client", want: "unknown authority",
		},
		{
			name:       "client cert from unknown root",
			clientSrc:  identitytest.SourceWithBundle(other.SVID(t, "ns/default/sa/client"), ca.Bundle()),
			rejectedBy: "server", want: "unknown authority",
		},
		{
			name:       "wrong expected identity",
			expected:   []spiffeid.ID{ca.ID("ns/default/sa/someone-else")},
			rejectedBy: "client", want: "none of the expected",
		},
		{
			name:       "no expected identity",
			expected:   []spiffeid.ID{},
			rejectedBy: "client", want: "none of the expected",
		},
		{
			name:       "client in wrong trust domain",
			clientSrc:  ca.SourceFor(ca.Issue(t, tmpl("ns/default/sa/client", func(c *x509.Certificate) { c.URIs = []*url.URL{foreign} }))),
			rejectedBy: "server", want: `not in trust domain "cluster.local"`,
		},
		{
			name:       "client first URI SAN not SPIFFE",
			clientSrc:  ca.SourceFor(ca.Issue(t, tmpl("ns/default/sa/client", func(c *x509.Certificate) { c.URIs = append([]*url.URL{notSPIFFE}, c.URIs...) }))),
			rejectedBy: "server", want: "is not a SPIFFE ID",
		},
		{
			name:       "server cert expired",
			serverSrc:  ca.SourceFor(ca.Issue(t, tmpl("ns/default/sa/server", func(c *x509.Certificate) { c.NotBefore, c.NotAfter = now.Add(-2*time.Hour), now.Add(-time.Hour) }))),
			rejectedBy: "client", want: "not at",
		},
		{
			name:       "client cert expired",
			clientSrc:  ca.SourceFor(ca.Issue(t, tmpl("ns/default/sa/client", func(c *x509.Certificate) { c.NotBefore, c.NotAfter = now.Add(-2*time.Hour), now.Add(-time.Minute) }))),
			rejectedBy: "server", want: "not at",
		},
		{
			name:       "server cert not yet valid",
			serverSrc:  ca.SourceFor(ca.Issue(t, tmpl("ns/default/sa/server", func(c *x509.Certificate) { c.NotBefore, c.NotAfter = now.Add(time.Hour), now.Add(2*time.Hour) }))),
			rejectedBy: "client", want: "not at",
		},
		{
			name:       "client cert not yet valid",
			clientSrc:  ca.SourceFor(ca.Issue(t, tmpl("ns/default/sa/client", func(c *x509.Certificate) { c.NotBefore = now.Add(time.Hour) }))),
			rejectedBy: "server", want: "not at",
		},
		{
			name:       "server cert without URI SAN",
			serverSrc:  ca.SourceFor(ca.Issue(t, tmpl("ns/default/sa/server", func(c *x509.Certificate) { c.URIs = nil; c.DNSNames = []string{"server.default"} }))),
			rejectedBy: "client", want: "no URI SAN",
		},
		{
			name:       "client cert without URI SAN",
			clientSrc:  ca.SourceFor(ca.Issue(t, tmpl("ns/default/sa/client", func(c *x509.Certificate) { c.URIs = nil; c.DNSNames = []string{"client.default"} }))),
			rejectedBy: "server", want: "no URI SAN",
		},
		{
			name:       "server cert with clientAuth only",
			serverSrc:  ca.SourceFor(ca.Issue(t, tmpl("ns/default/sa/server", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} }))),
			rejectedBy: "client", want: "key usage",
		},
		{
			name:       "client cert with serverAuth only",
			clientSrc:  ca.SourceFor(ca.Issue(t, tmpl("ns/default/sa/client", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }))),
			rejectedBy: "server", want: "key usage",
		},
		{
			name: "client cert is a CA",
			clientSrc: ca.SourceFor(ca.Issue(t, tmpl("ns/default/sa/client", func(c *x509.Certificate) {
				c.IsCA = true
				c.KeyUsage |= x509.KeyUsageCertSign
			}))),
			rejectedBy: "server", want: "is a CA certificate",
		},
		{
			name:       "client offers no ALPN",
			clientConf: func(c *tls.Config) { c.NextProtos, c.VerifyConnection = nil, nil },
			rejectedBy: "server", want: `did not negotiate ALPN "h2"`,
		},
		{
			name:       "client offers other ALPN",
			clientConf: func(c *tls.Config) { c.NextProtos, c.VerifyConnection = []string{"http/1.1"}, nil },
			rejectedBy: "server", want: `did not negotiate ALPN "h2"`,
		},
		{
			name:       "client offers unknown ALPN",
			clientConf: func(c *tls.Config) { c.NextProtos, c.VerifyConnection = []string{"h3"}, nil },
			rejectedBy: "server", want: "unsupported application protocols",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, cli := tc.serverSrc, tc.clientSrc
			if srv == nil {
				srv = ca.Source(t, "ns/default/sa/server")
			}
			if cli == nil {
				cli = ca.Source(t, "ns/default/sa/client")
			}
			exp := tc.expected
			if exp == nil {
				exp = []spiffeid.ID{server}
			}
			cc := identity.ClientTLSConfig(cli, exp...)
			if tc.clientConf != nil {
				tc.clientConf(cc)
			}
			res := handshake(t, identity.ServerTLSConfig(srv), cc)
			require.Error(t, res.serverErr, "server side must fail")
			require.Error(t, res.clientErr, "client side must fail")
			rejecting := res.clientErr
			if tc.rejectedBy == "server" {
				rejecting = res.serverErr
			}
			assert.ErrorContains(t, rejecting, tc.want)
			if tc.want != "unsupported application protocols" {
				assert.True(t, errors.Is(rejecting, identity.ErrPeerRejected), "error %v should wrap ErrPeerRejected", rejecting)
			}
		})
	}
}

func TestMTLSRotationTakesEffect(t *testing.T) {
	leakcheck.Check(t)
	ca := identitytest.NewCA(t, "cluster.local")
	src := &swapSource{}
	src.set(ca.Source(t, "ns/default/sa/server"))
	serverConf := identity.ServerTLSConfig(src)
	clientConf := identity.ClientTLSConfig(ca.Source(t, "ns/default/sa/client"), ca.ID("ns/default/sa/server"))

	first := handshake(t, serverConf, clientConf)
	require.NoError(t, first.clientErr)
	src.set(ca.Source(t, "ns/default/sa/server"))
	second := handshake(t, serverConf, clientConf)
	require.NoError(t, second.clientErr)
	assert.NotEqual(t, first.client.PeerCertificates[0].SerialNumber, second.client.PeerCertificates[0].SerialNumber,
		"the second handshake must present the new certificate")
}

func TestPeerIDErrors(t *testing.T) {
	_, err := identity.PeerID(tls.ConnectionState{})
	assert.ErrorContains(t, err, "not complete")
	_, err = identity.PeerID(tls.ConnectionState{HandshakeComplete: true})
	assert.ErrorContains(t, err, "no certificate")
	_, err = identity.PeerID(tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{{}}})
	assert.ErrorContains(t, err, "no URI SAN")
}
