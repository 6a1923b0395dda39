//go:build !linux

package inpod

import "context"

// Server is the node agent's side of ZDS (Linux only).
type Server struct{}

// NewServer is not supported on this system.
func NewServer(ServerConfig) (*Server, error) { return nil, errUnsupported }

// Run is not supported on this system.
func (*Server) Run(context.Context) error { return errUnsupported }

// AddPod is not supported on this system.
func (*Server) AddPod(context.Context, string, WorkloadInfo, string) error { return errUnsupported }

// AddPodNetns is not supported on this system.
func (*Server) AddPodNetns(context.Context, string, WorkloadInfo, *Netns) error {
	return errUnsupported
}

// KeepPod does nothing on this system.
func (*Server) KeepPod(string, WorkloadInfo) {}

// RemovePod is not supported on this system.
func (*Server) RemovePod(context.Context, string) error { return errUnsupported }

// Pods returns nil.
func (*Server) Pods() []string { return nil }

// Connections returns 0.
func (*Server) Connections() int { return 0 }

// Close does nothing.
func (*Server) Close() error { return nil }

// Client is the node proxy's side of ZDS (Linux only).
type Client struct{}

// NewClient is not supported on this system.
func NewClient(ClientConfig) (*Client, error) { return nil, errUnsupported }

// Run is not supported on this system.
func (*Client) Run(context.Context) error { return errUnsupported }

// Ready reports false.
func (*Client) Ready() bool { return false }

// WaitReady is not supported on this system.
func (*Client) WaitReady(context.Context) error { return errUnsupported }

// Pods returns nil.
func (*Client) Pods() []string { return nil }
