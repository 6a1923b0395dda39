package hbone_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSplitAuthority(t *testing.T) {
	tests := []struct {
		in, host string
		port     uint16
		err      string
	}{
		{"10.0.0.1:8080", "10.0.0.1", 8080, ""},
		{"[fd00::1]:80", "fd00::1", 80, ""},
		{"echo.default.svc.cluster.local:80", "echo.default.svc.cluster.local", 80, ""},
		{"localhost:1", "localhost", 1, ""},
		{"", "", 0, "empty"},
		{"10.0.0.1", "", 0, "missing port"},
		{"10.0.0.1:", "", 0, "missing port"},
		{"10.0.0.1:0", "", 0, "out of range"},
		{"10.0.0.1:65536", "", 0, "out of range"},
		{"10.0.0.1:+80", "", 0, "not a number"},
		{":80", "", 0, "missing host"},
		{"fd00::1:80", "", 0, "too many colons"},
		{"[fe80::1%eth0]:80", "", 0, "zone"},
		{"[host]:80", "", 0, "not an IPv6"},
		{"a b:80", "", 0, "byte 1"},
		{"-a.b:80", "", 0, "starts or ends"},
		{"a..b:80", "", 0, "empty"},
		{strings.Repeat("a", 64) + ".b:80", "", 0, "over-long"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			h, p, err := hbone.SplitAuthority(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.host, h)
			assert.Equal(t, tc.port, p)
		})
	}
}

func TestBaggage(t *testing.T) {
	b := hbone.Baggage{ClusterName: "c1", Namespace: "ns", WorkloadKind: "deployment", WorkloadName: "app",
		ServiceName: "svc", ServiceVer: "v1", Region: "r", Zone: "z"}
	s := b.String()
	assert.Equal(t, "k8s.cluster.name=c1,k8s.namespace.name=ns,k8s.deployment.name=app,service.name=svc,service.version=v1,cloud.region=r,cloud.availability_zone=z", s)
	got, err := hbone.ParseBaggage(s)
	require.NoError(t, err)
	assert.Equal(t, b, got)

	assert.Equal(t, "k8s.namespace.name=ns", hbone.Baggage{Namespace: "ns"}.String(), "empty items are omitted")
	got, err = hbone.ParseBaggage(" k8s.pod.name = p ;prop=1, unknown=x,,service.name=a%2Cb")
	require.NoError(t, err)
	assert.Equal(t, hbone.Baggage{WorkloadKind: "pod", WorkloadName: "p", ServiceName: "a,b"}, got)
	_, err = hbone.ParseBaggage("k8s.namespace.name")
	require.ErrorContains(t, err, "no '='")
	_, err = hbone.ParseBaggage("service.name=%zz")
	require.ErrorContains(t, err, "percent")
}

func TestForwarded(t *testing.T) {
	f := hbone.Forwarded{For: netip.MustParseAddrPort("[::1]:80"), Host: "echo.default.svc.cluster.local"}
	assert.Equal(t, `for="[::1]:80";host=echo.default.svc.cluster.local`, f.String())
	tests := []struct {
		in   string
		want hbone.Forwarded
		err  string
	}{
		{`for="[::1]:80"`, hbone.Forwarded{For: netip.MustParseAddrPort("[::1]:80")}, ""},
		{`for="10.0.0.1:5000";host=a.b`, hbone.Forwarded{For: netip.MustParseAddrPort("10.0.0.1:5000"), Host: "a.b"}, ""},
		{`for=10.0.0.1;proto=https`, hbone.Forwarded{For: netip.MustParseAddrPort("10.0.0.1:0")}, ""},
		{`For="[fd00::2]", for=1.2.3.4`, hbone.Forwarded{For: netip.MustParseAddrPort("[fd00::2]:0")}, ""},
		{`for=unknown`, hbone.Forwarded{}, "not an IP"},
		{`for`, hbone.Forwarded{}, "no '='"},
		{`for="1.2.3.4`, hbone.Forwarded{}, "unbalanced"},
		{`proto=http`, hbone.Forwarded{}, "neither"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := hbone.ParseForwarded(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestTraceparent(t *testing.T) {
	tp := hbone.NewTraceparent()
	got, err := hbone.ParseTraceparent(tp.String())
	require.NoError(t, err)
	assert.Equal(t, tp, got)
	for in, want := range map[string]string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":  "",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":  "version",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01":  "all zero",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01":  "all zero",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01":  "upper-case",
		"00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01":  "trace id",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x": "55",
		"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":  "separators",
	} {
		_, err := hbone.ParseTraceparent(in)
		if want == "" {
			require.NoError(t, err, in)
		} else {
			require.ErrorContains(t, err, want, in)
		}
	}
}

func TestProxyHeader(t *testing.T) {
	tests := []struct {
		name string
		h    hbone.ProxyHeader
		err  string
	}{
		{"IPv4", hbone.ProxyHeader{Source: netip.MustParseAddrPort("10.0.0.1:5000"), Destination: netip.MustParseAddrPort("10.0.0.2:8080"), SPIFFEID: "spiffe://cluster.local/ns/default/sa/client"}, ""},
		{"IPv6 without TLV", hbone.ProxyHeader{Source: netip.MustParseAddrPort("[fd00::1]:5000"), Destination: netip.MustParseAddrPort("[fd00::2]:80")}, ""},
		{"mixed families", hbone.ProxyHeader{Source: netip.MustParseAddrPort("10.0.0.1:5000"), Destination: netip.MustParseAddrPort("[fd00::2]:80")}, "different families"},
		{"missing address", hbone.ProxyHeader{Source: netip.MustParseAddrPort("10.0.0.1:5000")}, "must be set"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := hbone.AppendProxyHeader([]byte("prefix"), tc.h)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			got, n, err := hbone.ParseProxyHeader(append(b[len("prefix"):], "payload"...))
			require.NoError(t, err)
			assert.Equal(t, len(b)-len("prefix"), n)
			assert.Equal(t, tc.h, got)
		})
	}
	// The IPv4 header with the SPIFFE TLV, byte by byte.
	b, err := hbone.AppendProxyHeader(nil, hbone.ProxyHeader{
		Source: netip.MustParseAddrPort("1.2.3.4:258"), Destination: netip.MustParseAddrPort("5.6.7.8:80"), SPIFFEID: "id"})
	require.NoError(t, err)
	assert.Equal(t, []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x11\x01\x02\x03\x04\x05\x06\x07\x08\x01\x02\x00\x50\xd0\x00\x02id"), b)
	for _, tc := range []struct {
		in  []byte
		err string
	}{
		{[]byte("GET / HTTP/1.1\r\n"), "signature"},
		{b[:10], "unexpected EOF"},
		{b[:20], "unexpected EOF"},
		{append(append([]byte{}, b[:12]...), 0x11, 0x11, 0, 0), "version"},
		{append(append([]byte{}, b[:12]...), 0x23, 0x11, 0, 0), "command"},
		{append(append([]byte{}, b[:12]...), 0x21, 0x31, 0, 0), "family"},
		{append(append([]byte{}, b[:12]...), 0x21, 0x11, 0, 4, 1, 2, 3, 4), "address block"},
		{append(append([]byte{}, b[:14]...), 0, 14, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2, 0xd0, 0), "truncated TLV"},
		{append(append([]byte{}, b[:14]...), 0, 15, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2, 0xd0, 0, 9), "overruns"},
	} {
		_, _, err := hbone.ParseProxyHeader(tc.in)
		require.ErrorContains(t, err, tc.err, "%q", tc.in)
	}
	local, n, err := hbone.ParseProxyHeader(append(append([]byte{}, b[:12]...), 0x20, 0x00, 0, 0))
	require.NoError(t, err)
	assert.True(t, local.Local)
	assert.Equal(t, 16, n)
}
