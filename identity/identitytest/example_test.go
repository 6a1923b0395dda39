package identitytest_test

import (
	"crypto/x509"
	"fmt"
	"testing"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
)

func ExampleNewCA() {
	t := &testing.T{} // in a real test, the test's *testing.T
	ca := identitytest.NewCA(t, "cluster.local")
	server := ca.Source(t, "ns/default/sa/server")
	client := ca.Source(t, "ns/default/sa/client")

	serverConf := identity.ServerTLSConfig(server)
	clientConf := identity.ClientTLSConfig(client, ca.ID("ns/default/sa/server"))
	fmt.Println(ca.ID("ns/default/sa/server"), serverConf.NextProtos, clientConf.NextProtos)
	// Output: spiffe://cluster.local/ns/default/sa/server [h2] [h2]
}

func ExampleCA_Issue() {
	t := &testing.T{}
	ca := identitytest.NewCA(t, "cluster.local")
	// A certificate with the wrong extended key usage, for a negative test.
	tmpl := ca.Template("ns/default/sa/server")
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	bad := ca.Issue(t, tmpl)
	src := ca.SourceFor(bad)
	_ = identity.ServerTLSConfig(src) // clients reject this server
	fmt.Println(bad.ID)
	// Output: spiffe://cluster.local/ns/default/sa/server
}
