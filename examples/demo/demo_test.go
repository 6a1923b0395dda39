package main

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/internal/leakcheck"
)

// syncBuf is a transcript the test can read while Run writes it.
type syncBuf struct {
	mu      sync.Mutex
	b       bytes.Buffer
	onWrite func(string)
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	n, err := s.b.Write(p)
	all := s.b.String()
	s.mu.Unlock()
	if s.onWrite != nil {
		s.onWrite(all)
	}
	return n, err
}

func (s *syncBuf) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestDemo runs the whole demo, in process, with real sockets, TLS and
// proxies: every step must behave as the tutorial says, and the
// transcript must show it.
func TestDemo(t *testing.T) {
	leakcheck.Check(t)
	var out syncBuf
	err := Run(context.Background(), Config{}, &out)
	transcript := out.String()
	require.NoError(t, err, transcript)
	assert.NotContains(t, transcript, "FAIL")
	for _, want := range []string{
		// Step 1: plaintext before, mTLS HBONE after, with identities.
		`PASS  before: sleep: GET http://echo/ -> 200 "echo-9f7d: GET /", in plaintext`,
		"namespace/default configured",
		"control plane: 7 of 7 pods on HBONE",
		"PASS  node-b access log: connection complete src.identity=spiffe://cluster.local/ns/default/sa/sleep dst.identity=spiffe://cluster.local/ns/default/sa/echo",
		`PASS  node-b metrics: istio_tcp_connections_opened_total{reporter="destination",source_principal="spiffe://cluster.local/ns/default/sa/sleep",destination_principal="spiffe://cluster.local/ns/default/sa/echo",connection_security_policy="mutual_tls"}`,
		// Step 2.
		"authorizationpolicy.security.istio.io/allow-nothing created",
		"default/allow-nothing: Namespace Allow, no rules (matches nothing)",
		`PASS  sleep: GET http://echo/ -> refused: SOCKS5 reply 2 "connection not allowed by ruleset"`,
		"PASS  node-b logged: RBAC rejected conn=127.0.90.2(spiffe://cluster.local/ns/default/sa/sleep)->127.0.90.10:8080",
		// Step 3.
		`default/echo-viewer: WorkloadSelector Allow, rules [principals: !Exact "cluster.local/ns/default/sa/sleep"]; listed by echo`,
		"PASS  curl: GET http://echo/ -> refused",
		"PASS  node-b logged: RBAC rejected conn=127.0.90.3(spiffe://cluster.local/ns/default/sa/curl)",
		// Step 4.
		"authorizationpolicy.security.istio.io/echo-viewer configured",
		"waypoint default/waypoint started on 127.0.90.4:15008 as spiffe://cluster.local/ns/default/sa/waypoint",
		"PASS  waypoint: GET from spiffe://cluster.local/ns/default/sa/sleep -> 200 via outbound|80||echo.default.svc.cluster.local",
		`PASS  sleep: POST http://echo/ -> 403 "RBAC: access denied"`,
		`PASS  curl: GET http://echo/ -> 403 "RBAC: access denied"`,
		"PASS  sleep: GET http://127.0.90.10:8080/ -> refused",
		// Step 5.
		"routes VirtualService default/purchase-history",
		"PASS  2000 of 2000 answered 200",
		"PASS  v1: ", "PASS  v2: ", "PASS  v3: ",
		// The end.
		"PASS  proxies, waypoint, apps and certificate managers stopped; 0 goroutines left",
		"Summary: 5 of 5 steps, 20 checks: 20 passed, 0 failed",
	} {
		assert.Contains(t, transcript, want)
	}
	assert.True(t, strings.HasSuffix(strings.TrimSpace(transcript), ": PASS"), transcript)
}

// filesWith returns the demo's files with one replaced.
func filesWith(t *testing.T, name, data string) fs.FS {
	sub, err := fs.Sub(embedded, "testdata")
	require.NoError(t, err)
	m := fstest.MapFS{}
	require.NoError(t, fs.WalkDir(sub, ".", func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		b, err := fs.ReadFile(sub, p)
		m[p] = &fstest.MapFile{Data: b}
		return err
	}))
	m[name] = &fstest.MapFile{Data: []byte(data)}
	return m
}

// TestDemoFailsWhenTheMeshMisbehaves: the checks judge what happens, so
// a policy that lets the wrong caller through makes them fail, and Run
// says so.
func TestDemoFailsWhenTheMeshMisbehaves(t *testing.T) {
	leakcheck.Check(t)
	data, err := fs.ReadFile(embedded, "testdata/3-echo-viewer.yaml")
	require.NoError(t, err)
	wrong := strings.Replace(string(data), "sa/sleep", "sa/curl", 1)
	var out syncBuf
	err = Run(context.Background(), Config{Steps: 3, Files: filesWith(t, "3-echo-viewer.yaml", wrong)}, &out)
	transcript := out.String()
	require.ErrorIs(t, err, ErrFailed, transcript)
	assert.Contains(t, transcript, "FAIL  sleep: GET http://echo/ -> refused")
	assert.Contains(t, transcript, `expected: 200 "echo-"...`)
	assert.Contains(t, transcript, `FAIL  curl: GET http://echo/ -> 200 "echo-9f7d: GET /"`)
	assert.Contains(t, transcript, "expected: the connection refused")
	assert.Contains(t, transcript, "Summary: 3 of 5 steps")
	assert.True(t, strings.HasSuffix(strings.TrimSpace(transcript), ": FAIL"), transcript)
}

// TestBadYAMLFailsTheStep: YAML the control plane cannot read fails the
// step, and the proxies keep their state.
func TestBadYAMLFailsTheStep(t *testing.T) {
	leakcheck.Check(t)
	var out syncBuf
	err := Run(context.Background(), Config{Steps: 2, Files: filesWith(t, "2-allow-nothing.yaml", "kind: [\n")}, &out)
	require.ErrorIs(t, err, ErrFailed)
	assert.Contains(t, out.String(), "FAIL  2-allow-nothing.yaml: document 0: yaml:")
	assert.Contains(t, out.String(), "Summary: 2 of 5 steps")
}

// TestInterrupt: cancelling the context (Ctrl-C) stops the demo between
// checks, shuts every component down and leaves no goroutine.
func TestInterrupt(t *testing.T) {
	leakcheck.Check(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &syncBuf{onWrite: func(s string) {
		if strings.Contains(s, "Step 2/5") {
			cancel()
		}
	}}
	err := Run(ctx, Config{}, out)
	require.ErrorIs(t, err, context.Canceled)
	transcript := out.String()
	assert.Contains(t, transcript, "interrupted: shutting down")
	assert.NotContains(t, transcript, "Step 3/5")
	assert.NotContains(t, transcript, "FAIL")
	assert.Contains(t, transcript, "PASS  proxies, waypoint, apps and certificate managers stopped")
	assert.Contains(t, transcript, ": INTERRUPTED")
}

func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"-h"}, 0, "-requests"},
		{[]string{"-step", "0"}, 2, "-step 0: must be 1 to 5"},
		{[]string{"-step", "6"}, 2, "-step 6: must be 1 to 5"},
		{[]string{"-requests", "0"}, 2, "-requests 0: must be at least 1"},
		{[]string{"extra"}, 2, `unexpected arguments ["extra"]`},
		{[]string{"-nope"}, 2, "flag provided but not defined"},
	} {
		var stderr bytes.Buffer
		assert.Equal(t, tc.code, run(context.Background(), tc.args, io.Discard, &stderr), tc.args)
		assert.Contains(t, stderr.String(), tc.msg, tc.args)
	}
}

// TestRunExitStatus runs the command as main does, with logs on stderr
// (-v): exit status 0, and the proxies' own lines on stderr.
func TestRunExitStatus(t *testing.T) {
	leakcheck.Check(t)
	var stdout, stderr syncBuf
	code := run(context.Background(), []string{"-v", "-step", "2"}, &stdout, &stderr)
	require.Equal(t, 0, code, "%s\n%s", stdout.String(), stderr.String())
	assert.Contains(t, stderr.String(), `msg="RBAC rejected" component=node-b`)
	assert.Contains(t, stderr.String(), `msg="connection complete" component=node-a`)
}
