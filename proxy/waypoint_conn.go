package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// sniffed is what the first bytes of a tunnel on a port without a declared
// protocol look like.
type sniffed uint8

const (
	sniffTCP sniffed = iota
	sniffHTTP1
	sniffHTTP2
)

// h2Preface is the HTTP/2 client connection preface (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// isHTTPMethod reports whether m is a request method sniffing recognises
// as the start of an HTTP/1.x request line: RFC 9110's, PATCH and
// WebDAV's.
func isHTTPMethod(m []byte) bool {
	switch string(m) {
	case "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
		"PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH":
		return true
	}
	return false
}

// maxMethodLen is the longest method isHTTPMethod knows plus the space.
const maxMethodLen = len("PROPPATCH") + 1

// classify decides from the first bytes b of a stream whether it carries
// HTTP/2 (prior knowledge), HTTP/1.x or something else. more reports that
// b is too short to tell.
func classify(b []byte) (kind sniffed, more bool) {
	if n := min(len(b), len(h2Preface)); string(b[:n]) == h2Preface[:n] {
		return sniffHTTP2, n < len(h2Preface)
	}
	sp := bytes.IndexByte(b, ' ')
	if sp < 0 {
		if len(b) >= maxMethodLen || !isUpperToken(b) {
			return sniffTCP, false
		}
		return sniffTCP, true
	}
	if isHTTPMethod(b[:sp]) {
		return sniffHTTP1, false
	}
	return sniffTCP, false
}

func isUpperToken(b []byte) bool {
	for _, c := range b {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

// sniff reads the first bytes of c until classify can decide. With a
// positive timeout, a stream that has not decided by then is TCP (a
// server-first protocol waits for the server to speak). The bytes read
// are returned to be replayed.
func sniff(c net.Conn, timeout time.Duration) (sniffed, []byte, error) {
	if timeout > 0 {
		c.SetReadDeadline(time.Now().Add(timeout))
		defer c.SetReadDeadline(time.Time{})
	}
	buf := make([]byte, 0, len(h2Preface))
	for {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > 0 {
			if kind, more := classify(buf); !more || len(buf) == cap(buf) {
				return kind, buf, nil
			}
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return sniffTCP, buf, nil
			}
			if errors.Is(err, io.EOF) {
				// The client ended its side early: whatever it sent is
				// relayed as TCP.
				return sniffTCP, buf, nil
			}
			return sniffTCP, buf, err
		}
	}
}

// prefixConn replays bytes already read from a connection before reading
// on from it.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite ends the write direction (HTTP/2 END_STREAM on a tunnel).
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// streamConn is a tunnel handed to the waypoint's HTTP server, carrying
// what the tunnel is for.
type streamConn struct {
	net.Conn
	st *wpStream
}

// CloseWrite ends the write direction (HTTP/2 END_STREAM on a tunnel).
func (c *streamConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// connQueue is the listener of the waypoint's HTTP server: tunnels that
// carry HTTP are pushed into it.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue() *connQueue {
	return &connQueue{ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to the HTTP server, or closes it when the server is gone.
func (q *connQueue) push(c net.Conn) {
	select {
	case q.ch <- c:
	case <-q.done:
		c.Close()
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return queueAddr{} }

type queueAddr struct{}

func (queueAddr) Network() string { return "hbone" }
func (queueAddr) String() string  { return "waypoint" }
