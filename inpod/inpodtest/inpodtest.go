package inpodtest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/meshblocks/meshblocks/inpod"
)

// RequireRoot skips t unless the process runs as root, or fails it when
// CI=true.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("inpodtest: this test needs root, and CI=true forbids skipping it")
	}
	t.Skip("inpodtest: needs root for network namespaces")
}

var seq atomic.Uint64

// Namespace is a named network namespace created for one test.
type Namespace struct {
	// Name is the namespace's name under /var/run/netns.
	Name string
	// Netns is an open handle to it.
	Netns *inpod.Netns
	t     testing.TB
}

// NewNamespace creates a network namespace with loopback up. It and the
// handle are removed when the test ends.
func NewNamespace(t testing.TB) *Namespace {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("mbt-%d-%d", os.Getpid(), seq.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("inpodtest: ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns, err := inpod.OpenNetns("/var/run/netns/" + name)
	if err != nil {
		t.Fatalf("inpodtest: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	n := &Namespace{Name: name, Netns: ns, t: t}
	n.Run("ip", "link", "set", "lo", "up")
	return n
}

// Run runs a command inside the namespace (through "ip netns exec") and
// fails the test if it fails. It returns the command's output.
func (n *Namespace) Run(args ...string) string {
	n.t.Helper()
	return run(n.t, append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// Link connects n and peer with a veth pair, giving n the address addrN and
// peer addrPeer (both CIDRs, e.g. "10.9.0.1/24"), and brings both ends up.
// It returns the names of the two ends, in n and in peer.
func (n *Namespace) Link(peer *Namespace, addrN, addrPeer string) (ifN, ifPeer string) {
	n.t.Helper()
	a := fmt.Sprintf("v%d", seq.Add(1))
	b := fmt.Sprintf("v%d", seq.Add(1))
	run(n.t, "ip", "link", "add", a, "netns", n.Name, "type", "veth", "peer", "name", b, "netns", peer.Name)
	n.Run("ip", "addr", "add", addrN, "dev", a)
	n.Run("ip", "link", "set", a, "up")
	peer.Run("ip", "addr", "add", addrPeer, "dev", b)
	peer.Run("ip", "link", "set", b, "up")
	return a, b
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("inpodtest: %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
