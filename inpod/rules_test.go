package inpod_test

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/inpod"
)

var update = flag.Bool("update", false, "rewrite the golden files of the rule renderings")

// The goldens named *_v4_dns are the listings of Istio's default in-pod
// rules (istio-cni's default.golden, IPv4, DNS capture on) as the spec
// quotes them; the others follow from them by the rules Istio's own goldens
// show: IPv6 swaps the loopback and probe addresses, DNS off drops the DNS
// redirects and the raw table.
func TestRulesGolden(t *testing.T) {
	tests := []struct {
		golden string
		rules  inpod.Rules
		v6     bool
	}{
		{"iptables_v4_dns", inpod.Rules{CaptureDNS: true}, false},
		{"iptables_v6_dns", inpod.Rules{CaptureDNS: true}, true},
		{"iptables_v4", inpod.Rules{}, false},
		{"iptables_v6", inpod.Rules{}, true},
		{"nftables_v4_dns", inpod.Rules{Backend: inpod.NFTables, CaptureDNS: true, IPv4Only: true}, false},
		{"nftables_v4", inpod.Rules{Backend: inpod.NFTables, IPv4Only: true}, false},
		{"nftables_dual_dns", inpod.Rules{Backend: inpod.NFTables, CaptureDNS: true}, false},
		{"nftables_dual", inpod.Rules{Backend: inpod.NFTables}, false},
		{"iptables_v4_custom", inpod.Rules{
			CaptureDNS: true, PacketMark: 0x123, ConnMark: 0x222,
			OutboundPort: 25001, InboundPlaintextPort: 25006, HBONEPort: 25008, DNSPort: 25053,
			ProbeSNAT: netip.MustParseAddr("169.254.9.9"),
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.golden, func(t *testing.T) {
			var got string
			var err error
			if tc.rules.Backend == inpod.NFTables {
				got, err = tc.rules.NFTables()
			} else {
				got, err = tc.rules.IPTablesRestore(tc.v6)
			}
			require.NoError(t, err)
			path := filepath.Join("testdata", tc.golden+".golden")
			if *update {
				require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
			}
			want, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, string(want), got)
		})
	}
}

func TestRulesInvalid(t *testing.T) {
	tests := []struct {
		name  string
		rules inpod.Rules
		want  string
	}{
		{"mark outside mask", inpod.Rules{PacketMark: 0x1539}, "PacketMark 0x1539 does not fit in mask 0xfff"},
		{"connmark outside mask", inpod.Rules{ConnMark: 0x1000}, "ConnMark 0x1000 does not fit in mask 0xfff"},
		{"same marks", inpod.Rules{PacketMark: 0x111}, "PacketMark and ConnMark are both 0x111"},
		{"v6 probe in v4 field", inpod.Rules{ProbeSNAT: netip.MustParseAddr("fd00::1")}, "ProbeSNAT fd00::1 is not an IPv4 address"},
		{"v4 probe in v6 field", inpod.Rules{ProbeSNATv6: netip.MustParseAddr("10.0.0.1")}, "ProbeSNATv6 10.0.0.1 is not an IPv6 address"},
		{"reserved table", inpod.Rules{RouteTable: 254}, "RouteTable 254 is a reserved table"},
		{"backend", inpod.Rules{Backend: 7}, "Backend 7 is neither"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.rules.IPTablesRestore(false)
			require.ErrorIs(t, err, inpod.ErrInvalidRules)
			require.ErrorContains(t, err, tc.want)
			_, err = tc.rules.NFTables()
			require.ErrorIs(t, err, inpod.ErrInvalidRules)
		})
	}
}
