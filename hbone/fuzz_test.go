package hbone_test

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func FuzzSplitAuthority(f *testing.F) {
	for _, s := range []string{"10.0.0.1:80", "[fd00::1]:8080", "a.b.svc:443", "x", ":", "[::ffff:1.2.3.4]:1", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, p, err := hbone.SplitAuthority(s)
		if err != nil {
			return
		}
		if p == 0 || h == "" {
			t.Fatalf("%q: accepted host %q port %d", s, h, p)
		}
		// An accepted authority round-trips through JoinHostPort.
		if _, _, err := hbone.SplitAuthority(net.JoinHostPort(h, itoa(p))); err != nil {
			t.Fatalf("%q: rejoined authority rejected: %v", s, err)
		}
	})
}

func itoa(p uint16) string {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), p).String()[len("0.0.0.0:"):]
}

func FuzzParseHeaders(f *testing.F) {
	f.Add("k8s.cluster.name=c,k8s.namespace.name=ns,k8s.deployment.name=d,service.name=s,service.version=v")
	f.Add(`for="[::1]:80";host=a.b`)
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Add("a=%41%2c,b")
	f.Fuzz(func(t *testing.T, s string) {
		if b, err := hbone.ParseBaggage(s); err == nil {
			b2, err := hbone.ParseBaggage(b.String())
			if err != nil {
				t.Fatalf("baggage %q: reparse of %q: %v", s, b.String(), err)
			}
			if b2 != b && b.WorkloadName != "" || b2.Namespace != b.Namespace || b2.ServiceName != b.ServiceName {
				t.Fatalf("baggage %q: %+v != %+v", s, b, b2)
			}
		}
		if fw, err := hbone.ParseForwarded(s); err == nil && fw.For.IsValid() && fw.Host == "" {
			if _, err := hbone.ParseForwarded(fw.String()); err != nil {
				t.Fatalf("forwarded %q: reparse of %q: %v", s, fw.String(), err)
			}
		}
		if tp, err := hbone.ParseTraceparent(s); err == nil && tp.String() != s {
			t.Fatalf("traceparent %q formats as %q", s, tp.String())
		}
	})
}

func FuzzParseProxyHeader(f *testing.F) {
	b, _ := hbone.AppendProxyHeader(nil, hbone.ProxyHeader{Source: netip.MustParseAddrPort("1.2.3.4:5"), Destination: netip.MustParseAddrPort("5.6.7.8:80"), SPIFFEID: "spiffe://td/ns/a/sa/b"})
	f.Add(b)
	b, _ = hbone.AppendProxyHeader(nil, hbone.ProxyHeader{Source: netip.MustParseAddrPort("[::1]:5"), Destination: netip.MustParseAddrPort("[::2]:80")})
	f.Add(b)
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		h, n, err := hbone.ParseProxyHeader(in)
		if err != nil {
			return
		}
		if n < 16 || n > len(in) {
			t.Fatalf("length %d out of range for %d bytes", n, len(in))
		}
		if h.Local {
			return
		}
		h.TLVs = nil
		out, err := hbone.AppendProxyHeader(nil, h)
		if err != nil {
			return // e.g. an IPv4-mapped address pair of mixed form
		}
		h2, _, err := hbone.ParseProxyHeader(out)
		if err != nil || h2.SPIFFEID != h.SPIFFEID || h2.Source.Port() != h.Source.Port() {
			t.Fatalf("round trip: %+v -> %+v (%v)", h, h2, err)
		}
	})
}

// FuzzServerFrames feeds arbitrary bytes after the client preface to the
// server's HTTP/2 engine (without TLS) and requires that it neither panics
// nor hangs.
func FuzzServerFrames(f *testing.F) {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	fr.WriteData(1, false, []byte("hello"))
	fr.WriteDataPadded(1, true, []byte("x"), []byte{0, 0, 0})
	fr.WritePing(false, [8]byte{1})
	fr.WriteWindowUpdate(0, 100)
	fr.WriteRSTStream(1, http2.ErrCodeCancel)
	fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 1, 0, 0x8, 0, 0, 0, 1, 5}) // padded DATA, pad > payload
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0})      // DATA on stream 0
	f.Add([]byte{0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		srv := &hbone.Server{Handler: hbone.HandlerFunc(func(r *hbone.Request) {
			c, err := r.Accept(nil)
			if err != nil {
				return
			}
			io.Copy(io.Discard, c)
			c.Close()
		}), KeepaliveInterval: -1}
		a, b := net.Pipe()
		go func() {
			a.Write([]byte(http2.ClientPreface))
			a.Write(in)
			a.Close()
		}()
		go io.Copy(io.Discard, a)
		hbone.ServePlainForTest(srv, b, spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"))
		srv.Close()
	})
}
