package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func runMeshctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCertIssueAndInspect(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sleep")
	code, out, errs := runMeshctl(t, "cert", "issue", "--id", "spiffe://cluster.local/ns/default/sa/sleep", "--out", dir, "--ttl", "2h")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "issued spiffe://cluster.local/ns/default/sa/sleep") {
		t.Errorf("stdout %q", out)
	}
	svid, err := x509svid.Load(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	bundle, err := x509bundle.Load(td, filepath.Join(dir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, bundle)
	if err != nil || id.String() != "spiffe://cluster.local/ns/default/sa/sleep" {
		t.Fatalf("verify: %v, %v", id, err)
	}
	if life := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore); life != 2*60*60e9+identity.Backdate {
		t.Errorf("lifetime %v, want 2h plus backdating", life)
	}

	code, out, errs = runMeshctl(t, "cert", "inspect", filepath.Join(dir, "cert.pem"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"SPIFFE ID:  spiffe://cluster.local/ns/default/sa/sleep",
		"principal:  cluster.local/ns/default/sa/sleep",
		"EKU:        serverAuth, clientAuth",
		"key:        ECDSA P-256",
		"status:     valid for",
		"not after:",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
}

func TestCertIssueWithCADir(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	code, out, errs := runMeshctl(t, "cert", "issue", "--id", "spiffe://example.org/ns/x/sa/a", "--out", a, "--ca-dir", caDir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "created CA for trust domain example.org") {
		t.Errorf("stdout %q", out)
	}
	code, out, errs = runMeshctl(t, "cert", "issue", "--id", "spiffe://example.org/ns/x/sa/b", "--out", b, "--ca-dir", caDir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if strings.Contains(out, "created CA") {
		t.Errorf("second issue created a new CA: %q", out)
	}
	// Both certificates come from the same root, so they verify each other.
	td := spiffeid.RequireTrustDomainFromString("example.org")
	bundleA, err := x509bundle.Load(td, filepath.Join(a, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	svidB, err := x509svid.Load(filepath.Join(b, "cert.pem"), filepath.Join(b, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svidB.Certificates, bundleA); err != nil {
		t.Fatalf("b does not verify against a's bundle: %v", err)
	}
	code, out, _ = runMeshctl(t, "cert", "inspect", filepath.Join(caDir, identity.RootCertFileName))
	if code != 0 || !strings.Contains(out, "CA:         true") || !strings.Contains(out, "SPIFFE ID:  spiffe://example.org") {
		t.Errorf("inspect root: exit %d\n%s", code, out)
	}
}

func TestCertErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"cert"}, 2, "usage:"},
		{[]string{"cert", "frob"}, 2, `unknown subcommand "frob"`},
		{[]string{"cert", "issue", "--out", dir}, 2, "--id is required"},
		{[]string{"cert", "issue", "--id", "spiffe://cluster.local/ns/a/sa/b"}, 2, "--out is required"},
		{[]string{"cert", "issue", "--id", "cluster.local/ns/a/sa/b", "--out", dir}, 2, `--id "cluster.local/ns/a/sa/b"`},
		{[]string{"cert", "issue", "--id", "spiffe://cluster.local/ns/a/sa/b", "--out", dir, "--ttl", "-1h"}, 2, "--ttl must be positive"},
		{[]string{"cert", "issue", "--id", "spiffe://cluster.local", "--out", dir}, 1, "has no path"},
		{[]string{"cert", "inspect"}, 2, "usage:"},
		{[]string{"cert", "inspect", filepath.Join(dir, "missing.pem")}, 1, "no such file"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, _, errs := runMeshctl(t, tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.want) {
				t.Errorf("exit %d (want %d), stderr %q (want %q)", code, tc.code, errs, tc.want)
			}
		})
	}
	// A non-workload identity is issued, with a warning.
	code, _, errs := runMeshctl(t, "cert", "issue", "--id", "spiffe://cluster.local/gateway", "--out", dir)
	if code != 0 || !strings.Contains(errs, "ztunnel will not accept") {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
}
