//go:build linux

package inpod

import (
	"context"
	"net"
)

// SetClientDial replaces how c connects, for tests of the backoff.
func SetClientDial(c *Client, dial func(ctx context.Context) (*net.UnixConn, error)) { c.dial = dial }
