// Package netutil holds small data-plane helpers shared by the tunnel
// packages: size-classed buffer pools and a bidirectional copy that keeps
// TCP half-close per direction. It depends on the standard library only.
//
//	buf := netutil.GetBuffer(16 << 10)
//	defer netutil.PutBuffer(buf)
//
//	// Relay a client connection and an upstream, ending each direction
//	// with CloseWrite when its source reaches EOF.
//	sent, received, err := netutil.Join(client, upstream)
package netutil
