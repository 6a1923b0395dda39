package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ALPN is the only application protocol the mTLS configs offer and accept:
// HBONE is HTTP/2.
const ALPN = "h2"

// ClientTLSConfig returns the client side of mesh mutual TLS, as ztunnel
// dials HBONE: TLS 1.3 only, ALPN "h2", no session resumption, no host name
// verification. It presents src's current certificate on every handshake
// (fetched with the handshake's context, so a rotated certificate takes
// effect at once) and accepts a server if and only if its chain verifies to
// src's bundle for serverAuth and some URI SAN of its leaf equals one of
// expected. With no expected IDs every server is rejected. A server that
// does not select ALPN "h2" is rejected.
//
// The config sets no ServerName, so tls.Client sends no SNI. (tls.Dial and
// tls.Dialer fill ServerName in from the address, but never send an IP
// literal as SNI.)
//
// crypto/tls gives the verification callback no context: the bundle is read
// there with context.Background, so Bundle of src should answer from
// memory, as every Source in this package does.
func ClientTLSConfig(src Source, expected ...spiffeid.ID) *tls.Config {
	expected = slices.Clone(expected)
	pc := new(poolCache)
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPN},
		InsecureSkipVerify:     true, // no host name checks: VerifyConnection verifies the chain and the SPIFFE ID
		SessionTicketsDisabled: true,
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return certificate(cri.Context(), src)
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("%w: server negotiated ALPN %q, want %q", ErrPeerRejected, cs.NegotiatedProtocol, ALPN)
			}
			b, err := src.Bundle(context.Background())
			if err != nil {
				return fmt.Errorf("identity: verify server: %w", err)
			}
			_, err = verifyServer(cs.PeerCertificates, b, pc.get(b), expected, time.Now())
			return err
		},
	}
}

// ServerTLSConfig returns the server side of mesh mutual TLS, as ztunnel
// accepts HBONE on :15008: TLS 1.3 only, ALPN "h2" (a client that does not
// negotiate it is rejected), no session tickets, SNI ignored. It presents
// src's current certificate on every handshake (fetched with the
// handshake's context) and requires a client certificate whose chain
// verifies to src's bundle for clientAuth, whose first URI SAN is a SPIFFE
// ID, and which has a SPIFFE ID in the server's own trust domain (that of
// src's bundle). PeerID reports the client's identity afterwards.
//
// As with ClientTLSConfig, the bundle is read in the verification callback
// with context.Background.
func ServerTLSConfig(src Source) *tls.Config {
	pc := new(poolCache)
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPN},
		SessionTicketsDisabled: true,
		ClientAuth:             tls.RequireAnyClientCert, // VerifyConnection verifies against the bundle
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certificate(hello.Context(), src)
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("%w: client did not negotiate ALPN %q (got %q)", ErrPeerRejected, ALPN, cs.NegotiatedProtocol)
			}
			b, err := src.Bundle(context.Background())
			if err != nil {
				return fmt.Errorf("identity: verify client: %w", err)
			}
			_, err = verifyClient(cs.PeerCertificates, b, pc.get(b), time.Now())
			return err
		},
	}
}

// VerifyServerCert applies the client-side check of ClientTLSConfig to a
// peer's chain (leaf first) at time now: the chain verifies to bundle for
// serverAuth and some URI SAN of the leaf equals one of expected. It
// returns the matching ID. Use it to build a config of your own.
func VerifyServerCert(chain []*x509.Certificate, bundle *x509bundle.Bundle, expected []spiffeid.ID, now time.Time) (spiffeid.ID, error) {
	return verifyServer(chain, bundle, nil, expected, now)
}

// VerifyClientCert applies the server-side check of ServerTLSConfig to a
// peer's chain (leaf first) at time now: the chain verifies to bundle for
// clientAuth, the first URI SAN is a SPIFFE ID, and some SPIFFE ID is in
// the bundle's trust domain. It returns the peer identity (the first URI
// SAN).
func VerifyClientCert(chain []*x509.Certificate, bundle *x509bundle.Bundle, now time.Time) (spiffeid.ID, error) {
	return verifyClient(chain, bundle, nil, now)
}

// PeerID returns the identity of the peer of a connection made with
// ClientTLSConfig or ServerTLSConfig: the first URI SAN of the peer's
// leaf, as a SPIFFE ID. It does not verify anything itself: the configs
// have verified the chain during the handshake.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if !cs.HandshakeComplete {
		return spiffeid.ID{}, errors.New("identity: peer ID: the TLS handshake is not complete")
	}
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("identity: peer ID: the peer sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	if len(leaf.URIs) == 0 {
		return spiffeid.ID{}, errors.New("identity: peer ID: the peer certificate has no URI SAN")
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: peer ID: first URI SAN %q: %w", leaf.URIs[0], err)
	}
	return id, nil
}

func verifyServer(chain []*x509.Certificate, b *x509bundle.Bundle, roots *x509.CertPool, expected []spiffeid.ID, now time.Time) (spiffeid.ID, error) {
	if err := verifyChain(chain, b, roots, x509.ExtKeyUsageServerAuth, now); err != nil {
		return spiffeid.ID{}, err
	}
	ids, err := uriIDs(chain[0])
	if err != nil {
		return spiffeid.ID{}, err
	}
	for _, id := range ids {
		if slices.Contains(expected, id) {
			return id, nil
		}
	}
	return spiffeid.ID{}, fmt.Errorf("%w: server identity %s is none of the expected %s", ErrPeerRejected, listIDs(ids), listIDs(expected))
}

func verifyClient(chain []*x509.Certificate, b *x509bundle.Bundle, roots *x509.CertPool, now time.Time) (spiffeid.ID, error) {
	if err := verifyChain(chain, b, roots, x509.ExtKeyUsageClientAuth, now); err != nil {
		return spiffeid.ID{}, err
	}
	leaf := chain[0]
	if len(leaf.URIs) == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: client certificate has no URI SAN", ErrPeerRejected)
	}
	first, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: first URI SAN %q of the client certificate is not a SPIFFE ID: %v", ErrPeerRejected, leaf.URIs[0], err)
	}
	ids, _ := uriIDs(leaf)
	for _, id := range ids {
		if id.MemberOf(b.TrustDomain()) {
			return first, nil
		}
	}
	return spiffeid.ID{}, fmt.Errorf("%w: client identity %s is not in trust domain %q", ErrPeerRejected, listIDs(ids), b.TrustDomain())
}

func verifyChain(chain []*x509.Certificate, b *x509bundle.Bundle, roots *x509.CertPool, eku x509.ExtKeyUsage, now time.Time) error {
	if len(chain) == 0 {
		return fmt.Errorf("%w: no certificate presented", ErrPeerRejected)
	}
	if b == nil || b.Empty() {
		return fmt.Errorf("%w: the trust bundle is empty", ErrPeerRejected)
	}
	leaf := chain[0]
	if leaf.IsCA {
		return fmt.Errorf("%w: the leaf certificate is a CA certificate", ErrPeerRejected)
	}
	if roots == nil {
		roots = newPool(b.X509Authorities())
	}
	opts := x509.VerifyOptions{
		Roots:       roots,
		KeyUsages:   []x509.ExtKeyUsage{eku},
		CurrentTime: now,
	}
	if len(chain) > 1 {
		opts.Intermediates = newPool(chain[1:])
	}
	if _, err := leaf.Verify(opts); err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return fmt.Errorf("%w: certificate valid %s to %s, not at %s", ErrPeerRejected,
				leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
		return fmt.Errorf("%w: %v", ErrPeerRejected, err)
	}
	return nil
}

// uriIDs parses every URI SAN of a leaf as a SPIFFE ID, skipping those that
// are not; it fails if none is.
func uriIDs(leaf *x509.Certificate) ([]spiffeid.ID, error) {
	if len(leaf.URIs) == 0 {
		return nil, fmt.Errorf("%w: certificate has no URI SAN", ErrPeerRejected)
	}
	var ids []spiffeid.ID
	for _, u := range leaf.URIs {
		if id, err := spiffeid.FromURI(u); err == nil {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%w: no URI SAN is a SPIFFE ID (first: %q)", ErrPeerRejected, leaf.URIs[0])
	}
	return ids, nil
}

func listIDs(ids []spiffeid.ID) string {
	if len(ids) == 1 {
		return ids[0].String()
	}
	return fmt.Sprint(ids)
}

func newPool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// poolCache keeps the root pool of the last bundle seen, so that a
// handshake does not rebuild it while the bundle stays the same.
type poolCache struct {
	last atomic.Pointer[poolEntry]
}

type poolEntry struct {
	auth []*x509.Certificate
	pool *x509.CertPool
}

func (c *poolCache) get(b *x509bundle.Bundle) *x509.CertPool {
	if b == nil {
		return nil
	}
	auth := b.X509Authorities()
	// A Bundle is mutable, so compare its authorities, not the pointer.
	if e := c.last.Load(); e != nil && slices.Equal(e.auth, auth) {
		return e.pool
	}
	e := &poolEntry{auth: auth, pool: newPool(auth)}
	c.last.Store(e)
	return e.pool
}

// certificate fetches the current SVID of src for a handshake.
func certificate(ctx context.Context, src Source) (*tls.Certificate, error) {
	s, err := src.SVID(ctx)
	if err != nil {
		return nil, fmt.Errorf("identity: certificate for handshake: %w", err)
	}
	return TLSCertificate(s)
}

// TLSCertificate converts an SVID to a tls.Certificate (chain, key and
// parsed leaf).
func TLSCertificate(s *x509svid.SVID) (*tls.Certificate, error) {
	if s == nil || len(s.Certificates) == 0 || s.PrivateKey == nil {
		return nil, errors.New("identity: SVID without certificate or key")
	}
	c := &tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	c.Certificate = make([][]byte, len(s.Certificates))
	for i, x := range s.Certificates {
		c.Certificate[i] = x.Raw
	}
	return c, nil
}
