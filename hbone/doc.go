// Package hbone implements HBONE, the tunnel protocol of Istio's ambient
// mesh: mutual TLS 1.3 with SPIFFE certificates, ALPN h2, and one HTTP/2
// CONNECT stream per tunnelled TCP connection, on port 15008. It is
// wire-compatible with Istio's ztunnel and with istio.io/istio/pkg/hbone.
//
// The HTTP/2 layer is our own, built on golang.org/x/net/http2's Framer and
// hpack: each stream is a net.Conn with half-close (CloseWrite sends
// END_STREAM, the peer's END_STREAM reads as io.EOF), DATA is read straight
// from TLS into pooled buffers and written in batches aligned to TLS records,
// windows are 4 MiB per stream and 16 MiB per connection with credit returned
// as data is read, and both ends PING every 10 s (20 s timeout).
//
// A Dialer pools connections per {source identity, expected peer identities,
// next hop, source IP}, opens at most one connection per key at a time, caps
// streams per connection at min(100, the peer's limit) and spreads busy keys
// over several connections:
//
//	d := &hbone.Dialer{Source: src, Expected: []spiffeid.ID{serverID}}
//	defer d.Close()
//	conn, err := d.Dial(ctx, hbone.Route{Address: "10.0.0.7:15008", Authority: "10.0.0.7:8080"})
//
// A Server terminates tunnels and hands each CONNECT to a Handler, which
// connects upstream and then calls Accept (200) or Reject (400, 401, 503):
//
//	srv := &hbone.Server{Source: src, Handler: &hbone.Forwarder{}}
//	go srv.Serve(ln)
//	defer srv.Shutdown(ctx)
//
// Shutdown sends GOAWAY and lets open streams finish until ctx's deadline
// or, if ctx has none, for Server.DrainTimeout (5 s by default, as
// ztunnel's drain deadline), then closes what is left.
//
// Helpers build and parse the optional request headers (baggage, forwarded,
// traceparent) and PROXY protocol v2 headers with the SPIFFE-ID TLV used for
// application tunnels. Package hbonetest runs a client/server pair in
// process for tests.
//
// Dialer.DialDouble opens double-HBONE tunnels for multi-network traffic:
// an outer pooled tunnel to the east-west gateway and, inside it, an
// unpooled TLS 1.3 + HTTP/2 connection to the final service with
// x-forwarded-network.
//
// Reading frames is shared between goroutines (leader/follower): whoever
// waits for the peer reads, so a request/response exchange costs no extra
// goroutine hand-off; a background reader covers the idle times.
package hbone
