package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/internal/netutil"
)

// relay copies between a (towards the destination: a's bytes are "sent")
// and b until both directions end, keeping half-close per direction. It
// returns the bytes copied a->b and b->a. Plain TCP pairs are spliced by
// the kernel and tunnel streams hand over their buffers (netutil.Copy);
// with an IdleTimeout the connection closes once no byte moved either way
// for that long, without giving up those fast paths.
//
// The pair is registered so that Shutdown waits for it and, once its grace
// period is over, closes both ends. An inbound pair also carries lc, the
// attributes its authorization used: while it relays, every State swap
// re-authorizes it, and a denial closes both ends and makes relay return
// the reason (an error wrapping ErrPolicyChanged).
func (p *Proxy) relay(a, b net.Conn, lc *liveConn) (aToB, bToA int64, err error) {
	p.mu.Lock()
	if p.forced {
		p.mu.Unlock()
		a.Close()
		b.Close()
		return 0, 0, ErrProxyClosed
	}
	p.relays[a] = struct{}{}
	p.relays[b] = struct{}{}
	p.nrelays++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.relays, a)
		delete(p.relays, b)
		if p.nrelays--; p.nrelays == 0 {
			p.relayDone.Broadcast()
		}
		p.mu.Unlock()
	}()
	if lc != nil {
		lc.a, lc.b = a, b
		p.live.add(p, lc)
	}
	aToB, bToA, err = relayIdle(a, b, p.cfg.IdleTimeout)
	if lc != nil {
		if lerr := p.live.remove(lc); lerr != nil {
			err = lerr
		}
	}
	return aToB, bToA, err
}

// relayIdle is netutil.JoinIdle with the proxy's idle error.
func relayIdle(a, b net.Conn, idle time.Duration) (aToB, bToA int64, err error) {
	aToB, bToA, err = netutil.JoinIdle(a, b, idle)
	if errors.Is(err, netutil.ErrIdleTimeout) {
		err = ErrIdleTimeout
	}
	return aToB, bToA, err
}

// liveConn is an open inbound connection with what its L4 authorization
// decision read: who connected (peer identity and principal, none for
// plaintext; source address), which workload and port it reached, and the
// State the decision was made with.
type liveConn struct {
	src       netip.AddrPort
	peer      spiffeid.ID
	principal string
	plaintext bool
	dstUID    string
	target    netip.AddrPort // the workload address and port dialled
	a, b      net.Conn       // the relay's ends, closed on denial

	// Guarded by liveSet.mu.
	st  *State // last State the connection was authorized against
	err error  // why the watcher closed it, or nil
}

// newLiveConn describes an inbound connection authorized with st, or
// returns nil when re-checking is off.
func (p *Proxy) newLiveConn(st *State, info *ConnInfo) *liveConn {
	if p.cfg.DisablePolicyRecheck || info.DstWorkload == nil {
		return nil
	}
	lc := &liveConn{
		src: info.SrcAddr, peer: info.SrcIdentity, plaintext: !info.MTLS,
		dstUID: info.DstWorkload.UID, target: info.HBONEAddr, st: st,
	}
	if info.MTLS {
		lc.principal = identity.PrincipalFromID(info.SrcIdentity)
	}
	return lc
}

// liveSet tracks the open inbound connections of a Proxy. One watcher
// goroutine runs while the set is not empty: it waits for a State swap
// and re-authorizes every connection that was last checked against an
// older State. The data path only touches the set when a connection
// starts and ends relaying.
type liveSet struct {
	mu       sync.Mutex
	conns    map[*liveConn]struct{}
	watching chan struct{} // closed when the running watcher exits; nil if none
	kick     chan struct{} // capacity 1: wakes the watcher
}

// add registers lc, starting the watcher if none runs. If the State has
// changed since lc was authorized, the watcher is kicked to check it: a
// swap between the decision and this registration would otherwise go
// unnoticed.
func (l *liveSet) add(p *Proxy, lc *liveConn) {
	l.mu.Lock()
	if l.conns == nil {
		l.conns = make(map[*liveConn]struct{})
		l.kick = make(chan struct{}, 1)
	}
	l.conns[lc] = struct{}{}
	stale := p.cfg.State.Load() != lc.st // after the insert: see watch
	var done chan struct{}
	if l.watching == nil {
		done = make(chan struct{})
		l.watching = done
	}
	l.mu.Unlock()
	if done != nil {
		go p.watch(done)
	}
	if stale {
		l.wake()
	}
}

// remove forgets lc and returns why the watcher closed it, if it did.
func (l *liveSet) remove(lc *liveConn) error {
	l.mu.Lock()
	delete(l.conns, lc)
	empty := len(l.conns) == 0
	err := lc.err
	l.mu.Unlock()
	if empty {
		l.wake() // the watcher exits
	}
	return err
}

func (l *liveSet) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// wait returns once no watcher runs (for Shutdown, after the last relay).
func (l *liveSet) wait() {
	l.mu.Lock()
	done := l.watching
	l.mu.Unlock()
	if done != nil {
		<-done
	}
}

// watch is the watcher goroutine: it re-checks the live connections after
// every State swap until the set is empty. It reads Changed before the
// State, so no swap is missed.
func (p *Proxy) watch(done chan struct{}) {
	l := &p.live
	var batch []*liveConn
	for {
		changed := p.cfg.State.Changed()
		batch = p.recheck(batch[:0])
		select {
		case <-changed:
		case <-l.kick:
		}
		l.mu.Lock()
		if len(l.conns) == 0 {
			l.watching = nil
			l.mu.Unlock()
			close(done)
			return
		}
		l.mu.Unlock()
	}
}

// recheck re-authorizes, against the current State, every live connection
// last checked against another one, and closes both ends of those now
// denied. It returns batch (scratch space, reused between passes).
func (p *Proxy) recheck(batch []*liveConn) []*liveConn {
	l := &p.live
	st := p.cfg.State.Load()
	l.mu.Lock()
	for lc := range l.conns {
		if lc.st != st && lc.err == nil {
			batch = append(batch, lc)
		}
	}
	l.mu.Unlock()
	if len(batch) == 0 {
		return batch
	}
	start := time.Now()
	closed := 0
	for i, lc := range batch {
		err := p.reauthorize(st, lc)
		if err == nil {
			continue
		}
		// Denied: keep it in the batch's prefix of closed connections.
		err = fmt.Errorf("%w: %w", ErrPolicyChanged, err)
		l.mu.Lock()
		_, open := l.conns[lc]
		if open {
			lc.err = err
		}
		l.mu.Unlock()
		if open {
			closed++
			who := lc.src.String()
			if !lc.peer.IsZero() {
				who += "(" + lc.peer.String() + ")"
			}
			p.log.Info("connection no longer allowed after a state update; closing it",
				"conn", who+"->"+lc.target.String(), "reason", err.Error())
			lc.a.Close()
			lc.b.Close()
		}
		batch[i] = nil
	}
	l.mu.Lock()
	for _, lc := range batch {
		if lc != nil {
			lc.st = st
		}
	}
	l.mu.Unlock()
	if p.log.Enabled(context.Background(), slog.LevelDebug) {
		p.log.Debug("open connections re-checked after a state update",
			"checked", len(batch), "closed", closed, "duration", time.Since(start).String())
	}
	clear(batch)
	return batch
}

// reauthorize repeats, with st, the decision that let lc in: the
// destination is still the same workload of this node, PeerAuthentication
// still accepts plaintext, and the L4 policies still allow it. It
// allocates only to describe a denial.
func (p *Proxy) reauthorize(st *State, lc *liveConn) error {
	dst, ok := st.WorkloadByAddr(lc.target.Addr())
	if !ok || dst.UID != lc.dstUID || !p.local(dst) {
		return fmt.Errorf("%w: %s (%s) is no longer a workload of this node", ErrUnknownDestination, lc.target.Addr(), lc.dstUID)
	}
	if lc.plaintext && !p.plaintextAllowed(st, dst, lc.target.Port()) {
		return ErrPlaintextRejected
	}
	e := st.Authz()
	if e == nil {
		return nil
	}
	req := l4Request(dst, lc.principal, lc.src.Addr(), lc.target)
	if e.Evaluate(&req).Allowed {
		return nil
	}
	// Evaluate again to describe the denial: a Decision that leaves this
	// function would move every request to the heap.
	denied := l4Request(dst, lc.principal, lc.src.Addr(), lc.target)
	return fmt.Errorf("%w: %s", ErrDenied, e.Evaluate(&denied))
}
