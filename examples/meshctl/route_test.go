package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const routeCases = `
cases:
- name: jason-to-v2
  source: route.md §3.2
  config: |
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews, namespace: default}
    spec:
      hosts: [reviews]
      http:
      - match: [{headers: {end-user: {exact: jason}}}]
        route: [{destination: {host: reviews, subset: v2}}]
      - route: [{destination: {host: reviews, subset: v1}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews, namespace: default}
    spec:
      host: reviews
      subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
  services:
  - host: reviews.default.svc.cluster.local
    port: 9080
    endpoints:
    - {ip: 10.1.0.1, labels: {version: v1}}
    - {ip: 10.1.0.2, labels: {version: v2}}
  request: {host: reviews.default.svc.cluster.local, headers: {end-user: jason}}
  expect:
    destination: {host: reviews.default.svc.cluster.local, subset: WANT}
`

func writeCases(t *testing.T, want string) string {
	p := filepath.Join(t.TempDir(), "cases.yaml")
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(routeCases, "WANT", want)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRouteTest(t *testing.T) {
	tests := []struct {
		name     string
		files    func(t *testing.T) []string
		code     int
		lastLine string
	}{
		{"pass", func(t *testing.T) []string { return []string{writeCases(t, "v2")} }, 0, "1 passed, 0 failed"},
		{"fail", func(t *testing.T) []string { return []string{writeCases(t, "v1")} }, 1, "0 passed, 1 failed"},
		{"mixed", func(t *testing.T) []string { return []string{writeCases(t, "v2"), writeCases(t, "v1")} }, 1, "1 passed, 1 failed"},
		{"invalid", func(t *testing.T) []string {
			p := filepath.Join(t.TempDir(), "bad.yaml")
			if err := os.WriteFile(p, []byte("cases: [{name: x}]\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			return []string{p, writeCases(t, "v2")}
		}, 2, "1 passed, 0 failed"},
		{"config rejected", func(t *testing.T) []string {
			p := filepath.Join(t.TempDir(), "rejected.yaml")
			bad := strings.ReplaceAll(strings.ReplaceAll(routeCases, "WANT", "v2"), "{exact: jason}", "{regex: \"(\"}")
			if err := os.WriteFile(p, []byte(bad), 0o600); err != nil {
				t.Fatal(err)
			}
			return []string{p, writeCases(t, "v1")}
		}, 2, "0 passed, 1 failed"},
		{"corpus", func(t *testing.T) []string {
			files, _ := filepath.Glob("../../route/testdata/*.yaml")
			if len(files) == 0 {
				t.Fatal("no corpus")
			}
			return files
		}, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), append([]string{"route", "test"}, tc.files(t)...), &out, &errb)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out.String(), errb.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			last := lines[len(lines)-1]
			if tc.lastLine != "" && last != tc.lastLine {
				t.Fatalf("last line %q, want %q", last, tc.lastLine)
			}
			if !strings.HasSuffix(last, " failed") {
				t.Fatalf("last line %q does not end with the summary", last)
			}
		})
	}
}

func TestRouteCheck(t *testing.T) {
	p := writeCases(t, "v2")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"route", "check", p}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "destination: reviews.default.svc.cluster.local:9080/v2") {
		t.Fatalf("unexpected output:\n%s", out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"route", "check", "-H", "end-user=bob", p}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "/v1") {
		t.Fatalf("override not applied:\n%s", out.String())
	}
	for _, want := range []string{"timeout:     none\n", "retries:     2 on connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes (mesh default)\n"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("missing %q in:\n%s", want, out.String())
		}
	}
	out.Reset()
	withOps := filepath.Join(t.TempDir(), "ops.yaml")
	ops := strings.Replace(strings.ReplaceAll(routeCases, "WANT", "v2"), "route: [{destination: {host: reviews, subset: v2}}]",
		"route: [{destination: {host: reviews, subset: v2}}]\n        headers: {response: {set: {x-version: v2}}}\n        timeout: 3s", 1)
	if err := os.WriteFile(withOps, []byte(ops), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := run(context.Background(), []string{"route", "check", withOps}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"response:    set x-version: v2\n", "timeout:     3s\n"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("missing %q in:\n%s", want, out.String())
		}
	}
	rejected := filepath.Join(t.TempDir(), "rejected.yaml")
	if err := os.WriteFile(rejected, []byte(strings.ReplaceAll(ops, "{exact: jason}", "{regex: \"(\"}")), 0o600); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := run(context.Background(), []string{"route", "check", rejected}, &out, &errb); code != 2 {
		t.Fatalf("exit %d for a rejected config, want 2: %s", code, errb.String())
	}
	if !strings.Contains(errb.String(), "spec.http[0].match[0].headers.end-user.regex") {
		t.Fatalf("error does not name the field: %s", errb.String())
	}
	if code := run(context.Background(), []string{"route", "check", "-case", "nope", p}, &out, &errb); code != 2 {
		t.Fatalf("exit %d for unknown case, want 2", code)
	}
	if code := run(context.Background(), []string{"route"}, &out, &errb); code != 2 {
		t.Fatalf("exit %d without subcommand, want 2", code)
	}
}
