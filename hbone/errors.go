package hbone

import (
	"errors"
	"fmt"
	"net/http"

	"golang.org/x/net/http2"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrServerClosed is returned by Server.Serve after Shutdown or Close.
	ErrServerClosed = errors.New("hbone: server closed")
	// ErrDialerClosed is returned by Dialer methods after Close.
	ErrDialerClosed = errors.New("hbone: dialer closed")
	// ErrConnClosed reports that the HTTP/2 connection carrying a stream
	// ended.
	ErrConnClosed = errors.New("hbone: connection closed")
	// ErrGoAway reports that the peer sent GOAWAY before it processed the
	// stream; the stream can be retried on another connection.
	ErrGoAway = errors.New("hbone: connection going away")
	// ErrRefused reports that the peer refused the stream
	// (RST_STREAM REFUSED_STREAM) without processing it.
	ErrRefused = errors.New("hbone: stream refused")
	// ErrKeepaliveTimeout reports that a PING got no answer in time.
	ErrKeepaliveTimeout = errors.New("hbone: keepalive timeout")
	// ErrNoALPN reports that the TLS peer did not negotiate ALPN "h2".
	ErrNoALPN = errors.New("hbone: peer did not negotiate ALPN h2")
	// ErrAlreadyAnswered is returned when a Request is accepted or rejected
	// twice.
	ErrAlreadyAnswered = errors.New("hbone: request already answered")
	// ErrWriteClosed is returned by Write after CloseWrite.
	ErrWriteClosed = errors.New("hbone: write after CloseWrite")
)

// ConnectError is returned by the client when the server answers CONNECT
// with a status other than 200.
type ConnectError struct {
	StatusCode int
	Authority  string
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("hbone: CONNECT %s: status %d %s", e.Authority, e.StatusCode, http.StatusText(e.StatusCode))
}

// StreamError reports that the peer reset a stream with an error code other
// than NO_ERROR or CANCEL (which read as EOF).
type StreamError struct {
	StreamID uint32
	Code     http2.ErrCode
}

func (e *StreamError) Error() string {
	return fmt.Sprintf("hbone: stream %d reset by peer: %v", e.StreamID, e.Code)
}

// ProtocolError reports that the peer broke the HTTP/2 protocol; the
// connection is closed with GOAWAY carrying Code.
type ProtocolError struct {
	Code   http2.ErrCode
	Reason string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("hbone: protocol error (%v): %s", e.Code, e.Reason)
}

// GoAwayError is the connection error after the peer sent GOAWAY with an
// error code other than NO_ERROR.
type GoAwayError struct {
	Code      http2.ErrCode
	DebugData string
}

func (e *GoAwayError) Error() string {
	return fmt.Sprintf("hbone: peer sent GOAWAY %v %q", e.Code, e.DebugData)
}
