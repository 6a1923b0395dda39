//go:build linux

package inpod

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Client is the node proxy's side of ZDS (ztunnel's role). Run connects to
// the node agent, announces itself, and applies the agent's requests
// through the Handler: the initial snapshot (AddWorkload, KeepWorkload,
// then SnapshotSent, after which pods not mentioned are dropped) and live
// AddWorkload and DelWorkload. It answers every message with exactly one
// ack, and reconnects, with a fresh snapshot, whenever the connection
// ends. The pods it serves survive a reconnection unless the new snapshot
// leaves them out.
type Client struct {
	cfg  ClientConfig
	log  *slog.Logger
	dial func(ctx context.Context) (*net.UnixConn, error)

	ready   atomic.Bool
	readyMu sync.Mutex
	readyCh chan struct{} // closed while ready
	running atomic.Bool

	podsMu sync.Mutex
	served []string // uids with a running proxy, for Pods

	// State of Run's goroutine.
	pods     map[string]*clientPod // running
	pending  map[string]*clientPod // AddPod failed; retried
	seen     map[string]bool       // uids mentioned in the current snapshot
	snapshot bool                  // SnapshotSent received on this connection
}

type clientPod struct {
	info WorkloadInfo
	ns   *Netns
}

// NewClient checks cfg and returns a Client; nothing starts until Run.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Handler == nil {
		return nil, errors.New("inpod: ClientConfig.Handler is required")
	}
	cfg.Path = cmp.Or(cfg.Path, DefaultSocketPath)
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, 10*time.Millisecond)
	cfg.MaxBackoff = cmp.Or(cfg.MaxBackoff, 15*time.Second)
	cfg.RetryInterval = cmp.Or(cfg.RetryInterval, 5*time.Second)
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < cfg.MinBackoff || cfg.RetryInterval < 0 {
		return nil, errors.New("inpod: ClientConfig: want 0 < MinBackoff <= MaxBackoff and RetryInterval > 0")
	}
	c := &Client{
		cfg:     cfg,
		log:     cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler)),
		readyCh: make(chan struct{}),
		pods:    make(map[string]*clientPod),
		pending: make(map[string]*clientPod),
	}
	c.dial = func(ctx context.Context) (*net.UnixConn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unixpacket", cfg.Path)
		if err != nil {
			return nil, err
		}
		return conn.(*net.UnixConn), nil
	}
	return c, nil
}

// Ready reports whether the Client has received a full snapshot on its
// current connection and serves every pod in it.
func (c *Client) Ready() bool { return c.ready.Load() }

// WaitReady blocks until Ready or ctx is done.
func (c *Client) WaitReady(ctx context.Context) error {
	for {
		c.readyMu.Lock()
		ch := c.readyCh
		c.readyMu.Unlock()
		if c.ready.Load() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

func (c *Client) setReady(v bool) {
	c.readyMu.Lock()
	defer c.readyMu.Unlock()
	if c.ready.Swap(v) == v {
		return
	}
	if v {
		close(c.readyCh)
	} else {
		c.readyCh = make(chan struct{})
	}
}

// Pods returns the uids of the pods being served, sorted.
func (c *Client) Pods() []string {
	c.podsMu.Lock()
	defer c.podsMu.Unlock()
	return slices.Clone(c.served)
}

func (c *Client) publish() {
	uids := make([]string, 0, len(c.pods))
	for uid := range c.pods {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	c.podsMu.Lock()
	c.served = uids
	c.podsMu.Unlock()
	c.setReady(c.snapshot && len(c.pending) == 0)
}

// Run connects to the node agent and serves its requests until ctx is
// done, reconnecting with exponential backoff whenever the connection
// fails or ends. When it returns, every pod it started has been stopped
// with DelPod. It returns nil on cancellation, and an error wrapping
// ErrProtocol if the agent broke the protocol. Only one Run may be active
// at a time.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("inpod: ZDS client is already running")
	}
	defer c.running.Store(false)
	defer c.stopAll()
	backoff := c.cfg.MinBackoff
	for {
		conn, err := c.dial(ctx)
		if err == nil {
			var progressed bool
			progressed, err = c.session(ctx, newZDSConn(conn))
			if errors.Is(err, ErrProtocol) {
				c.log.Error("ZDS: the node agent broke the protocol; stopping", "error", err)
				return err
			}
			if progressed {
				backoff = c.cfg.MinBackoff
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		c.log.Info("ZDS: not connected; retrying", "path", c.cfg.Path, "in", backoff, "error", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

// stopAll stops every pod when Run ends.
func (c *Client) stopAll() {
	for uid, p := range c.pods {
		c.cfg.Handler.DelPod(uid)
		p.ns.Close()
	}
	for _, p := range c.pending {
		p.ns.Close()
	}
	clear(c.pods)
	clear(c.pending)
	c.snapshot = false
	c.publish()
}

type received struct {
	msg []byte
	fds []int
	err error
}

// session runs one connection. progressed reports whether a request was
// handled (the agent is working: the backoff starts over). It returns
// when the connection fails (after a NACK when the agent's message was
// unreadable) or ctx is done.
func (c *Client) session(ctx context.Context, zc *zdsConn) (progressed bool, err error) {
	defer zc.Close()
	hello, _ := ZDSHello{Version: ZDSVersion1}.Marshal()
	if err := zc.send(hello, nil, time.Now().Add(5*time.Second)); err != nil {
		return false, fmt.Errorf("inpod: ZDS hello: %w", err)
	}
	c.log.Info("ZDS connected", "path", c.cfg.Path)
	// A new connection brings a new snapshot.
	c.seen = make(map[string]bool)
	c.snapshot = false
	for _, p := range c.pending {
		p.ns.Close()
	}
	clear(c.pending)
	c.publish()

	msgs := make(chan received)
	quit := make(chan struct{})
	readDone := make(chan struct{})
	next := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			// The buffer is reused: read the next message only once this
			// one is handled.
			msg, fds, err := zc.recv(time.Time{})
			select {
			case msgs <- received{msg, fds, err}:
			case <-quit:
				closeFDs(fds)
				return
			}
			if err != nil {
				return
			}
			select {
			case <-next:
			case <-quit:
				return
			}
		}
	}()
	defer func() { close(quit); zc.Close(); <-readDone }()

	retry := time.NewTicker(c.cfg.RetryInterval)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return progressed, nil
		case <-retry.C:
			c.retryPending(ctx)
			continue
		case r := <-msgs:
			if r.err != nil {
				if errors.Is(r.err, io.EOF) {
					return progressed, fmt.Errorf("inpod: ZDS: the node agent closed the connection")
				}
				if errors.Is(r.err, ErrTruncated) {
					c.ack(zc, r.err.Error())
				}
				return progressed, r.err
			}
			resp, fatal := c.handle(ctx, r.msg, r.fds)
			if err := c.ack(zc, resp); err != nil {
				return progressed, err
			}
			if fatal != nil {
				return progressed, fatal
			}
			progressed = true
			next <- struct{}{}
		}
	}
}

// ack sends the response to one message: ACK if reason is empty.
func (c *Client) ack(zc *zdsConn, reason string) error {
	b, err := WorkloadResponse{Ack: &Ack{Error: reason}}.Marshal()
	if err != nil {
		b, _ = WorkloadResponse{Ack: &Ack{Error: "error message not encodable"}}.Marshal()
	}
	if err := zc.send(b, nil, time.Now().Add(5*time.Second)); err != nil {
		return fmt.Errorf("inpod: ZDS ack: %w", err)
	}
	return nil
}

// handle applies one request. It returns the NACK reason (empty for an
// ACK) and, when the connection must end, why: a malformed message ends
// the connection; a protocol error (wrapping ErrProtocol) ends Run.
func (c *Client) handle(ctx context.Context, msg []byte, fds []int) (nack string, fatal error) {
	req, err := UnmarshalWorkloadRequest(msg)
	if err != nil {
		closeFDs(fds)
		return err.Error(), err
	}
	add, isAdd := req.(*AddWorkload)
	switch {
	case isAdd && len(fds) != 1:
		closeFDs(fds)
		err := fmt.Errorf("inpod: ZDS add %s: expected 1 file descriptor, got %d", add.UID, len(fds))
		return err.Error(), err
	case !isAdd && len(fds) > 0:
		closeFDs(fds)
		err := fmt.Errorf("inpod: ZDS %s: unexpected file descriptors (%d)", describe(req), len(fds))
		return err.Error(), err
	}
	c.log.Debug("ZDS request", "request", describe(req))
	switch r := req.(type) {
	case *AddWorkload:
		if r.WorkloadInfo == nil {
			closeFDs(fds)
			err := fmt.Errorf("%w: add %s without workload_info", ErrProtocol, r.UID)
			return err.Error(), err
		}
		ns, err := NetnsFromFile(os.NewFile(uintptr(fds[0]), "zds-netns-"+r.UID))
		if err != nil { // NetnsFromFile closed the file
			return fmt.Sprintf("add %s: %v", r.UID, err), nil
		}
		if !c.snapshot {
			c.seen[r.UID] = true
		}
		return c.addPod(ctx, r.UID, *r.WorkloadInfo, ns), nil
	case *KeepWorkload:
		if c.snapshot {
			err := fmt.Errorf("%w: keep %s after the snapshot", ErrProtocol, r.UID)
			return err.Error(), err
		}
		c.seen[r.UID] = true
	case *DelWorkload:
		if p := c.pending[r.UID]; p != nil {
			p.ns.Close()
			delete(c.pending, r.UID)
		}
		if !c.snapshot {
			delete(c.seen, r.UID) // dropped, if running, at SnapshotSent
		} else {
			c.stopPod(r.UID)
		}
	case *SnapshotSent:
		if c.snapshot {
			err := fmt.Errorf("%w: a second snapshot_sent", ErrProtocol)
			return err.Error(), err
		}
		for uid := range c.pods {
			if !c.seen[uid] {
				c.log.Info("ZDS: pod not in the snapshot; stopping it", "uid", uid)
				c.stopPod(uid)
			}
		}
		for uid, p := range c.pending {
			if !c.seen[uid] {
				p.ns.Close()
				delete(c.pending, uid)
			}
		}
		c.snapshot = true
		c.log.Info("ZDS snapshot received", "pods", len(c.pods), "pending", len(c.pending))
	}
	c.publish()
	return "", nil
}

// addPod starts (or keeps) a pod and returns the NACK reason, if any.
func (c *Client) addPod(ctx context.Context, uid string, info WorkloadInfo, ns *Netns) string {
	if p := c.pods[uid]; p != nil {
		if p.ns.Equal(ns) {
			ns.Close() // the same namespace: nothing to do
			c.log.Debug("ZDS: pod already served in this namespace", "uid", uid)
			return ""
		}
		c.log.Info("ZDS: pod has a new namespace; restarting it", "uid", uid)
		c.stopPod(uid)
	}
	if p := c.pending[uid]; p != nil {
		p.ns.Close()
		delete(c.pending, uid)
	}
	defer c.publish()
	if err := c.cfg.Handler.AddPod(ctx, uid, info, ns); err != nil {
		c.pending[uid] = &clientPod{info: info, ns: ns}
		c.log.Warn("ZDS: starting the pod failed; will retry", "uid", uid, "error", err)
		return fmt.Sprintf("add %s: %v", uid, err)
	}
	c.pods[uid] = &clientPod{info: info, ns: ns}
	c.log.Info("ZDS: serving pod", "uid", uid, "name", info.Name, "namespace", info.Namespace)
	return ""
}

func (c *Client) stopPod(uid string) {
	p := c.pods[uid]
	if p == nil {
		return
	}
	c.cfg.Handler.DelPod(uid)
	p.ns.Close()
	delete(c.pods, uid)
	c.log.Info("ZDS: stopped serving pod", "uid", uid)
}

func (c *Client) retryPending(ctx context.Context) {
	if len(c.pending) == 0 {
		return
	}
	for uid, p := range c.pending {
		if err := c.cfg.Handler.AddPod(ctx, uid, p.info, p.ns); err != nil {
			c.log.Warn("ZDS: retrying the pod failed", "uid", uid, "error", err)
			continue
		}
		delete(c.pending, uid)
		c.pods[uid] = p
		c.log.Info("ZDS: serving pod after retry", "uid", uid)
	}
	c.publish()
}

func closeFD(fd int) { unix.Close(fd) }
