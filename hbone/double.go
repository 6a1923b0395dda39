package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DoubleRoute describes a double-HBONE tunnel to a service on another
// network (spec §E): an outer tunnel to the east-west gateway, then, inside
// it, a fresh TLS 1.3 + HTTP/2 connection to the final destination with one
// CONNECT carrying the same authority plus x-forwarded-network.
type DoubleRoute struct {
	// Outer is the tunnel to the gateway: Address is the gateway's HBONE
	// address, Authority the service fqdn:port, Expected the gateway's
	// identities. Its Source (or Dialer.Source) is used for both layers.
	Outer Route
	// InnerExpected are the final service's identities, checked in the
	// inner handshake. Required.
	InnerExpected []spiffeid.ID
	// Network is the source network, sent as x-forwarded-network on the
	// inner CONNECT. Optional.
	Network string
}

// DialDouble opens a double-HBONE tunnel. The outer stream comes from the
// pool; the inner connection is not pooled (the gateway chooses the
// backend) and closes with the returned Conn.
func (d *Dialer) DialDouble(ctx context.Context, r DoubleRoute) (*Conn, error) {
	if len(r.InnerExpected) == 0 {
		return nil, errors.New("hbone: DoubleRoute.InnerExpected is empty")
	}
	src := r.Outer.Source
	if src == nil {
		src = d.Source
	}
	if src == nil {
		return nil, errors.New("hbone: no client identity: Route.Source and Dialer.Source are nil")
	}
	outer, err := d.Dial(ctx, r.Outer)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(outer, identity.ClientTLSConfig(src, r.InnerExpected...))
	if err := tc.HandshakeContext(ctx); err != nil {
		outer.Close()
		return nil, fmt.Errorf("hbone: inner TLS handshake for %s: %w", r.Outer.Authority, err)
	}
	if tc.ConnectionState().NegotiatedProtocol != "h2" {
		tc.Close()
		return nil, fmt.Errorf("hbone: inner connection for %s: %w", r.Outer.Authority, ErrNoALPN)
	}
	c := newConn(tc, connConfig{
		client:       true,
		pingInterval: d.KeepaliveInterval,
		pingTimeout:  d.KeepaliveTimeout,
		logger:       d.Logger,
		onIdle:       func(c *conn) { c.closeGracefully(nil) },
	})
	c.start()
	hdr := http.Header{}
	for k, vs := range d.Header {
		hdr[k] = append(hdr[k], vs...)
	}
	for k, vs := range r.Outer.Header {
		hdr[k] = append(hdr[k], vs...)
	}
	if r.Network != "" {
		hdr.Set(HeaderXForwardedNetwork, r.Network)
	}
	c.reserve(1)
	st, err := c.openStream(connectFields(r.Outer.Authority, hdr))
	if err != nil {
		c.close()
		return nil, fmt.Errorf("hbone: inner CONNECT %s: %w", r.Outer.Authority, err)
	}
	st.authority = r.Outer.Authority
	status, err := st.awaitResponse(ctx)
	if err == nil && status == http.StatusOK {
		return st, nil
	}
	c.close()
	if err == nil {
		err = &ConnectError{StatusCode: status, Authority: r.Outer.Authority}
	}
	return nil, fmt.Errorf("hbone: inner CONNECT %s: %w", r.Outer.Authority, err)
}
