//go:build linux

package inpod_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/meshblocks/meshblocks/inpod"
)

// sockPath returns a socket path in a fresh temporary directory (removed
// with it when the test ends).
func sockPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "zds.sock")
}

// openNetnsFDs counts this process's descriptors on ns's namespace.
func openNetnsFDs(t *testing.T, ns *inpod.Netns) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	n := 0
	for _, e := range ents {
		var st unix.Stat_t
		if unix.Stat("/proc/self/fd/"+e.Name(), &st) == nil && st.Ino == ns.Inode() && st.Mode&unix.S_IFMT == unix.S_IFREG {
			n++
		}
	}
	return n
}

// rawPeer is one end of a ZDS connection driven byte by byte by a test:
// a stand-in for the other side of the code under test.
type rawPeer struct {
	t *testing.T
	c *net.UnixConn
}

type rawMsg struct {
	b   []byte
	fds []int
}

// send writes one datagram with the given descriptors.
func (p *rawPeer) send(b []byte, fds ...int) {
	p.t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	p.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _, err := p.c.WriteMsgUnix(b, oob, nil)
	require.NoError(p.t, err)
}

func (p *rawPeer) sendRequest(r inpod.WorkloadRequest, fds ...int) {
	p.t.Helper()
	b, err := inpod.MarshalWorkloadRequest(r)
	require.NoError(p.t, err)
	p.send(b, fds...)
}

// recv reads one datagram; the caller closes the descriptors.
func (p *rawPeer) recv() rawMsg {
	p.t.Helper()
	m, err := p.tryRecv(5 * time.Second)
	require.NoError(p.t, err)
	return m
}

func (p *rawPeer) tryRecv(d time.Duration) (rawMsg, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(16*4))
	p.c.SetReadDeadline(time.Now().Add(d))
	n, oobn, _, _, err := p.c.ReadMsgUnix(buf, oob)
	if err != nil {
		return rawMsg{}, err
	}
	if n == 0 && oobn == 0 {
		return rawMsg{}, errors.New("EOF")
	}
	var fds []int
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	require.NoError(p.t, err)
	for i := range msgs {
		got, err := unix.ParseUnixRights(&msgs[i])
		require.NoError(p.t, err)
		fds = append(fds, got...)
	}
	return rawMsg{buf[:n], fds}, nil
}

// request reads a WorkloadRequest.
func (p *rawPeer) request() (inpod.WorkloadRequest, []int) {
	p.t.Helper()
	m := p.recv()
	r, err := inpod.UnmarshalWorkloadRequest(m.b)
	require.NoError(p.t, err)
	return r, m.fds
}

// ack reads a WorkloadResponse and returns its ack's error ("" = ACK).
func (p *rawPeer) ack() string {
	p.t.Helper()
	m := p.recv()
	require.Empty(p.t, m.fds)
	r, err := inpod.UnmarshalWorkloadResponse(m.b)
	require.NoError(p.t, err)
	require.NotNil(p.t, r.Ack, "a response must carry an ack")
	return r.Ack.Error
}

func (p *rawPeer) reply(nack string) {
	p.t.Helper()
	b, err := inpod.WorkloadResponse{Ack: &inpod.Ack{Error: nack}}.Marshal()
	require.NoError(p.t, err)
	p.send(b)
}

func (p *rawPeer) close() { p.c.Close() }

func closeTestFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// rawAgent is a test's node agent: a listening ZDS socket.
type rawAgent struct {
	t  *testing.T
	ln *net.UnixListener
}

func newRawAgent(t *testing.T, path string) *rawAgent {
	t.Helper()
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return &rawAgent{t: t, ln: ln}
}

// accept takes the next connection and checks its hello.
func (a *rawAgent) accept() *rawPeer {
	a.t.Helper()
	a.ln.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := a.ln.AcceptUnix()
	require.NoError(a.t, err)
	a.t.Cleanup(func() { c.Close() })
	p := &rawPeer{t: a.t, c: c}
	m := p.recv()
	require.Equal(a.t, []byte{0x08, 0x01}, m.b, "the first message is ZdsHello{V1}")
	require.Empty(a.t, m.fds)
	return p
}

// dialRaw connects a test's proxy to a server and sends the hello.
func dialRaw(t *testing.T, path string) *rawPeer {
	t.Helper()
	var c *net.UnixConn
	require.Eventually(t, func() bool {
		var err error
		c, err = net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		return err == nil
	}, 5*time.Second, 5*time.Millisecond)
	t.Cleanup(func() { c.Close() })
	p := &rawPeer{t: t, c: c}
	p.send([]byte{0x08, 0x01})
	return p
}

// event is one Handler call.
type event struct {
	op    string // "add" or "del"
	uid   string
	info  inpod.WorkloadInfo
	inode uint64
}

func (e event) String() string { return fmt.Sprintf("%s %s", e.op, e.uid) }

// logBuf is a goroutine-safe log sink.
type logBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// listenHandler is a real Handler: AddPod opens a listener on
// 127.0.0.1:15008 inside the pod's namespace, DelPod closes it. Fail
// makes AddPod of a uid fail that many times.
type listenHandler struct {
	mu     sync.Mutex
	events []event
	lns    map[string]net.Listener
	fail   map[string]int
	ch     chan event
}

func newListenHandler() *listenHandler {
	return &listenHandler{lns: map[string]net.Listener{}, fail: map[string]int{}, ch: make(chan event, 100)}
}

func (h *listenHandler) AddPod(ctx context.Context, uid string, info inpod.WorkloadInfo, ns *inpod.Netns) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, dup := h.lns[uid]; dup {
		return fmt.Errorf("test handler: AddPod %s twice", uid)
	}
	if h.fail[uid] > 0 {
		h.fail[uid]--
		return errors.New("bind: address already in use (test)")
	}
	ln, err := ns.Listen(ctx, "tcp4", "127.0.0.1:15008", inpod.SocketOptions{Mark: inpod.PacketMark})
	if err != nil {
		return err
	}
	h.lns[uid] = ln
	e := event{"add", uid, info, ns.Inode()}
	h.events = append(h.events, e)
	h.ch <- e
	return nil
}

func (h *listenHandler) DelPod(uid string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ln := h.lns[uid]; ln != nil {
		ln.Close()
		delete(h.lns, uid)
	}
	e := event{op: "del", uid: uid}
	h.events = append(h.events, e)
	h.ch <- e
}

func (h *listenHandler) setFail(uid string, n int) {
	h.mu.Lock()
	h.fail[uid] = n
	h.mu.Unlock()
}

// next waits for the next Handler call.
func (h *listenHandler) next(t *testing.T) event {
	t.Helper()
	select {
	case e := <-h.ch:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no handler call")
		return event{}
	}
}

// none checks that no Handler call is pending.
func (h *listenHandler) none(t *testing.T) {
	t.Helper()
	select {
	case e := <-h.ch:
		t.Fatalf("unexpected handler call %v", e)
	default:
	}
}

// serving reports whether the handler's listener in ns accepts.
func serving(ns *inpod.Netns) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp4", "127.0.0.1:15008", netip.Addr{}, inpod.SocketOptions{})
	if err != nil {
		return false
	}
	c.Close()
	return true
}
