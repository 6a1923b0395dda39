package hbone

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Header names HBONE peers exchange besides the pseudo-headers.
const (
	HeaderBaggage           = "baggage"
	HeaderForwarded         = "forwarded"
	HeaderTraceparent       = "traceparent"
	HeaderXForwardedNetwork = "x-forwarded-network"
	maxAuthorityLen         = 1024
	maxHeaderValueLen       = 8192
)

// SplitAuthority checks a CONNECT :authority and splits it into host and
// port. Accepted forms are a.b.c.d:port, [v6]:port and dns-name:port with
// a port in 1-65535. The host of an IPv6 authority is returned without
// brackets.
func SplitAuthority(authority string) (host string, port uint16, err error) {
	if authority == "" {
		return "", 0, errors.New("hbone: authority is empty")
	}
	if len(authority) > maxAuthorityLen {
		return "", 0, fmt.Errorf("hbone: authority is %d bytes, longer than %d", len(authority), maxAuthorityLen)
	}
	h, p, err := net.SplitHostPort(authority)
	if err != nil {
		return "", 0, fmt.Errorf("hbone: authority %q: %w", authority, err)
	}
	if p == "" {
		return "", 0, fmt.Errorf("hbone: authority %q: missing port", authority)
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return "", 0, fmt.Errorf("hbone: authority %q: port %q is not a number", authority, p)
		}
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("hbone: authority %q: port %q out of range 1-65535", authority, p)
	}
	if h == "" {
		return "", 0, fmt.Errorf("hbone: authority %q: missing host", authority)
	}
	bracketed := strings.HasPrefix(authority, "[")
	if ip, err := netip.ParseAddr(h); err == nil {
		if ip.Zone() != "" {
			return "", 0, fmt.Errorf("hbone: authority %q: IPv6 zone not allowed", authority)
		}
		if ip.Is6() && !ip.Is4In6() && !bracketed {
			return "", 0, fmt.Errorf("hbone: authority %q: IPv6 address must be in brackets", authority)
		}
		return h, uint16(n), nil
	}
	if bracketed {
		return "", 0, fmt.Errorf("hbone: authority %q: %q in brackets is not an IPv6 address", authority, h)
	}
	if err := checkDNSName(h); err != nil {
		return "", 0, fmt.Errorf("hbone: authority %q: %w", authority, err)
	}
	return h, uint16(n), nil
}

func checkDNSName(h string) error {
	if len(h) > 253 {
		return fmt.Errorf("host name is %d bytes, longer than 253", len(h))
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host name %q has an empty or over-long label", h)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return fmt.Errorf("host name %q: byte %d (%q) is not a letter, digit, '-' or '_'", h, i, c)
			}
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host name %q: label %q starts or ends with '-'", h, label)
		}
	}
	return nil
}

// Baggage is the W3C baggage ztunnel sends with CONNECT (and with its 200
// answer) to describe a workload. Empty fields are omitted on the wire.
type Baggage struct {
	ClusterName  string // k8s.cluster.name
	Namespace    string // k8s.namespace.name
	WorkloadKind string // the <kind> of k8s.<kind>.name: deployment, pod, job, cronjob, ...
	WorkloadName string // k8s.<kind>.name
	ServiceName  string // service.name
	ServiceVer   string // service.version
	Region       string // cloud.region
	Zone         string // cloud.availability_zone
}

// String formats b as a baggage header value.
func (b Baggage) String() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+escapeBaggage(v))
		}
	}
	add("k8s.cluster.name", b.ClusterName)
	add("k8s.namespace.name", b.Namespace)
	if b.WorkloadKind != "" {
		add("k8s."+b.WorkloadKind+".name", b.WorkloadName)
	}
	add("service.name", b.ServiceName)
	add("service.version", b.ServiceVer)
	add("cloud.region", b.Region)
	add("cloud.availability_zone", b.Zone)
	return strings.Join(parts, ",")
}

func escapeBaggage(v string) string {
	var sb strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c <= ' ' || c >= 0x7f || c == ',' || c == ';' || c == '=' || c == '%' || c == '"' || c == '\\' {
			fmt.Fprintf(&sb, "%%%02X", c)
			continue
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

// ParseBaggage parses a baggage header value. Unknown keys and properties
// (";...") are ignored; a member without '=' or with a bad percent escape
// is an error naming it.
func ParseBaggage(s string) (Baggage, error) {
	var b Baggage
	if len(s) > maxHeaderValueLen {
		return b, fmt.Errorf("hbone: baggage is %d bytes, longer than %d", len(s), maxHeaderValueLen)
	}
	for i, member := range strings.Split(s, ",") {
		member = strings.TrimSpace(member)
		if member == "" {
			continue
		}
		if j := strings.IndexByte(member, ';'); j >= 0 {
			member = member[:j]
		}
		k, v, ok := strings.Cut(member, "=")
		if !ok {
			return Baggage{}, fmt.Errorf("hbone: baggage member %d %q has no '='", i, member)
		}
		k = strings.TrimSpace(k)
		val, err := unescapeBaggage(strings.TrimSpace(v))
		if err != nil {
			return Baggage{}, fmt.Errorf("hbone: baggage member %d key %q: %w", i, k, err)
		}
		switch k {
		case "k8s.cluster.name":
			b.ClusterName = val
		case "k8s.namespace.name":
			b.Namespace = val
		case "service.name":
			b.ServiceName = val
		case "service.version":
			b.ServiceVer = val
		case "cloud.region":
			b.Region = val
		case "cloud.availability_zone":
			b.Zone = val
		default:
			if kind, ok := strings.CutPrefix(k, "k8s."); ok {
				if kind, ok = strings.CutSuffix(kind, ".name"); ok && kind != "" && kind != "cluster" && kind != "namespace" && !strings.Contains(kind, ".") {
					b.WorkloadKind, b.WorkloadName = kind, val
				}
			}
		}
	}
	return b, nil
}

func unescapeBaggage(v string) (string, error) {
	if !strings.Contains(v, "%") {
		return v, nil
	}
	var sb strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			sb.WriteByte(v[i])
			continue
		}
		if i+2 >= len(v) {
			return "", fmt.Errorf("truncated percent escape at byte %d", i)
		}
		x, err := hex.DecodeString(v[i+1 : i+3])
		if err != nil {
			return "", fmt.Errorf("bad percent escape %q at byte %d", v[i:i+3], i)
		}
		sb.WriteByte(x[0])
		i += 2
	}
	return sb.String(), nil
}

// Forwarded is the RFC 7239 forwarded header ztunnel sends:
// for="<client ip:port>"[;host=<service hostname>].
type Forwarded struct {
	For  netip.AddrPort // the original client
	Host string         // the destination service host name, optional
}

// String formats f as a forwarded header value.
func (f Forwarded) String() string {
	s := `for="` + f.For.String() + `"`
	if f.Host != "" {
		s += ";host=" + f.Host
	}
	return s
}

// ParseForwarded parses the first element of a forwarded header. for= may
// be an IP, "ip:port" or "[v6]:port", quoted or not; host= is optional.
// Other parameters are ignored.
func ParseForwarded(s string) (Forwarded, error) {
	var f Forwarded
	if len(s) > maxHeaderValueLen {
		return f, fmt.Errorf("hbone: forwarded is %d bytes, longer than %d", len(s), maxHeaderValueLen)
	}
	first, _, _ := strings.Cut(s, ",")
	seenFor := false
	for _, pair := range strings.Split(first, ";") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return Forwarded{}, fmt.Errorf("hbone: forwarded pair %q has no '='", pair)
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		} else if strings.ContainsRune(v, '"') {
			return Forwarded{}, fmt.Errorf("hbone: forwarded %s value %q has unbalanced quotes", k, v)
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "for":
			seenFor = true
			if ap, err := netip.ParseAddrPort(v); err == nil {
				f.For = ap
			} else if ip, err := netip.ParseAddr(strings.Trim(v, "[]")); err == nil {
				f.For = netip.AddrPortFrom(ip, 0)
			} else {
				return Forwarded{}, fmt.Errorf("hbone: forwarded for=%q is not an IP address or ip:port", v)
			}
		case "host":
			f.Host = v
		}
	}
	if !seenFor && f.Host == "" {
		return Forwarded{}, errors.New("hbone: forwarded has neither for= nor host=")
	}
	return f, nil
}

// Traceparent is a W3C trace context: 00-<trace id>-<parent id>-<flags>.
type Traceparent struct {
	TraceID  [16]byte
	ParentID [8]byte
	Flags    byte
}

// NewTraceparent returns a random trace context with flags 00, as ztunnel
// makes one per outbound connection.
func NewTraceparent() Traceparent {
	var t Traceparent
	rand.Read(t.TraceID[:])
	rand.Read(t.ParentID[:])
	return t
}

// String formats t as a traceparent header value.
func (t Traceparent) String() string {
	return "00-" + hex.EncodeToString(t.TraceID[:]) + "-" + hex.EncodeToString(t.ParentID[:]) + "-" + hex.EncodeToString([]byte{t.Flags})
}

// ParseTraceparent parses a version-00 traceparent header value. All-zero
// trace or parent IDs are invalid, as W3C says.
func ParseTraceparent(s string) (Traceparent, error) {
	var t Traceparent
	if len(s) != 55 {
		return t, fmt.Errorf("hbone: traceparent is %d bytes, want 55", len(s))
	}
	if s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return t, errors.New("hbone: traceparent: '-' separators not at bytes 2, 35 and 52")
	}
	if s[:2] != "00" {
		return t, fmt.Errorf("hbone: traceparent version %q, want 00", s[:2])
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'F' {
			return t, fmt.Errorf("hbone: traceparent: upper-case hex at byte %d", i)
		}
	}
	if _, err := hex.Decode(t.TraceID[:], []byte(s[3:35])); err != nil {
		return Traceparent{}, fmt.Errorf("hbone: traceparent trace id: %w", err)
	}
	if _, err := hex.Decode(t.ParentID[:], []byte(s[36:52])); err != nil {
		return Traceparent{}, fmt.Errorf("hbone: traceparent parent id: %w", err)
	}
	var fl [1]byte
	if _, err := hex.Decode(fl[:], []byte(s[53:55])); err != nil {
		return Traceparent{}, fmt.Errorf("hbone: traceparent flags: %w", err)
	}
	t.Flags = fl[0]
	if t.TraceID == [16]byte{} {
		return Traceparent{}, errors.New("hbone: traceparent trace id is all zero")
	}
	if t.ParentID == [8]byte{} {
		return Traceparent{}, errors.New("hbone: traceparent parent id is all zero")
	}
	return t, nil
}
