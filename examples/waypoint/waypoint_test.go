package main

import (
	"bytes"
	"context"
	"encoding/json"
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

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	xproxy "golang.org/x/net/proxy"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/meshblocks/meshblocks/proxy"
)

// The test mesh lives in 127.82.0.0/16: sleep and curl on node n1, the
// web and db app on node n2, the waypoint at 127.82.0.4.
const meshYAML = `
workloads:
- {uid: c//Pod/default/sleep, name: sleep, namespace: default, serviceAccount: sleep,
   workloadIps: ["127.82.0.2"], protocol: HBONE, node: n1, workloadName: sleep, canonicalName: sleep}
- {uid: c//Pod/default/curl, name: curl, namespace: default, serviceAccount: curl,
   workloadIps: ["127.82.0.3"], protocol: HBONE, node: n1}
- {uid: c//Pod/default/waypoint, name: waypoint-5f6d, namespace: default, serviceAccount: waypoint,
   workloadIps: ["127.82.0.4"], protocol: HBONE, node: n3,
   labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
- uid: c//Pod/default/web
  name: web
  namespace: default
  serviceAccount: web
  workloadIps: ["127.82.0.11"]
  protocol: HBONE
  node: n2
  workloadName: web
  labels: {app: web, version: v1}
  services:
    "default/web.default.svc.cluster.local": {80: 8080}
    "default/db.default.svc.cluster.local": {5432: 9000}
services:
- {name: web, namespace: default, hostname: web.default.svc.cluster.local, vips: ["/127.82.10.1"],
   ports: {80: 8080}, waypoint: {destination: "/127.82.0.4", hboneMtlsPort: 15008}}
- {name: db, namespace: default, hostname: db.default.svc.cluster.local, vips: ["/127.82.10.2"],
   ports: {5432: 9000}, waypoint: {destination: "/127.82.0.4", hboneMtlsPort: 15008}}
`

const policyGET = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-viewer, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {methods: [GET]}}]
`

const routesYAML = `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /v2/}}]
    rewrite: {uri: /}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  ports: [{name: tcp-postgres, port: 5432, targetPort: 9000}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated, namespace: default}
data: {a: b}
`

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type files struct{ dir, mesh, istio, ca string }

func writeFiles(t testing.TB) files {
	dir := t.TempDir()
	f := files{dir: dir, mesh: filepath.Join(dir, "mesh.yaml"), istio: filepath.Join(dir, "istio"), ca: filepath.Join(dir, "ca")}
	require.NoError(t, os.WriteFile(f.mesh, []byte(meshYAML), 0o600))
	require.NoError(t, os.Mkdir(f.istio, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(f.istio, "policy.yaml"), []byte(policyGET), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(f.istio, "routes.yml"), []byte(routesYAML), 0o600))
	return f
}

// nodes runs the two node proxies the waypoint sits between, with the
// CA the waypoint loads from f.ca, the web app (HTTP on 8080, TCP echo on
// 9000), and returns node n1's SOCKS5 address.
func nodes(t *testing.T, f files) string {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: td})
	require.NoError(t, err)
	require.NoError(t, ca.WriteDir(f.ca))
	ids, err := identity.NewManager(identity.ManagerConfig{Fetcher: ca})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	idsDone := make(chan struct{})
	go func() { ids.Run(ctx); close(idsDone) }()
	lc, err := proxy.ParseLocalConfig([]byte(meshYAML))
	require.NoError(t, err)
	st, err := proxy.NewState(lc.Workloads, lc.Services)
	require.NoError(t, err)
	holder := &proxy.StateHolder{}
	holder.Store(st)
	mk := func(node string) *proxy.Proxy {
		p, err := proxy.New(proxy.Config{State: holder, Node: node, BindSourceIP: true,
			Identity: func(id spiffeid.ID) identity.Source { return ids.Source(id) }})
		require.NoError(t, err)
		return p
	}
	a, b := mk("n1"), mk("n2")
	listen := func(addr string) net.Listener {
		ln, err := net.Listen("tcp", addr)
		require.NoError(t, err)
		return ln
	}
	socks, inbound := listen("127.82.1.1:0"), listen("127.82.0.11:15008")
	web, db := listen("127.82.0.11:8080"), listen("127.82.0.11:9000")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "web %s %s", r.Method, r.URL.Path)
	})}
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); a.ServeSOCKS5(socks, "") }()
	go func() { defer wg.Done(); b.ServeInboundHBONE(inbound) }()
	go func() { defer wg.Done(); srv.Serve(web) }()
	go func() {
		defer wg.Done()
		for {
			c, err := db.Accept()
			if err != nil {
				return
			}
			io.Copy(c, c)
			c.Close()
		}
	}()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		a.Shutdown(sctx)
		b.Shutdown(sctx)
		srv.Close()
		db.Close()
		wg.Wait()
		cancel()
		<-idsDone
	})
	return socks.Addr().String()
}

var vips = map[string]string{"web.default.svc.cluster.local": "127.82.10.1", "db.default.svc.cluster.local": "127.82.10.2"}

// client is an app at src that reaches Services through node n1's SOCKS5
// listener.
func client(t *testing.T, socks, src string) (*http.Client, xproxy.ContextDialer) {
	fwd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	d, err := xproxy.SOCKS5("tcp", socks, nil, fwd)
	require.NoError(t, err)
	cd := d.(xproxy.ContextDialer)
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, _ := net.SplitHostPort(addr)
		return cd.DialContext(ctx, network, net.JoinHostPort(vips[host], port))
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, cd
}

func call(t *testing.T, c *http.Client, method, url string) (int, string) {
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
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

func TestWaypointBetweenTwoNodeProxies(t *testing.T) {
	leakcheck.Check(t)
	defer http.DefaultClient.CloseIdleConnections()
	f := writeFiles(t)
	socks := nodes(t, f)
	cfg, err := parseFlags([]string{"-config", f.mesh, "-istio", f.istio, "-ca-dir", f.ca, "-uid", "c//Pod/default/waypoint"}, io.Discard)
	require.NoError(t, err)
	reload := make(chan struct{})
	cfg.Reload = reload
	var logs syncBuf
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	defer func() { cancel(); assert.NoError(t, <-done) }()
	waitReady(t, "http://127.82.0.4:15021/healthz/ready")

	sleep, sleepDial := client(t, socks, "127.82.0.2")
	code, body := call(t, sleep, "GET", "http://web.default.svc.cluster.local/v2/items")
	assert.Equal(t, 200, code)
	assert.Equal(t, "web GET /items", body, "rewritten by the VirtualService")
	code, body = call(t, sleep, "POST", "http://web.default.svc.cluster.local/items")
	assert.Equal(t, 403, code)
	assert.Equal(t, "RBAC: access denied", body)

	// TCP through the waypoint: a tcp port is relayed.
	c, err := sleepDial.(xproxy.Dialer).Dial("tcp", "127.82.10.2:5432")
	require.NoError(t, err)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "select 1")
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, "select 1", string(b))
	c.Close()

	// Metrics with Istio's names and labels.
	require.Eventually(t, func() bool {
		text := get(t, "http://127.82.0.4:15020/stats/prometheus")
		return strings.Contains(text, `istio_tcp_connections_closed_total{`) &&
			strings.Contains(text, `response_code="403"`)
	}, 5*time.Second, 20*time.Millisecond)
	text := get(t, "http://127.82.0.4:15020/metrics")
	for _, want := range []string{
		`# TYPE istio_requests_total counter`,
		`# TYPE istio_request_duration_milliseconds histogram`,
		`connection_security_policy="mutual_tls",destination_app="web",destination_canonical_revision="v1",destination_canonical_service="web",destination_cluster="unknown",destination_principal="spiffe://cluster.local/ns/default/sa/web",destination_service="web.default.svc.cluster.local",destination_service_name="web",destination_service_namespace="default",destination_version="v1",destination_workload="web",destination_workload_namespace="default",grpc_response_status="-",reporter="waypoint",request_protocol="http",response_code="200",response_flags="-"`,
		`response_code="403",response_flags="RBAC",source_app="sleep"`,
		`request_protocol="tcp",response_flags="-"`,
	} {
		assert.Contains(t, text, want)
	}
	assert.Regexp(t, `istio_requests_total\{[^}]*response_code="403"[^}]*\} 1\n`, text)
	assert.Regexp(t, `istio_request_duration_milliseconds_count\{[^}]*response_code="200"[^}]*\} 1\n`, text)
	assert.Regexp(t, `istio_tcp_received_bytes_total\{[^}]*destination_service="db.default.svc.cluster.local"[^}]*\} 8\n`, text)

	var d dump
	require.NoError(t, json.Unmarshal([]byte(get(t, "http://127.82.0.4:15000/config_dump")), &d))
	assert.Equal(t, "spiffe://cluster.local/ns/default/sa/waypoint", d.Identity)
	assert.Equal(t, "default/waypoint", d.Gateway)
	assert.ElementsMatch(t, []string{"default/web.default.svc.cluster.local", "default/db.default.svc.cluster.local"}, d.Services)
	assert.Equal(t, []string{"default/web-viewer"}, d.Policies)
	assert.Equal(t, []string{"VirtualService default/web"}, d.Routes)
	assert.Equal(t, map[string]string{"db.default.svc.cluster.local:5432": "tcp-postgres"}, d.AppProtocols)
	require.Len(t, d.Ignored, 1)
	assert.Contains(t, d.Ignored[0], "v1 ConfigMap default/unrelated")
	assert.Contains(t, logs.String(), "ignored: not configuration a waypoint reads")
	assert.Contains(t, logs.String(), "RBAC rejected")

	// Reload: POST becomes allowed; a broken file keeps what is in force.
	require.NoError(t, os.WriteFile(filepath.Join(f.istio, "policy.yaml"), []byte(strings.Replace(policyGET, "[GET]", "[GET, POST]", 1)), 0o600))
	reload <- struct{}{}
	require.Eventually(t, func() bool {
		code, _ := call(t, sleep, "POST", "http://web.default.svc.cluster.local/items")
		return code == 200
	},
		5*time.Second, 20*time.Millisecond, "logs: %s", &logs)
	require.NoError(t, os.WriteFile(filepath.Join(f.istio, "zz.yaml"), []byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {hosts: [web], http: [{route: [{destination: {host: web}, weight: -5}]}]}\n"), 0o600))
	reload <- struct{}{}
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "reload failed") }, 5*time.Second, 10*time.Millisecond)
	code, _ = call(t, sleep, "POST", "http://web.default.svc.cluster.local/items")
	assert.Equal(t, 200, code)
	curl, _ := client(t, socks, "127.82.0.3")
	code, _ = call(t, curl, "GET", "http://web.default.svc.cluster.local/items")
	assert.Equal(t, 403, code)
}

func TestBadInput(t *testing.T) {
	f := writeFiles(t)
	var stderr bytes.Buffer
	require.NoError(t, os.WriteFile(filepath.Join(f.istio, "bad.yaml"), []byte(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{from: [{source: {principals: [7]}}]}]
`), 0o600))
	assert.Equal(t, 1, run(context.Background(), []string{"-config", f.mesh, "-istio", f.istio, "-uid", "c//Pod/default/waypoint", "-hbone", "127.82.0.9:0"}, &stderr))
	assert.Contains(t, stderr.String(), "bad.yaml")
	assert.Contains(t, stderr.String(), "spec.rules[0].from[0].source.principals[0]")

	stderr.Reset()
	assert.Equal(t, 1, run(context.Background(), []string{"-config", f.mesh, "-uid", "nope"}, &stderr))
	assert.Contains(t, stderr.String(), `-uid "nope": no such workload`)
	stderr.Reset()
	assert.Equal(t, 1, run(context.Background(), []string{"-config", f.mesh}, &stderr))
	assert.Contains(t, stderr.String(), "set -uid")
	assert.Equal(t, 2, run(context.Background(), []string{"-nope"}, io.Discard))
	assert.Equal(t, 1, run(context.Background(), []string{"-config", filepath.Join(f.dir, "missing.yaml"), "-uid", "x"}, io.Discard))
}
