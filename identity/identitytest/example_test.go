package identitytest_test

import (
	"context"
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

func ExampleCA_IssueIntermediate() {
	t := &testing.T{}
	root := identitytest.NewCA(t, "cluster.local")
	inter := root.IssueIntermediate(t)
	svid := inter.SVID(t, "ns/default/sa/sleep")
	// The leaf comes with the intermediate; peers verify it to the root.
	fmt.Println(len(svid.Certificates), svid.Certificates[1].IsCA, inter.Bundle().HasX509Authority(root.Root()))
	// Output: 2 true true
}

func ExampleSourceWithBundle() {
	t := &testing.T{}
	ours := identitytest.NewCA(t, "cluster.local")
	theirs := identitytest.NewCA(t, "cluster.local")
	// A certificate from one CA served with the roots of another: every
	// peer of this source fails verification ("unknown root").
	src := identitytest.SourceWithBundle(theirs.SVID(t, "ns/default/sa/sleep"), ours.Bundle())
	svid, _ := src.SVID(context.Background())
	fmt.Println(svid.ID)
	// Output: spiffe://cluster.local/ns/default/sa/sleep
}
