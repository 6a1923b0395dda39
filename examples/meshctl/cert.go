package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func certCommand() command {
	return command{
		summary: "issue SPIFFE workload certificates from a local CA; inspect certificates",
		run:     runCert,
	}
}

const certUsage = `usage:
  meshctl cert issue --id SPIFFE-ID --out DIR [--ttl 24h] [--ca-dir DIR]
        write DIR/cert.pem, DIR/key.pem and DIR/bundle.pem for the identity. With
        --ca-dir, the CA is loaded from DIR (Istio cacerts layout: ca-cert.pem,
        ca-key.pem, root-cert.pem) or created there if absent; without it, a
        throwaway in-process CA signs and bundle.pem holds its root.
  meshctl cert inspect FILE
        print the SPIFFE ID, validity and extended key usages of each certificate
        in a PEM file
`

func runCert(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, certUsage)
		return 2
	}
	switch args[0] {
	case "issue":
		return certIssue(ctx, args[1:], stdout, stderr)
	case "inspect":
		return certInspect(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, certUsage)
		return 0
	}
	fmt.Fprintf(stderr, "meshctl cert: unknown subcommand %q\n%s", args[0], certUsage)
	return 2
}

func certIssue(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meshctl cert issue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	idFlag := fs.String("id", "", "SPIFFE ID to issue for, e.g. spiffe://cluster.local/ns/default/sa/sleep")
	out := fs.String("out", "", "directory to write cert.pem, key.pem and bundle.pem into")
	ttl := fs.Duration("ttl", identity.DefaultTTL, "certificate lifetime")
	caDir := fs.String("ca-dir", "", "CA directory (Istio cacerts layout); created if absent")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "meshctl cert issue: unexpected argument %q\n", fs.Arg(0))
		return 2
	case *idFlag == "":
		fmt.Fprintln(stderr, "meshctl cert issue: --id is required")
		return 2
	case *out == "":
		fmt.Fprintln(stderr, "meshctl cert issue: --out is required")
		return 2
	case *ttl <= 0:
		fmt.Fprintf(stderr, "meshctl cert issue: --ttl must be positive, got %v\n", *ttl)
		return 2
	}
	id, err := spiffeid.FromString(*idFlag)
	if err != nil {
		fmt.Fprintf(stderr, "meshctl cert issue: --id %q: %v\n", *idFlag, err)
		return 2
	}
	if _, err := identity.WorkloadIDFromID(id); err != nil {
		fmt.Fprintf(stderr, "meshctl cert issue: warning: ztunnel will not accept this identity: %v\n", err)
	}

	cfg := identity.CAConfig{TrustDomain: id.TrustDomain(), TTL: *ttl}
	ca, created, err := openCA(cfg, *caDir)
	if err != nil {
		fmt.Fprintf(stderr, "meshctl cert issue: %v\n", err)
		return 1
	}
	if created {
		fmt.Fprintf(stdout, "created CA for trust domain %s in %s\n", id.TrustDomain(), *caDir)
	}
	svid, err := ca.Issue(ctx, id, 0)
	if err != nil {
		fmt.Fprintf(stderr, "meshctl cert issue: %v\n", err)
		return 1
	}
	if err := identity.WriteFiles(*out, svid, ca.Bundle()); err != nil {
		fmt.Fprintf(stderr, "meshctl cert issue: %v\n", err)
		return 1
	}
	leaf := svid.Certificates[0]
	fmt.Fprintf(stdout, "issued %s, valid until %s\n", id, leaf.NotAfter.UTC().Format(time.RFC3339))
	for _, name := range []string{identity.CertFileName, identity.KeyFileName, identity.BundleFileName} {
		fmt.Fprintf(stdout, "  %s\n", filepath.Join(*out, name))
	}
	return 0
}

// openCA loads the CA in dir, creates one there if dir holds none, or
// makes an in-process CA when dir is empty.
func openCA(cfg identity.CAConfig, dir string) (ca *identity.CA, created bool, err error) {
	if dir == "" {
		ca, err = identity.NewCA(cfg)
		return ca, false, err
	}
	if _, err := os.Stat(filepath.Join(dir, identity.CACertFileName)); err == nil {
		ca, err = identity.LoadCADir(cfg, dir)
		return ca, false, err
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	if ca, err = identity.NewCA(cfg); err != nil {
		return nil, false, err
	}
	return ca, true, ca.WriteDir(dir)
}

func certInspect(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprint(stderr, certUsage)
		return 2
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "meshctl cert inspect: %v\n", err)
		return 1
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		fmt.Fprintf(stderr, "meshctl cert inspect: %s: %v\n", args[0], err)
		return 1
	}
	now := time.Now()
	for i, c := range certs {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "certificate %d of %d\n", i+1, len(certs))
		printCert(stdout, c, now)
	}
	return 0
}

func printCert(w io.Writer, c *x509.Certificate, now time.Time) {
	field := func(name, format string, args ...any) {
		fmt.Fprintf(w, "  %-11s %s\n", name+":", fmt.Sprintf(format, args...))
	}
	switch len(c.URIs) {
	case 0:
		field("SPIFFE ID", "none (no URI SAN)")
	default:
		for _, u := range c.URIs {
			id, err := spiffeid.FromURI(u)
			if err != nil {
				field("URI SAN", "%s (not a SPIFFE ID: %v)", u, err)
				continue
			}
			field("SPIFFE ID", "%s", id)
			if id.Path() != "" {
				field("principal", "%s", identity.PrincipalFromID(id))
			}
		}
	}
	if len(c.DNSNames) > 0 {
		field("DNS SANs", "%s", strings.Join(c.DNSNames, ", "))
	}
	if c.Subject.String() != "" {
		field("subject", "%s", c.Subject)
	}
	field("issuer", "%s", c.Issuer)
	field("not before", "%s", c.NotBefore.UTC().Format(time.RFC3339))
	field("not after", "%s", c.NotAfter.UTC().Format(time.RFC3339))
	switch {
	case now.Before(c.NotBefore):
		field("status", "NOT YET VALID (starts in %s)", c.NotBefore.Sub(now).Round(time.Second))
	case !now.Before(c.NotAfter):
		field("status", "EXPIRED (%s ago)", now.Sub(c.NotAfter).Round(time.Second))
	default:
		field("status", "valid for %s more", c.NotAfter.Sub(now).Round(time.Second))
	}
	field("EKU", "%s", ekuNames(c.ExtKeyUsage))
	field("key", "%s", keyName(c.PublicKey))
	field("CA", "%t", c.IsCA)
	field("serial", "%x", c.SerialNumber)
}

func ekuNames(ekus []x509.ExtKeyUsage) string {
	if len(ekus) == 0 {
		return "none (any usage)"
	}
	names := map[x509.ExtKeyUsage]string{
		x509.ExtKeyUsageAny:             "any",
		x509.ExtKeyUsageServerAuth:      "serverAuth",
		x509.ExtKeyUsageClientAuth:      "clientAuth",
		x509.ExtKeyUsageCodeSigning:     "codeSigning",
		x509.ExtKeyUsageEmailProtection: "emailProtection",
		x509.ExtKeyUsageTimeStamping:    "timeStamping",
		x509.ExtKeyUsageOCSPSigning:     "OCSPSigning",
	}
	var out []string
	for _, e := range ekus {
		if n, ok := names[e]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("EKU(%d)", e))
		}
	}
	return strings.Join(out, ", ")
}

func keyName(pub any) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}
