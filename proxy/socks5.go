package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// SOCKS5 (RFC 1928) is how applications use the mesh without root and
// without traffic redirection: they point at the proxy's SOCKS5 listener
// (localhost:15080 by default) and ask it to CONNECT to a destination. Only
// the no-authentication method and the CONNECT command are supported, as in
// ztunnel.

// SOCKS5Reply is the REP field of a SOCKS5 reply.
type SOCKS5Reply byte

// SOCKS5 reply codes (RFC 1928 §6).
const (
	SOCKS5Succeeded               SOCKS5Reply = 0x00
	SOCKS5GeneralFailure          SOCKS5Reply = 0x01
	SOCKS5NotAllowed              SOCKS5Reply = 0x02
	SOCKS5NetworkUnreachable      SOCKS5Reply = 0x03
	SOCKS5HostUnreachable         SOCKS5Reply = 0x04
	SOCKS5ConnectionRefused       SOCKS5Reply = 0x05
	SOCKS5TTLExpired              SOCKS5Reply = 0x06
	SOCKS5CommandNotSupported     SOCKS5Reply = 0x07
	SOCKS5AddressTypeNotSupported SOCKS5Reply = 0x08
)

const (
	socksVersion    = 0x05
	socksNoAuth     = 0x00
	socksNoMethod   = 0xff
	socksCmdConnect = 0x01
	socksAtypIPv4   = 0x01
	socksAtypDomain = 0x03
	socksAtypIPv6   = 0x04
)

// SOCKS5Target is the destination of a SOCKS5 CONNECT request: either an
// address, or a host name and port.
type SOCKS5Target struct {
	// Addr is set when the client sent an IPv4 or IPv6 address.
	Addr netip.AddrPort
	// Host is set when the client sent a domain name; Port goes with it.
	Host string
	Port uint16
}

// String returns the target as host:port.
func (t SOCKS5Target) String() string {
	if t.Addr.IsValid() {
		return t.Addr.String()
	}
	return fmt.Sprintf("%s:%d", t.Host, t.Port)
}

// SOCKS5Error reports a malformed or unsupported SOCKS5 exchange. Reply is
// the code the server sent (or should send) to the client before closing;
// zero when no reply is possible.
type SOCKS5Error struct {
	Reply  SOCKS5Reply
	Offset int // byte offset in the exchange where the fault was found
	Msg    string
}

func (e *SOCKS5Error) Error() string {
	return fmt.Sprintf("proxy: socks5: byte %d: %s", e.Offset, e.Msg)
}

// ReadSOCKS5Request performs the server side of the SOCKS5 handshake on rw:
// it reads the client's greeting, selects "no authentication", reads the
// CONNECT request and returns its target. It does not send the final reply:
// call [WriteSOCKS5Reply] once the upstream connection has succeeded or
// failed. On a protocol error it sends the matching failure reply itself
// (where the protocol allows one) and returns a *SOCKS5Error.
func ReadSOCKS5Request(rw io.ReadWriter) (SOCKS5Target, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return SOCKS5Target{}, fmt.Errorf("proxy: socks5: read greeting: %w", err)
	}
	if hdr[0] != socksVersion {
		return SOCKS5Target{}, &SOCKS5Error{Offset: 0, Msg: fmt.Sprintf("version %#02x, want 0x05", hdr[0])}
	}
	if hdr[1] == 0 {
		_, _ = rw.Write([]byte{socksVersion, socksNoMethod})
		return SOCKS5Target{}, &SOCKS5Error{Offset: 1, Msg: "greeting offers no authentication methods"}
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(rw, methods); err != nil {
		return SOCKS5Target{}, fmt.Errorf("proxy: socks5: read methods: %w", err)
	}
	noAuth := false
	for _, m := range methods {
		if m == socksNoAuth {
			noAuth = true
		}
	}
	if !noAuth {
		_, _ = rw.Write([]byte{socksVersion, socksNoMethod})
		return SOCKS5Target{}, &SOCKS5Error{Offset: 2, Msg: fmt.Sprintf("client offers methods %x but not 0x00 (no authentication)", methods)}
	}
	if _, err := rw.Write([]byte{socksVersion, socksNoAuth}); err != nil {
		return SOCKS5Target{}, fmt.Errorf("proxy: socks5: write method selection: %w", err)
	}

	off := 2 + len(methods) // offsets below count from the start of the exchange
	var req [4]byte
	if _, err := io.ReadFull(rw, req[:]); err != nil {
		return SOCKS5Target{}, fmt.Errorf("proxy: socks5: read request: %w", err)
	}
	fail := func(code SOCKS5Reply, at int, msg string) (SOCKS5Target, error) {
		_ = WriteSOCKS5Reply(rw, code, netip.AddrPort{})
		return SOCKS5Target{}, &SOCKS5Error{Reply: code, Offset: off + at, Msg: msg}
	}
	if req[0] != socksVersion {
		return fail(SOCKS5GeneralFailure, 0, fmt.Sprintf("request version %#02x, want 0x05", req[0]))
	}
	if req[1] != socksCmdConnect {
		return fail(SOCKS5CommandNotSupported, 1, fmt.Sprintf("command %#02x not supported (only CONNECT, 0x01)", req[1]))
	}
	if req[2] != 0 {
		return fail(SOCKS5GeneralFailure, 2, fmt.Sprintf("reserved byte is %#02x, want 0x00", req[2]))
	}
	var t SOCKS5Target
	portAt := 4 // offset of the port within the request, set per address type
	switch req[3] {
	case socksAtypIPv4:
		var b [4 + 2]byte
		if _, err := io.ReadFull(rw, b[:]); err != nil {
			return SOCKS5Target{}, fmt.Errorf("proxy: socks5: read IPv4 address: %w", err)
		}
		t.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), binary.BigEndian.Uint16(b[4:]))
		portAt += 4
	case socksAtypIPv6:
		var b [16 + 2]byte
		if _, err := io.ReadFull(rw, b[:]); err != nil {
			return SOCKS5Target{}, fmt.Errorf("proxy: socks5: read IPv6 address: %w", err)
		}
		t.Addr = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[:16])).Unmap(), binary.BigEndian.Uint16(b[16:]))
		portAt += 16
	case socksAtypDomain:
		var n [1]byte
		if _, err := io.ReadFull(rw, n[:]); err != nil {
			return SOCKS5Target{}, fmt.Errorf("proxy: socks5: read domain length: %w", err)
		}
		if n[0] == 0 {
			return fail(SOCKS5GeneralFailure, 4, "empty domain name")
		}
		b := make([]byte, int(n[0])+2)
		if _, err := io.ReadFull(rw, b); err != nil {
			return SOCKS5Target{}, fmt.Errorf("proxy: socks5: read domain: %w", err)
		}
		host := string(b[:n[0]])
		if i := invalidHostByte(host); i >= 0 {
			return fail(SOCKS5GeneralFailure, 5+i, fmt.Sprintf("domain name has invalid byte %#02x", host[i]))
		}
		t.Host, t.Port = host, binary.BigEndian.Uint16(b[n[0]:])
		portAt += 1 + int(n[0])
		// Clients such as curl --socks5 send IP literals as domains.
		if a, err := netip.ParseAddr(host); err == nil {
			t = SOCKS5Target{Addr: netip.AddrPortFrom(a.Unmap(), t.Port)}
		}
	default:
		return fail(SOCKS5AddressTypeNotSupported, 3, fmt.Sprintf("address type %#02x not supported", req[3]))
	}
	if t.Addr.IsValid() && t.Addr.Port() == 0 || !t.Addr.IsValid() && t.Port == 0 {
		return fail(SOCKS5GeneralFailure, portAt, "destination port 0")
	}
	return t, nil
}

// invalidHostByte returns the index of the first byte that cannot appear in
// a DNS name or IP literal, or -1.
func invalidHostByte(h string) int {
	for i := 0; i < len(h); i++ {
		c := h[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == ':'
		if !ok {
			return i
		}
	}
	return -1
}

// WriteSOCKS5Reply sends the reply to a CONNECT request. bound is the
// address the proxy connected from; if it is not valid, 0.0.0.0:0 is sent.
func WriteSOCKS5Reply(w io.Writer, code SOCKS5Reply, bound netip.AddrPort) error {
	b := make([]byte, 0, 22)
	b = append(b, socksVersion, byte(code), 0)
	a := bound.Addr().Unmap()
	switch {
	case a.Is4():
		b = append(b, socksAtypIPv4)
		b = append(b, a.AsSlice()...)
	case a.Is6():
		b = append(b, socksAtypIPv6)
		b = append(b, a.AsSlice()...)
	default:
		b = append(b, socksAtypIPv4, 0, 0, 0, 0)
	}
	b = binary.BigEndian.AppendUint16(b, bound.Port())
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("proxy: socks5: write reply: %w", err)
	}
	return nil
}

// ErrSOCKS5 matches every *SOCKS5Error with errors.Is.
var ErrSOCKS5 = errors.New("proxy: socks5 protocol error")

// Is lets errors.Is(err, ErrSOCKS5) match.
func (e *SOCKS5Error) Is(target error) bool { return target == ErrSOCKS5 }
