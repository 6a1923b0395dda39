package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/route"
)

func TestNormalizePath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"/", "/", true},
		{"/api/v1/items", "/api/v1/items", true},
		{"/a/./b", "/a/b", true},
		{"/a/b/../c", "/a/c", true},
		{"/a/..", "/", true},
		{"/a/b/..", "/a/", true},
		{"/a/.", "/a/", true},
		{"/../../etc", "/etc", true},
		{"/a/%2e%2E/b", "/b", true},        // escaped dots are dots
		{"/admin%2Fx", "/admin%2Fx", true}, // %2F stays encoded
		{"/a%2fb", "/a%2Fb", true},         // hex digits upper-cased
		{"/%41%62c", "/Abc", true},         // unreserved decoded
		{"/%7e%5F", "/~_", true},
		{"/a\\b\\..\\c", "/a/c", true}, // backslashes are slashes
		{"//a//b", "//a//b", true},     // slashes are not merged
		{"/a b", "/a%20b", true},
		{"/\xff", "/%FF", true},
		{"/100%", "/100%25", true}, // a lone percent is escaped
		{"/%zz", "/%25zz", true},
		{"/%2%44", "/%252D", true}, // no escape is assembled by decoding
		{"/.hidden/..a/...", "/.hidden/..a/...", true},
		{"", "", false},
		{"a/b", "", false},
		{"\\a", "/a", true},
	} {
		got, ok := normalizePath(tc.in)
		assert.Equal(t, tc.ok, ok, "%q", tc.in)
		if tc.ok {
			assert.Equal(t, tc.want, got, "%q", tc.in)
		}
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/a/../b", "/%2e%2e/x", "/a\\b", "/%41", "//x/./y/", "/a/b/c/../../..", "/%", "/\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got, ok := normalizePath(p)
		if !ok {
			if p != "" && (p[0] == '/' || p[0] == '\\') {
				t.Fatalf("%q rejected", p)
			}
			return
		}
		if got == "" || got[0] != '/' {
			t.Fatalf("%q -> %q: not absolute", p, got)
		}
		again, ok := normalizePath(got)
		if !ok || again != got {
			t.Fatalf("not idempotent: %q -> %q -> %q", p, got, again)
		}
		for _, seg := range strings.Split(got[1:], "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%q -> %q keeps a dot segment", p, got)
			}
		}
		for i := 0; i < len(got); i++ {
			if c := got[i]; c <= ' ' || c >= 0x7f || c == '\\' {
				t.Fatalf("%q -> %q keeps byte %#x", p, got, c)
			}
		}
	})
}

func TestSplitPathQuery(t *testing.T) {
	for _, tc := range []struct{ in, path, query string }{
		{"/a?b=1", "/a", "?b=1"},
		{"/a#frag", "/a", ""},
		{"/a?x#y", "/a", "?x"},
		{"/a", "/a", ""},
	} {
		p, q := splitPathQuery(tc.in)
		assert.Equal(t, tc.path, p, tc.in)
		assert.Equal(t, tc.query, q, tc.in)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in   string
		kind sniffed
		more bool
	}{
		{"G", sniffTCP, true},
		{"GET / HTTP/1.1\r\n", sniffHTTP1, false},
		{"GET ", sniffHTTP1, false},
		{"PROPFIND /", sniffHTTP1, false},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", sniffHTTP2, false},
		{"PRI * HTT", sniffHTTP2, true},
		{"PRIX", sniffTCP, true},
		{"PRIX ", sniffTCP, false},
		{"hello world", sniffTCP, false},
		{"\x16\x03\x01", sniffTCP, false}, // a TLS ClientHello
		{"SSH-2.0-OpenSSH", sniffTCP, false},
		{"ABCDEFGHIJKL", sniffTCP, false},
	} {
		kind, more := classify([]byte(tc.in))
		assert.Equal(t, tc.kind, kind, "%q", tc.in)
		assert.Equal(t, tc.more, more, "%q", tc.in)
	}
}

// FuzzClassify: a decision, once made, does not change as more bytes
// arrive, and the HTTP/2 preface is recognised however it is split.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", h2Preface, "PRI * HTTP/1.1", "hello", "\x16\x03\x01\x02\x00", "PROPFIND /x"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var decided bool
		var first sniffed
		for i := 1; i <= len(b); i++ {
			kind, more := classify(b[:i])
			if decided && kind != first {
				t.Fatalf("%q: decided %d at a shorter prefix, %d at %d bytes", b, first, kind, i)
			}
			if !more && !decided {
				decided, first = true, kind
			}
		}
		if bytes.HasPrefix(b, []byte(h2Preface)) {
			if kind, more := classify(b); kind != sniffHTTP2 || more {
				t.Fatalf("%q: preface not recognised", b)
			}
		}
	})
}

func TestParseAppProtocol(t *testing.T) {
	for in, want := range map[string]portProto{
		"http": protoHTTP, "HTTP": protoHTTP, "http-web": protoHTTP, "http2": protoHTTP2, "h2c": protoHTTP2,
		"kubernetes.io/h2c": protoHTTP2, "grpc": protoGRPC, "grpc-api": protoGRPC, "grpc-web": protoHTTP,
		"tcp": protoTCP, "tcp-db": protoTCP, "mysql": protoTCP, "tls": protoTLS, "https": protoTLS,
		"": protoAuto, "web": protoAuto, "httpx": protoAuto,
	} {
		assert.Equal(t, want, parseAppProtocol(in), in)
	}
}

// TestTCPPolicies checks the forTCP rewrite by evaluating policies on a
// TCP connection (no HTTP attributes) with and without it.
func TestTCPPolicies(t *testing.T) {
	target := []authz.TargetRef{{Kind: "Service", Name: "db"}}
	pol := func(name string, a authz.Action, rules ...authz.Rule) authz.Policy {
		return authz.Policy{Namespace: "default", Name: name, TargetRefs: target, Action: a, Rules: rules}
	}
	sleep := "cluster.local/ns/default/sa/sleep"
	req := authz.Request{Layer: authz.L7, Workload: authz.Workload{Namespace: "default", Services: []string{"db"}},
		Peer: sleep, SourceIP: netip.MustParseAddr("10.0.0.1"), DestPort: 5432}
	for _, tc := range []struct {
		name     string
		policies []authz.Policy
		allowed  bool
	}{
		{"no policy", nil, true},
		{"ALLOW with methods never matches TCP",
			[]authz.Policy{pol("a", authz.Allow, authz.Rule{To: []*authz.Operation{{Methods: []string{"GET"}}}})}, false},
		{"ALLOW with methods next to an L4 rule",
			[]authz.Policy{pol("a", authz.Allow,
				authz.Rule{To: []*authz.Operation{{Methods: []string{"GET"}}}},
				authz.Rule{From: []*authz.Source{{Principals: []string{sleep}}}})}, true},
		{"DENY methods alone denies all TCP",
			[]authz.Policy{pol("d", authz.Deny, authz.Rule{To: []*authz.Operation{{Methods: []string{"POST"}}}})}, false},
		{"DENY methods on another port",
			[]authz.Policy{pol("d", authz.Deny, authz.Rule{To: []*authz.Operation{{Methods: []string{"POST"}, Ports: []string{"8080"}}}})}, true},
		{"DENY methods on this port",
			[]authz.Policy{pol("d", authz.Deny, authz.Rule{To: []*authz.Operation{{Methods: []string{"POST"}, Ports: []string{"5432"}}}})}, false},
		{"DENY request header condition widens to the source",
			[]authz.Policy{pol("d", authz.Deny, authz.Rule{
				From: []*authz.Source{{Principals: []string{"cluster.local/ns/default/sa/other"}}},
				When: []authz.Condition{{Key: "request.headers[x-user]", Values: []string{"bob"}}}})}, true},
		{"DENY requestPrincipals only",
			[]authz.Policy{pol("d", authz.Deny, authz.Rule{From: []*authz.Source{{RequestPrincipals: []string{"*"}}}})}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eng, err := authz.New(authz.Config{}, tcpPolicies(tc.policies))
			require.NoError(t, err)
			r := req
			d := eng.Evaluate(&r)
			assert.Equal(t, tc.allowed, d.Allowed, d.String())
		})
	}
}

func TestReplayBody(t *testing.T) {
	src := "hello, retried world"
	b := newReplayBody(iotest.OneByteReader(strings.NewReader(src)), 64)
	r1 := b.reader()
	head := make([]byte, 5)
	_, err := io.ReadFull(r1, head)
	require.NoError(t, err)
	r2 := b.reader()
	_, err = r1.Read(head)
	assert.ErrorIs(t, err, errBodySuperseded)
	all, err := io.ReadAll(r2)
	require.NoError(t, err)
	assert.Equal(t, src, string(all))
	assert.True(t, b.replayable())
	all, err = io.ReadAll(b.reader())
	require.NoError(t, err)
	assert.Equal(t, src, string(all))

	// Past the limit the body streams on but cannot be replayed.
	big := bytes.Repeat([]byte("x"), 100)
	b = newReplayBody(bytes.NewReader(big), 10)
	all, err = io.ReadAll(b.reader())
	require.NoError(t, err)
	assert.Equal(t, big, all)
	assert.False(t, b.replayable())
	_, err = b.reader().Read(make([]byte, 1))
	assert.ErrorIs(t, err, errBodyNotReplayable)
}

func TestRetriable(t *testing.T) {
	resp := func(code int, grpc string) *http.Response {
		r := &http.Response{StatusCode: code, Header: http.Header{}}
		if grpc != "" {
			r.Header.Set("Grpc-Status", grpc)
		}
		return r
	}
	def := route.DefaultRetry()
	connErr := &upstreamConnectError{Addr: "10.0.0.1:80", Err: errors.New("refused")}
	for _, tc := range []struct {
		name string
		p    route.Retry
		resp *http.Response
		err  error
		want bool
	}{
		{"default: 503 is not retried", def, resp(503, ""), nil, false},
		{"default: connect failure", def, nil, connErr, true},
		{"default: grpc unavailable", def, resp(200, "14"), nil, true},
		{"default: grpc internal", def, resp(200, "13"), nil, false},
		{"5xx: 503", route.Retry{Attempts: 2, On: []string{"5xx"}}, resp(503, ""), nil, true},
		{"5xx: 404", route.Retry{Attempts: 2, On: []string{"5xx"}}, resp(404, ""), nil, false},
		{"5xx: reset", route.Retry{Attempts: 2, On: []string{"5xx"}}, nil, io.ErrUnexpectedEOF, true},
		{"gateway-error: 500", route.Retry{Attempts: 2, On: []string{"gateway-error"}}, resp(500, ""), nil, false},
		{"gateway-error: 504", route.Retry{Attempts: 2, On: []string{"gateway-error"}}, resp(504, ""), nil, true},
		{"codes", route.Retry{Attempts: 2, On: []string{"retriable-status-codes"}, Codes: []int{418}}, resp(418, ""), nil, true},
		{"4xx", route.Retry{Attempts: 2, On: []string{"retriable-4xx"}}, resp(409, ""), nil, true},
		{"per-try timeout", route.Retry{Attempts: 2, On: []string{"5xx"}}, nil, errPerTryTimeout, true},
	} {
		assert.Equal(t, tc.want, retriable(&tc.p, tc.resp, tc.err), tc.name)
	}
}

func TestGRPCMessage(t *testing.T) {
	assert.Equal(t, "RBAC: access denied", grpcMessage("RBAC: access denied"))
	assert.Equal(t, "100%25 caf%C3%A9", grpcMessage("100% café"))
}

func TestRequestID(t *testing.T) {
	id := newRequestID()
	require.Len(t, id, 36)
	assert.Equal(t, byte('4'), id[14])
	assert.NotEqual(t, id, newRequestID())
}
