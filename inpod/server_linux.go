//go:build linux

package inpod

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"
)

// Server is the node agent's side of ZDS: it keeps the pods of its node
// (uid, workload info, network namespace), and tells every proxy that
// connects about them. On each connection it reads the proxy's hello,
// sends the whole cache as a snapshot (AddWorkload with the namespace's
// descriptor for each pod with a namespace, KeepWorkload for the others,
// then SnapshotSent), and from then on forwards AddPod to the newest
// connection and RemovePod to all of them. Every request waits for its
// ack before the next goes out on that connection.
//
// Create one with [NewServer]; AddPod, KeepPod and RemovePod may be called
// before Run and concurrently with it. Close releases the namespace
// handles.
type Server struct {
	cfg ServerConfig
	log *slog.Logger

	opMu sync.Mutex // serialises AddPod and RemovePod

	mu      sync.Mutex
	pods    map[string]*podEntry
	conns   []*agentConn          // oldest first
	open    map[*zdsConn]struct{} // every accepted connection, until it ends
	running bool
	closed  bool
	stop    context.CancelFunc // of a running Run
	nextID  uint64
}

// podEntry is a cached pod. ns is nil for a pod known without its
// namespace (sent as KeepWorkload). pending marks a pod whose rules are
// being programmed; snapshots send it as KeepWorkload.
type podEntry struct {
	info    WorkloadInfo
	ns      *Netns
	pending bool
}

// NewServer checks cfg and returns a Server; nothing starts until Run.
func NewServer(cfg ServerConfig) (*Server, error) {
	cfg.Path = cmp.Or(cfg.Path, DefaultSocketPath)
	cfg.AckTimeout = cmp.Or(cfg.AckTimeout, 5*time.Second)
	cfg.KeepaliveInterval = cmp.Or(cfg.KeepaliveInterval, 5*time.Second)
	cfg.AcceptInterval = cmp.Or(cfg.AcceptInterval, 200*time.Millisecond)
	if cfg.AckTimeout < 0 || cfg.KeepaliveInterval < 0 {
		return nil, errors.New("inpod: ServerConfig.AckTimeout and KeepaliveInterval must not be negative")
	}
	if cfg.Rules != nil {
		if _, err := cfg.Rules.resolve(); err != nil {
			return nil, fmt.Errorf("inpod: ServerConfig.Rules: %w", err)
		}
	}
	return &Server{
		cfg:  cfg,
		log:  cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler)),
		pods: make(map[string]*podEntry),
		open: make(map[*zdsConn]struct{}),
	}, nil
}

// Run listens on the socket and serves proxies until ctx is done, then
// closes the connections and removes the socket file. It returns nil on
// cancellation, ErrServerClosed after Close, and an error if it cannot
// listen. Only one Run may be active at a time.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if s.running {
		s.mu.Unlock()
		return errors.New("inpod: ZDS server is already running")
	}
	s.running, s.stop = true, cancel
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running, s.stop = false, nil
		s.mu.Unlock()
	}()

	if err := removeStaleSocket(s.cfg.Path); err != nil {
		return err
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: s.cfg.Path, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("inpod: ZDS listen: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	s.log.Info("ZDS server listening", "path", s.cfg.Path)

	var wg sync.WaitGroup
	go func() { <-ctx.Done(); ln.Close() }()
	var acceptErr error
	var last time.Time
	for {
		if s.cfg.AcceptInterval > 0 && !last.IsZero() {
			if wait := time.Until(last.Add(s.cfg.AcceptInterval)); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
			}
		}
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() == nil {
				acceptErr = fmt.Errorf("inpod: ZDS accept: %w", err)
			}
			break
		}
		last = time.Now()
		zc := newZDSConn(c)
		s.mu.Lock()
		s.open[zc] = struct{}{}
		s.mu.Unlock()
		wg.Go(func() {
			s.serveConn(ctx, zc)
			s.mu.Lock()
			delete(s.open, zc)
			s.mu.Unlock()
		})
	}
	cancel()
	ln.Close()
	s.mu.Lock()
	for zc := range s.open {
		zc.Close()
	}
	closed := s.closed
	s.mu.Unlock()
	wg.Wait()
	switch {
	case acceptErr != nil:
		return acceptErr
	case closed:
		return ErrServerClosed
	}
	return nil
}

// removeStaleSocket removes a socket file left at path; anything else
// there is an error.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inpod: ZDS socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("inpod: ZDS socket %s: exists and is not a socket (%s)", path, fi.Mode().Type())
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("inpod: ZDS socket %s: remove stale socket: %w", path, err)
	}
	return nil
}

// agentConn is the server's end of one proxy connection. mu is held for
// each request-ack cycle and each keepalive read: one exchange at a time.
type agentConn struct {
	id  uint64
	zc  *zdsConn
	log *slog.Logger

	mu     sync.Mutex
	broken bool
}

func (c *agentConn) close() { c.zc.Close() }

// request sends r (with f's descriptor if f is not nil) and waits for its
// ack. Any failure but a NACK breaks the connection. The caller holds
// c.mu.
func (c *agentConn) request(r WorkloadRequest, f *os.File, timeout time.Duration) error {
	what := describe(r)
	if c.broken {
		return fmt.Errorf("inpod: ZDS %s: connection %d is closed", what, c.id)
	}
	msg, err := MarshalWorkloadRequest(r)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		c.broken = true
		c.zc.Close()
		return fmt.Errorf("inpod: ZDS %s on connection %d: %w", what, c.id, err)
	}
	if err := c.zc.send(msg, f, time.Now().Add(timeout)); err != nil {
		return fail(err)
	}
	b, fds, err := c.zc.recv(time.Now().Add(timeout))
	if err != nil {
		return fail(fmt.Errorf("waiting for the ack: %w", err))
	}
	if len(fds) > 0 {
		closeFDs(fds)
		return fail(fmt.Errorf("%w: the ack carried %d file descriptors", ErrProtocol, len(fds)))
	}
	resp, err := UnmarshalWorkloadResponse(b)
	if err != nil {
		return fail(err)
	}
	if resp.Ack == nil {
		return fail(fmt.Errorf("%w: response without an ack", ErrProtocol))
	}
	if resp.Ack.Error != "" {
		c.log.Debug("ZDS nack", "conn", c.id, "request", what, "error", resp.Ack.Error)
		return &NackError{Request: what, Reason: resp.Ack.Error}
	}
	c.log.Debug("ZDS ack", "conn", c.id, "request", what)
	return nil
}

func describe(r WorkloadRequest) string {
	switch r := r.(type) {
	case *AddWorkload:
		return "add " + r.UID
	case *KeepWorkload:
		return "keep " + r.UID
	case *DelWorkload:
		return "del " + r.UID
	case *SnapshotSent:
		return "snapshot_sent"
	}
	return fmt.Sprintf("%T", r)
}

// snapshotItem is one pod of a snapshot, with a private duplicate of its
// namespace descriptor (nil: send KeepWorkload).
type snapshotItem struct {
	uid  string
	info WorkloadInfo
	f    *os.File
}

func (s *Server) serveConn(ctx context.Context, zc *zdsConn) {
	s.mu.Lock()
	s.nextID++
	c := &agentConn{id: s.nextID, zc: zc}
	s.mu.Unlock()
	c.log = s.log.With("conn", c.id)
	defer zc.Close()

	b, fds, err := zc.recv(time.Now().Add(s.cfg.AckTimeout))
	if err == nil && len(fds) > 0 {
		closeFDs(fds)
		err = fmt.Errorf("%w: hello carried %d file descriptors", ErrProtocol, len(fds))
	}
	var hello ZDSHello
	if err == nil {
		hello, err = UnmarshalZDSHello(b)
	}
	if err != nil {
		c.log.Warn("ZDS connection dropped: no valid hello", "error", err)
		return
	}
	c.log.Info("ZDS proxy connected", "version", int32(hello.Version))

	// Register the connection and take the snapshot under one lock, and
	// hold the connection's lock until the snapshot is sent, so that every
	// later AddPod or RemovePod reaches this connection after it.
	s.mu.Lock()
	if ctx.Err() != nil {
		s.mu.Unlock()
		return
	}
	s.conns = append(s.conns, c)
	items, err := s.snapshotLocked()
	c.mu.Lock()
	s.mu.Unlock()
	defer s.dropConn(c)
	if err != nil {
		c.mu.Unlock()
		c.log.Error("ZDS snapshot", "error", err)
		return
	}
	err = s.sendSnapshot(c, items)
	c.mu.Unlock()
	if err != nil {
		c.log.Warn("ZDS connection dropped during the snapshot", "error", err)
		return
	}
	c.log.Info("ZDS snapshot sent", "pods", len(items))

	t := time.NewTicker(s.cfg.KeepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := c.checkAlive(); err != nil {
			c.log.Info("ZDS proxy disconnected", "reason", err)
			return
		}
	}
}

// checkAlive does a short read: a timeout means the connection is alive,
// end of file or an error that it is gone, and data a protocol error.
func (c *agentConn) checkAlive() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken {
		return errors.New("connection broken")
	}
	_, fds, err := c.zc.recv(time.Now().Add(10 * time.Millisecond))
	closeFDs(fds)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return nil
	case err == nil:
		err = fmt.Errorf("%w: unsolicited message from the proxy", ErrProtocol)
	case errors.Is(err, io.EOF):
		err = io.EOF
	}
	c.broken = true
	return err
}

func (s *Server) dropConn(c *agentConn) {
	s.mu.Lock()
	s.conns = slices.DeleteFunc(s.conns, func(x *agentConn) bool { return x == c })
	s.mu.Unlock()
	c.close()
}

// snapshotLocked lists the cached pods, sorted by uid, duplicating each
// namespace descriptor so that a concurrent RemovePod cannot close it
// under the sender. s.mu is held.
func (s *Server) snapshotLocked() ([]snapshotItem, error) {
	items := make([]snapshotItem, 0, len(s.pods))
	for uid, e := range s.pods {
		it := snapshotItem{uid: uid, info: e.info}
		if e.ns != nil && !e.pending {
			f, err := dupFile(e.ns.Fd(), e.ns.String())
			if err != nil {
				closeItems(items)
				return nil, err
			}
			it.f = f
		}
		items = append(items, it)
	}
	slices.SortFunc(items, func(a, b snapshotItem) int { return cmp.Compare(a.uid, b.uid) })
	return items, nil
}

func closeItems(items []snapshotItem) {
	for _, it := range items {
		if it.f != nil {
			it.f.Close()
		}
	}
}

// sendSnapshot sends the items and SnapshotSent. A NACK of one pod is
// logged (the proxy retries it itself); any other failure ends it.
func (s *Server) sendSnapshot(c *agentConn, items []snapshotItem) error {
	defer closeItems(items)
	for _, it := range items {
		var r WorkloadRequest = &KeepWorkload{UID: it.uid}
		if it.f != nil {
			r = &AddWorkload{UID: it.uid, WorkloadInfo: &it.info}
		}
		err := c.request(r, it.f, s.cfg.AckTimeout)
		var nack *NackError
		if errors.As(err, &nack) {
			c.log.Warn("ZDS snapshot: proxy rejected a pod", "uid", it.uid, "error", nack.Reason)
			continue
		}
		if err != nil {
			return err
		}
	}
	return c.request(&SnapshotSent{}, nil, s.cfg.AckTimeout)
}

// AddPod adds the pod whose network namespace is at netnsPath; see
// [Server.AddPodNetns].
func (s *Server) AddPod(ctx context.Context, uid string, info WorkloadInfo, netnsPath string) error {
	ns, err := OpenNetns(netnsPath)
	if err != nil {
		return err
	}
	return s.AddPodNetns(ctx, uid, info, ns)
}

// AddPodNetns adds or updates a pod, taking ownership of ns: it caches
// the pod, programs Config.Rules inside ns (a failure there undoes the
// cache entry and is returned), then sends AddWorkload with ns's
// descriptor to the newest proxy connection and waits for the ack.
//
// If the pod is already cached with the same namespace (same device and
// inode), ns is closed and the cached handle kept; with a different one,
// the new namespace replaces it. Errors after the rules are in, such as
// ErrNoConnection or a *NackError, leave the pod cached, so a later
// AddPod or a new connection's snapshot delivers it; a proxy that NACKs
// an add also retries it on its own.
func (s *Server) AddPodNetns(ctx context.Context, uid string, info WorkloadInfo, ns *Netns) error {
	if uid == "" {
		ns.Close()
		return errors.New("inpod: AddPod: empty uid")
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ns.Close()
		return ErrServerClosed
	}
	old := s.pods[uid]
	entry := &podEntry{info: info, ns: ns, pending: s.cfg.Rules != nil}
	if old != nil && old.ns != nil && old.ns.Equal(ns) {
		ns.Close()
		entry.ns = old.ns
	}
	s.pods[uid] = entry
	s.mu.Unlock()

	if s.cfg.Rules != nil {
		if err := s.cfg.Rules.Apply(ctx, entry.ns); err != nil {
			s.mu.Lock()
			if old != nil {
				s.pods[uid] = old
			} else {
				delete(s.pods, uid)
			}
			s.mu.Unlock()
			if old == nil || old.ns != entry.ns {
				entry.ns.Close()
			}
			return fmt.Errorf("inpod: AddPod %s: %w", uid, err)
		}
		s.mu.Lock()
		entry.pending = false
		s.mu.Unlock()
	}
	if old != nil && old.ns != nil && old.ns != entry.ns {
		old.ns.Close()
	}

	s.mu.Lock()
	var c *agentConn
	if n := len(s.conns); n > 0 {
		c = s.conns[n-1]
	}
	var f *os.File
	var err error
	if c != nil {
		f, err = dupFile(entry.ns.Fd(), entry.ns.String())
	}
	s.mu.Unlock()
	if c == nil {
		return fmt.Errorf("inpod: AddPod %s: %w", uid, ErrNoConnection)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.request(&AddWorkload{UID: uid, WorkloadInfo: &info}, f, s.cfg.AckTimeout)
}

// KeepPod caches a pod the agent knows but has no namespace handle for
// (after an agent restart, say). It is sent as KeepWorkload in
// snapshots, so that proxies keep serving it; nothing is sent live.
func (s *Server) KeepPod(uid string, info WorkloadInfo) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.pods[uid]; old != nil && old.ns != nil {
		old.ns.Close()
	}
	s.pods[uid] = &podEntry{info: info}
}

// RemovePod forgets a pod: it removes Config.Rules from the pod's
// namespace (if the pod had one), sends DelWorkload to every connected
// proxy, and closes the namespace handle. An unknown uid is still sent,
// so that proxies drop it. The error joins every failure.
func (s *Server) RemovePod(ctx context.Context, uid string) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.mu.Lock()
	e := s.pods[uid]
	delete(s.pods, uid)
	conns := slices.Clone(s.conns)
	s.mu.Unlock()

	var errs []error
	if e != nil && e.ns != nil && s.cfg.Rules != nil {
		errs = append(errs, s.cfg.Rules.Remove(ctx, e.ns))
	}
	results := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			results[i] = c.request(&DelWorkload{UID: uid}, nil, s.cfg.AckTimeout)
		})
	}
	wg.Wait()
	errs = append(errs, results...)
	if e != nil && e.ns != nil {
		e.ns.Close()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("inpod: RemovePod %s: %w", uid, err)
	}
	return nil
}

// Pods returns the uids of the cached pods, sorted.
func (s *Server) Pods() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	uids := make([]string, 0, len(s.pods))
	for uid := range s.pods {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	return uids
}

// Connections returns how many proxies are connected (hello received).
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Close stops a running Run (which then returns ErrServerClosed) and
// closes every cached namespace handle. The rules stay in the pods. Close
// is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	stop := s.stop
	pods := s.pods
	s.pods = make(map[string]*podEntry)
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	for _, e := range pods {
		if e.ns != nil {
			e.ns.Close()
		}
	}
	return nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		closeFD(fd)
	}
}
