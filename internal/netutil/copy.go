package netutil

import (
	"errors"
	"io"
	"net"
	"sync"
)

// CloseWriter is implemented by connections that can end their write
// direction while still reading, like *net.TCPConn and *tls.Conn.
type CloseWriter interface {
	CloseWrite() error
}

// CloseReader is implemented by connections that can stop reading while
// still writing, like *net.TCPConn.
type CloseReader interface {
	CloseRead() error
}

// Buffer growth thresholds, after ztunnel's copy loop: start small so idle
// connections cost little, grow once a direction proves to be busy.
const (
	smallBuf  = 1 << 10
	mediumBuf = 16 << 10
	largeBuf  = 256 << 10

	growToMedium = 128 << 10
	growToLarge  = 10 << 20
)

// Copy copies from src to dst until EOF or an error, with a pooled buffer
// that grows from 1 KiB to 16 KiB after 128 KiB and to 256 KiB after
// 10 MiB. It returns the number of bytes written. Reaching EOF on src is not
// an error. Copy does not close or half-close either side. A source that
// implements io.WriterTo (other than a socket) copies itself, and a socket
// copied to a TCP socket is spliced in the kernel.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	// Sources that hold their data in buffers already (tunnel streams)
	// hand them over directly. Sockets keep the growing buffer below: their
	// WriteTo falls back to small fixed copies for non-socket writers.
	if wt, ok := src.(io.WriterTo); ok && !isSocket(src) {
		return wt.WriteTo(dst)
	}
	// Socket to TCP socket: TCPConn.ReadFrom uses splice(2) on Linux, so
	// the bytes never enter user space.
	if tc, ok := dst.(*net.TCPConn); ok && isSocket(src) {
		return tc.ReadFrom(src)
	}
	size := smallBuf
	buf := GetBuffer(size)
	defer func() { PutBuffer(buf) }()
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
			if w != n {
				return total, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return total, nil
			}
			return total, rerr
		}
		next := size
		switch {
		case total >= growToLarge:
			next = largeBuf
		case total >= growToMedium:
			next = mediumBuf
		}
		if next != size {
			PutBuffer(buf)
			size = next
			buf = GetBuffer(size)
		}
	}
}

func isSocket(r io.Reader) bool {
	switch r.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}

// Join relays bytes between a and b in both directions until both
// directions end. When one source reaches EOF, the other side's write
// direction is closed with CloseWrite (if it has one), so TCP half-close is
// kept per direction. On an error in either direction both connections are
// closed, which also ends the other direction. Join closes a and b before it
// returns. aToB and bToA count the bytes copied each way; err is the first
// error other than EOF.
func Join(a, b net.Conn) (aToB, bToA int64, err error) {
	var (
		wg         sync.WaitGroup
		once       sync.Once
		firstError error
	)
	fail := func(e error) {
		once.Do(func() {
			firstError = e
			a.Close()
			b.Close()
		})
	}
	half := func(dst, src net.Conn, n *int64) {
		defer wg.Done()
		c, e := Copy(dst, src)
		*n = c
		if e != nil {
			fail(e)
			return
		}
		if cw, ok := dst.(CloseWriter); ok {
			if e := cw.CloseWrite(); e != nil && !errors.Is(e, net.ErrClosed) {
				fail(e)
			}
			return
		}
		// Without half-close the only way to signal EOF is a full close.
		fail(nil)
	}
	wg.Add(2)
	go half(b, a, &aToB)
	half(a, b, &bToA)
	wg.Wait()
	a.Close()
	b.Close()
	return aToB, bToA, firstError
}
