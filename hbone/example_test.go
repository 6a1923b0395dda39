package hbone_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/hbone/hbonetest"
)

// exampleT lets examples use the test helpers, which need a testing.TB.
type exampleT struct{ testing.TB }

func (exampleT) Helper()                  {}
func (exampleT) Cleanup(func())           {}
func (exampleT) Fatalf(string, ...any)    { panic("example setup failed") }
func (exampleT) Errorf(string, ...any)    {}
func (exampleT) Fatal(...any)             { panic("example setup failed") }
func (exampleT) Name() string             { return "example" }
func (exampleT) TempDir() string          { return "" }
func (exampleT) Logf(string, ...any)      {}
func (exampleT) Skip(...any)              {}
func (exampleT) Setenv(string, string)    {}
func (exampleT) Failed() bool             { return false }
func (exampleT) Context() context.Context { return context.Background() }

func ExampleDialer_DialContext() {
	// A server that says hello on every tunnel.
	p := hbonetest.NewPair(exampleT{}, hbone.HandlerFunc(func(r *hbone.Request) {
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintf(c, "hello %s from %s", r.Peer, r.Authority)
		c.CloseWrite()
	}))
	defer p.Server.Close()
	defer p.Dialer.Close()

	conn, err := p.Dialer.DialContext(context.Background(), "tcp", "10.0.0.7:8080")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	b, _ := io.ReadAll(conn)
	fmt.Println(string(b))
	// Output: hello spiffe://cluster.local/ns/default/sa/client from 10.0.0.7:8080
}

func ExampleDialer_Dial() {
	p := hbonetest.NewPair(exampleT{}, hbone.HandlerFunc(func(r *hbone.Request) {
		// Policy said no.
		r.Reject(http.StatusUnauthorized)
	}))
	defer p.Server.Close()
	defer p.Dialer.Close()

	_, err := p.Dialer.Dial(context.Background(), hbone.Route{
		Address:   p.Addr, // the next hop, normally podIP:15008
		Authority: "10.0.0.7:8080",
		Header:    http.Header{"Traceparent": {hbone.NewTraceparent().String()}},
	})
	var ce *hbone.ConnectError
	if errors.As(err, &ce) {
		fmt.Println(ce.StatusCode)
	}
	// Output: 401
}

func ExampleServer() {
	// An upstream that echoes one line.
	up, _ := net.Listen("tcp", "127.0.0.1:0")
	defer up.Close()
	go func() {
		c, err := up.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	// Forwarder dials the :authority first and answers 200 only then.
	p := hbonetest.NewPair(exampleT{}, &hbone.Forwarder{})
	defer p.Server.Close()
	defer p.Dialer.Close()

	conn, err := p.Dialer.DialContext(context.Background(), "tcp", up.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	io.WriteString(conn, "ping")
	conn.(*hbone.Conn).CloseWrite() // half-close: the upstream reads EOF
	b, _ := io.ReadAll(conn)
	fmt.Println(string(b))
	// Output: ping
}

func ExampleAppendProxyHeader() {
	b, _ := hbone.AppendProxyHeader(nil, hbone.ProxyHeader{
		Source:      netip.MustParseAddrPort("10.0.0.1:40000"),
		Destination: netip.MustParseAddrPort("10.0.0.2:8080"),
		SPIFFEID:    "spiffe://cluster.local/ns/default/sa/client",
	})
	h, n, _ := hbone.ParseProxyHeader(b)
	fmt.Println(n, h.Source, h.Destination, h.SPIFFEID)
	// Output: 74 10.0.0.1:40000 10.0.0.2:8080 spiffe://cluster.local/ns/default/sa/client
}

func ExampleParseBaggage() {
	b, _ := hbone.ParseBaggage("k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=sleep,service.name=sleep,service.version=v1")
	fmt.Println(b.Namespace, b.WorkloadKind, b.WorkloadName, b.ServiceVer)
	// Output: default deployment sleep v1
}

func ExampleSplitAuthority() {
	host, port, err := hbone.SplitAuthority("[fd00::7]:8080")
	fmt.Println(host, port, err)
	_, _, err = hbone.SplitAuthority("fd00::7:8080")
	fmt.Println(err != nil)
	// Output:
	// fd00::7 8080 <nil>
	// true
}
