package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/inpod"
	"github.com/meshblocks/meshblocks/inpod/inpodtest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
)

const inpodYAML = `
workloads:
- uid: c//Pod/default/pod-a
  name: pod-a
  namespace: default
  serviceAccount: sleep
  workloadIps: ["10.40.1.2"]
  protocol: HBONE
  node: node1
- uid: c//Pod/default/pod-b
  name: pod-b
  namespace: default
  serviceAccount: echo
  workloadIps: ["10.40.1.3"]
  protocol: HBONE
  node: node1
  authorizationPolicies: [default/pod-b-from-sleep]
policies:
# Only sleep (pod A) may reach pod B, and only on 8080.
- name: pod-b-from-sleep
  namespace: default
  scope: WorkloadSelector
  action: Allow
  rules:
  - - - destinationPorts: [8080]
    - - principals:
        - !Exact cluster.local/ns/default/sa/sleep
  dryRun: false
`

// TestInPod runs one ztunnel serving two pods in their own network
// namespaces: pod A's connection to pod B is redirected by iptables to
// 15001 inside A, tunnelled over HBONE from A's namespace to 15008 inside B,
// and delivered to B's app from inside B.
func TestInPod(t *testing.T) {
	inpodtest.RequireRoot(t)
	leakcheck.Check(t)
	defer http.DefaultClient.CloseIdleConnections()
	a, b := inpodtest.NewNamespace(t), inpodtest.NewNamespace(t)
	a.Link(b, "10.40.1.2/24", "10.40.1.3/24")
	// Pod A's app traffic to port 8080 goes to the proxy; the proxy's own
	// sockets carry the mark and are let through.
	a.Run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "mark", "--mark", "0x539", "-j", "RETURN")
	a.Run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "8080", "-j", "REDIRECT", "--to-ports", "15001")
	a.Run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9090", "-j", "REDIRECT", "--to-ports", "15001")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var apps []net.Listener
	defer func() {
		for _, l := range apps {
			l.Close()
		}
		wg.Wait()
	}()
	for _, addr := range []string{"10.40.1.3:8080", "10.40.1.3:9090"} {
		app, err := b.Netns.Listen(ctx, "tcp", addr, inpod.SocketOptions{})
		require.NoError(t, err)
		apps = append(apps, app)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := app.Accept()
				if err != nil {
					return
				}
				io.Copy(c, c)
				c.Close()
			}
		}()
	}

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "mesh.yaml")
	require.NoError(t, os.WriteFile(cfgPath, []byte(inpodYAML), 0o600))
	cfg, err := parseFlags([]string{"-config", cfgPath, "-node", "node1",
		"-outbound", "", "-inbound", "", "-inbound-plaintext", "", "-socks5", "",
		"-readiness", "127.78.0.50:15021", "-metrics", "127.78.0.50:15020", "-admin", "127.78.0.50:15000",
		"-pod", "c//Pod/default/pod-a=/var/run/netns/" + a.Name,
		"-pod", "c//Pod/default/pod-b=/var/run/netns/" + b.Name}, io.Discard)
	require.NoError(t, err)
	var logs syncBuf
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(runCtx, cfg) }()
	defer func() { stop(); assert.NoError(t, <-done) }()
	waitReady(t, "http://127.78.0.50:15021/healthz/ready")

	c, err := a.Netns.Dial(ctx, "tcp", "10.40.1.3:8080", netip.Addr{}, inpod.SocketOptions{})
	require.NoError(t, err)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(c, "in-pod hello")
	require.NoError(t, err)
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	c.Close()
	require.NoError(t, err)
	assert.Equal(t, "in-pod hello", string(got))
	require.Eventually(t, func() bool {
		return strings.Count(logs.String(), "connection complete") >= 2
	}, 5*time.Second, 10*time.Millisecond)
	assert.Contains(t, logs.String(), `direction=outbound`)
	assert.Contains(t, logs.String(), `dst.hbone_addr=10.40.1.3:8080`)
	assert.Contains(t, logs.String(), `src.identity=spiffe://cluster.local/ns/default/sa/sleep`)

	// Port 9090 is not allowed by pod B's policy: B's ztunnel refuses it,
	// and A's app sees its connection reset (curl's exit 56).
	c, err = a.Netns.Dial(ctx, "tcp", "10.40.1.3:9090", netip.Addr{}, inpod.SocketOptions{})
	if err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "denied?")
		_, err = io.ReadAll(c)
		c.Close()
	}
	require.Error(t, err, "the denied connection must not carry data")
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "RBAC rejected") }, 5*time.Second, 10*time.Millisecond)
	assert.Contains(t, logs.String(), "no ALLOW policy matched: default/pod-b-from-sleep")
}
