package hbone

import (
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/meshblocks/meshblocks/internal/netutil"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func getBuf(n int) []byte { return netutil.GetBuffer(n) }
func putBuf(b []byte)     { netutil.PutBuffer(b) }

// stream is the engine's name for a tunnel stream.
type stream = Conn

// Conn is one HBONE tunnel: a CONNECT stream on a shared HTTP/2
// connection, presented as a net.Conn. Each direction ends independently:
// CloseWrite sends END_STREAM (the peer reads EOF) while reading goes on,
// and the peer's END_STREAM reads as io.EOF. Close ends both directions
// (with RST_STREAM CANCEL if the peer is still sending).
//
// Read and write deadlines apply to waiting for data and for flow-control
// credit; a write already handed to the connection completes or fails with
// the connection.
type Conn struct {
	c  *conn
	id uint32

	// Guarded by c.mu.
	sendWin     int64
	recvWin     int64
	recvUnacked int64
	recvDone    bool // END_STREAM or reset received
	endRecv     bool // END_STREAM received
	wclosed     bool // END_STREAM sent or write side gone
	werr        error

	// Guarded by mu.
	mu        sync.Mutex
	rq        [][]byte
	roff      int
	rerr      error // read side result once rq drains
	closed    bool
	doneShut  bool
	status    int
	header    http.Header
	respShut  bool
	rnotify   chan struct{}
	done      chan struct{}
	resp      chan struct{}
	readDL    deadline
	writeDL   deadline
	authority string
}

func newStream(c *conn, id uint32) *stream {
	st := &stream{
		c:       c,
		id:      id,
		sendWin: int64(c.peerInitWin),
		recvWin: streamWindow,
		rnotify: make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	if c.cfg.client {
		st.resp = make(chan struct{})
	}
	st.readDL.st = st
	st.writeDL.st = st
	return st
}

func (st *stream) notify() {
	select {
	case st.rnotify <- struct{}{}:
	default:
	}
}

// push appends received data. It returns how many bytes of the frame
// will be credited later as they are read, and, if the frame is a stream
// error, its code: FLOW_CONTROL_ERROR when the peer overran the stream
// window, STREAM_CLOSED for a frame after the peer's END_STREAM.
func (st *stream) push(chunks [][]byte, length, frameLen int64, end bool) (int64, http2.ErrCode, bool) {
	c := st.c
	c.mu.Lock()
	code, bad := http2.ErrCodeNo, false
	if st.endRecv {
		code, bad = http2.ErrCodeStreamClosed, true
	} else if st.recvWin -= frameLen; st.recvWin < 0 {
		code, bad = http2.ErrCodeFlowControl, true
	}
	if bad {
		c.mu.Unlock()
		for _, b := range chunks {
			putBuf(b)
		}
		return 0, code, true
	}
	if end {
		st.recvDone = true
		st.endRecv = true
	}
	finished := end && st.wclosed
	c.mu.Unlock()

	st.mu.Lock()
	if st.closed || (st.rerr != nil && st.rerr != io.EOF) {
		st.mu.Unlock()
		for _, b := range chunks {
			putBuf(b)
		}
		if finished {
			c.removeStream(st)
		}
		return 0, 0, false
	}
	st.rq = append(st.rq, chunks...)
	if end && st.rerr == nil {
		st.rerr = io.EOF
	}
	st.mu.Unlock()
	st.notify()
	if finished {
		c.removeStream(st)
	}
	return length, 0, false
}

// abort fails both directions with err (buffered data stays readable).
func (st *stream) abort(err error) {
	st.c.mu.Lock()
	if st.werr == nil {
		st.werr = err
	}
	st.recvDone = true
	st.c.mu.Unlock()
	st.mu.Lock()
	if st.rerr == nil {
		st.rerr = err
	}
	st.shutDoneLocked()
	st.mu.Unlock()
	st.notify()
}

func (st *stream) shutDoneLocked() {
	if !st.doneShut {
		st.doneShut = true
		close(st.done)
	}
}

// peerReset handles RST_STREAM from the peer.
func (st *stream) peerReset(code http2.ErrCode) {
	var rerr error
	switch code {
	case http2.ErrCodeNo, http2.ErrCodeCancel:
		rerr = io.EOF
	case http2.ErrCodeRefusedStream:
		rerr = ErrRefused
	default:
		rerr = &StreamError{StreamID: st.id, Code: code}
	}
	st.c.mu.Lock()
	if st.werr == nil {
		if rerr == io.EOF {
			st.werr = &StreamError{StreamID: st.id, Code: code}
		} else {
			st.werr = rerr
		}
	}
	st.recvDone = true
	st.c.mu.Unlock()
	st.mu.Lock()
	if st.rerr == nil {
		st.rerr = rerr
	}
	st.shutDoneLocked()
	st.mu.Unlock()
	st.notify()
}

// gotResponse handles response HEADERS on a client stream.
func (st *stream) gotResponse(f *http2.MetaHeadersFrame) {
	st.mu.Lock()
	first := !st.respShut
	if first {
		st.status, _ = strconv.Atoi(f.PseudoValue("status"))
		h := make(http.Header, len(f.RegularFields()))
		for _, hf := range f.RegularFields() {
			h.Add(hf.Name, hf.Value)
		}
		st.header = h
		st.respShut = true
		if st.resp != nil {
			close(st.resp)
		}
	}
	st.mu.Unlock()
	if f.StreamEnded() {
		if _, code, bad := st.push(nil, 0, 0, true); bad {
			st.c.resetStream(st.id, code)
		}
	}
}

// Read reads tunnelled bytes. It returns io.EOF after the peer ended its
// direction (END_STREAM, or RST_STREAM NO_ERROR/CANCEL).
func (st *stream) Read(p []byte) (int, error) {
	for {
		st.mu.Lock()
		if st.closed {
			st.mu.Unlock()
			return 0, net.ErrClosed
		}
		if len(st.rq) > 0 {
			n := 0
			for n < len(p) && len(st.rq) > 0 {
				b := st.rq[0][st.roff:]
				k := copy(p[n:], b)
				n += k
				st.roff += k
				if k == len(b) {
					putBuf(st.rq[0])
					st.rq[0] = nil
					st.rq = st.rq[1:]
					st.roff = 0
				}
			}
			if len(st.rq) == 0 {
				st.rq = nil
			}
			st.mu.Unlock()
			st.c.credit(st, int64(n))
			return n, nil
		}
		if st.rerr != nil {
			err := st.rerr
			st.mu.Unlock()
			return 0, err
		}
		st.mu.Unlock()
		if len(p) == 0 {
			return 0, nil
		}
		if err := st.waitReadable(); err != nil {
			return 0, err
		}
	}
}

// waitReadable blocks until the stream may have something to read,
// reading frames itself if nobody else is. It returns an error only when
// the read deadline passed.
func (st *stream) waitReadable() error {
	dl := st.readDL.wait()
	select {
	case <-dl:
		return os.ErrDeadlineExceeded
	default:
	}
	if c := st.c; c.tryAcquire(st) {
		c.readUntil(st.readable)
		c.release()
		return nil
	}
	idle, ok := st.c.tokenIdle()
	if !ok {
		return nil
	}
	select {
	case <-st.rnotify:
	case <-idle:
	case <-dl:
		return os.ErrDeadlineExceeded
	}
	return nil
}

// WriteTo writes the tunnel's incoming bytes to w until the peer ends its
// direction (which is not an error), handing received buffers to w
// without an intermediate copy. netutil.Copy, and so Relay, use it.
func (st *stream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		st.mu.Lock()
		if st.closed {
			st.mu.Unlock()
			return total, net.ErrClosed
		}
		if len(st.rq) > 0 {
			full := st.rq[0]
			b := full[st.roff:]
			st.rq[0] = nil
			st.rq = st.rq[1:]
			st.roff = 0
			if len(st.rq) == 0 {
				st.rq = nil
			}
			st.mu.Unlock()
			n, err := w.Write(b)
			total += int64(n)
			putBuf(full)
			st.c.credit(st, int64(len(b)))
			if err != nil {
				return total, err
			}
			continue
		}
		if err := st.rerr; err != nil {
			st.mu.Unlock()
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
		st.mu.Unlock()
		if err := st.waitReadable(); err != nil {
			return total, err
		}
	}
}

// readable reports whether Read has something to return.
func (st *stream) readable() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.rq) > 0 || st.rerr != nil || st.closed {
		return true
	}
	return st.readDL.expired()
}

// Write sends p as DATA frames, waiting for flow-control credit as needed.
func (st *stream) Write(p []byte) (int, error) {
	if len(p) == 0 {
		_, err := st.awaitSend(0)
		return 0, err
	}
	n := 0
	for n < len(p) {
		k, err := st.awaitSend(len(p) - n)
		if err != nil {
			return n, err
		}
		if err := st.c.writeData(st.id, p[n:n+k], false); err != nil {
			return n, st.c.err()
		}
		n += k
	}
	return n, nil
}

func (st *stream) awaitSend(want int) (int, error) {
	c := st.c
	for {
		c.mu.Lock()
		switch {
		case st.werr != nil:
			err := st.werr
			c.mu.Unlock()
			return 0, err
		case st.wclosed:
			c.mu.Unlock()
			return 0, ErrWriteClosed
		case c.closed:
			err := c.closeErr
			c.mu.Unlock()
			return 0, err
		}
		if want == 0 {
			c.mu.Unlock()
			return 0, nil
		}
		if avail := min(st.sendWin, c.sendWin); avail > 0 {
			k := int(min(avail, int64(want), maxWriteChunk))
			st.sendWin -= int64(k)
			c.sendWin -= int64(k)
			c.mu.Unlock()
			return k, nil
		}
		ch := c.flowCh
		c.mu.Unlock()
		dl := st.writeDL.wait()
		select {
		case <-dl:
			return 0, os.ErrDeadlineExceeded
		default:
		}
		if c.tryAcquire(st) {
			c.readUntil(func() bool { return st.canSend(ch, dl) })
			c.release()
			continue
		}
		idle, ok := c.tokenIdle()
		if !ok {
			continue
		}
		select {
		case <-ch:
		case <-st.done:
		case <-c.done:
		case <-idle:
		case <-dl:
			return 0, os.ErrDeadlineExceeded
		}
	}
}

// canSend reports whether a writer waiting on flow control should look
// again: the window grew (ch closed), the stream or connection ended, or
// the write deadline passed.
func (st *stream) canSend(ch, dl <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-st.done:
		return true
	case <-st.c.done:
		return true
	case <-dl:
		return true
	default:
		return false
	}
}

// CloseWrite ends the write direction with END_STREAM; the peer reads
// EOF. Reading continues until the peer ends its direction.
func (st *stream) CloseWrite() error {
	c := st.c
	c.mu.Lock()
	if st.wclosed || st.werr != nil {
		c.mu.Unlock()
		return nil
	}
	st.wclosed = true
	finished := st.recvDone
	c.mu.Unlock()
	err := c.writeData(st.id, nil, true)
	if finished {
		c.removeStream(st)
	}
	return err
}

// Close ends both directions and releases the stream's buffers.
func (st *stream) Close() error {
	c := st.c
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	var dropped int64
	for _, b := range st.rq {
		dropped += int64(len(b))
		putBuf(b)
	}
	dropped -= int64(st.roff)
	st.rq, st.roff = nil, 0
	st.shutDoneLocked()
	st.mu.Unlock()
	st.notify()
	st.readDL.stop()
	st.writeDL.stop()
	c.interruptRead(st)

	c.mu.Lock()
	registered := c.streams[st.id] == st
	needEnd := !st.wclosed && st.werr == nil
	needRST := !st.recvDone
	st.wclosed = true
	if st.werr == nil {
		st.werr = net.ErrClosed
	}
	c.mu.Unlock()
	if dropped > 0 {
		c.credit(nil, dropped)
	}
	if registered {
		id := st.id
		if needEnd || needRST {
			c.queue(func(fr *http2.Framer) {
				if needEnd {
					fr.WriteData(id, true, nil)
				}
				if needRST {
					fr.WriteRSTStream(id, http2.ErrCodeCancel)
				}
			})
		}
		c.removeStream(st)
	}
	return nil
}

// LocalAddr returns the local address of the carrying TLS connection.
func (st *stream) LocalAddr() net.Addr { return st.c.nc.LocalAddr() }

// RemoteAddr returns the remote address of the carrying TLS connection.
func (st *stream) RemoteAddr() net.Addr { return st.c.nc.RemoteAddr() }

// SetDeadline sets both the read and write deadlines.
func (st *stream) SetDeadline(t time.Time) error {
	st.readDL.set(t)
	st.writeDL.set(t)
	return nil
}

// SetReadDeadline bounds waiting in Read.
func (st *stream) SetReadDeadline(t time.Time) error { st.readDL.set(t); return nil }

// SetWriteDeadline bounds waiting for flow-control credit in Write.
func (st *stream) SetWriteDeadline(t time.Time) error { st.writeDL.set(t); return nil }

// StreamID returns the HTTP/2 stream ID.
func (st *stream) StreamID() uint32 { return st.id }

// Authority returns the CONNECT :authority of the tunnel.
func (st *stream) Authority() string { return st.authority }

// ResponseHeader returns the regular headers of the peer's 200 response
// (client side; nil on the server side).
func (st *stream) ResponseHeader() http.Header {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.header
}

func connectFields(authority string, h http.Header) []hpack.HeaderField {
	fields := make([]hpack.HeaderField, 0, 2+len(h))
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: http.MethodConnect},
		hpack.HeaderField{Name: ":authority", Value: authority})
	return appendHeader(fields, h)
}

// appendHeader adds regular header fields in lower case, skipping
// connection-specific ones that HTTP/2 forbids.
func appendHeader(fields []hpack.HeaderField, h http.Header) []hpack.HeaderField {
	for k, vs := range h {
		name := lowerASCII(k)
		switch name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "te":
			continue
		}
		if name == "" || name[0] == ':' {
			continue
		}
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	return fields
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// deadline is a resettable timer whose expiry closes a channel, like the
// one inside net.Pipe.
type deadline struct {
	st    *stream // interrupted when the deadline passes
	mu    sync.Mutex
	timer *time.Timer
	ch    chan struct{}
	fired bool
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if d.ch == nil || d.fired {
		d.ch = make(chan struct{})
		d.fired = false
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.ch)
		d.fired = true
		if d.st != nil {
			go d.st.c.interruptRead(d.st)
		}
		return
	}
	ch := d.ch
	d.timer = time.AfterFunc(dur, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.ch == ch && !d.fired {
			close(ch)
			d.fired = true
			if d.st != nil {
				go d.st.c.interruptRead(d.st)
			}
		}
	})
}

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}

func (d *deadline) expired() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fired
}

func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

// Interface guards.
var _ net.Conn = (*Conn)(nil)
var _ io.WriterTo = (*Conn)(nil)
var _ netutil.CloseWriter = (*Conn)(nil)
