package hbone

import (
	"net"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ServePlainForTest runs the server's HTTP/2 engine on nc without TLS, so
// fuzzing can reach the frame reader cheaply. peer stands in for the TLS
// identity.
func ServePlainForTest(s *Server, nc net.Conn, peer spiffeid.ID) error {
	if !s.track(nc) {
		return ErrServerClosed
	}
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.raw, nc)
		s.checkDrainedLocked()
		s.mu.Unlock()
		nc.Close()
	}()
	return s.serveH2(nc, peer, nil, func() {})
}

// PoolsForTest reports how many pool keys d holds.
func PoolsForTest(d *Dialer) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pools)
}

// SetPlainForTest makes d skip TLS on the connections it dials, so
// fuzzing can reach the client's frame reader cheaply.
func SetPlainForTest(d *Dialer) { d.plainForTest = true }
