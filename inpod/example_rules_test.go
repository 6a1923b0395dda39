package inpod_test

import (
	"encoding/hex"
	"fmt"
	"log"
	"strings"

	"github.com/meshblocks/meshblocks/inpod"
)

// The default rules, as a node agent feeds them to
// "iptables-restore --noflush" inside a pod's namespace.
func ExampleRules_IPTablesRestore() {
	rules := inpod.Rules{}
	text, err := rules.IPTablesRestore(false)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(text)
	// Output:
	// * mangle
	// -N ISTIO_PRERT
	// -N ISTIO_OUTPUT
	// -A PREROUTING -j ISTIO_PRERT
	// -A OUTPUT -j ISTIO_OUTPUT
	// -A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
	// -A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
	// COMMIT
	// * nat
	// -N ISTIO_PRERT
	// -N ISTIO_OUTPUT
	// -A OUTPUT -j ISTIO_OUTPUT
	// -A PREROUTING -j ISTIO_PRERT
	// -A ISTIO_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT
	// -A ISTIO_OUTPUT -d 169.254.7.127 -p tcp -m tcp -j ACCEPT
	// -A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
	// -A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
	// -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
	// -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
	// COMMIT
}

// The nftables form: one inet table per iptables table. Here, its
// redirects, with DNS capture on.
func ExampleRules_NFTables() {
	rules := inpod.Rules{Backend: inpod.NFTables, CaptureDNS: true, IPv4Only: true}
	script, err := rules.NFTables()
	if err != nil {
		log.Fatal(err)
	}
	for _, line := range strings.Split(script, "\n") {
		if strings.Contains(line, "redirect") {
			fmt.Println(line)
		}
	}
	// Output:
	// add rule inet istio-ambient-nat istio-prerouting ip daddr != 127.0.0.1/32 tcp dport != 15008 mark and 0xfff  != 0x539 counter redirect to :15006
	// add rule inet istio-ambient-nat istio-output oifname != lo mark and 0xfff != 0x539 udp dport 53 counter redirect to :15053
	// add rule inet istio-ambient-nat istio-output ip daddr != 127.0.0.1/32 tcp dport 53 mark and 0xfff != 0x539 counter redirect to :15053
	// add rule inet istio-ambient-nat istio-output meta l4proto tcp ip daddr != 127.0.0.1/32 mark and 0xfff != 0x539 counter redirect to :15001
}

// A ZDS request as it goes on the wire (the netns descriptor travels
// beside it, as SCM_RIGHTS).
func ExampleMarshalWorkloadRequest() {
	b, err := inpod.MarshalWorkloadRequest(&inpod.AddWorkload{
		UID:          "u1",
		WorkloadInfo: &inpod.WorkloadInfo{Name: "n", Namespace: "ns", ServiceAccount: "sa"},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(hex.EncodeToString(b))
	// Output: 0a110a027531120b0a016e12026e731a027361
}

// Decoding a request and dispatching on its kind.
func ExampleUnmarshalWorkloadRequest() {
	for _, b := range [][]byte{{0x1a, 0x00}, {0x12, 0x04, 0x12, 0x02, 'u', '1'}, {0x0a, 0x11, 0x0a}} {
		req, err := inpod.UnmarshalWorkloadRequest(b)
		switch r := req.(type) {
		case *inpod.SnapshotSent:
			fmt.Println("snapshot complete")
		case *inpod.DelWorkload:
			fmt.Println("delete", r.UID)
		default:
			fmt.Println(err)
		}
	}
	// Output:
	// snapshot complete
	// delete u1
	// inpod: ZDS WorkloadRequest.add at byte 0: bad length-delimited value: unexpected EOF
}
