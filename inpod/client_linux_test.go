//go:build linux

package inpod_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/inpod"
	"github.com/meshblocks/meshblocks/inpod/inpodtest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
)

// clientLab runs a Client with a listenHandler against a rawAgent.
type clientLab struct {
	agent   *rawAgent
	client  *inpod.Client
	handler *listenHandler
	done    chan error
	cancel  context.CancelFunc
}

func newClientLab(t *testing.T, cfg inpod.ClientConfig) *clientLab {
	t.Helper()
	path := sockPath(t)
	l := &clientLab{agent: newRawAgent(t, path), handler: newListenHandler(), done: make(chan error, 1)}
	cfg.Path, cfg.Handler = path, l.handler
	var err error
	l.client, err = inpod.NewClient(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	go func() { l.done <- l.client.Run(ctx) }()
	t.Cleanup(func() { l.stop(t) })
	return l
}

// stop cancels Run and returns its error.
func (l *clientLab) stop(t *testing.T) error {
	l.cancel()
	select {
	case err, ok := <-l.done:
		if ok {
			close(l.done)
		}
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Client.Run did not return")
		return nil
	}
}

// runErr waits for Run to return by itself.
func (l *clientLab) runErr(t *testing.T) error {
	t.Helper()
	select {
	case err := <-l.done:
		close(l.done)
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Client.Run did not return")
		return nil
	}
}

func fdOf(ns *inpodtest.Namespace) int { return int(ns.Netns.Fd()) }

var infoA = inpod.WorkloadInfo{Name: "pod-a", Namespace: "default", ServiceAccount: "sa-a"}

func TestClientSnapshotLiveAddDel(t *testing.T) {
	leakcheck.Check(t)
	a, b, k := inpodtest.NewNamespace(t), inpodtest.NewNamespace(t), inpodtest.NewNamespace(t)
	l := newClientLab(t, inpod.ClientConfig{})
	h := l.handler
	p := l.agent.accept()
	require.False(t, l.client.Ready())

	// Snapshot: Add a, Keep k, SnapshotSent.
	p.sendRequest(&inpod.AddWorkload{UID: "uid-a", WorkloadInfo: &infoA}, fdOf(a))
	require.Equal(t, "", p.ack())
	e := h.next(t)
	require.Equal(t, event{"add", "uid-a", infoA, a.Netns.Inode()}, e)
	require.True(t, serving(a.Netns), "the handler listens inside pod a")
	p.sendRequest(&inpod.KeepWorkload{UID: "uid-k"})
	require.Equal(t, "", p.ack())
	require.False(t, l.client.Ready(), "not ready before SnapshotSent")
	p.sendRequest(&inpod.SnapshotSent{})
	require.Equal(t, "", p.ack())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, l.client.WaitReady(ctx))
	require.Equal(t, []string{"uid-a"}, l.client.Pods())

	// Live add and del.
	p.sendRequest(&inpod.AddWorkload{UID: "uid-b", WorkloadInfo: &inpod.WorkloadInfo{Name: "pod-b"}}, fdOf(b))
	require.Equal(t, "", p.ack())
	require.Equal(t, "uid-b", h.next(t).uid)
	p.sendRequest(&inpod.DelWorkload{UID: "uid-a"})
	require.Equal(t, "", p.ack())
	require.Equal(t, event{op: "del", uid: "uid-a"}, h.next(t))
	require.False(t, serving(a.Netns), "pod a's listener is closed")
	require.Zero(t, openNetnsFDs(t, a.Netns)-1, "only the test's own handle on pod a remains")
	p.sendRequest(&inpod.DelWorkload{UID: "uid-unknown"})
	require.Equal(t, "", p.ack(), "deleting an unknown uid is fine")
	require.Equal(t, []string{"uid-b"}, l.client.Pods())
	h.none(t)
	_ = k

	// Stopping Run stops every pod and closes the handles.
	require.NoError(t, l.stop(t))
	require.Equal(t, event{op: "del", uid: "uid-b"}, h.next(t))
	require.Equal(t, 1, openNetnsFDs(t, b.Netns))
	require.False(t, l.client.Ready())
}

func TestClientDuplicateAndReplacedNetns(t *testing.T) {
	leakcheck.Check(t)
	a, a2 := inpodtest.NewNamespace(t), inpodtest.NewNamespace(t)
	l := newClientLab(t, inpod.ClientConfig{})
	h := l.handler
	p := l.agent.accept()
	p.sendRequest(&inpod.SnapshotSent{})
	require.Equal(t, "", p.ack())

	p.sendRequest(&inpod.AddWorkload{UID: "uid-a", WorkloadInfo: &infoA}, fdOf(a))
	require.Equal(t, "", p.ack())
	h.next(t)
	require.Equal(t, 2, openNetnsFDs(t, a.Netns), "the test's handle and the client's")

	// The same namespace again, through another descriptor: ACK, no
	// handler call, and the new descriptor is closed.
	other, err := os.Open("/var/run/netns/" + a.Name)
	require.NoError(t, err)
	defer other.Close()
	require.Equal(t, 3, openNetnsFDs(t, a.Netns))
	p.sendRequest(&inpod.AddWorkload{UID: "uid-a", WorkloadInfo: &infoA}, int(other.Fd()))
	require.Equal(t, "", p.ack())
	h.none(t)
	require.Equal(t, 3, openNetnsFDs(t, a.Netns), "the received duplicate was closed")

	// A new namespace for the same uid (sandbox re-created): the old proxy
	// stops, a new one starts.
	p.sendRequest(&inpod.AddWorkload{UID: "uid-a", WorkloadInfo: &infoA}, fdOf(a2))
	require.Equal(t, "", p.ack())
	require.Equal(t, event{op: "del", uid: "uid-a"}, h.next(t))
	e := h.next(t)
	require.Equal(t, "add", e.op)
	require.Equal(t, a2.Netns.Inode(), e.inode)
	require.Equal(t, 2, openNetnsFDs(t, a.Netns), "the old namespace's handle was closed")
	require.True(t, serving(a2.Netns))
	require.False(t, serving(a.Netns))
}

func TestClientNackAndRetry(t *testing.T) {
	leakcheck.Check(t)
	a := inpodtest.NewNamespace(t)
	l := newClientLab(t, inpod.ClientConfig{RetryInterval: 20 * time.Millisecond})
	h := l.handler
	h.setFail("uid-a", 2)
	p := l.agent.accept()
	p.sendRequest(&inpod.AddWorkload{UID: "uid-a", WorkloadInfo: &infoA}, fdOf(a))
	require.Equal(t, "add uid-a: bind: address already in use (test)", p.ack(), "a failed start is a NACK")
	p.sendRequest(&inpod.SnapshotSent{})
	require.Equal(t, "", p.ack(), "the connection stays up after a NACK")
	require.False(t, l.client.Ready(), "a pending pod keeps the client unready")
	// The client retries on its own until the start succeeds.
	e := h.next(t)
	require.Equal(t, "add", e.op)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, l.client.WaitReady(ctx))
	require.Equal(t, []string{"uid-a"}, l.client.Pods())
}

func TestClientReconnectResetsSnapshot(t *testing.T) {
	leakcheck.Check(t)
	a, b, c := inpodtest.NewNamespace(t), inpodtest.NewNamespace(t), inpodtest.NewNamespace(t)
	l := newClientLab(t, inpod.ClientConfig{})
	h := l.handler
	p := l.agent.accept()
	for _, x := range []struct {
		uid string
		ns  *inpodtest.Namespace
	}{{"uid-a", a}, {"uid-b", b}, {"uid-c", c}} {
		p.sendRequest(&inpod.AddWorkload{UID: x.uid, WorkloadInfo: &infoA}, fdOf(x.ns))
		require.Equal(t, "", p.ack())
		h.next(t)
	}
	p.sendRequest(&inpod.SnapshotSent{})
	require.Equal(t, "", p.ack())
	require.Eventually(t, l.client.Ready, 5*time.Second, 5*time.Millisecond)

	// The agent restarts: the client reconnects and is unready until the
	// new snapshot ends; pods keep being served meanwhile.
	p.close()
	p = l.agent.accept()
	require.Eventually(t, func() bool { return !l.client.Ready() }, 5*time.Second, 5*time.Millisecond)
	require.True(t, serving(c.Netns))
	// Same namespace for a: no restart. b is deleted before the snapshot
	// ends, c kept; neither restarts.
	p.sendRequest(&inpod.AddWorkload{UID: "uid-a", WorkloadInfo: &infoA}, fdOf(a))
	require.Equal(t, "", p.ack())
	p.sendRequest(&inpod.AddWorkload{UID: "uid-b", WorkloadInfo: &infoA}, fdOf(b))
	require.Equal(t, "", p.ack())
	p.sendRequest(&inpod.DelWorkload{UID: "uid-b"})
	require.Equal(t, "", p.ack())
	p.sendRequest(&inpod.KeepWorkload{UID: "uid-c"})
	require.Equal(t, "", p.ack())
	h.none(t)
	p.sendRequest(&inpod.SnapshotSent{})
	require.Equal(t, "", p.ack())
	require.Equal(t, event{op: "del", uid: "uid-b"}, h.next(t), "b was not in the snapshot")
	h.none(t)
	require.Eventually(t, l.client.Ready, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, []string{"uid-a", "uid-c"}, l.client.Pods())

	// Another restart whose snapshot is empty drops everything.
	p.close()
	p = l.agent.accept()
	p.sendRequest(&inpod.SnapshotSent{})
	require.Equal(t, "", p.ack())
	got := map[string]bool{h.next(t).uid: true, h.next(t).uid: true}
	require.Equal(t, map[string]bool{"uid-a": true, "uid-c": true}, got)
	require.Empty(t, l.client.Pods())
	require.True(t, l.client.Ready())
}

// Unreadable messages are NACKed and end the connection; the client
// reconnects.
func TestClientRejectsBadMessages(t *testing.T) {
	leakcheck.Check(t)
	a := inpodtest.NewNamespace(t)
	notNetns, err := os.Open(os.DevNull)
	require.NoError(t, err)
	defer notNetns.Close()
	addA, err := inpod.MarshalWorkloadRequest(&inpod.AddWorkload{UID: "uid-a", WorkloadInfo: &infoA})
	require.NoError(t, err)
	snap, err := inpod.MarshalWorkloadRequest(&inpod.SnapshotSent{})
	require.NoError(t, err)
	tests := []struct {
		name string
		msg  []byte
		fds  []int
		nack string
	}{
		{"add without a descriptor", addA, nil, "inpod: ZDS add uid-a: expected 1 file descriptor, got 0"},
		{"add with two descriptors", addA, []int{fdOf(a), fdOf(a)}, "expected 1 file descriptor, got 2"},
		{"descriptor on a non-add", snap, []int{fdOf(a)}, "inpod: ZDS snapshot_sent: unexpected file descriptors (1)"},
		{"truncated datagram", append(bytes.Repeat([]byte{0x48, 0x01}, 600), snap...), nil, "inpod: ZDS datagram truncated: message longer than 1024 bytes"},
		{"too many descriptors", addA, []int{fdOf(a), fdOf(a), fdOf(a), fdOf(a), fdOf(a), fdOf(a), fdOf(a), fdOf(a), fdOf(a)}, "control data longer"},
		{"malformed", []byte{0x0a, 0x11, 0x0a}, nil, "inpod: ZDS WorkloadRequest.add at byte 0"},
		{"no payload", []byte{0x48, 0x01}, nil, "no payload"},
	}
	l := newClientLab(t, inpod.ClientConfig{})
	before := openNetnsFDs(t, a.Netns)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := l.agent.accept()
			p.send(tc.msg, tc.fds...)
			require.Contains(t, p.ack(), tc.nack)
			_, err := p.tryRecv(5 * time.Second)
			require.Error(t, err, "the client closes the connection")
			require.Equal(t, before, openNetnsFDs(t, a.Netns), "every received descriptor was closed")
		})
	}
	// A descriptor that is not a network namespace is NACKed, but the
	// connection stays.
	p := l.agent.accept()
	p.sendRequest(&inpod.AddWorkload{UID: "uid-x", WorkloadInfo: &infoA}, int(notNetns.Fd()))
	require.Contains(t, p.ack(), "add uid-x: inpod: zds-netns-uid-x is not a namespace file")
	p.sendRequest(&inpod.SnapshotSent{})
	require.Equal(t, "", p.ack())
	l.handler.none(t)
}

// Protocol errors are NACKed and stop the client, which stops its pods.
func TestClientProtocolErrors(t *testing.T) {
	a := inpodtest.NewNamespace(t)
	tests := []struct {
		name string
		run  func(p *rawPeer)
		want string
	}{
		{"keep after the snapshot", func(p *rawPeer) {
			p.sendRequest(&inpod.SnapshotSent{})
			require.Equal(t, "", p.ack())
			p.sendRequest(&inpod.KeepWorkload{UID: "uid-k"})
		}, "keep uid-k after the snapshot"},
		{"second snapshot_sent", func(p *rawPeer) {
			p.sendRequest(&inpod.SnapshotSent{})
			require.Equal(t, "", p.ack())
			p.sendRequest(&inpod.SnapshotSent{})
		}, "a second snapshot_sent"},
		{"add without workload_info", func(p *rawPeer) {
			p.sendRequest(&inpod.AddWorkload{UID: "uid-b"}, fdOf(a))
		}, "add uid-b without workload_info"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leakcheck.Check(t)
			l := newClientLab(t, inpod.ClientConfig{})
			p := l.agent.accept()
			p.sendRequest(&inpod.AddWorkload{UID: "uid-a", WorkloadInfo: &infoA}, fdOf(a))
			require.Equal(t, "", p.ack())
			l.handler.next(t)
			tc.run(p)
			require.Contains(t, p.ack(), tc.want)
			err := l.runErr(t)
			require.ErrorIs(t, err, inpod.ErrProtocol)
			require.ErrorContains(t, err, tc.want)
			require.Equal(t, event{op: "del", uid: "uid-a"}, l.handler.next(t), "Run's end stops the pods")
			require.Equal(t, 1, openNetnsFDs(t, a.Netns))
		})
	}
}

// The reconnect backoff starts at 10 ms, doubles, and is capped at 15 s.
func TestClientBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := inpod.NewClient(inpod.ClientConfig{Handler: newListenHandler(), Path: "/nonexistent/zds.sock"})
		require.NoError(t, err)
		start := time.Now()
		var at []time.Duration
		inpod.SetClientDial(c, func(context.Context) (*net.UnixConn, error) {
			at = append(at, time.Since(start))
			return nil, errors.New("connection refused")
		})
		ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
		defer cancel()
		require.NoError(t, c.Run(ctx))
		var gaps []time.Duration
		for i := 1; i < len(at); i++ {
			gaps = append(gaps, at[i]-at[i-1])
		}
		want := []time.Duration{10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 15000, 15000, 15000}
		for i := range want {
			want[i] *= time.Millisecond
		}
		require.Equal(t, want, gaps)
	})
}

func TestClientConfig(t *testing.T) {
	_, err := inpod.NewClient(inpod.ClientConfig{})
	require.ErrorContains(t, err, "inpod: ClientConfig.Handler is required")
	_, err = inpod.NewClient(inpod.ClientConfig{Handler: newListenHandler(), MinBackoff: time.Second, MaxBackoff: time.Millisecond})
	require.ErrorContains(t, err, "MinBackoff <= MaxBackoff")
	c, err := inpod.NewClient(inpod.ClientConfig{Handler: newListenHandler(), Path: "/nonexistent/zds.sock"})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	require.True(t, strings.Contains(c.WaitReady(ctx).Error(), "deadline"))
}
