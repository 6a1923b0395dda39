package proxy_test

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/proxy"
)

// conn is an in-memory io.ReadWriter: reads from in, writes to out.
type conn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *conn) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c *conn) Write(p []byte) (int, error) { return c.out.Write(p) }

func newConn(b ...byte) *conn { return &conn{in: bytes.NewReader(b)} }

func TestReadSOCKS5Request(t *testing.T) {
	greet := []byte{5, 1, 0}
	tests := []struct {
		name      string
		in        []byte
		want      proxy.SOCKS5Target
		wantErr   string
		wantReply []byte // everything the server wrote
	}{
		{
			name:      "ipv4",
			in:        append(greet, 5, 1, 0, 1, 10, 0, 0, 9, 0x1f, 0x90),
			want:      proxy.SOCKS5Target{Addr: netip.MustParseAddrPort("10.0.0.9:8080")},
			wantReply: []byte{5, 0},
		},
		{
			name: "ipv6",
			in: append(append(greet, 5, 1, 0, 4),
				0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 80),
			want:      proxy.SOCKS5Target{Addr: netip.MustParseAddrPort("[fd00::7]:80")},
			wantReply: []byte{5, 0},
		},
		{
			name:      "domain",
			in:        append(append(greet, 5, 1, 0, 3, 23), append([]byte("web.test.svc.cluster.local")[:23], 0, 80)...),
			want:      proxy.SOCKS5Target{Host: "web.test.svc.cluster.lo", Port: 80},
			wantReply: []byte{5, 0},
		},
		{
			name:      "ip literal sent as domain",
			in:        append(append(greet, 5, 1, 0, 3, 8), append([]byte("10.0.0.1"), 0, 81)...),
			want:      proxy.SOCKS5Target{Addr: netip.MustParseAddrPort("10.0.0.1:81")},
			wantReply: []byte{5, 0},
		},
		{
			name:      "several methods including no-auth",
			in:        []byte{5, 3, 2, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 22},
			want:      proxy.SOCKS5Target{Addr: netip.MustParseAddrPort("127.0.0.1:22")},
			wantReply: []byte{5, 0},
		},
		{name: "socks4", in: []byte{4, 1, 0, 80}, wantErr: "byte 0: version 0x04, want 0x05"},
		{name: "no methods", in: []byte{5, 0}, wantErr: "byte 1: greeting offers no authentication methods", wantReply: []byte{5, 0xff}},
		{name: "only user/pass", in: []byte{5, 1, 2}, wantErr: "byte 2: client offers methods 02 but not 0x00", wantReply: []byte{5, 0xff}},
		{
			name:      "bind command",
			in:        append(greet, 5, 2, 0, 1, 10, 0, 0, 9, 0, 80),
			wantErr:   "byte 4: command 0x02 not supported",
			wantReply: []byte{5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0},
		},
		{
			name:      "udp associate",
			in:        append(greet, 5, 3, 0, 1, 10, 0, 0, 9, 0, 80),
			wantErr:   "command 0x03 not supported",
			wantReply: []byte{5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0},
		},
		{
			name:      "bad address type",
			in:        append(greet, 5, 1, 0, 9),
			wantErr:   "byte 6: address type 0x09 not supported",
			wantReply: []byte{5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0},
		},
		{
			name:      "reserved byte set",
			in:        append(greet, 5, 1, 7, 1),
			wantErr:   "byte 5: reserved byte is 0x07",
			wantReply: []byte{5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0},
		},
		{
			name:      "port zero",
			in:        append(greet, 5, 1, 0, 1, 10, 0, 0, 9, 0, 0),
			wantErr:   "byte 11: destination port 0",
			wantReply: []byte{5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0},
		},
		{
			name:      "control byte in domain",
			in:        append(append(greet, 5, 1, 0, 3, 4), 'a', '\n', 'b', 'c', 0, 80),
			wantErr:   "byte 9: domain name has invalid byte 0x0a",
			wantReply: []byte{5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0},
		},
		{name: "truncated greeting", in: []byte{5}, wantErr: "read greeting: unexpected EOF"},
		{name: "truncated ipv4", in: append(greet, 5, 1, 0, 1, 10, 0), wantErr: "read IPv4 address: unexpected EOF", wantReply: []byte{5, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newConn(tc.in...)
			got, err := proxy.ReadSOCKS5Request(c)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
			} else {
				require.NoError(t, err)
				require.Equal(t, tc.want, got)
			}
			require.Equal(t, tc.wantReply, c.out.Bytes(), "bytes sent to the client")
		})
	}
}

func TestSOCKS5ErrorIs(t *testing.T) {
	_, err := proxy.ReadSOCKS5Request(newConn(4, 1))
	require.ErrorIs(t, err, proxy.ErrSOCKS5)
	var se *proxy.SOCKS5Error
	require.True(t, errors.As(err, &se))
	require.Equal(t, 0, se.Offset)

	_, err = proxy.ReadSOCKS5Request(newConn())
	require.ErrorIs(t, err, io.EOF, "an empty stream is EOF, not a protocol error")
	require.NotErrorIs(t, err, proxy.ErrSOCKS5)
}

func TestWriteSOCKS5Reply(t *testing.T) {
	var b bytes.Buffer
	require.NoError(t, proxy.WriteSOCKS5Reply(&b, proxy.SOCKS5Succeeded, netip.MustParseAddrPort("10.1.2.3:4567")))
	require.Equal(t, []byte{5, 0, 0, 1, 10, 1, 2, 3, 0x11, 0xd7}, b.Bytes())
	b.Reset()
	require.NoError(t, proxy.WriteSOCKS5Reply(&b, proxy.SOCKS5ConnectionRefused, netip.MustParseAddrPort("[::1]:1")))
	require.Equal(t, append(append([]byte{5, 5, 0, 4}, netip.IPv6Loopback().AsSlice()...), 0, 1), b.Bytes())
}

func FuzzReadSOCKS5Request(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 9, 0x1f, 0x90})
	f.Add([]byte{5, 1, 0, 5, 1, 0, 3, 3, 'a', 'b', 'c', 0, 80})
	f.Add([]byte{5, 2, 0, 2, 5, 1, 0, 4, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 80})
	f.Add([]byte{5, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		c := newConn(in...)
		got, err := proxy.ReadSOCKS5Request(c)
		if err != nil {
			return
		}
		// A successful parse names a usable destination.
		if got.Addr.IsValid() == (got.Host != "") {
			t.Fatalf("target %+v must have exactly one of Addr and Host", got)
		}
		if got.String() == "" {
			t.Fatal("empty target string")
		}
	})
}
