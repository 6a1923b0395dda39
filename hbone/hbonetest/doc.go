// Package hbonetest runs an HBONE server and a matching client in process,
// over real TLS with real SPIFFE certificates on loopback, for tests of
// packages built on hbone.
//
//	p := hbonetest.NewPair(t, &hbone.Forwarder{})
//	conn, err := p.Dialer.DialContext(ctx, "tcp", upstreamAddr)
package hbonetest
