package interop_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	istiohbone "istio.io/istio/pkg/hbone"
	istiolog "istio.io/istio/pkg/log"
)

// hboneEchoUpstream is a TCP echo server that half-closes its write side
// when the client's direction ends, so tunnel half-close is observable.
func hboneEchoUpstream(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	return ln.Addr().String()
}

// hboneSinkUpstream accepts connections and discards what they send.
func hboneSinkUpstream(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(io.Discard, c)
			})
		}
	})
	return ln.Addr().String()
}

// hboneIstioServer serves istio.io/istio/pkg/hbone's server the way
// Istio's own echo server does (spec §2.1): Serve over tls.NewListener with
// ALPN h2, here with our SPIFFE server config. It returns the address.
func hboneIstioServer(t testing.TB, ca *identitytest.CA, path string) string {
	t.Helper()
	// Istio's hbone package logs every connection at info; keep test
	// output readable.
	if s := istiolog.FindScope("hbone"); s != nil {
		s.SetOutputLevel(istiolog.ErrorLevel)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := identity.ServerTLSConfig(ca.Source(t, path))
	srv := istiohbone.NewServer()
	srv.ErrorLog = nil
	done := make(chan error, 1)
	go func() { done <- srv.Serve(tls.NewListener(ln, cfg)) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("istio hbone server: %v", err)
		}
	})
	return ln.Addr().String()
}
