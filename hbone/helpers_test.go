package hbone_test

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/meshblocks/meshblocks/identity/identitytest"
)

func hbonetestCA(t testing.TB, td string) *identitytest.CA { return identitytest.NewCA(t, td) }

func os_ErrDeadlineExceeded() error { return os.ErrDeadlineExceeded }

func netipParseAddr(authority string) (netip.Addr, error) {
	h, _, err := net.SplitHostPort(authority)
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.ParseAddr(h)
}
