package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	xproxy "golang.org/x/net/proxy"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
	"github.com/meshblocks/meshblocks/authz/ztunnel"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
)

const meshYAML = `
workloads:
- uid: c//Pod/default/sleep
  name: sleep
  namespace: default
  serviceAccount: sleep
  workloadIps: ["127.78.0.2"]
  protocol: HBONE
  node: n1
  workloadName: sleep
  canonicalName: sleep
  canonicalRevision: v1
- uid: c//Pod/default/echo
  name: echo
  namespace: default
  serviceAccount: echo
  workloadIps: ["127.78.0.3"]
  protocol: HBONE
  node: n2
  workloadName: echo
  labels: {app: echo}
  authorizationPolicies: [default/echo]
  services:
    "default/echo.default.svc.cluster.local":
      80: 8080
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: ["/127.78.10.1"]
  ports:
    80: 8080
`

// policyYAML is the Istio form of the policy; the ztunnels read what
// ztunnelPolicies converts it to.
const policyYAML = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: echo
  namespace: default
spec:
  selector:
    matchLabels: {app: echo}
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    to:
    - operation:
        ports: ["8080"]
`

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// ztunnelPolicies converts Istio YAML to ztunnel's format, as meshctl authz
// convert does, and checks that the echo workload must list exactly what
// meshYAML lists for it.
func ztunnelPolicies(t testing.TB, istioYAML string) []byte {
	pols, err := istio.Parse([]byte(istioYAML), istio.Options{})
	require.NoError(t, err)
	out, err := ztunnel.Convert(ztunnel.Config{}, ztunnel.Input{Policies: pols,
		Workloads: []authz.Workload{{Namespace: "default", Labels: map[string]string{"app": "echo"}}}})
	require.NoError(t, err)
	require.Equal(t, []string{"default/echo"}, out.Bindings[0])
	data, err := ztunnel.Marshal(out.Policies)
	require.NoError(t, err)
	return data
}

func writeFiles(t testing.TB) (cfgPath, polDir, caDir string) {
	dir := t.TempDir()
	cfgPath = filepath.Join(dir, "mesh.yaml")
	require.NoError(t, os.WriteFile(cfgPath, []byte(meshYAML), 0o600))
	polDir = filepath.Join(dir, "policies")
	require.NoError(t, os.Mkdir(polDir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(polDir, "echo.yaml"), ztunnelPolicies(t, policyYAML), 0o600))
	return cfgPath, polDir, filepath.Join(dir, "ca")
}

func startZtunnel(t *testing.T, ctx context.Context, args []string, logs io.Writer) chan int {
	done := make(chan int, 1)
	go func() {
		cfg, err := parseFlags(args, io.Discard)
		if err != nil {
			done <- 2
			return
		}
		cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
		if err := Run(ctx, cfg); err != nil {
			t.Errorf("Run: %v", err)
			done <- 1
			return
		}
		done <- 0
	}()
	return done
}

func waitReady(t testing.TB, url string) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never became ready", url)
}

func get(t *testing.T, url string) string {
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", url, b)
	return string(b)
}

func TestTwoZtunnelsOnLoopback(t *testing.T) {
	leakcheck.Check(t)
	defer http.DefaultClient.CloseIdleConnections()
	cfgPath, polDir, caDir := writeFiles(t)
	// The app behind ztunnel n2.
	ln, err := net.Listen("tcp", "127.78.0.3:8080")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.Copy(c, c)
			c.Close()
		}
	}()
	defer func() { ln.Close(); wg.Wait() }()

	ctx, cancel := context.WithCancel(context.Background())
	var logs1, logs2 syncBuf
	common := []string{"-config", cfgPath, "-policies", polDir, "-ca-dir", caDir}
	d1 := startZtunnel(t, ctx, append([]string{"-node", "n1", "-ip", "127.78.0.2", "-socks5-source", "c//Pod/default/sleep"}, common...), &logs1)
	d2 := startZtunnel(t, ctx, append([]string{"-node", "n2", "-ip", "127.78.0.3"}, common...), &logs2)
	defer func() {
		cancel()
		assert.Equal(t, 0, <-d1)
		assert.Equal(t, 0, <-d2)
	}()
	waitReady(t, "http://127.78.0.2:15021/healthz/ready")
	waitReady(t, "http://127.78.0.3:15021/healthz/ready")

	// The non-root path: SOCKS5 to the service VIP.
	d, err := xproxy.SOCKS5("tcp", "127.78.0.2:15080", nil, &net.Dialer{Timeout: 5 * time.Second})
	require.NoError(t, err)
	c, err := d.Dial("tcp", "127.78.10.1:80")
	require.NoError(t, err)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(c, "hello")
	require.NoError(t, err)
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, "hello", string(b))
	c.Close()

	// Denied port: refused.
	_, err = d.Dial("tcp", "127.78.0.3:9090")
	require.Error(t, err)

	// Both ztunnels count the connection once it has closed.
	closedBy := func(url, reporter string) map[string]*family {
		var fams map[string]*family
		require.Eventually(t, func() bool {
			var err error
			fams, err = parseExposition(get(t, url))
			require.NoError(t, err)
			_, n := fams["istio_tcp_connections_closed_total"].find(map[string]string{"reporter": reporter})
			return n == 1
		}, 5*time.Second, 20*time.Millisecond)
		return fams
	}
	f1 := closedBy("http://127.78.0.2:15020/metrics", "source")
	f2 := closedBy("http://127.78.0.3:15020/stats/prometheus", "destination")
	conn := map[string]string{
		"source_workload": "sleep", "source_canonical_service": "sleep", "source_canonical_revision": "v1",
		"source_workload_namespace": "default", "source_principal": "spiffe://cluster.local/ns/default/sa/sleep",
		"destination_workload": "echo", "destination_workload_namespace": "default",
		"destination_principal": "spiffe://cluster.local/ns/default/sa/echo",
		"destination_service":   "echo.default.svc.cluster.local", "destination_service_name": "echo",
		"destination_service_namespace": "default", "destination_canonical_service": "unknown",
		"request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "mutual_tls",
	}
	conn["reporter"] = "source"
	for name, want := range map[string]float64{"istio_tcp_connections_opened_total": 1, "istio_tcp_connections_closed_total": 1,
		"istio_tcp_sent_bytes_total": 5, "istio_tcp_received_bytes_total": 5} {
		v, n := f1[name].find(conn)
		assert.Equal(t, 1, n, "%s at the source", name)
		assert.Equal(t, want, v, "%s at the source", name)
	}
	// The destination knows the peer by its certificate.
	conn["reporter"] = "destination"
	for _, k := range []string{"source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace"} {
		delete(conn, k)
	}
	v, n := f2["istio_tcp_connections_opened_total"].find(conn)
	assert.Equal(t, 1, n)
	assert.Equal(t, float64(1), v)
	assert.Contains(t, logs2.String(), "RBAC rejected")
	assert.Contains(t, logs1.String(), "connection complete")

	var dump struct {
		Workloads    []map[string]any
		Services     []map[string]any
		Policies     []map[string]any
		Certificates []map[string]any
	}
	require.NoError(t, json.Unmarshal([]byte(get(t, "http://127.78.0.2:15000/config_dump")), &dump))
	assert.Len(t, dump.Workloads, 2)
	assert.Len(t, dump.Policies, 1, "the converted echo policy")
	require.Len(t, dump.Certificates, 1)
	assert.Equal(t, "spiffe://cluster.local/ns/default/sa/sleep", dump.Certificates[0]["identity"])
}

// TestReload swaps the state when Reload receives: a workload added to the
// file shows in the config dump; a broken file keeps the previous state.
func TestReload(t *testing.T) {
	leakcheck.Check(t)
	defer http.DefaultClient.CloseIdleConnections()
	cfgPath, polDir, _ := writeFiles(t)
	cfg, err := parseFlags([]string{"-config", cfgPath, "-policies", polDir, "-node", "n1", "-ip", "127.78.0.60"}, io.Discard)
	require.NoError(t, err)
	reload := make(chan struct{})
	cfg.Reload = reload
	var logs syncBuf
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	defer func() { cancel(); assert.NoError(t, <-done) }()
	waitReady(t, "http://127.78.0.60:15021/healthz/ready")
	count := func() int {
		var d struct{ Workloads []map[string]any }
		require.NoError(t, json.Unmarshal([]byte(get(t, "http://127.78.0.60:15000/config_dump")), &d))
		return len(d.Workloads)
	}
	require.Equal(t, 2, count())

	more := meshYAML[:strings.Index(meshYAML, "\nservices:")+1] + `- uid: c//Pod/default/new
  name: new
  namespace: default
  workloadIps: ["127.78.0.7"]
  protocol: HBONE
  node: n1
` + meshYAML[strings.Index(meshYAML, "\nservices:")+1:]
	require.NoError(t, os.WriteFile(cfgPath, []byte(more), 0o600))
	reload <- struct{}{}
	require.Eventually(t, func() bool { return count() == 3 }, 5*time.Second, 10*time.Millisecond, "logs: %s", &logs)

	require.NoError(t, os.WriteFile(cfgPath, []byte("workloads: [{name: broken}]"), 0o600))
	reload <- struct{}{}
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "reload failed") }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, 3, count())
}

// TestBadPolicy: a policy file that does not parse stops the ztunnel
// (fail closed) with the file and field named; so does Istio YAML, which
// the ztunnel does not read.
func TestBadPolicy(t *testing.T) {
	cfgPath, polDir, _ := writeFiles(t)
	bad := filepath.Join(polDir, "zz.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("policies: [{name: p, namespace: default, scope: Global, action: Deny, rules: [[[{notPrincipals: [x]}]]], dryRun: false}]"), 0o600))
	var stderr bytes.Buffer
	assert.Equal(t, 1, run(context.Background(), []string{"-config", cfgPath, "-policies", polDir, "-ip", "127.78.0.9"}, &stderr))
	assert.Contains(t, stderr.String(), "zz.yaml: proxy: local config: ztunnel: policies[0].rules[0][0][0].notPrincipals[0] (line 1): must be a tagged string match")

	require.NoError(t, os.WriteFile(bad, []byte(policyYAML), 0o600))
	stderr.Reset()
	assert.Equal(t, 1, run(context.Background(), []string{"-config", cfgPath, "-policies", bad, "-ip", "127.78.0.9"}, &stderr))
	assert.Contains(t, stderr.String(), "zz.yaml: proxy: local config: yaml: unmarshal errors")
}

func TestBadConfig(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(p, []byte("workloads: [{name: a, namespace: d, workloadIps: [nope]}]"), 0o600))
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"-config", p, "-ip", "127.78.0.9"}, &stderr)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr.String(), "workloads[0].workloadIps[0]")
	assert.Equal(t, 2, run(context.Background(), []string{"-nope"}, io.Discard))
	_ = fmt.Sprint
}

// TestReloadClosesDeniedConnection: a reload whose policy no longer
// allows an open connection closes it at the destination ztunnel, which
// says why in its log; the client reads the end of the connection.
func TestReloadClosesDeniedConnection(t *testing.T) {
	leakcheck.Check(t)
	defer http.DefaultClient.CloseIdleConnections()
	cfgPath, polDir, caDir := writeFiles(t)
	ln, err := net.Listen("tcp", "127.78.0.3:8080")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); io.Copy(c, c); c.Close() }()
		}
	}()
	defer func() { ln.Close(); wg.Wait() }()

	ctx, cancel := context.WithCancel(context.Background())
	var logs1, logs2 syncBuf
	common := []string{"-config", cfgPath, "-policies", polDir, "-ca-dir", caDir}
	d1 := startZtunnel(t, ctx, append([]string{"-node", "n1", "-ip", "127.78.0.2", "-socks5-source", "c//Pod/default/sleep"}, common...), &logs1)
	cfg2, err := parseFlags(append([]string{"-node", "n2", "-ip", "127.78.0.3"}, common...), io.Discard)
	require.NoError(t, err)
	reload := make(chan struct{})
	cfg2.Reload = reload
	cfg2.Logger = slog.New(slog.NewTextHandler(&logs2, nil))
	d2 := make(chan error, 1)
	go func() { d2 <- Run(ctx, cfg2) }()
	defer func() {
		cancel()
		assert.Equal(t, 0, <-d1)
		assert.NoError(t, <-d2)
	}()
	waitReady(t, "http://127.78.0.2:15021/healthz/ready")
	waitReady(t, "http://127.78.0.3:15021/healthz/ready")

	d, err := xproxy.SOCKS5("tcp", "127.78.0.2:15080", nil, &net.Dialer{Timeout: 5 * time.Second})
	require.NoError(t, err)
	c, err := d.Dial("tcp", "127.78.10.1:80")
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(c, "ping")
	require.NoError(t, err)
	b := make([]byte, 4)
	_, err = io.ReadFull(c, b)
	require.NoError(t, err)
	require.Equal(t, "ping", string(b))

	// The same policy, for another caller: sleep is no longer allowed.
	other := strings.Replace(policyYAML, "sa/sleep", "sa/other", 1)
	require.NoError(t, os.WriteFile(filepath.Join(polDir, "echo.yaml"), ztunnelPolicies(t, other), 0o600))
	reload <- struct{}{}
	n, err := c.Read(b)
	assert.Zero(t, n)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the connection was left open; logs: %s", &logs2)
	require.Eventually(t, func() bool {
		return strings.Contains(logs2.String(), "connection closed due to policy change")
	}, 5*time.Second, 10*time.Millisecond, "logs: %s", &logs2)
	assert.Contains(t, logs2.String(), "connection no longer allowed after a state update")
}
