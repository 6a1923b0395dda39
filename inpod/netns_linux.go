//go:build linux

package inpod

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Netns is an open handle to a network namespace. Its zero value is not
// usable; get one from [OpenNetns] or [CurrentNetns]. A Netns is safe for
// concurrent use.
type Netns struct {
	f    *os.File
	ino  uint64
	dev  uint64
	path string
}

// OpenNetns opens the network namespace at path, for example
// /var/run/netns/NAME or /proc/PID/ns/net.
func OpenNetns(path string) (*Netns, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("inpod: open netns: %w", err)
	}
	return newNetns(f, path)
}

// NetnsFromFile takes ownership of f, an open network-namespace file (for
// example one received over the ZDS socket), and returns a handle to it.
func NetnsFromFile(f *os.File) (*Netns, error) {
	return newNetns(f, f.Name())
}

// CurrentNetns opens the network namespace of the calling OS thread. Call it
// before any thread of the process has switched namespaces (at start-up),
// when every thread is in the process's own namespace.
func CurrentNetns() (*Netns, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return OpenNetns("/proc/thread-self/ns/net")
}

func newNetns(f *os.File, path string) (*Netns, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("inpod: stat netns %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		f.Close()
		return nil, fmt.Errorf("inpod: statfs netns %s: %w", path, err)
	}
	if fs.Type != unix.NSFS_MAGIC && fs.Type != unix.PROC_SUPER_MAGIC {
		f.Close()
		return nil, fmt.Errorf("inpod: %s is not a namespace file (filesystem type %#x)", path, fs.Type)
	}
	return &Netns{f: f, ino: st.Ino, dev: uint64(st.Dev), path: path}, nil
}

// Close releases the handle. The namespace itself lives on while anything
// else (a process, a bind mount, a socket) holds it.
func (n *Netns) Close() error { return n.f.Close() }

// Fd returns the namespace's file descriptor, valid until Close.
func (n *Netns) Fd() uintptr { return n.f.Fd() }

// Inode returns the namespace's inode number, which identifies it: two
// handles refer to the same namespace iff their inodes (and devices) match.
func (n *Netns) Inode() uint64 { return n.ino }

// Equal reports whether n and o refer to the same namespace.
func (n *Netns) Equal(o *Netns) bool { return n.ino == o.ino && n.dev == o.dev }

// String returns the path the handle was opened from.
func (n *Netns) String() string { return n.path }

// Do runs f on a dedicated OS thread that has entered n, and returns f's
// error. Goroutines that f starts do not run in n: create sockets in f
// itself. If the thread cannot return to its own namespace afterwards, it is
// discarded rather than reused, so no other goroutine ever runs in n by
// accident.
func (n *Netns) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("inpod: open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("inpod: enter netns %s: %w", n.path, err)
			return
		}
		ferr := f()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime destroys it when this
			// goroutine exits.
			errc <- errors.Join(ferr, fmt.Errorf("inpod: return from netns %s: %w", n.path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// SocketOptions are applied to sockets that [Netns.Listen] and [Netns.Dial]
// create, after socket() and before bind()/connect().
type SocketOptions struct {
	// Mark sets SO_MARK (needs CAP_NET_ADMIN). Zero leaves it unset.
	Mark uint32
	// ReusePort sets SO_REUSEPORT.
	ReusePort bool
	// Transparent sets IP_TRANSPARENT/IPV6_TRANSPARENT, needed to bind to a
	// non-local source address when spoofing the client's address.
	Transparent bool
	// FreeBind sets IP_FREEBIND.
	FreeBind bool
}

func (o SocketOptions) control(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		set := func(level, opt, v int, name string) {
			if serr == nil {
				if e := unix.SetsockoptInt(int(fd), level, opt, v); e != nil {
					serr = fmt.Errorf("inpod: set %s: %w", name, e)
				}
			}
		}
		if o.Mark != 0 {
			set(unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark), "SO_MARK")
		}
		if o.ReusePort {
			set(unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, "SO_REUSEPORT")
		}
		v6 := network == "tcp6" || network == "udp6"
		if o.Transparent {
			if v6 {
				set(unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT")
			} else {
				set(unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT")
			}
		}
		if o.FreeBind {
			if v6 {
				set(unix.SOL_IPV6, unix.IPV6_FREEBIND, 1, "IPV6_FREEBIND")
			} else {
				set(unix.SOL_IP, unix.IP_FREEBIND, 1, "IP_FREEBIND")
			}
		}
	})
	if err != nil {
		return fmt.Errorf("inpod: socket control: %w", err)
	}
	return serr
}

// Listen opens a TCP listener inside n. address must be an IP literal with
// a port (for example "0.0.0.0:15001" or "[::]:15008"), so that the socket
// is created on the namespace's thread.
func (n *Netns) Listen(ctx context.Context, network, address string, opts SocketOptions) (net.Listener, error) {
	if err := literal(address); err != nil {
		return nil, err
	}
	var ln net.Listener
	err := n.Do(func() error {
		lc := net.ListenConfig{Control: opts.control}
		var err error
		ln, err = lc.Listen(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("inpod: listen %s in %s: %w", address, n.path, err)
	}
	return ln, nil
}

// Dial connects to address from inside n. address must be an IP literal with
// a port: a host name would be resolved, and dialed, on other threads. If
// src is valid the connection is bound to it first (with Transparent and
// FreeBind this spoofs the client's address toward the workload).
func (n *Netns) Dial(ctx context.Context, network, address string, src netip.Addr, opts SocketOptions) (net.Conn, error) {
	if err := literal(address); err != nil {
		return nil, err
	}
	d := net.Dialer{Control: opts.control, FallbackDelay: -1}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("inpod: dial %s in %s: %w", address, n.path, err)
	}
	return c, nil
}

func literal(address string) error {
	if _, err := netip.ParseAddrPort(address); err != nil {
		return fmt.Errorf("inpod: address %q must be an IP literal and port: %w", address, err)
	}
	return nil
}

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/ip6_tables.h.
const ip6tSOOriginalDst = 80

// OriginalDst returns the destination that c's peer dialed before iptables
// REDIRECT sent the connection here: SO_ORIGINAL_DST (IPv4) first, then
// IP6T_SO_ORIGINAL_DST (IPv6), as a dual-stack listener needs both. If
// neither applies (no NAT happened, as with TPROXY or a direct connection)
// it returns c's local address. c must be a TCP connection.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("inpod: original destination: %T is not a socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("inpod: original destination: %w", err)
	}
	var dst netip.AddrPort
	var e4, e6 error
	cerr := rc.Control(func(fd uintptr) {
		var sa4 unix.RawSockaddrInet4
		if e4 = getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa4), unsafe.Sizeof(sa4)); e4 == nil {
			dst = netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), ntohs(sa4.Port))
			return
		}
		var sa6 unix.RawSockaddrInet6
		if e6 = getsockopt(fd, unix.SOL_IPV6, ip6tSOOriginalDst, unsafe.Pointer(&sa6), unsafe.Sizeof(sa6)); e6 == nil {
			dst = netip.AddrPortFrom(netip.AddrFrom16(sa6.Addr), ntohs(sa6.Port))
		}
	})
	if cerr != nil {
		return netip.AddrPort{}, fmt.Errorf("inpod: original destination: %w", cerr)
	}
	if dst.IsValid() {
		return netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()), nil
	}
	if !notNATed(e4) || !notNATed(e6) {
		return netip.AddrPort{}, fmt.Errorf("inpod: original destination: %w", errors.Join(e4, e6))
	}
	la, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("inpod: original destination: local address %v is not TCP", c.LocalAddr())
	}
	ap := la.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// notNATed reports whether a getsockopt error means "no NAT entry for this
// socket" (or "wrong address family for this option") rather than a failure.
func notNATed(err error) bool {
	return err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOPROTOOPT) || errors.Is(err, unix.EOPNOTSUPP)
}

func getsockopt(fd uintptr, level, opt int, p unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
