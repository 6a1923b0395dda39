package hbone_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawPeer speaks HTTP/2 by hand over an established connection, so tests
// can send what our own peer never would and observe every frame.
type rawPeer struct {
	t    testing.TB
	conn net.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
	wmu  sync.Mutex
}

func newRawPeer(t testing.TB, c net.Conn) *rawPeer {
	p := &rawPeer{t: t, conn: c, fr: http2.NewFramer(c, c)}
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.enc = hpack.NewEncoder(&p.hbuf)
	return p
}

// clientHandshake sends the client preface and empty SETTINGS.
func (p *rawPeer) clientHandshake() {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	io.WriteString(p.conn, http2.ClientPreface)
	p.fr.WriteSettings()
}

// serverHandshake reads the client preface and sends SETTINGS.
func (p *rawPeer) serverHandshake(settings ...http2.Setting) error {
	buf := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(p.conn, buf); err != nil {
		return err
	}
	if string(buf) != http2.ClientPreface {
		return errors.New("bad preface")
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.fr.WriteSettings(settings...)
}

func (p *rawPeer) writeHeaders(id uint32, end bool, kv ...string) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.hbuf.Reset()
	for i := 0; i < len(kv); i += 2 {
		p.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.hbuf.Bytes(), EndHeaders: true, EndStream: end})
}

func (p *rawPeer) write(fn func(fr *http2.Framer) error) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	fn(p.fr)
}

// status waits for the response HEADERS of stream id, answering SETTINGS
// and PINGs on the way, and returns its :status.
func (p *rawPeer) status(id uint32) (int, bool) {
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			p.t.Errorf("raw peer: %v", err)
			return 0, false
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				p.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				p.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				s, _ := strconv.Atoi(f.PseudoValue("status"))
				return s, f.StreamEnded()
			}
		}
	}
}

// tlsPipe returns the two ends of a TLS connection over net.Pipe, with
// the handshake done.
func tlsPipe(t testing.TB, clientCfg, serverCfg *tls.Config) (*tls.Conn, *tls.Conn) {
	a, b := net.Pipe()
	c, s := tls.Client(a, clientCfg), tls.Server(b, serverCfg)
	errc := make(chan error, 1)
	go func() { errc <- s.Handshake() }()
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return c, s
}

// tlsServer runs a TLS server handshake on c and returns the conn, or nil.
func tlsServer(c net.Conn, cfg *tls.Config) *tls.Conn {
	s := tls.Server(c, cfg)
	if err := s.Handshake(); err != nil {
		c.Close()
		return nil
	}
	return s
}
