package netutil

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
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
	return copyCounted(dst, src, nil)
}

// spliced reports whether Copy moves src to dst with splice(2), where the
// bytes moved only show when the copy returns.
func spliced(dst io.Writer, src io.Reader) bool {
	_, ok := dst.(*net.TCPConn)
	return ok && isSocket(src)
}

// copyCounted is Copy that also adds the bytes it moves to progress (if
// not nil): as they are written, or, when spliced, once the splice
// returns.
func copyCounted(dst io.Writer, src io.Reader, progress *atomic.Uint64) (int64, error) {
	// Sources that hold their data in buffers already (tunnel streams)
	// hand them over directly. Sockets keep the growing buffer below: their
	// WriteTo falls back to small fixed copies for non-socket writers.
	if wt, ok := src.(io.WriterTo); ok && !isSocket(src) {
		if progress != nil {
			return wt.WriteTo(countingWriter{dst, progress})
		}
		return wt.WriteTo(dst)
	}
	// Socket to TCP socket: TCPConn.ReadFrom uses splice(2) on Linux, so
	// the bytes never enter user space.
	if spliced(dst, src) {
		n, err := dst.(*net.TCPConn).ReadFrom(src)
		if progress != nil {
			progress.Add(uint64(n))
		}
		return n, err
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
			if progress != nil {
				progress.Add(uint64(w))
			}
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

// countingWriter adds what it writes to n. It hides nothing a WriteTo
// source uses: tunnel streams only call Write.
type countingWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(uint64(n))
	return n, err
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
	return join(a, b, func(dst, src net.Conn, _ int) (int64, error) { return Copy(dst, src) })
}

func join(a, b net.Conn, copyDir func(dst, src net.Conn, dir int) (int64, error)) (aToB, bToA int64, err error) {
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
	half := func(dst, src net.Conn, dir int, n *int64) {
		defer wg.Done()
		c, e := copyDir(dst, src, dir)
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
	go half(b, a, 0, &aToB)
	half(a, b, 1, &bToA)
	wg.Wait()
	a.Close()
	b.Close()
	return aToB, bToA, firstError
}
