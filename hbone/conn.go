package hbone

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Protocol constants from spec §B.
const (
	streamWindow        = 4 << 20
	connWindow          = 16 << 20
	ourMaxFrame         = 1 << 20
	clientMaxHeaderList = 16 << 10
	serverMaxHeaderList = 64 << 10
	serverMaxStreams    = 200
	defaultPoolStreams  = 100

	initialWindow   = 65535
	defaultMaxFrame = 16384
	tlsRecord       = 16384

	// wbufSize is the write batch: control frames and small DATA frames
	// are gathered into one buffer and handed to TLS in one Write.
	wbufSize = 64 << 10
	// maxWriteChunk bounds how much one stream writes per turn, so
	// streams sharing a connection interleave.
	maxWriteChunk = 512 << 10
	// readBufSize is the bufio.Reader size over the TLS connection.
	readBufSize = 64 << 10

	defaultPingInterval = 10 * time.Second
	defaultPingTimeout  = 20 * time.Second
)

const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// connConfig configures one HTTP/2 connection engine.
type connConfig struct {
	client       bool
	pingInterval time.Duration // <0 disables
	pingTimeout  time.Duration
	logger       *slog.Logger
	// newStream is called on the read goroutine for each new CONNECT
	// stream (server only). It must not block.
	newStream func(st *stream, hdrs *http2.MetaHeadersFrame)
	// onIdle is called (without locks) when the number of active streams
	// drops to zero, and onClose once when the connection closes.
	onIdle  func(*conn)
	onClose func(*conn)
	// settingsTimeout (client only) closes the connection if the server's
	// SETTINGS have not arrived this long after start. Zero: no limit.
	settingsTimeout time.Duration
}

// conn is one HTTP/2 connection carrying CONNECT streams.
type conn struct {
	nc  net.Conn
	cfg connConfig
	br  *bufio.Reader
	fr  *http2.Framer

	// wmu serialises writes to nc. wbuf is only touched under wmu.
	wmu  chanMutex
	wbuf []byte

	// cmu guards the queue of control frames and the HPACK encoder.
	// It is never held during I/O.
	cmu  sync.Mutex
	cbuf bytes.Buffer
	cfr  *http2.Framer // writes into cbuf
	henc *hpack.Encoder
	hbuf bytes.Buffer
	kick chan struct{}

	// mu guards stream state and flow control.
	mu             sync.Mutex
	streams        map[uint32]*stream
	nextID         uint32
	lastPeerID     uint32
	reserved       int // client: slots reserved by the pool, not yet opened
	peerMaxStreams uint32
	peerInitWin    int32
	sendWin        int64
	flowCh         chan struct{}
	recvWin        int64 // connection receive window left
	recvUnacked    int64
	goAwayRecv     bool
	goAwayLastID   uint32
	goAwaySent     bool
	lastClosedRST  uint32 // last closed stream answered with STREAM_CLOSED
	retired        bool   // client: evicted while idle, takes no new streams
	closed         bool
	closeErr       error
	settingsSeen   bool
	settingsCh     chan struct{} // closed when the peer's first SETTINGS arrive
	settingsTimer  *time.Timer
	pingData       [8]byte
	pingOut        bool
	pongTimer      *time.Timer

	peerMaxFrame atomic.Uint32

	// Read token: one goroutine at a time reads frames. See readtoken.go.
	rmu         sync.Mutex
	tokActive   bool
	tokOwner    *stream // nil for the background reader
	tokCh       chan struct{}
	tokWanted   atomic.Bool
	bgWake      chan struct{}
	idleTimer   *time.Timer
	timerArmed  bool
	tokGen      uint64
	timerGen    uint64
	interrupted atomic.Bool
	midFrame    atomic.Bool

	done chan struct{}
	wg   sync.WaitGroup
}

func newConn(nc net.Conn, cfg connConfig) *conn {
	if cfg.logger == nil {
		cfg.logger = slog.New(slog.DiscardHandler)
	}
	if cfg.pingInterval == 0 {
		cfg.pingInterval = defaultPingInterval
	}
	if cfg.pingTimeout <= 0 {
		cfg.pingTimeout = defaultPingTimeout
	}
	c := &conn{
		nc:             nc,
		cfg:            cfg,
		wmu:            make(chanMutex, 1),
		kick:           make(chan struct{}, 1),
		streams:        make(map[uint32]*stream),
		peerMaxStreams: ^uint32(0),
		peerInitWin:    initialWindow,
		sendWin:        initialWindow,
		flowCh:         make(chan struct{}),
		recvWin:        connWindow,
		settingsCh:     make(chan struct{}),
		done:           make(chan struct{}),
		wbuf:           make([]byte, 0, wbufSize),
	}
	c.peerMaxFrame.Store(defaultMaxFrame)
	if cfg.client {
		c.nextID = 1
	}
	c.br = bufio.NewReaderSize(retryReader{c}, readBufSize)
	c.bgWake = make(chan struct{}, 1)
	c.fr = http2.NewFramer(nil, c.br)
	c.fr.SetMaxReadFrameSize(ourMaxFrame)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if cfg.client {
		c.fr.MaxHeaderListSize = clientMaxHeaderList
	} else {
		c.fr.MaxHeaderListSize = serverMaxHeaderList
	}
	c.cfr = http2.NewFramer(&c.cbuf, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// start queues the preface and SETTINGS and starts the read and write
// goroutines. A server must have consumed the client preface already.
func (c *conn) start() {
	c.cmu.Lock()
	if c.cfg.client {
		c.cbuf.WriteString(clientPreface)
		c.cfr.WriteSettings(
			http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: ourMaxFrame},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: clientMaxHeaderList},
		)
	} else {
		c.cfr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: serverMaxStreams},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: ourMaxFrame},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: serverMaxHeaderList},
		)
	}
	c.cfr.WriteWindowUpdate(0, connWindow-initialWindow)
	c.cmu.Unlock()
	if t := c.cfg.settingsTimeout; t > 0 {
		c.mu.Lock()
		if !c.settingsSeen && !c.closed {
			c.settingsTimer = time.AfterFunc(t, func() {
				c.mu.Lock()
				seen := c.settingsSeen
				c.mu.Unlock()
				if !seen {
					c.protoError(http2.ErrCodeProtocol, "no SETTINGS from the peer within %v", t)
				}
			})
		}
		c.mu.Unlock()
	}
	c.wg.Add(2)
	go c.readLoop()
	go c.writeLoop()
	c.signal()
}

// chanMutex is a mutex made of a one-slot channel, for the write lock,
// which is held across network writes. A goroutine waiting for it is
// durably blocked in the sense of testing/synctest (one waiting on a
// sync.Mutex is not), so synctest tests over net.Pipe, whose writes block
// until the other end reads, can still advance their fake clock.
type chanMutex chan struct{}

func (m chanMutex) Lock()   { m <- struct{}{} }
func (m chanMutex) Unlock() { <-m }
func (m chanMutex) TryLock() bool {
	select {
	case m <- struct{}{}:
		return true
	default:
		return false
	}
}

// readPreface reads and checks the client connection preface (server side).
func readPreface(r io.Reader) error {
	var buf [len(clientPreface)]byte
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return fmt.Errorf("hbone: reading client preface: %w", err)
	}
	if string(buf[:]) != clientPreface {
		return &ProtocolError{Code: http2.ErrCodeProtocol, Reason: "bad client preface"}
	}
	return nil
}

// signal asks the write goroutine to flush queued control frames.
func (c *conn) signal() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// queue appends control frames under cmu via fn and wakes the writer.
func (c *conn) queue(fn func(fr *http2.Framer)) {
	c.cmu.Lock()
	fn(c.cfr)
	c.cmu.Unlock()
	c.signal()
}

// lockWrite takes the write lock. If it has to wait, it first makes sure
// someone reads the connection: the holder may be blocked on a peer that
// is itself blocked writing to us.
func (c *conn) lockWrite() {
	if c.wmu.TryLock() {
		return
	}
	c.rmu.Lock()
	idle := !c.tokActive
	c.rmu.Unlock()
	if idle {
		c.wakeBG()
	}
	c.wmu.Lock()
}

// flushInline writes queued control frames from the calling goroutine.
func (c *conn) flushInline() error {
	c.lockWrite()
	defer c.wmu.Unlock()
	c.drainCtrlLocked()
	return c.flushLocked()
}

func (c *conn) drainCtrlLocked() {
	c.cmu.Lock()
	if c.cbuf.Len() > 0 {
		c.wbuf = append(c.wbuf, c.cbuf.Bytes()...)
		c.cbuf.Reset()
	}
	c.cmu.Unlock()
}

func (c *conn) flushLocked() error {
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.nc.Write(c.wbuf)
	if cap(c.wbuf) > 4*wbufSize {
		c.wbuf = make([]byte, 0, wbufSize)
	} else {
		c.wbuf = c.wbuf[:0]
	}
	if err != nil {
		c.closeWithError(fmt.Errorf("hbone: write: %w", err))
	}
	return err
}

func appendFrameHeader(b []byte, length int, typ http2.FrameType, flags http2.Flags, id uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), byte(typ), byte(flags),
		byte(id>>24), byte(id>>16), byte(id>>8), byte(id))
}

// writeData writes data as DATA frames on stream id, with END_STREAM on
// the last one if end is set. Queued control frames go first. Frames are
// batched into few TLS writes, aligned to full TLS records.
func (c *conn) writeData(id uint32, data []byte, end bool) error {
	c.lockWrite()
	defer c.wmu.Unlock()
	if c.isClosed() {
		return c.err()
	}
	c.drainCtrlLocked()
	maxF := int(c.peerMaxFrame.Load())
	for first := true; first || len(data) > 0; first = false {
		k := min(len(data), maxF)
		var fl http2.Flags
		if end && k == len(data) {
			fl = http2.FlagDataEndStream
		}
		c.wbuf = appendFrameHeader(c.wbuf, k, http2.FrameData, fl, id)
		if len(c.wbuf)+k <= cap(c.wbuf) {
			c.wbuf = append(c.wbuf, data[:k]...)
		} else {
			fill := min((tlsRecord-len(c.wbuf)%tlsRecord)%tlsRecord, k)
			c.wbuf = append(c.wbuf, data[:fill]...)
			if err := c.flushLocked(); err != nil {
				return err
			}
			if _, err := c.nc.Write(data[fill:k]); err != nil {
				c.closeWithError(fmt.Errorf("hbone: write: %w", err))
				return err
			}
		}
		data = data[k:]
	}
	c.drainCtrlLocked()
	return c.flushLocked()
}

func (c *conn) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *conn) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeErr != nil {
		return c.closeErr
	}
	return ErrConnClosed
}

// writeLoop flushes control frames queued by other goroutines and runs the
// PING keepalive.
func (c *conn) writeLoop() {
	defer c.wg.Done()
	var ping *time.Timer
	var pingC <-chan time.Time
	if c.cfg.pingInterval > 0 {
		ping = time.NewTimer(c.cfg.pingInterval)
		defer ping.Stop()
		pingC = ping.C
	}
	for {
		select {
		case <-c.done:
			return
		case <-c.kick:
			if err := c.flushInline(); err != nil {
				return
			}
		case <-pingC:
			c.sendPing()
		}
		if ping != nil {
			c.mu.Lock()
			rearm := !c.pingOut && c.pongTimer != nil
			if rearm {
				c.pongTimer = nil
			}
			c.mu.Unlock()
			if rearm {
				ping.Reset(c.cfg.pingInterval)
			}
		}
	}
}

func (c *conn) sendPing() {
	c.mu.Lock()
	if c.closed || c.pingOut {
		c.mu.Unlock()
		return
	}
	c.pingOut = true
	binary.BigEndian.PutUint64(c.pingData[:], uint64(time.Now().UnixNano()))
	data := c.pingData
	c.pongTimer = time.AfterFunc(c.cfg.pingTimeout, func() {
		c.mu.Lock()
		out := c.pingOut
		c.mu.Unlock()
		if out {
			c.cfg.logger.Debug("hbone: keepalive timeout", "remote", c.nc.RemoteAddr())
			c.goAwayAndClose(http2.ErrCodeNo, ErrKeepaliveTimeout)
		}
	})
	c.mu.Unlock()
	c.queue(func(fr *http2.Framer) { fr.WritePing(false, data) })
	c.flushInline()
}

// goAwayAndClose makes a best-effort attempt to send GOAWAY (server only),
// then closes the connection.
func (c *conn) goAwayAndClose(code http2.ErrCode, err error) {
	if !c.cfg.client && c.wmu.TryLock() {
		c.mu.Lock()
		last := c.lastPeerID
		c.mu.Unlock()
		c.wbuf = c.wbuf[:0]
		c.cmu.Lock()
		c.cbuf.Reset()
		c.cfr.WriteGoAway(last, code, nil)
		c.wbuf = append(c.wbuf, c.cbuf.Bytes()...)
		c.cbuf.Reset()
		c.cmu.Unlock()
		c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		c.nc.Write(c.wbuf)
		c.wbuf = c.wbuf[:0]
		c.wmu.Unlock()
	}
	c.closeWithError(err)
}

// closeWithError tears the connection down: every stream fails with err.
func (c *conn) closeWithError(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	if err == nil {
		err = ErrConnClosed
	}
	c.closeErr = err
	close(c.done)
	if c.pongTimer != nil {
		c.pongTimer.Stop()
	}
	if c.settingsTimer != nil {
		c.settingsTimer.Stop()
	}
	c.rmu.Lock()
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	c.rmu.Unlock()
	streams := make([]*stream, 0, len(c.streams))
	for _, st := range c.streams {
		streams = append(streams, st)
	}
	clear(c.streams)
	close(c.flowCh)
	c.flowCh = make(chan struct{})
	c.mu.Unlock()
	serr := err
	if !errors.Is(err, ErrConnClosed) {
		serr = fmt.Errorf("%w: %w", ErrConnClosed, err)
	}
	for _, st := range streams {
		st.abort(serr)
	}
	c.nc.Close()
	if c.cfg.onClose != nil {
		c.cfg.onClose(c)
	}
}

// closeGracefully flushes queued frames (bounded by a short write
// deadline) and then closes, without blocking the caller.
func (c *conn) closeGracefully(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		c.lockWrite()
		c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		c.drainCtrlLocked()
		c.flushLocked()
		c.wmu.Unlock()
		c.closeWithError(err)
	}()
}

// close closes the connection and waits for its goroutines.
func (c *conn) close() {
	c.closeWithError(nil)
	c.wg.Wait()
}

// protoError closes the connection with GOAWAY for a peer protocol error.
func (c *conn) protoError(code http2.ErrCode, format string, args ...any) {
	pe := &ProtocolError{Code: code, Reason: fmt.Sprintf(format, args...)}
	c.cfg.logger.Debug("hbone: protocol error", "remote", c.nc.RemoteAddr(), "err", pe)
	c.mu.Lock()
	last := c.lastPeerID
	c.mu.Unlock()
	c.queue(func(fr *http2.Framer) { fr.WriteGoAway(last, code, []byte(pe.Reason)) })
	c.flushFinal()
	c.closeWithError(pe)
}

// flushFinal writes the queued control frames (a GOAWAY) before the
// connection is torn down. The write deadline, set before taking the
// write lock, also ends a write in progress that a stalled peer holds up,
// so this waits at most about a second.
func (c *conn) flushFinal() {
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	c.wmu.Lock()
	c.drainCtrlLocked()
	if len(c.wbuf) > 0 && !c.isClosed() {
		c.nc.Write(c.wbuf)
	}
	c.wbuf = c.wbuf[:0]
	c.wmu.Unlock()
}

// readFrame reads and handles one frame. It returns errInterrupted when
// a read interrupt arrived at a frame boundary (no bytes of a frame
// consumed), and errConnDone once the connection is closed (the cause is
// in c.closeErr).
func (c *conn) readFrame() error {
	if c.interrupted.Load() {
		c.clearInterrupt()
		return errInterrupted
	}
	c.midFrame.Store(false)
	hdr, err := c.br.Peek(9)
	if err != nil {
		if isTimeout(err) && !c.isClosed() {
			c.clearInterrupt()
			return errInterrupted
		}
		c.closeWithError(readErr(err))
		return errConnDone
	}
	c.midFrame.Store(true)
	defer c.midFrame.Store(false)
	if http2.FrameType(hdr[3]) == http2.FrameData {
		length := uint32(hdr[0])<<16 | uint32(hdr[1])<<8 | uint32(hdr[2])
		flags := http2.Flags(hdr[4])
		id := binary.BigEndian.Uint32(hdr[5:]) & (1<<31 - 1)
		if length > ourMaxFrame {
			c.protoError(http2.ErrCodeFrameSize, "DATA frame of %d bytes exceeds %d", length, ourMaxFrame)
			return errConnDone
		}
		if id == 0 {
			c.protoError(http2.ErrCodeProtocol, "DATA frame on stream 0")
			return errConnDone
		}
		c.br.Discard(9)
		if err := c.readData(id, flags, int(length)); err != nil {
			c.closeWithError(readErr(err))
			return errConnDone
		}
		return nil
	}
	f, err := c.fr.ReadFrame()
	if err != nil {
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			c.protoError(http2.ErrCode(ce), "%v", err)
			return errConnDone
		}
		var se http2.StreamError
		if errors.As(err, &se) {
			c.resetStream(se.StreamID, se.Code)
			return nil
		}
		c.closeWithError(readErr(err))
		return errConnDone
	}
	if !c.handleFrame(f) {
		return errConnDone
	}
	return nil
}

// readErr describes a failed connection read. The peer closing the
// connection is io.ErrUnexpectedEOF, not io.EOF, for the streams it cuts
// off: only END_STREAM (or RST_STREAM NO_ERROR/CANCEL) ends a tunnel
// cleanly.
func readErr(err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: peer closed the connection: %w", ErrConnClosed, io.ErrUnexpectedEOF)
	}
	if errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("%w: %w", ErrConnClosed, err)
	}
	return fmt.Errorf("hbone: read: %w", err)
}

// readData reads one DATA frame's payload (header already consumed) into
// the stream's receive queue.
func (c *conn) readData(id uint32, flags http2.Flags, length int) error {
	frameLen := int64(length)
	pad := 0
	if flags.Has(http2.FlagDataPadded) {
		if length < 1 {
			c.protoError(http2.ErrCodeProtocol, "padded DATA frame without pad length")
			return io.EOF
		}
		b, err := c.br.ReadByte()
		if err != nil {
			return err
		}
		pad = int(b)
		length--
		if pad > length {
			c.protoError(http2.ErrCodeProtocol, "DATA padding %d exceeds payload %d", pad, length)
			return io.EOF
		}
		length -= pad
	}
	c.mu.Lock()
	c.recvWin -= frameLen
	if c.recvWin < 0 {
		c.mu.Unlock()
		c.protoError(http2.ErrCodeFlowControl, "peer exceeded connection window")
		return io.EOF
	}
	st := c.streams[id]
	if st == nil {
		idle := c.idleStreamLocked(id)
		c.mu.Unlock()
		if idle {
			// RFC 9113 §5.1: DATA on a stream never opened is a
			// connection error.
			c.protoError(http2.ErrCodeProtocol, "DATA on idle stream %d", id)
			return io.EOF
		}
		// A closed stream: drop the data (crediting the connection
		// window) and answer with RST_STREAM(STREAM_CLOSED), once per
		// stream in a row of frames.
		if _, err := c.br.Discard(length + pad); err != nil {
			return err
		}
		c.credit(nil, frameLen)
		c.mu.Lock()
		dup := c.lastClosedRST == id
		c.lastClosedRST = id
		c.mu.Unlock()
		if !dup {
			c.queue(func(fr *http2.Framer) { fr.WriteRSTStream(id, http2.ErrCodeStreamClosed) })
		}
		return nil
	}
	c.mu.Unlock()
	var chunks [][]byte
	remaining := length
	for remaining > 0 {
		k := min(remaining, 256<<10)
		b := getBuf(k)
		if _, err := io.ReadFull(c.br, b); err != nil {
			putBuf(b)
			for _, ch := range chunks {
				putBuf(ch)
			}
			return err
		}
		chunks = append(chunks, b)
		remaining -= k
	}
	if pad > 0 {
		if _, err := c.br.Discard(pad); err != nil {
			return err
		}
	}
	accepted, code, bad := st.push(chunks, int64(length), frameLen, flags.Has(http2.FlagDataEndStream))
	if bad {
		c.resetStream(id, code)
	}
	// Padding, and data for a stream no longer read, is credited now.
	if unread := frameLen - accepted; unread > 0 {
		c.credit(nil, unread)
	}
	return nil
}

// credit returns receive window after n bytes were consumed (or dropped):
// connection-level always, stream-level when st is set. Updates are sent in
// bulk once a quarter of the window is owed.
func (c *conn) credit(st *stream, n int64) {
	var connInc, streamInc uint32
	var sid uint32
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.recvUnacked += n
	if c.recvUnacked >= connWindow/4 {
		connInc = uint32(c.recvUnacked)
		c.recvWin += c.recvUnacked
		c.recvUnacked = 0
	}
	if st != nil && c.streams[st.id] == st {
		st.recvUnacked += n
		if st.recvUnacked >= streamWindow/4 && !st.recvDone {
			streamInc = uint32(st.recvUnacked)
			st.recvWin += st.recvUnacked
			st.recvUnacked = 0
			sid = st.id
		}
	}
	c.mu.Unlock()
	if connInc > 0 || streamInc > 0 {
		c.queue(func(fr *http2.Framer) {
			if connInc > 0 {
				fr.WriteWindowUpdate(0, connInc)
			}
			if streamInc > 0 {
				fr.WriteWindowUpdate(sid, streamInc)
			}
		})
	}
}

// resetStream sends RST_STREAM and forgets the stream locally.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	if st != nil {
		st.abort(&StreamError{StreamID: id, Code: code})
		c.removeStream(st)
	}
	c.queue(func(fr *http2.Framer) { fr.WriteRSTStream(id, code) })
}

func (c *conn) handleFrame(f http2.Frame) bool {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return true
		}
		return c.handleSettings(f)
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			if c.pingOut && f.Data == c.pingData {
				c.pingOut = false
				if c.pongTimer != nil {
					c.pongTimer.Stop()
				}
			}
			c.mu.Unlock()
			c.signal()
			return true
		}
		data := f.Data
		c.queue(func(fr *http2.Framer) { fr.WritePing(true, data) })
		return true
	case *http2.MetaHeadersFrame:
		return c.handleHeaders(f)
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		st := c.streams[f.StreamID]
		idle := st == nil && c.idleStreamLocked(f.StreamID)
		c.mu.Unlock()
		if idle {
			c.protoError(http2.ErrCodeProtocol, "RST_STREAM on idle stream %d", f.StreamID)
			return false
		}
		if st != nil {
			st.peerReset(f.ErrCode)
			c.removeStream(st)
		}
		return true
	case *http2.GoAwayFrame:
		c.handleGoAway(f)
		return true
	case *http2.PriorityFrame, *http2.UnknownFrame:
		return true
	case *http2.PushPromiseFrame:
		c.protoError(http2.ErrCodeProtocol, "PUSH_PROMISE received")
		return false
	default:
		return true
	}
}

func (c *conn) handleSettings(f *http2.SettingsFrame) bool {
	var perr error
	c.mu.Lock()
	f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			perr = err
			return err
		}
		switch s.ID {
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame.Store(s.Val)
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - int64(c.peerInitWin)
			c.peerInitWin = int32(s.Val)
			for _, st := range c.streams {
				st.sendWin += delta
			}
			c.wakeWritersLocked()
		}
		return nil
	})
	first := !c.settingsSeen
	c.settingsSeen = true
	if first && c.settingsTimer != nil {
		c.settingsTimer.Stop()
	}
	c.mu.Unlock()
	if perr != nil {
		var ce http2.ConnectionError
		code := http2.ErrCodeProtocol
		if errors.As(perr, &ce) {
			code = http2.ErrCode(ce)
		}
		c.protoError(code, "bad SETTINGS: %v", perr)
		return false
	}
	if first {
		close(c.settingsCh)
	}
	c.queue(func(fr *http2.Framer) { fr.WriteSettingsAck() })
	return true
}

func (c *conn) wakeWritersLocked() {
	close(c.flowCh)
	c.flowCh = make(chan struct{})
}

func (c *conn) handleWindowUpdate(f *http2.WindowUpdateFrame) bool {
	c.mu.Lock()
	if f.StreamID == 0 {
		c.sendWin += int64(f.Increment)
		if c.sendWin > 1<<31-1 {
			c.mu.Unlock()
			c.protoError(http2.ErrCodeFlowControl, "connection window overflow")
			return false
		}
	} else if st := c.streams[f.StreamID]; st != nil {
		st.sendWin += int64(f.Increment)
		if st.sendWin > 1<<31-1 {
			c.mu.Unlock()
			c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
			return true
		}
	} else if c.idleStreamLocked(f.StreamID) {
		c.mu.Unlock()
		c.protoError(http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream %d", f.StreamID)
		return false
	}
	c.wakeWritersLocked()
	c.mu.Unlock()
	return true
}

func (c *conn) handleGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goAwayRecv = true
	c.goAwayLastID = f.LastStreamID
	var refused []*stream
	for id, st := range c.streams {
		if id > f.LastStreamID && id%2 == 1 == c.cfg.client {
			refused = append(refused, st)
		}
	}
	idle := len(c.streams) == len(refused)
	c.mu.Unlock()
	for _, st := range refused {
		st.abort(ErrGoAway)
		c.removeStream(st)
	}
	if f.ErrCode != http2.ErrCodeNo {
		c.closeWithError(&GoAwayError{Code: f.ErrCode, DebugData: string(f.DebugData())})
		return
	}
	if idle && c.cfg.onIdle != nil {
		c.cfg.onIdle(c)
	}
}

func (c *conn) handleHeaders(f *http2.MetaHeadersFrame) bool {
	id := f.StreamID
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	if c.cfg.client {
		if st == nil {
			c.mu.Lock()
			idle := c.idleStreamLocked(id)
			c.mu.Unlock()
			if idle {
				c.protoError(http2.ErrCodeProtocol, "HEADERS on idle stream %d", id)
				return false
			}
			return true // response for a stream we already gave up on
		}
		st.gotResponse(f)
		return true
	}
	if st != nil {
		// Trailers. CONNECT streams have none; honour END_STREAM.
		if f.StreamEnded() {
			if _, code, bad := st.push(nil, 0, 0, true); bad {
				c.resetStream(id, code)
			}
		}
		return true
	}
	if id%2 == 0 || id <= c.lastPeerID {
		c.protoError(http2.ErrCodeProtocol, "HEADERS on invalid stream %d", id)
		return false
	}
	c.mu.Lock()
	c.lastPeerID = id
	refuse := c.goAwaySent || c.closed || len(c.streams) >= serverMaxStreams
	var nst *stream
	if !refuse {
		nst = newStream(c, id)
		if f.StreamEnded() {
			nst.recvDone = true
			nst.endRecv = true
			nst.rerr = io.EOF
		}
		c.streams[id] = nst
	}
	c.mu.Unlock()
	if refuse {
		c.queue(func(fr *http2.Framer) { fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
		return true
	}
	c.cfg.newStream(nst, f)
	return true
}

// idleStreamLocked reports whether stream id was never opened (RFC 9113
// §5.1 "idle"). A client opens odd streams in order and a server opens
// none (push is disabled). c.mu is held.
func (c *conn) idleStreamLocked(id uint32) bool {
	if id == 0 {
		return false
	}
	if c.cfg.client {
		return id%2 == 0 || id >= c.nextID
	}
	return id%2 == 0 || id > c.lastPeerID
}

// removeStream forgets st; when the last stream goes, onIdle runs.
func (c *conn) removeStream(st *stream) {
	c.mu.Lock()
	if c.streams[st.id] != st {
		c.mu.Unlock()
		return
	}
	delete(c.streams, st.id)
	idle := len(c.streams) == 0 && c.reserved == 0
	c.mu.Unlock()
	if idle && c.cfg.onIdle != nil {
		c.cfg.onIdle(c)
	}
}

// activeStreams reports the open streams plus reserved slots.
func (c *conn) activeStreams() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams) + c.reserved
}

// writeHeaders encodes and queues a HEADERS frame for an already
// registered stream, then flushes it from the calling goroutine.
func (c *conn) writeHeaders(id uint32, fields []hpack.HeaderField, end bool) error {
	c.cmu.Lock()
	c.encodeHeadersLocked(id, fields, end)
	c.cmu.Unlock()
	return c.flushInline()
}

// queueHeaders queues HEADERS for the write goroutine; safe to call from
// the read goroutine.
func (c *conn) queueHeaders(id uint32, fields []hpack.HeaderField, end bool) {
	c.cmu.Lock()
	c.encodeHeadersLocked(id, fields, end)
	c.cmu.Unlock()
	c.signal()
}

// encodeHeadersLocked appends HEADERS (and CONTINUATION) frames to the
// control queue. cmu must be held.
func (c *conn) encodeHeadersLocked(id uint32, fields []hpack.HeaderField, end bool) {
	c.hbuf.Reset()
	for _, hf := range fields {
		c.henc.WriteField(hf)
	}
	block := c.hbuf.Bytes()
	maxF := int(c.peerMaxFrame.Load())
	first := true
	for first || len(block) > 0 {
		k := min(len(block), maxF)
		frag := block[:k]
		block = block[k:]
		if first {
			c.cfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(block) == 0})
			first = false
		} else {
			c.cfr.WriteContinuation(id, len(block) == 0, frag)
		}
	}
}

// openStream allocates a client stream and sends its CONNECT HEADERS. The
// caller holds a reservation from reserve.
func (c *conn) openStream(fields []hpack.HeaderField) (*stream, error) {
	// Stream IDs must reach the wire in increasing order, so allocation
	// and encoding happen under cmu.
	c.cmu.Lock()
	c.mu.Lock()
	c.reserved--
	if c.closed || c.goAwayRecv {
		err := c.closeErr
		if err == nil {
			err = ErrGoAway
		}
		idle := len(c.streams) == 0 && c.reserved == 0
		c.mu.Unlock()
		c.cmu.Unlock()
		if idle && c.cfg.onIdle != nil {
			c.cfg.onIdle(c)
		}
		return nil, err
	}
	id := c.nextID
	c.nextID += 2
	st := newStream(c, id)
	c.streams[id] = st
	c.mu.Unlock()
	c.encodeHeadersLocked(id, fields, false)
	c.cmu.Unlock()
	if err := c.flushInline(); err != nil {
		return nil, err
	}
	return st, nil
}

// preSettingsStreams is how many streams a client opens on a new
// connection before the server's SETTINGS arrive. Until then the peer's
// MAX_CONCURRENT_STREAMS is unknown and may be smaller than our cap, so
// the first tunnel goes out at once (no added round trip) and further
// ones wait for the SETTINGS (see pool.get). RFC 9113 §6.5.2 allows a
// limit of 0; a peer that uses it refuses the stream, which is retried.
const preSettingsStreams = 1

// reserve claims a stream slot if the connection can take another stream
// under limit and the peer's MAX_CONCURRENT_STREAMS (preSettingsStreams
// until its SETTINGS arrive). The pool calls it before openStream.
func (c *conn) reserve(limit int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.goAwayRecv || c.goAwaySent || c.retired {
		return false
	}
	if c.nextID > 1<<31-1-2*uint32(c.reserved+2) {
		return false
	}
	lim := min(limit, int(min(c.peerMaxStreams, 1<<30)))
	if !c.settingsSeen {
		lim = min(lim, preSettingsStreams)
	}
	if len(c.streams)+c.reserved >= lim {
		return false
	}
	c.reserved++
	return true
}

// awaitingSettings reports whether the peer's first SETTINGS are still
// outstanding; settingsCh is closed when they arrive.
func (c *conn) awaitingSettings() bool {
	select {
	case <-c.settingsCh:
		return false
	default:
		return true
	}
}

// usable reports whether new streams may be opened.
func (c *conn) usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && !c.goAwayRecv && !c.goAwaySent && !c.retired
}

// retireIfIdle closes the connection gracefully if it carries no stream
// and no reservation, and makes sure no new stream is reserved on it in
// the meantime. It reports whether it did.
func (c *conn) retireIfIdle() bool {
	c.mu.Lock()
	if c.closed || c.retired || len(c.streams) > 0 || c.reserved > 0 {
		c.mu.Unlock()
		return false
	}
	c.retired = true
	c.mu.Unlock()
	c.closeGracefully(nil)
	return true
}

// draining reports whether the peer sent GOAWAY.
func (c *conn) draining() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.goAwayRecv
}

// sendGoAway starts a graceful drain: the peer must open no new streams.
func (c *conn) sendGoAway() {
	c.mu.Lock()
	if c.goAwaySent || c.closed {
		c.mu.Unlock()
		return
	}
	c.goAwaySent = true
	last := c.lastPeerID
	c.mu.Unlock()
	c.queue(func(fr *http2.Framer) { fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
}

func statusField(code int) hpack.HeaderField {
	return hpack.HeaderField{Name: ":status", Value: strconv.Itoa(code)}
}
