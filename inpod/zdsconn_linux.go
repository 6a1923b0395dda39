//go:build linux

package inpod

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// maxFDs is how many descriptors one receive has room for; a datagram
// with more sets MSG_CTRUNC and is rejected.
const maxFDs = 8

// zdsConn is one ZDS connection: a SOCK_SEQPACKET Unix socket carrying
// one message per datagram, with file descriptors as SCM_RIGHTS.
type zdsConn struct {
	c   *net.UnixConn
	buf [MaxMessageSize]byte
	oob []byte
}

func newZDSConn(c *net.UnixConn) *zdsConn {
	return &zdsConn{c: c, oob: make([]byte, unix.CmsgSpace(maxFDs*4))}
}

func (z *zdsConn) Close() error { return z.c.Close() }

// send writes msg as one datagram, with f's descriptor attached if f is
// not nil, before deadline.
func (z *zdsConn) send(msg []byte, f *os.File, deadline time.Time) error {
	if len(msg) >= MaxMessageSize {
		return fmt.Errorf("%w: %d bytes", ErrMessageTooLarge, len(msg))
	}
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	if err := z.c.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("inpod: ZDS send: %w", err)
	}
	n, oobn, err := z.c.WriteMsgUnix(msg, oob, nil)
	if err != nil {
		return fmt.Errorf("inpod: ZDS send: %w", err)
	}
	if n != len(msg) || oobn != len(oob) {
		return fmt.Errorf("inpod: ZDS send: short write (%d of %d bytes, %d of %d control bytes)", n, len(msg), oobn, len(oob))
	}
	return nil
}

// recv reads one datagram before deadline (none if zero). The returned
// message aliases z's buffer until the next recv. The descriptors are
// received close-on-exec (Go passes MSG_CMSG_CLOEXEC) and belong to the
// caller; on error none are left open. A zero-length datagram reads as
// end of connection: on SOCK_SEQPACKET the two look alike, and no ZDS
// peer sends an empty message.
func (z *zdsConn) recv(deadline time.Time) (msg []byte, fds []int, err error) {
	if err := z.c.SetReadDeadline(deadline); err != nil {
		return nil, nil, fmt.Errorf("inpod: ZDS receive: %w", err)
	}
	n, oobn, flags, _, err := z.c.ReadMsgUnix(z.buf[:], z.oob)
	if oobn > 0 {
		fds = parseRights(z.oob[:oobn])
	}
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	switch {
	case err != nil:
		closeAll()
		return nil, nil, fmt.Errorf("inpod: ZDS receive: %w", err)
	case flags&unix.MSG_TRUNC != 0:
		closeAll()
		return nil, nil, fmt.Errorf("%w: message longer than %d bytes", ErrTruncated, MaxMessageSize)
	case flags&unix.MSG_CTRUNC != 0:
		closeAll()
		return nil, nil, fmt.Errorf("%w: control data longer than %d bytes (more than %d descriptors)", ErrTruncated, len(z.oob), maxFDs)
	case n == 0 && len(fds) == 0:
		return nil, nil, io.EOF
	}
	return z.buf[:n], fds, nil
}

// parseRights returns every descriptor in SCM_RIGHTS control messages.
func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level == unix.SOL_SOCKET && msgs[i].Header.Type == unix.SCM_RIGHTS {
			if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	return fds
}

// dupFile returns a close-on-exec duplicate of fd as a file.
func dupFile(fd uintptr, name string) (*os.File, error) {
	d, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("inpod: dup %s: %w", name, err)
	}
	return os.NewFile(uintptr(d), name), nil
}
