package hbone

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// TLVTypeSPIFFEID is the PROXY protocol v2 TLV type ztunnel uses to pass
// the client's SPIFFE ID to an application tunnel.
const TLVTypeSPIFFEID = 0xD0

// proxySig is the 12-byte PROXY protocol v2 signature.
var proxySig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// ProxyHeader is a PROXY protocol v2 header as written toward application
// tunnels (spec §C.13): command PROXY over TCP with the original client as
// source, the HBONE target as destination, and the client's SPIFFE ID in
// TLV 0xD0.
type ProxyHeader struct {
	Source      netip.AddrPort
	Destination netip.AddrPort
	// SPIFFEID is the client identity; empty omits the TLV.
	SPIFFEID string
	// Local marks a LOCAL command (health checks): no addresses. Parse
	// only; AppendProxyHeader always writes PROXY.
	Local bool
	// TLVs holds other TLVs seen by ParseProxyHeader, keyed by type.
	TLVs map[byte][]byte
}

// AppendProxyHeader appends h in PROXY v2 encoding to b. Source and
// Destination must both be IPv4 or both IPv6 (IPv4-mapped IPv6 addresses
// count as IPv4).
func AppendProxyHeader(b []byte, h ProxyHeader) ([]byte, error) {
	src, dst := h.Source.Addr().Unmap(), h.Destination.Addr().Unmap()
	if !src.IsValid() || !dst.IsValid() {
		return b, errors.New("hbone: PROXY header: Source and Destination must be set")
	}
	var fam byte
	var alen int
	switch {
	case src.Is4() && dst.Is4():
		fam, alen = 0x11, 12 // AF_INET, STREAM
	case src.Is6() && dst.Is6():
		fam, alen = 0x21, 36 // AF_INET6, STREAM
	default:
		return b, fmt.Errorf("hbone: PROXY header: Source %v and Destination %v are of different families", src, dst)
	}
	tlvLen := 0
	if h.SPIFFEID != "" {
		tlvLen = 3 + len(h.SPIFFEID)
	}
	if alen+tlvLen > 0xffff {
		return b, fmt.Errorf("hbone: PROXY header: SPIFFEID is %d bytes, too long", len(h.SPIFFEID))
	}
	b = append(b, proxySig...)
	b = append(b, 0x21, fam) // version 2, PROXY
	b = binary.BigEndian.AppendUint16(b, uint16(alen+tlvLen))
	b = append(b, src.AsSlice()...)
	b = append(b, dst.AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, h.Source.Port())
	b = binary.BigEndian.AppendUint16(b, h.Destination.Port())
	if h.SPIFFEID != "" {
		b = append(b, TLVTypeSPIFFEID)
		b = binary.BigEndian.AppendUint16(b, uint16(len(h.SPIFFEID)))
		b = append(b, h.SPIFFEID...)
	}
	return b, nil
}

// WriteProxyHeader writes h to w in one Write.
func WriteProxyHeader(w io.Writer, h ProxyHeader) error {
	b, err := AppendProxyHeader(nil, h)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ParseProxyHeader decodes a PROXY v2 header at the start of b and
// returns it with its length in bytes. If b is too short it returns
// io.ErrUnexpectedEOF; other errors name the field at fault.
func ParseProxyHeader(b []byte) (ProxyHeader, int, error) {
	var h ProxyHeader
	if len(b) < 16 {
		if !bytes.HasPrefix(proxySig, b[:min(len(b), len(proxySig))]) {
			return h, 0, errors.New("hbone: PROXY header: bad signature")
		}
		return h, 0, io.ErrUnexpectedEOF
	}
	if !bytes.Equal(b[:12], proxySig) {
		return h, 0, errors.New("hbone: PROXY header: bad signature")
	}
	if v := b[12] >> 4; v != 2 {
		return h, 0, fmt.Errorf("hbone: PROXY header: byte 12: version %d, want 2", v)
	}
	cmd := b[12] & 0xf
	if cmd > 1 {
		return h, 0, fmt.Errorf("hbone: PROXY header: byte 12: unknown command %d", cmd)
	}
	h.Local = cmd == 0
	n := int(binary.BigEndian.Uint16(b[14:16]))
	total := 16 + n
	if len(b) < total {
		return h, 0, io.ErrUnexpectedEOF
	}
	body := b[16:total]
	var alen int
	switch b[13] {
	case 0x11:
		alen = 12
	case 0x21:
		alen = 36
	case 0x00:
		alen = 0 // AF_UNSPEC
	default:
		if !h.Local {
			return h, 0, fmt.Errorf("hbone: PROXY header: byte 13: unsupported family/protocol 0x%02x", b[13])
		}
		alen = 0
	}
	if h.Local {
		alen = 0 // LOCAL: receivers must ignore the address block
		return h, total, nil
	}
	if alen == 0 {
		return h, 0, errors.New("hbone: PROXY header: byte 13: PROXY command with AF_UNSPEC")
	}
	if len(body) < alen {
		return h, 0, fmt.Errorf("hbone: PROXY header: length %d shorter than the %d-byte address block", n, alen)
	}
	ipLen := (alen - 4) / 2
	src, _ := netip.AddrFromSlice(body[:ipLen])
	dst, _ := netip.AddrFromSlice(body[ipLen : 2*ipLen])
	h.Source = netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[2*ipLen:]))
	h.Destination = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(body[2*ipLen+2:]))
	tlvs := body[alen:]
	for off := 0; off < len(tlvs); {
		if len(tlvs)-off < 3 {
			return ProxyHeader{}, 0, fmt.Errorf("hbone: PROXY header: truncated TLV at byte %d", 16+alen+off)
		}
		typ := tlvs[off]
		l := int(binary.BigEndian.Uint16(tlvs[off+1:]))
		if off+3+l > len(tlvs) {
			return ProxyHeader{}, 0, fmt.Errorf("hbone: PROXY header: TLV 0x%02x at byte %d: length %d overruns the header", typ, 16+alen+off, l)
		}
		val := tlvs[off+3 : off+3+l]
		if typ == TLVTypeSPIFFEID {
			h.SPIFFEID = string(val)
		} else {
			if h.TLVs == nil {
				h.TLVs = make(map[byte][]byte)
			}
			h.TLVs[typ] = bytes.Clone(val)
		}
		off += 3 + l
	}
	return h, total, nil
}
