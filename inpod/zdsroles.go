package inpod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// DefaultSocketPath is where Istio's node agent serves ZDS and ztunnel
// connects (INPOD_UDS).
const DefaultSocketPath = "/var/run/ztunnel/ztunnel.sock"

// ServerConfig configures a [Server]. The zero value of every field is a
// documented default.
type ServerConfig struct {
	// Path is the Unix socket to serve. A stale socket file there is
	// removed first. If empty, DefaultSocketPath.
	Path string
	// Rules, if not nil, are applied inside each pod's namespace by
	// AddPod (before the proxy hears of the pod) and removed by
	// RemovePod. If nil, the caller programs redirection itself.
	Rules *Rules
	// AckTimeout bounds sending each request and reading its ack, and
	// reading the hello. If zero, 5 s.
	AckTimeout time.Duration
	// KeepaliveInterval is how often an idle connection is checked with a
	// short read (end of file or data from the proxy drop it). If zero,
	// 5 s.
	KeepaliveInterval time.Duration
	// AcceptInterval is the least time between two accepted connections.
	// If zero, 200 ms (Istio's 5 per second); if negative, none.
	AcceptInterval time.Duration
	// Logger receives connection events at Info and per-message events at
	// Debug. If nil, discard.
	Logger *slog.Logger
}

// ErrNoConnection is returned (wrapped) by AddPod when no proxy is
// connected. The pod stays known: the next proxy to connect receives it in
// its snapshot.
var ErrNoConnection = errors.New("inpod: no ZDS connection")

// ErrServerClosed is returned by Run when the server's Close was called.
var ErrServerClosed = errors.New("inpod: ZDS server closed")

// NackError is a proxy's negative acknowledgement of a request.
type NackError struct {
	// Request is the request's kind and uid, e.g. "add uid-1".
	Request string
	// Reason is the proxy's error message.
	Reason string
}

func (e *NackError) Error() string {
	return fmt.Sprintf("inpod: ZDS %s rejected by the proxy: %s", e.Request, e.Reason)
}

// ErrTruncated is wrapped by the receive errors of a datagram, or of its
// control data, that did not fit (MSG_TRUNC or MSG_CTRUNC).
var ErrTruncated = errors.New("inpod: ZDS datagram truncated")

// Handler is what a node proxy plugs into a [Client]: it starts and stops
// serving pods.
type Handler interface {
	// AddPod starts serving a pod: typically it opens the proxy's
	// listeners inside ns (see Netns.Listen). ns stays open, owned by the
	// Client, until DelPod(uid) has returned; the handler must not close
	// it. An error is sent to the node agent as a NACK, and the Client
	// retries the pod every ClientConfig.RetryInterval until it succeeds
	// or the pod is deleted. AddPod is never called twice for a uid
	// without a DelPod between.
	AddPod(ctx context.Context, uid string, info WorkloadInfo, ns *Netns) error
	// DelPod stops serving a pod that AddPod started: close its
	// listeners, drain its connections.
	DelPod(uid string)
}

// ErrProtocol is wrapped by errors of a ZDS peer that broke the
// protocol. On the Client, a protocol error in the node agent's requests
// (KeepWorkload or SnapshotSent after the snapshot, AddWorkload without
// WorkloadInfo) is terminal: Run returns it, as ztunnel stops its in-pod
// manager.
var ErrProtocol = errors.New("inpod: ZDS protocol error")

// ClientConfig configures a [Client]. Handler is required; the zero value
// of every other field is a documented default.
type ClientConfig struct {
	// Path is the node agent's socket. If empty, DefaultSocketPath.
	Path string
	// Handler starts and stops serving pods. Required.
	Handler Handler
	// MinBackoff and MaxBackoff bound the delay between connection
	// attempts, which doubles after each failure. If zero, 10 ms and 15 s.
	MinBackoff, MaxBackoff time.Duration
	// RetryInterval is how often pods whose AddPod failed are retried. If
	// zero, 5 s.
	RetryInterval time.Duration
	// Logger receives connection events at Info and per-message events at
	// Debug. If nil, discard.
	Logger *slog.Logger
}
