package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
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

const zdsYAML = `
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
- uid: c//Pod/other/pod-c
  name: pod-c
  namespace: other
  serviceAccount: echo
  workloadIps: ["10.40.2.2"]
  protocol: HBONE
  node: node2
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

// zdsLab is the spec's single-host topology (inpod.md §4.1, with the two
// nodes linked directly instead of through a bridge): node1 with pods A
// (10.40.1.2) and B (10.40.1.3), node2 with pod C (10.40.2.2), each pod on
// a point-to-point veth to its node, as the CNI ptp plugin does.
type zdsLab struct {
	node1, node2, a, b, c *inpodtest.Namespace
}

func newZDSLab(t *testing.T) *zdsLab {
	l := &zdsLab{node1: inpodtest.NewNamespace(t), node2: inpodtest.NewNamespace(t)}
	for _, n := range []*inpodtest.Namespace{l.node1, l.node2} {
		n.Run("sysctl", "-qw", "net.ipv4.ip_forward=1")
		n.Run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
		n.Run("sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0")
	}
	l.node1.Link(l.node2, "172.30.0.11/16", "172.30.0.12/16")
	l.node1.Run("ip", "route", "add", "10.40.2.0/24", "via", "172.30.0.12")
	l.node2.Run("ip", "route", "add", "10.40.1.0/24", "via", "172.30.0.11")
	pod := func(node *inpodtest.Namespace, gw, ip string) *inpodtest.Namespace {
		p := inpodtest.NewNamespace(t)
		nodeIf, podIf := node.Link(p, gw+"/32", ip+"/32")
		node.Run("ip", "route", "add", ip+"/32", "dev", nodeIf, "scope", "host")
		p.Run("ip", "route", "add", gw, "dev", podIf, "scope", "link", "src", ip)
		p.Run("ip", "route", "add", "default", "via", gw, "dev", podIf, "src", ip)
		return p
	}
	l.a = pod(l.node1, "10.40.1.1", "10.40.1.2")
	l.b = pod(l.node1, "10.40.1.1", "10.40.1.3")
	l.c = pod(l.node2, "10.40.2.1", "10.40.2.2")
	return l
}

// echoApp is an app in a pod: it echoes and records its clients'
// addresses.
type echoApp struct {
	mu      sync.Mutex
	clients []netip.Addr
}

func (e *echoApp) last() netip.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.clients) == 0 {
		return netip.Addr{}
	}
	return e.clients[len(e.clients)-1]
}

func startEcho(t *testing.T, ns *inpodtest.Namespace, addr string) *echoApp {
	ln, err := ns.Netns.Listen(context.Background(), "tcp", addr, inpod.SocketOptions{})
	require.NoError(t, err)
	e := &echoApp{}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.clients = append(e.clients, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
			e.mu.Unlock()
			wg.Go(func() { io.Copy(c, c); c.Close() })
		}
	})
	return e
}

// call connects from the app in pod from to addr (redirected by the
// in-pod rules like any app traffic) and returns what the far end echoed.
func call(from *inpodtest.Namespace, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := from.Netns.Dial(ctx, "tcp", addr, netip.Addr{}, inpod.SocketOptions{})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := "hello from " + from.Name
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err == nil && string(got) != msg {
		err = fmt.Errorf("echo %q, want %q", got, msg)
	}
	return string(got), err
}

// forwardCount returns the packet counter of the FORWARD rule with the
// given comment in ns.
func forwardCount(t *testing.T, ns *inpodtest.Namespace, comment string) int {
	for _, line := range strings.Split(ns.Run("iptables", "-nvx", "-L", "FORWARD"), "\n") {
		if strings.Contains(line, "/* "+comment+" */") {
			n, err := strconv.Atoi(strings.Fields(line)[0])
			require.NoError(t, err)
			return n
		}
	}
	t.Fatalf("no FORWARD rule %q", comment)
	return 0
}

// inPodPorts lists the proxy ports listening in ns.
func inPodPorts(ns *inpodtest.Namespace) []string {
	var ports []string
	out := ns.Run("ss", "-Htln")
	for _, p := range []string{"15001", "15006", "15008"} {
		if strings.Contains(out, ":"+p+" ") {
			ports = append(ports, p)
		}
	}
	return ports
}

// ztunnelProc is one ztunnel Run in the test process.
type ztunnelProc struct {
	logs syncBuf
	stop func()
}

func startZDSZtunnel(t *testing.T, cfgPath, caDir, node, zds, ip string) *ztunnelProc {
	cfg, err := parseFlags([]string{"-config", cfgPath, "-ca-dir", caDir, "-node", node, "-zds", zds,
		"-outbound", "", "-inbound", "", "-inbound-plaintext", "", "-socks5", "", "-metrics", "", "-admin", "",
		"-readiness", ip + ":15021"}, io.Discard)
	require.NoError(t, err)
	z := &ztunnelProc{}
	cfg.Logger = slog.New(slog.NewTextHandler(&z.logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	var once sync.Once
	z.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				assert.NoError(t, err)
			case <-time.After(15 * time.Second):
				t.Error("ztunnel did not stop")
			}
		})
	}
	t.Cleanup(z.stop)
	waitReady(t, "http://"+ip+":15021/healthz/ready")
	return z
}

// nodeAgent is one node agent: our ZDS server programming the real in-pod
// rules.
type nodeAgent struct {
	srv  *inpod.Server
	stop func()
}

func startAgent(t *testing.T, path string) *nodeAgent {
	srv, err := inpod.NewServer(inpod.ServerConfig{Path: path, Rules: &inpod.Rules{}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	a := &nodeAgent{srv: srv, stop: func() {
		once.Do(func() {
			cancel()
			assert.NoError(t, <-done)
			srv.Close() // the rules stay in the pods, as when istio-cni restarts
		})
	}}
	t.Cleanup(a.stop)
	return a
}

func (a *nodeAgent) add(t *testing.T, uid string, info inpod.WorkloadInfo, ns *inpodtest.Namespace) {
	err := a.srv.AddPod(context.Background(), uid, info, "/var/run/netns/"+ns.Name)
	if !errors.Is(err, inpod.ErrNoConnection) {
		require.NoError(t, err)
	}
}

// TestInPodZDS is the spec's end-to-end recipe (inpod.md §4): per node, our
// node agent programs the in-pod rules and hands the pods to our ztunnel
// over ZDS; pod-to-pod TCP, on one node and across nodes, travels as mTLS
// HBONE to the destination pod's 15008 with policy enforced and the
// client's address preserved; and the ZDS lifecycle cases hold: capture
// fails closed without a ztunnel (§4.3 #0), a restarted ztunnel gets its
// snapshot back (#8), a restarted agent's smaller snapshot drops the
// missing pod (#9), and a deleted pod loses its listeners (#10).
func TestInPodZDS(t *testing.T) {
	inpodtest.RequireRoot(t)
	leakcheck.Check(t)
	defer http.DefaultClient.CloseIdleConnections()
	l := newZDSLab(t)
	appB := startEcho(t, l.b, "10.40.1.3:8080")
	startEcho(t, l.b, "10.40.1.3:9090")
	appC := startEcho(t, l.c, "10.40.2.2:8080")
	// What crosses node1: only HBONE may carry pod traffic.
	l.node1.Run("iptables", "-A", "FORWARD", "-p", "tcp", "--dport", "15008", "-m", "comment", "--comment", "hbone")
	l.node1.Run("iptables", "-A", "FORWARD", "-p", "tcp", "--dport", "8080", "-m", "comment", "--comment", "plain")

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "mesh.yaml")
	require.NoError(t, os.WriteFile(cfgPath, []byte(zdsYAML), 0o600))
	caDir := filepath.Join(dir, "ca")
	sock1, sock2 := filepath.Join(dir, "node1.sock"), filepath.Join(dir, "node2.sock")
	infoA := inpod.WorkloadInfo{Name: "pod-a", Namespace: "default", ServiceAccount: "sleep"}
	infoB := inpod.WorkloadInfo{Name: "pod-b", Namespace: "default", ServiceAccount: "echo"}
	infoC := inpod.WorkloadInfo{Name: "pod-c", Namespace: "other", ServiceAccount: "echo"}

	agent1, agent2 := startAgent(t, sock1), startAgent(t, sock2)
	agent1.add(t, "uid-a", infoA, l.a)
	agent1.add(t, "uid-b", infoB, l.b)
	agent2.add(t, "uid-c", infoC, l.c)

	// #0: the rules are in and no ztunnel runs: connections fail closed.
	_, err := call(l.a, "10.40.1.3:8080")
	require.ErrorContains(t, err, "connection refused")

	z1 := startZDSZtunnel(t, cfgPath, caDir, "node1", sock1, "127.78.0.61")
	z2 := startZDSZtunnel(t, cfgPath, caDir, "node2", sock2, "127.78.0.62")
	require.Equal(t, []string{"15001", "15006", "15008"}, inPodPorts(l.a), "listeners inside pod A")

	// #2: same node. #3: across nodes. Both keep the client's address.
	_, err = call(l.a, "10.40.1.3:8080")
	require.NoError(t, err)
	require.Equal(t, netip.MustParseAddr("10.40.1.2"), appB.last(), "pod B's app sees pod A's address")
	_, err = call(l.a, "10.40.2.2:8080")
	require.NoError(t, err)
	require.Equal(t, netip.MustParseAddr("10.40.1.2"), appC.last(), "pod C's app sees pod A's address")
	waitLog(t, &z1.logs, "direction=outbound", "dst.hbone_addr=10.40.1.3:8080")
	waitLog(t, &z1.logs, "direction=inbound", "src.identity=spiffe://cluster.local/ns/default/sa/sleep", "dst.workload=pod-b")
	waitLog(t, &z1.logs, "direction=outbound", "dst.hbone_addr=10.40.2.2:8080")
	waitLog(t, &z2.logs, "direction=inbound", "src.identity=spiffe://cluster.local/ns/default/sa/sleep", "dst.workload=pod-c")
	// #4: on the wire, HBONE only.
	require.Positive(t, forwardCount(t, l.node1, "hbone"))
	require.Zero(t, forwardCount(t, l.node1, "plain"), "no plaintext pod traffic crosses the node")

	// Policy: pod B accepts sleep on 8080 only.
	got, err := call(l.a, "10.40.1.3:9090")
	require.Error(t, err, "denied, got %q", got)
	waitLog(t, &z1.logs, "RBAC rejected", "no ALLOW policy matched: default/pod-b-from-sleep")

	// #8: ztunnel stops: capture fails closed; it restarts and gets the
	// snapshot again.
	z1.stop()
	_, err = call(l.a, "10.40.1.3:8080")
	require.ErrorContains(t, err, "connection refused")
	z1 = startZDSZtunnel(t, cfgPath, caDir, "node1", sock1, "127.78.0.61")
	_, err = call(l.a, "10.40.1.3:8080")
	require.NoError(t, err)

	// #9: the agent restarts knowing only pod A; the ztunnel reconnects,
	// keeps A (same namespace) and drops B once the snapshot ends.
	agent1.stop()
	agent1 = startAgent(t, sock1)
	agent1.add(t, "uid-a", infoA, l.a)
	require.Eventually(t, func() bool { return len(inPodPorts(l.b)) == 0 }, 10*time.Second, 20*time.Millisecond,
		"pod B's listeners close after the new snapshot")
	require.Equal(t, []string{"15001", "15006", "15008"}, inPodPorts(l.a))
	// B's tunnels closed with its listeners: A's ztunnel dials B's 15008
	// afresh, and nothing listens there now.
	got, err = call(l.a, "10.40.1.3:8080")
	require.Error(t, err, "B is no longer served, got %q", got)
	waitLog(t, &z1.logs, "direction=outbound", "dst.hbone_addr=10.40.1.3:8080", "connection refused")
	_, err = call(l.a, "10.40.2.2:8080")
	require.NoError(t, err, "A still reaches C")

	// #10: the agent deletes pod C: its listeners close and its rules go.
	require.NoError(t, agent2.srv.RemovePod(context.Background(), "uid-c"))
	require.Eventually(t, func() bool { return len(inPodPorts(l.c)) == 0 }, 5*time.Second, 20*time.Millisecond)
	require.NotContains(t, l.c.Run("iptables-save"), "ISTIO")
	require.NotContains(t, l.c.Run("ip", "rule"), "0x111")
}

// waitLog waits until one line of logs contains every part.
func waitLog(t *testing.T, logs *syncBuf, parts ...string) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, line := range strings.Split(logs.String(), "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond, "no log line with %q in:\n%s", parts, logs.String())
}
