//go:build linux

package inpod_test

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/meshblocks/meshblocks/inpod"
	"github.com/meshblocks/meshblocks/inpod/inpodtest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
)

// serverLab runs a Server on a temporary socket.
type serverLab struct {
	path   string
	srv    *inpod.Server
	done   chan error
	cancel context.CancelFunc
}

func newServerLab(t *testing.T, cfg inpod.ServerConfig) *serverLab {
	t.Helper()
	l := &serverLab{path: sockPath(t), done: make(chan error, 1)}
	cfg.Path = l.path
	cfg.AcceptInterval = cmpOr(cfg.AcceptInterval, -1)
	var err error
	l.srv, err = inpod.NewServer(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	go func() { l.done <- l.srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-l.done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("Server.Run did not return")
		}
		l.srv.Close()
		_, err := os.Stat(l.path)
		require.ErrorIs(t, err, os.ErrNotExist, "Run removes its socket")
	})
	return l
}

func cmpOr(v, d time.Duration) time.Duration {
	if v == 0 {
		return d
	}
	return v
}

// expectAdd reads an AddWorkload and checks it carries exactly one
// descriptor, of ns's namespace.
func expectAdd(t *testing.T, p *rawPeer, uid string, ns *inpod.Netns) *inpod.AddWorkload {
	t.Helper()
	r, fds := p.request()
	add, ok := r.(*inpod.AddWorkload)
	require.True(t, ok, "want add %s, got %#v", uid, r)
	require.Equal(t, uid, add.UID)
	require.NotNil(t, add.WorkloadInfo, "an add always carries workload_info")
	require.Len(t, fds, 1, "an add carries exactly one descriptor")
	var st unix.Stat_t
	require.NoError(t, unix.Fstat(fds[0], &st))
	closeTestFDs(fds)
	require.Equal(t, ns.Inode(), st.Ino, "the descriptor is the pod's namespace")
	return add
}

func expectNoFDs(t *testing.T, p *rawPeer) inpod.WorkloadRequest {
	t.Helper()
	r, fds := p.request()
	closeTestFDs(fds)
	require.Empty(t, fds)
	return r
}

func TestServerSnapshotThenLive(t *testing.T) {
	leakcheck.Check(t)
	a, b, c := inpodtest.NewNamespace(t), inpodtest.NewNamespace(t), inpodtest.NewNamespace(t)
	l := newServerLab(t, inpod.ServerConfig{})
	ctx := context.Background()
	infoB := inpod.WorkloadInfo{Name: "pod-b", Namespace: "ns", ServiceAccount: "sa-b"}

	// Before any proxy connects, adds are cached and report ErrNoConnection.
	err := l.srv.AddPod(ctx, "uid-b", infoB, "/var/run/netns/"+b.Name)
	require.ErrorIs(t, err, inpod.ErrNoConnection)
	require.ErrorIs(t, l.srv.AddPodNetns(ctx, "uid-a", infoA, mustOpen(t, a)), inpod.ErrNoConnection)
	l.srv.KeepPod("uid-k", inpod.WorkloadInfo{Name: "pod-k"})
	require.Equal(t, []string{"uid-a", "uid-b", "uid-k"}, l.srv.Pods())

	// A proxy connects: the snapshot, sorted by uid, then SnapshotSent.
	p := dialRaw(t, l.path)
	require.Equal(t, &infoA, expectAdd(t, p, "uid-a", a.Netns).WorkloadInfo)
	p.reply("")
	require.Equal(t, &infoB, expectAdd(t, p, "uid-b", b.Netns).WorkloadInfo)
	p.reply("")
	require.Equal(t, &inpod.KeepWorkload{UID: "uid-k"}, expectNoFDs(t, p))
	p.reply("")
	require.Equal(t, &inpod.SnapshotSent{}, expectNoFDs(t, p))
	p.reply("")
	require.Eventually(t, func() bool { return l.srv.Connections() == 1 }, 5*time.Second, 5*time.Millisecond)

	// Live: an add goes out and waits for its ack.
	errc := make(chan error, 1)
	go func() { errc <- l.srv.AddPod(ctx, "uid-c", infoA, "/var/run/netns/"+c.Name) }()
	expectAdd(t, p, "uid-c", c.Netns)
	p.reply("")
	require.NoError(t, <-errc)

	// A NACK is returned to the caller; the pod stays cached.
	go func() { errc <- l.srv.AddPod(ctx, "uid-c", infoA, "/var/run/netns/"+c.Name) }()
	expectAdd(t, p, "uid-c", c.Netns)
	p.reply("bind failed")
	err = <-errc
	var nack *inpod.NackError
	require.ErrorAs(t, err, &nack)
	require.Equal(t, &inpod.NackError{Request: "add uid-c", Reason: "bind failed"}, nack)
	require.Contains(t, l.srv.Pods(), "uid-c")

	// Remove: a del, and the handle is closed.
	require.Equal(t, 2, openNetnsFDs(t, a.Netns))
	go func() { errc <- l.srv.RemovePod(ctx, "uid-a") }()
	require.Equal(t, &inpod.DelWorkload{UID: "uid-a"}, expectNoFDs(t, p))
	p.reply("")
	require.NoError(t, <-errc)
	require.Equal(t, []string{"uid-b", "uid-c", "uid-k"}, l.srv.Pods())
	require.Equal(t, 1, openNetnsFDs(t, a.Netns), "the server's handle on pod a is closed")
}

func mustOpen(t *testing.T, ns *inpodtest.Namespace) *inpod.Netns {
	t.Helper()
	n, err := inpod.OpenNetns("/var/run/netns/" + ns.Name)
	require.NoError(t, err)
	return n
}

// Adds go to the newest connection only; deletes go to all of them. A
// connection that goes away is noticed by the keepalive.
func TestServerNewestAndBroadcast(t *testing.T) {
	leakcheck.Check(t)
	a, b := inpodtest.NewNamespace(t), inpodtest.NewNamespace(t)
	l := newServerLab(t, inpod.ServerConfig{KeepaliveInterval: 20 * time.Millisecond})
	ctx := context.Background()
	snapshot := func(p *rawPeer) {
		require.Equal(t, &inpod.SnapshotSent{}, expectNoFDs(t, p))
		p.reply("")
	}
	old := dialRaw(t, l.path)
	snapshot(old)
	require.Eventually(t, func() bool { return l.srv.Connections() == 1 }, 5*time.Second, 5*time.Millisecond)
	newer := dialRaw(t, l.path)
	snapshot(newer)
	require.Eventually(t, func() bool { return l.srv.Connections() == 2 }, 5*time.Second, 5*time.Millisecond)

	errc := make(chan error, 1)
	go func() { errc <- l.srv.AddPod(ctx, "uid-a", infoA, "/var/run/netns/"+a.Name) }()
	expectAdd(t, newer, "uid-a", a.Netns)
	newer.reply("")
	require.NoError(t, <-errc)
	_, err := old.tryRecv(100 * time.Millisecond)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "the older connection gets no add")

	go func() { errc <- l.srv.RemovePod(ctx, "uid-a") }()
	require.Equal(t, &inpod.DelWorkload{UID: "uid-a"}, expectNoFDs(t, old))
	require.Equal(t, &inpod.DelWorkload{UID: "uid-a"}, expectNoFDs(t, newer))
	old.reply("")
	newer.reply("")
	require.NoError(t, <-errc)

	// The newest proxy goes away: the keepalive drops it, and adds go to
	// the remaining one.
	newer.close()
	require.Eventually(t, func() bool { return l.srv.Connections() == 1 }, 5*time.Second, 5*time.Millisecond)
	go func() { errc <- l.srv.AddPod(ctx, "uid-b", infoA, "/var/run/netns/"+b.Name) }()
	expectAdd(t, old, "uid-b", b.Netns)
	old.reply("")
	require.NoError(t, <-errc)

	// A proxy that speaks unprompted breaks the protocol and is dropped.
	old.reply("")
	require.Eventually(t, func() bool { return l.srv.Connections() == 0 }, 5*time.Second, 5*time.Millisecond)
	_, err = old.tryRecv(5 * time.Second)
	require.Error(t, err)
	require.ErrorIs(t, l.srv.AddPod(ctx, "uid-b", infoA, "/var/run/netns/"+b.Name), inpod.ErrNoConnection)
}

// Adding a pod again with the same namespace keeps the cached handle and
// closes the new one; the add is sent again (the proxy ignores it).
func TestServerDuplicateInode(t *testing.T) {
	leakcheck.Check(t)
	a, a2 := inpodtest.NewNamespace(t), inpodtest.NewNamespace(t)
	l := newServerLab(t, inpod.ServerConfig{})
	ctx := context.Background()
	p := dialRaw(t, l.path)
	expectNoFDs(t, p)
	p.reply("")
	require.Eventually(t, func() bool { return l.srv.Connections() == 1 }, 5*time.Second, 5*time.Millisecond)
	errc := make(chan error, 1)
	for range 2 {
		go func() { errc <- l.srv.AddPod(ctx, "uid-a", infoA, "/var/run/netns/"+a.Name) }()
		expectAdd(t, p, "uid-a", a.Netns)
		p.reply("")
		require.NoError(t, <-errc)
		require.Equal(t, 2, openNetnsFDs(t, a.Netns), "the test's handle and one cached handle")
	}
	// A different namespace for the uid replaces the handle.
	go func() { errc <- l.srv.AddPod(ctx, "uid-a", infoA, "/var/run/netns/"+a2.Name) }()
	expectAdd(t, p, "uid-a", a2.Netns)
	p.reply("")
	require.NoError(t, <-errc)
	require.Equal(t, 1, openNetnsFDs(t, a.Netns), "the old handle is closed")
}

func TestServerProgramsRules(t *testing.T) {
	leakcheck.Check(t)
	a := inpodtest.NewNamespace(t)
	l := newServerLab(t, inpod.ServerConfig{Rules: &inpod.Rules{}})
	ctx := context.Background()
	p := dialRaw(t, l.path)
	expectNoFDs(t, p)
	p.reply("")
	require.Eventually(t, func() bool { return l.srv.Connections() == 1 }, 5*time.Second, 5*time.Millisecond)

	errc := make(chan error, 1)
	go func() { errc <- l.srv.AddPod(ctx, "uid-a", infoA, "/var/run/netns/"+a.Name) }()
	expectAdd(t, p, "uid-a", a.Netns)
	// The rules are in before the proxy hears of the pod.
	require.Contains(t, a.Run("iptables-save"), "-A OUTPUT -j ISTIO_OUTPUT")
	require.Contains(t, a.Run("ip", "rule"), "fwmark 0x111/0xfff lookup 100")
	p.reply("")
	require.NoError(t, <-errc)

	go func() { errc <- l.srv.RemovePod(ctx, "uid-a") }()
	require.Equal(t, &inpod.DelWorkload{UID: "uid-a"}, expectNoFDs(t, p))
	require.NotContains(t, a.Run("iptables-save"), "ISTIO", "the rules are out before the del")
	p.reply("")
	require.NoError(t, <-errc)
	require.NotContains(t, a.Run("ip", "rule"), "0x111")

	// A failure to program the rules is fatal for the pod: it is not
	// cached and the proxy hears nothing.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err := l.srv.AddPod(cctx, "uid-a", infoA, "/var/run/netns/"+a.Name)
	require.ErrorContains(t, err, "inpod: AddPod uid-a: inpod: apply iptables rules")
	require.Empty(t, l.srv.Pods())
	require.Equal(t, 1, openNetnsFDs(t, a.Netns), "the new handle is closed")
	_, err = p.tryRecv(100 * time.Millisecond)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
}

// A connection must start with a valid hello, and every request waits for
// a well-formed ack.
func TestServerRejectsBadProxies(t *testing.T) {
	leakcheck.Check(t)
	a := inpodtest.NewNamespace(t)
	var logs logBuf
	l := newServerLab(t, inpod.ServerConfig{AckTimeout: 200 * time.Millisecond, Logger: logs.logger()})
	ctx := context.Background()
	require.ErrorIs(t, l.srv.AddPod(ctx, "uid-a", infoA, "/var/run/netns/"+a.Name), inpod.ErrNoConnection)

	for _, hello := range [][]byte{{0x0a, 0x00}, {0x08}} {
		c := dialRawNoHello(t, l.path)
		c.send(hello)
		_, err := c.tryRecv(5 * time.Second)
		require.Error(t, err, "no snapshot without a valid hello")
	}
	require.Contains(t, logs.String(), "ZdsHello.version at byte 0: wire type 2")
	require.Contains(t, logs.String(), "ZdsHello.version at byte 0: bad varint")
	// No hello at all: dropped after AckTimeout.
	c := dialRawNoHello(t, l.path)
	_, err := c.tryRecv(5 * time.Second)
	require.Error(t, err)
	require.Zero(t, l.srv.Connections())

	tests := []struct {
		name  string
		reply func(p *rawPeer)
		want  string
	}{
		{"no reply", func(*rawPeer) {}, "waiting for the ack"},
		{"response without ack", func(p *rawPeer) { p.send([]byte{0x48, 0x01}) }, "inpod: ZDS protocol error: response without an ack"},
		{"garbage", func(p *rawPeer) { p.send([]byte{0x0a, 0x05}) }, "inpod: ZDS WorkloadResponse.ack at byte 0"},
		{"ack with a descriptor", func(p *rawPeer) {
			b, _ := inpod.WorkloadResponse{Ack: &inpod.Ack{}}.Marshal()
			p.send(b, int(a.Netns.Fd()))
		}, "the ack carried 1 file descriptors"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := dialRaw(t, l.path)
			r, fds := p.request()
			closeTestFDs(fds)
			require.IsType(t, &inpod.AddWorkload{}, r)
			tc.reply(p)
			require.Eventually(t, func() bool { return l.srv.Connections() == 0 }, 5*time.Second, 5*time.Millisecond)
			_, err := p.tryRecv(5 * time.Second)
			require.Error(t, err, "the server closed the connection")
			require.Contains(t, logs.String(), tc.want)
		})
	}
}

func dialRawNoHello(t *testing.T, path string) *rawPeer {
	t.Helper()
	var c *net.UnixConn
	require.Eventually(t, func() bool {
		var err error
		c, err = net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		return err == nil
	}, 5*time.Second, 5*time.Millisecond)
	t.Cleanup(func() { c.Close() })
	return &rawPeer{t: t, c: c}
}

func TestServerSocketFile(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	// A stale socket (a listener that did not unlink) is replaced.
	path := dir + "/stale.sock"
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	require.NoError(t, err)
	ln.SetUnlinkOnClose(false)
	ln.Close()
	srv, err := inpod.NewServer(inpod.ServerConfig{Path: path})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	p := dialRaw(t, path)
	require.Equal(t, &inpod.SnapshotSent{}, expectNoFDs(t, p))
	p.reply("")
	require.ErrorContains(t, srv.Run(ctx), "already running")
	srv.Close()
	require.ErrorIs(t, <-done, inpod.ErrServerClosed)
	cancel()
	require.ErrorIs(t, srv.Run(ctx), inpod.ErrServerClosed)

	// Anything else at the path is left alone.
	file := dir + "/file"
	require.NoError(t, os.WriteFile(file, []byte("x"), 0o600))
	srv, err = inpod.NewServer(inpod.ServerConfig{Path: file})
	require.NoError(t, err)
	require.ErrorContains(t, srv.Run(context.Background()), "exists and is not a socket")
	_, err = inpod.NewServer(inpod.ServerConfig{Rules: &inpod.Rules{PacketMark: 0x5000}})
	require.ErrorIs(t, err, inpod.ErrInvalidRules)
}

// Shutting down does not wait for a connection that never said hello.
func TestServerShutdownBeforeHello(t *testing.T) {
	leakcheck.Check(t)
	l := newServerLab(t, inpod.ServerConfig{AckTimeout: time.Minute})
	dialRawNoHello(t, l.path)
	l.cancel() // the lab's cleanup fails if Run takes more than 10 s
}
