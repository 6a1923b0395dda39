package hbone_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// FuzzClientFrames plays a server to our Dialer without TLS: it waits for
// the client's first CONNECT (stream 1), then sends SETTINGS followed by
// arbitrary bytes (responses, DATA, WINDOW_UPDATE, RST_STREAM, GOAWAY,
// SETTINGS, PING, ...) and closes. The client opens the tunnel, writes,
// half-closes, reads what it gets and dials a second tunnel; nothing may
// panic or hang.
func FuzzClientFrames(f *testing.F) {
	frames := func(fn func(fr *http2.Framer, hdr func(id uint32, end bool, kv ...string))) []byte {
		var buf, hb bytes.Buffer
		fr := http2.NewFramer(&buf, nil)
		enc := hpack.NewEncoder(&hb)
		fn(fr, func(id uint32, end bool, kv ...string) {
			hb.Reset()
			for i := 0; i < len(kv); i += 2 {
				enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: end})
		})
		return buf.Bytes()
	}
	f.Add(frames(func(fr *http2.Framer, hdr func(uint32, bool, ...string)) {
		fr.WriteSettingsAck()
		hdr(1, false, ":status", "200", "baggage", "k8s.namespace.name=x")
		fr.WriteData(1, false, []byte("hello"))
		fr.WriteDataPadded(1, false, []byte("x"), []byte{0, 0})
		fr.WriteWindowUpdate(0, 1<<20)
		fr.WriteWindowUpdate(1, 1<<20)
		fr.WritePing(false, [8]byte{7})
		fr.WriteData(1, true, nil)
		hdr(3, false, ":status", "200")
		fr.WriteRSTStream(3, http2.ErrCodeCancel)
	}))
	f.Add(frames(func(fr *http2.Framer, hdr func(uint32, bool, ...string)) {
		hdr(1, true, ":status", "503")
		fr.WriteGoAway(1, http2.ErrCodeNo, []byte("drain"))
	}))
	f.Add(frames(func(fr *http2.Framer, hdr func(uint32, bool, ...string)) {
		hdr(1, false, ":status", "200")
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16384})
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
		fr.WriteWindowUpdate(1, 1<<31-1)
	}))
	f.Add(frames(func(fr *http2.Framer, hdr func(uint32, bool, ...string)) {
		hdr(1, false, ":status", "200")
		fr.WriteRSTStream(1, http2.ErrCodeRefusedStream)
		fr.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, nil)
	}))
	f.Add(frames(func(fr *http2.Framer, hdr func(uint32, bool, ...string)) {
		fr.WriteData(2, false, []byte("idle"))
		fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
	}))
	f.Add([]byte{0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}) // PING
	f.Add([]byte{0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0})             // WINDOW_UPDATE of 0
	f.Add([]byte{0, 0, 2, 1, 4, 0, 0, 0, 1, 0x88, 0xff})             // HEADERS, bad HPACK
	ca := hbonetestCA(f, "cluster.local")
	src := ca.Source(f, "ns/default/sa/client")
	expected := []spiffeid.ID{ca.ID("ns/default/sa/server")}
	var settings bytes.Buffer
	http2.NewFramer(&settings, nil).WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100})
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var peers sync.WaitGroup
		d := &hbone.Dialer{
			Source: src, Expected: expected, MaxConnsPerKey: 1, KeepaliveInterval: -1,
			DialTCP: func(ctx context.Context, network, addr string) (net.Conn, error) {
				a, b := net.Pipe()
				ca := &halfPipe{Conn: a}
				peers.Go(func() {
					defer func() {
						ca.peerClosed.Store(true)
						b.Close()
					}()
					fr := http2.NewFramer(nil, b)
					pre := make([]byte, len(http2.ClientPreface))
					if _, err := io.ReadFull(b, pre); err != nil {
						return
					}
					for {
						fh, err := fr.ReadFrame()
						if err != nil {
							return
						}
						if fh.Header().Type == http2.FrameHeaders {
							break
						}
					}
					go io.Copy(io.Discard, b)
					b.Write(settings.Bytes())
					b.Write(in)
				})
				return ca, nil
			},
		}
		hbone.SetPlainForTest(d)
		defer d.Close()
		route := hbone.Route{Address: "10.0.0.1:15008", Authority: "10.0.0.1:80"}
		c, err := d.Dial(ctx, route)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("ping"))
			c.CloseWrite()
			io.Copy(io.Discard, c)
			c.Close()
			if c2, err := d.Dial(ctx, route); err == nil {
				c2.Close()
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("client hung: %v", err)
		}
		d.Close()
		peers.Wait()
	})
}

// halfPipe is the client end of a net.Pipe whose peer stops after its
// input: once the peer closed, writes are discarded instead of failing,
// so the client reads everything the peer sent (then EOF) as it would
// from a socket whose peer half-closed.
type halfPipe struct {
	net.Conn
	peerClosed atomic.Bool
	closed     atomic.Bool
}

func (h *halfPipe) Write(p []byte) (int, error) {
	n, err := h.Conn.Write(p)
	if err != nil && h.peerClosed.Load() && !h.closed.Load() {
		return len(p), nil
	}
	return n, err
}

func (h *halfPipe) Close() error {
	h.closed.Store(true)
	return h.Conn.Close()
}
