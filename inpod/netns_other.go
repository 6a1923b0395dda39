//go:build !linux

package inpod

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
)

// Netns is an open handle to a network namespace (Linux only).
type Netns struct{}

// SocketOptions are socket options for sockets created in a namespace.
type SocketOptions struct {
	Mark        uint32
	ReusePort   bool
	Transparent bool
	FreeBind    bool
}

var errUnsupported = fmt.Errorf("inpod: network namespaces need Linux: %w", errors.ErrUnsupported)

// OpenNetns is not supported on this system.
func OpenNetns(string) (*Netns, error) { return nil, errUnsupported }

// NetnsFromFile is not supported on this system.
func NetnsFromFile(*os.File) (*Netns, error) { return nil, errUnsupported }

// CurrentNetns is not supported on this system.
func CurrentNetns() (*Netns, error) { return nil, errUnsupported }

// Close does nothing.
func (*Netns) Close() error { return nil }

// Fd returns an invalid descriptor.
func (*Netns) Fd() uintptr { return ^uintptr(0) }

// Inode returns 0.
func (*Netns) Inode() uint64 { return 0 }

// Equal reports false.
func (*Netns) Equal(*Netns) bool { return false }

// String returns "".
func (*Netns) String() string { return "" }

// Do is not supported on this system.
func (*Netns) Do(func() error) error { return errUnsupported }

// Listen is not supported on this system.
func (*Netns) Listen(context.Context, string, string, SocketOptions) (net.Listener, error) {
	return nil, errUnsupported
}

// Dial is not supported on this system.
func (*Netns) Dial(context.Context, string, string, netip.Addr, SocketOptions) (net.Conn, error) {
	return nil, errUnsupported
}

// OriginalDst is not supported on this system.
func OriginalDst(net.Conn) (netip.AddrPort, error) { return netip.AddrPort{}, errUnsupported }
