package inpod

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Backend is the packet-filter front end that [Rules] are written for.
type Backend uint8

const (
	// IPTables writes the rules as iptables-restore input (one text per
	// address family), applied with iptables-restore --noflush and
	// ip6tables-restore --noflush. This is Istio's default.
	IPTables Backend = iota
	// NFTables writes the rules as one nft script with three inet
	// tables (istio-ambient-nat, istio-ambient-mangle, istio-ambient-raw),
	// applied with nft -f. Istio 1.28+ uses it when native nftables is on.
	NFTables
)

func (b Backend) String() string {
	switch b {
	case IPTables:
		return "iptables"
	case NFTables:
		return "nftables"
	}
	return fmt.Sprintf("Backend(%d)", uint8(b))
}

// Defaults of [Rules] fields, as in Istio's istio-cni.
const (
	// DefaultProbeSNAT is the address the node rewrites kubelet probes
	// to; the in-pod rules let it through uncaptured.
	DefaultProbeSNAT = "169.254.7.127"
	// DefaultProbeSNATv6 is DefaultProbeSNAT's IPv6 twin.
	DefaultProbeSNATv6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
)

const (
	// DefaultRouteTable is the routing table that delivers the replies of
	// original-source connections locally (a local default route on lo).
	DefaultRouteTable = 100
	// DefaultRulePriority is the priority of the ip rule that sends
	// packets with the connection mark to DefaultRouteTable.
	DefaultRulePriority = 32764
)

// Rules describes the redirection rules a node agent installs inside a
// pod's network namespace, the set Istio's istio-cni installs since 1.24
// (nat REDIRECT, no TPROXY):
//
//   - outbound TCP from the app, unless it carries the proxy's mark, goes
//     to OutboundPort (15001);
//   - inbound TCP, except to HBONEPort (15008) and from the probe address,
//     goes to InboundPlaintextPort (15006);
//   - traffic to HBONEPort is left alone: the proxy's listener inside the
//     pod receives it directly;
//   - connections accepted from the proxy get the connection mark, and an
//     ip rule plus a local route in RouteTable deliver their replies back
//     to the proxy (needed when it connects with the client's address as
//     source);
//   - with CaptureDNS, UDP and TCP port 53 go to DNSPort (15053).
//
// The zero value is Istio's default set without DNS capture, for IPv4
// and IPv6, written for iptables. A Rules must not be modified while
// Apply or Remove use it.
type Rules struct {
	// Backend selects iptables (the default) or nftables.
	Backend Backend
	// CaptureDNS redirects DNS (UDP and TCP port 53) to DNSPort and keeps
	// the proxy's DNS flows in their own conntrack zone. Default off.
	CaptureDNS bool
	// IPv4Only leaves IPv6 alone: no ip6tables rules, no IPv6 nft
	// matches, no IPv6 ip rule and route. Default false (both families).
	IPv4Only bool

	// PacketMark is the SO_MARK of the proxy's sockets, which the rules
	// exempt from redirection. It is compared under ProxyMask (0xfff), so
	// it must fit in it. If zero, PacketMark (0x539).
	PacketMark uint32
	// ConnMark marks connections accepted from the proxy, so that their
	// replies are routed back to it. It must fit in ProxyMask. If zero,
	// ConnMark (0x111).
	ConnMark uint32

	// Ports; zero means the default constant of the same name.
	OutboundPort, InboundPlaintextPort, HBONEPort, DNSPort uint16

	// ProbeSNAT is the IPv4 source of the node's health probes, accepted
	// uncaptured. If invalid (zero), DefaultProbeSNAT.
	ProbeSNAT netip.Addr
	// ProbeSNATv6 is its IPv6 twin. If invalid, DefaultProbeSNATv6.
	ProbeSNATv6 netip.Addr

	// RouteTable is the table of the local default route. If zero,
	// DefaultRouteTable (100).
	RouteTable uint32
	// RulePriority is the ip rule's priority. If zero,
	// DefaultRulePriority (32764).
	RulePriority uint32
}

// ErrInvalidRules is wrapped by the errors of a [Rules] whose fields are
// out of range.
var ErrInvalidRules = errors.New("inpod: invalid rules")

// resolved is a Rules with its defaults filled in.
type resolved struct {
	Rules
	mark, connMark string // "0x539/0xfff" style
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func (r *Rules) resolve() (*resolved, error) {
	c := *r
	c.PacketMark = orDefault(c.PacketMark, PacketMark)
	c.ConnMark = orDefault(c.ConnMark, ConnMark)
	c.OutboundPort = orDefault(c.OutboundPort, OutboundPort)
	c.InboundPlaintextPort = orDefault(c.InboundPlaintextPort, InboundPlaintextPort)
	c.HBONEPort = orDefault(c.HBONEPort, InboundHBONEPort)
	c.DNSPort = orDefault(c.DNSPort, DNSPort)
	if !c.ProbeSNAT.IsValid() {
		c.ProbeSNAT = netip.MustParseAddr(DefaultProbeSNAT)
	}
	if !c.ProbeSNATv6.IsValid() {
		c.ProbeSNATv6 = netip.MustParseAddr(DefaultProbeSNATv6)
	}
	c.RouteTable = orDefault(c.RouteTable, DefaultRouteTable)
	c.RulePriority = orDefault(c.RulePriority, DefaultRulePriority)
	switch {
	case c.Backend != IPTables && c.Backend != NFTables:
		return nil, fmt.Errorf("%w: Backend %d is neither IPTables nor NFTables", ErrInvalidRules, c.Backend)
	case c.PacketMark&^ProxyMask != 0:
		return nil, fmt.Errorf("%w: PacketMark %#x does not fit in mask %#x", ErrInvalidRules, c.PacketMark, ProxyMask)
	case c.ConnMark&^ProxyMask != 0:
		return nil, fmt.Errorf("%w: ConnMark %#x does not fit in mask %#x", ErrInvalidRules, c.ConnMark, ProxyMask)
	case c.PacketMark == c.ConnMark:
		return nil, fmt.Errorf("%w: PacketMark and ConnMark are both %#x", ErrInvalidRules, c.PacketMark)
	case !c.ProbeSNAT.Is4():
		return nil, fmt.Errorf("%w: ProbeSNAT %s is not an IPv4 address", ErrInvalidRules, c.ProbeSNAT)
	case !c.ProbeSNATv6.Is6() || c.ProbeSNATv6.Is4In6():
		return nil, fmt.Errorf("%w: ProbeSNATv6 %s is not an IPv6 address", ErrInvalidRules, c.ProbeSNATv6)
	case c.RouteTable >= 253 && c.RouteTable <= 255:
		return nil, fmt.Errorf("%w: RouteTable %d is a reserved table (default, main or local)", ErrInvalidRules, c.RouteTable)
	}
	return &resolved{
		Rules:    c,
		mark:     fmt.Sprintf("%#x/%#x", c.PacketMark, ProxyMask),
		connMark: fmt.Sprintf("%#x/%#x", c.ConnMark, ProxyMask),
	}, nil
}

// IPTablesRestore returns the input for "iptables-restore --noflush"
// (v6 false) or "ip6tables-restore --noflush" (v6 true) that creates the
// in-pod chains ISTIO_PRERT and ISTIO_OUTPUT in the mangle, nat and (with
// CaptureDNS) raw tables and jumps to them. The text is the one Istio's
// istio-cni applies, line for line. It assumes the chains do not exist
// yet; [Rules.Apply] handles namespaces that already have them.
func (r *Rules) IPTablesRestore(v6 bool) (string, error) {
	c, err := r.resolve()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, t := range c.iptables(v6) {
		b.WriteString("* " + t.name + "\n")
		for _, ch := range t.chains {
			b.WriteString("-N " + ch + "\n")
		}
		for _, l := range t.rules {
			b.WriteString(l + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String(), nil
}

// iptTable is one table of the iptables rendering.
type iptTable struct {
	name   string
	chains []string // created in this order
	rules  []string // "-A ..." lines, jumps included
}

const (
	chainPrerouting = "ISTIO_PRERT"
	chainOutput     = "ISTIO_OUTPUT"
)

func (c *resolved) iptables(v6 bool) []iptTable {
	loop, probe := "127.0.0.1/32", c.ProbeSNAT.String()
	if v6 {
		loop, probe = "::1/128", c.ProbeSNATv6.String()
	}
	mark, conn := c.mark, c.connMark
	notMark := "-m mark ! --mark " + mark
	tables := []iptTable{{
		name:   "mangle",
		chains: []string{chainPrerouting, chainOutput},
		rules: []string{
			"-A PREROUTING -j ISTIO_PRERT",
			"-A OUTPUT -j ISTIO_OUTPUT",
			"-A ISTIO_PRERT -m mark --mark " + mark + " -j CONNMARK --set-xmark " + conn,
			"-A ISTIO_OUTPUT -m connmark --mark " + conn + " -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
		},
	}}
	nat := iptTable{
		name:   "nat",
		chains: []string{chainPrerouting, chainOutput},
		rules: []string{
			"-A OUTPUT -j ISTIO_OUTPUT",
			"-A PREROUTING -j ISTIO_PRERT",
			"-A ISTIO_PRERT -s " + probe + " -p tcp -m tcp -j ACCEPT",
			"-A ISTIO_OUTPUT -d " + probe + " -p tcp -m tcp -j ACCEPT",
			fmt.Sprintf("-A ISTIO_PRERT ! -d %s -p tcp ! --dport %d %s -j REDIRECT --to-ports %d", loop, c.HBONEPort, notMark, c.InboundPlaintextPort),
		},
	}
	if c.CaptureDNS {
		nat.rules = append(nat.rules,
			fmt.Sprintf("-A ISTIO_OUTPUT ! -o lo -p udp %s -m udp --dport 53 -j REDIRECT --to-port %d", notMark, c.DNSPort),
			fmt.Sprintf("-A ISTIO_OUTPUT ! -d %s -p tcp --dport 53 %s -j REDIRECT --to-ports %d", loop, notMark, c.DNSPort),
		)
	}
	nat.rules = append(nat.rules,
		"-A ISTIO_OUTPUT -p tcp -m mark --mark "+conn+" -j ACCEPT",
		"-A ISTIO_OUTPUT ! -d "+loop+" -o lo -j ACCEPT",
		fmt.Sprintf("-A ISTIO_OUTPUT ! -d %s -p tcp %s -j REDIRECT --to-ports %d", loop, notMark, c.OutboundPort),
	)
	tables = append(tables, nat)
	if c.CaptureDNS {
		tables = append(tables, iptTable{
			name:   "raw",
			chains: []string{chainOutput, chainPrerouting},
			rules: []string{
				"-A PREROUTING -j ISTIO_PRERT",
				"-A OUTPUT -j ISTIO_OUTPUT",
				"-A ISTIO_OUTPUT -p udp -m mark --mark " + mark + " -m udp --dport 53 -j CT --zone 1",
				"-A ISTIO_PRERT -p udp " + notMark + " -m udp --sport 53 -j CT --zone 1",
			},
		})
	}
	return tables
}

// The nft tables of the in-pod rules, one per iptables table.
const (
	nftNat    = "istio-ambient-nat"
	nftMangle = "istio-ambient-mangle"
	nftRaw    = "istio-ambient-raw"
)

// NFTables returns the "nft -f" script that installs the in-pod rules as
// Istio's native nftables mode does: one inet table per iptables table,
// each added and flushed first, so applying the script again replaces the
// rules rather than duplicating them. With IPv4Only the script is Istio's
// IPv4 set line for line; otherwise each address match is followed by its
// ip6 twin.
func (r *Rules) NFTables() (string, error) {
	c, err := r.resolve()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	v6 := !c.IPv4Only
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	// both writes the IPv4 form of a rule, then (dual-stack) the IPv6 one.
	both := func(v4, v6form string) {
		b.WriteString(v4 + "\n")
		if v6 {
			b.WriteString(v6form + "\n")
		}
	}
	table := func(name string, hooks [2]string) {
		line("add table inet %s", name)
		line("flush table inet %s", name)
		line("add chain inet %s prerouting { %s ; }", name, hooks[0])
		line("add chain inet %s output { %s ; }", name, hooks[1])
		line("add chain inet %s istio-prerouting", name)
		line("add chain inet %s istio-output", name)
	}
	mark, conn := fmt.Sprintf("%#x", c.PacketMark), fmt.Sprintf("%#x", c.ConnMark)
	mask := fmt.Sprintf("%#x", ProxyMask)
	p4, p6 := c.ProbeSNAT.String(), c.ProbeSNATv6.String()

	nat := "add rule inet " + nftNat + " "
	table(nftNat, [2]string{"type nat hook prerouting priority -100", "type nat hook output priority -100"})
	line(nat + "output jump istio-output")
	line(nat + "prerouting jump istio-prerouting")
	both(nat+"istio-prerouting meta l4proto tcp ip saddr "+p4+" counter accept",
		nat+"istio-prerouting meta l4proto tcp ip6 saddr "+p6+" counter accept")
	both(nat+"istio-output meta l4proto tcp ip daddr "+p4+" counter accept",
		nat+"istio-output meta l4proto tcp ip6 daddr "+p6+" counter accept")
	// Istio's IPv4 form of this rule has two spaces before "!="; nft does
	// not care, and keeping it makes the script match Istio's byte for byte.
	both(fmt.Sprintf("%sistio-prerouting ip daddr != 127.0.0.1/32 tcp dport != %d mark and %s  != %s counter redirect to :%d", nat, c.HBONEPort, mask, mark, c.InboundPlaintextPort),
		fmt.Sprintf("%sistio-prerouting ip6 daddr != ::1/128 tcp dport != %d mark and %s != %s counter redirect to :%d", nat, c.HBONEPort, mask, mark, c.InboundPlaintextPort))
	if c.CaptureDNS {
		line("%sistio-output oifname != lo mark and %s != %s udp dport 53 counter redirect to :%d", nat, mask, mark, c.DNSPort)
		both(fmt.Sprintf("%sistio-output ip daddr != 127.0.0.1/32 tcp dport 53 mark and %s != %s counter redirect to :%d", nat, mask, mark, c.DNSPort),
			fmt.Sprintf("%sistio-output ip6 daddr != ::1/128 tcp dport 53 mark and %s != %s counter redirect to :%d", nat, mask, mark, c.DNSPort))
	}
	line("%sistio-output meta l4proto tcp mark and %s == %s counter accept", nat, mask, conn)
	both(nat+"istio-output oifname lo ip daddr != 127.0.0.1/32 counter accept",
		nat+"istio-output oifname lo ip6 daddr != ::1/128 counter accept")
	both(fmt.Sprintf("%sistio-output meta l4proto tcp ip daddr != 127.0.0.1/32 mark and %s != %s counter redirect to :%d", nat, mask, mark, c.OutboundPort),
		fmt.Sprintf("%sistio-output meta l4proto tcp ip6 daddr != ::1/128 mark and %s != %s counter redirect to :%d", nat, mask, mark, c.OutboundPort))

	mangle := "add rule inet " + nftMangle + " "
	table(nftMangle, [2]string{"type filter hook prerouting priority -150", "type route hook output priority -150"})
	line(mangle + "prerouting jump istio-prerouting")
	line(mangle + "output jump istio-output")
	line("%sistio-prerouting meta mark & %s == %s counter ct mark set ct mark & %#x |  %s", mangle, mask, mark, ^ProxyMask, conn)
	line("%sistio-output ct mark and %s == %s counter meta mark set ct mark", mangle, mask, conn)

	if c.CaptureDNS {
		raw := "add rule inet " + nftRaw + " "
		table(nftRaw, [2]string{"type filter hook prerouting priority -300", "type filter hook output priority -300"})
		line(raw + "prerouting jump istio-prerouting")
		line(raw + "output jump istio-output")
		line("%sistio-output udp dport 53 meta mark and %s == %s counter ct zone set 1", raw, mask, mark)
		line("%sistio-prerouting udp sport 53 meta mark and %s != %s counter ct zone set 1", raw, mask, mark)
	}
	return b.String(), nil
}

// nftDelete returns the nft script that deletes the given tables. Each is
// added first, so that the script succeeds whether or not it exists.
func nftDelete(tables ...string) string {
	var b strings.Builder
	for _, t := range tables {
		fmt.Fprintf(&b, "add table inet %s\ndelete table inet %s\n", t, t)
	}
	return b.String()
}
