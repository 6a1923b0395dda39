package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshblocks/meshblocks/route"
)

// upstreamConnectError reports that connecting to an endpoint failed
// (Envoy's connect-failure).
type upstreamConnectError struct {
	Addr string
	Err  error
}

func (e *upstreamConnectError) Error() string {
	return fmt.Sprintf("proxy: waypoint: connect to %s: %v", e.Addr, e.Err)
}

func (e *upstreamConnectError) Unwrap() error { return e.Err }

// errPerTryTimeout reports that one try outlasted the retry policy's
// per-try timeout.
var errPerTryTimeout = errors.New("proxy: waypoint: per-try timeout")

func isTimeout(err error) bool {
	return errors.Is(err, errPerTryTimeout) || errors.Is(err, context.DeadlineExceeded)
}

func asError[T error](err error, target *T) bool { return errors.As(err, target) }

// newTransport returns the pool of upstream HTTP connections: HTTP/1.1, or
// HTTP/2 with prior knowledge, each connection one HBONE tunnel to an
// endpoint (pooled per endpoint address by the transport, tunnels pooled
// per node by the HBONE dialer).
func (w *Waypoint) newTransport(h2 bool) *http.Transport {
	t := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, &upstreamConnectError{Addr: addr, Err: err}
			}
			c, _, err := w.dialUpstream(ctx, ap)
			if err != nil {
				return nil, &upstreamConnectError{Addr: addr, Err: err}
			}
			return c, nil
		},
		// A proxy passes encodings through untouched.
		DisableCompression:  true,
		MaxIdleConnsPerHost: 100,
		IdleConnTimeout:     5 * time.Minute,
		Protocols:           new(http.Protocols),
	}
	if h2 {
		t.Protocols.SetUnencryptedHTTP2(true)
	} else {
		t.Protocols.SetHTTP1(true)
	}
	return t
}

// wpRoundTripper sends one upstream request with the route's retry
// policy: each try goes to an endpoint (a retry prefers one not tried
// yet, as Istio's previous_hosts predicate), a retriable failure is tried
// again after a jittered exponential backoff, and the body is replayed
// from a buffer.
type wpRoundTripper struct{ w *Waypoint }

func (t wpRoundTripper) RoundTrip(out *http.Request) (*http.Response, error) {
	w := t.w
	q := requestFrom(out.Context())
	if q == nil {
		return nil, errors.New("proxy: waypoint: request without routing context")
	}
	tr := w.h1
	if q.h2 {
		tr = w.h2
	}
	var rb *replayBody
	if out.Body != nil && out.Body != http.NoBody {
		rb = newReplayBody(out.Body, w.cfg.BufferLimit)
	}
	parent := out.Context()
	for attempt := 1; ; attempt++ {
		q.info.Attempts = attempt
		q.setUpstream(q.target)
		ctx, cancel := parent, context.CancelFunc(func() {})
		if q.retry.PerTryTimeout > 0 {
			ctx, cancel = context.WithTimeout(parent, q.retry.PerTryTimeout)
		}
		req := out.Clone(ctx)
		req.URL.Host = q.target.String()
		if rb != nil {
			req.Body = rb.reader()
			req.GetBody = func() (io.ReadCloser, error) { return rb.reader(), nil }
		}
		resp, err := tr.RoundTrip(req)
		if err != nil && ctx.Err() != nil && parent.Err() == nil {
			err = fmt.Errorf("%w after %v: %w", errPerTryTimeout, q.retry.PerTryTimeout, err)
		}
		retriable := retriable(&q.retry, resp, err)
		if !retriable || attempt > q.retry.Attempts || (rb != nil && !rb.replayable()) || parent.Err() != nil {
			if retriable && q.retry.Attempts > 0 && attempt > q.retry.Attempts {
				q.info.addFlag(FlagRetryLimit)
			}
			switch rwc, ok := upgraded(resp); {
			case ok:
				// An upgraded connection: the reverse proxy writes to it.
				resp.Body = &cancelRWBody{ReadWriteCloser: rwc, cancel: cancel}
			case resp != nil:
				resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
			default:
				cancel()
			}
			return resp, err
		}
		if resp != nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		cancel()
		q.nextTarget()
		if !sleepCtx(parent, backoff(&q.retry, attempt)) {
			return nil, parent.Err()
		}
	}
}

// setUpstream records the endpoint of the current try.
func (q *wpRequest) setUpstream(a netip.AddrPort) {
	q.info.Upstream = a
	st := q.snap.state
	if wl, ok := st.WorkloadByAddr(a.Addr()); ok {
		q.info.DstWorkload, q.info.DstIdentity = wl, st.IdentityOf(wl)
	} else {
		q.info.DstWorkload, q.info.DstIdentity = nil, spiffeid.ID{}
	}
}

// nextTarget moves the request to another endpoint of its cluster for a
// retry: one not tried yet if there is any.
func (q *wpRequest) nextTarget() {
	q.tried = append(q.tried, q.target)
	if q.cluster == nil || len(q.cluster.Endpoints) < 2 {
		return
	}
	var fresh []netip.AddrPort
	for _, ep := range q.cluster.Endpoints {
		a, err := endpointTarget(ep, q.port)
		if err == nil && !slices.Contains(q.tried, a) {
			fresh = append(fresh, a)
		}
	}
	if len(fresh) > 0 {
		q.target = fresh[rand.IntN(len(fresh))]
		return
	}
	if a, err := endpointTarget(q.cluster.Endpoints[rand.IntN(len(q.cluster.Endpoints))], q.port); err == nil {
		q.target = a
	}
}

// retriable applies Envoy's retry_on conditions to the outcome of a try.
func retriable(p *route.Retry, resp *http.Response, err error) bool {
	on := func(s string) bool { return slices.Contains(p.On, s) }
	if err != nil {
		var ce *upstreamConnectError
		switch {
		case errors.Is(err, errPerTryTimeout):
			return on("5xx") || on("gateway-error")
		case errors.As(err, &ce):
			return on("connect-failure") || on("5xx") || on("gateway-error") || on("reset")
		case strings.Contains(err.Error(), "REFUSED_STREAM"):
			return on("refused-stream") || on("5xx") || on("reset")
		case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
			return false
		}
		return on("reset") || on("5xx") || on("gateway-error")
	}
	s := resp.StatusCode
	switch {
	case s >= 500 && on("5xx"),
		(s == 502 || s == 503 || s == 504) && on("gateway-error"),
		s == 409 && on("retriable-4xx"),
		on("retriable-status-codes") && slices.Contains(p.Codes, s):
		return true
	}
	switch resp.Header.Get("Grpc-Status") {
	case "1":
		return on("cancelled")
	case "4":
		return on("deadline-exceeded")
	case "8":
		return on("resource-exhausted")
	case "13":
		return on("internal")
	case "14":
		return on("unavailable")
	}
	return false
}

// backoff is Envoy's fully jittered exponential backoff: a random wait
// below base·2^attempt, at most ten times the base (25 ms by default).
func backoff(p *route.Retry, attempt int) time.Duration {
	base := p.Backoff
	if base <= 0 {
		base = 25 * time.Millisecond
	}
	upper := base << min(attempt, 10)
	if upper > 10*base {
		upper = 10 * base
	}
	return time.Duration(rand.Int64N(int64(upper)))
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// cancelBody ends a try's context once its response body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// upgraded returns the connection of a 101 Switching Protocols response.
func upgraded(resp *http.Response) (io.ReadWriteCloser, bool) {
	if resp == nil || resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, false
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	return rwc, ok
}

// cancelRWBody is cancelBody for the connection of an upgraded request.
type cancelRWBody struct {
	io.ReadWriteCloser
	cancel context.CancelFunc
}

func (b *cancelRWBody) Close() error {
	err := b.ReadWriteCloser.Close()
	b.cancel()
	return err
}

// errBodySuperseded is returned to a try's body reader once a later try
// took over the body.
var errBodySuperseded = errors.New("proxy: waypoint: request body taken over by a retry")

// errBodyNotReplayable is returned when a retry needs request body bytes
// that were not kept (the body outgrew the buffer).
var errBodyNotReplayable = errors.New("proxy: waypoint: request body too large to replay")

// replayBody lets several tries read one request body: what the source
// yields is kept (up to limit bytes) so that a later try reads it again,
// then goes on reading the source. Only the newest try's reader may read;
// older ones get errBodySuperseded.
type replayBody struct {
	mu       sync.Mutex
	cond     sync.Cond
	src      io.Reader
	buf      []byte
	limit    int
	total    int
	overflow bool
	busy     bool // a reader is in src.Read
	err      error
	gen      int
}

func newReplayBody(src io.Reader, limit int) *replayBody {
	b := &replayBody{src: src, limit: limit}
	b.cond.L = &b.mu
	return b
}

// replayable reports whether every byte read so far is still kept.
func (b *replayBody) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.overflow
}

// reader returns the body for a new try, from its first byte.
func (b *replayBody) reader() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen++
	return &replayReader{b: b, gen: b.gen}
}

type replayReader struct {
	b   *replayBody
	gen int
	off int
}

func (r *replayReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b := r.b
	b.mu.Lock()
	for {
		switch {
		case r.gen != b.gen:
			b.mu.Unlock()
			return 0, errBodySuperseded
		case !b.overflow && r.off < len(b.buf):
			n := copy(p, b.buf[r.off:])
			r.off += n
			b.mu.Unlock()
			return n, nil
		case r.off < b.total:
			b.mu.Unlock()
			return 0, errBodyNotReplayable
		case b.err != nil:
			err := b.err
			b.mu.Unlock()
			return 0, err
		case !b.busy:
			b.busy = true
			b.mu.Unlock()
			n, err := b.src.Read(p)
			b.mu.Lock()
			b.busy = false
			b.cond.Broadcast()
			if n > 0 {
				if !b.overflow && len(b.buf)+n <= b.limit {
					b.buf = append(b.buf, p[:n]...)
				} else {
					b.overflow, b.buf = true, nil
				}
				b.total += n
				r.off += n
			}
			if err != nil {
				b.err = err
			}
			b.mu.Unlock()
			return n, err
		}
		b.cond.Wait()
	}
}

// Close does not close the source: a retry may still need it. The server
// closes the downstream body when the request ends.
func (r *replayReader) Close() error { return nil }
