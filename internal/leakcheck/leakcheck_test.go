package leakcheck_test

import (
	"net"
	"testing"

	"github.com/meshblocks/meshblocks/internal/leakcheck"
)

// recorder captures what Check reports without failing the real test.
type recorder struct {
	testing.TB
	failed   bool
	cleanups []func()
}

func (r *recorder) Helper()               {}
func (r *recorder) Cleanup(f func())      { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(string, ...any) { r.failed = true }
func (r *recorder) run() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func TestDetectsLeak(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the leak timeout")
	}
	r := &recorder{TB: t}
	leakcheck.Check(r)
	stop := make(chan struct{})
	go func() { <-stop }()
	r.run()
	close(stop)
	if !r.failed {
		t.Fatal("a goroutine blocked for the whole wait was not reported")
	}
}

func TestNoLeak(t *testing.T) {
	r := &recorder{TB: t}
	leakcheck.Check(r)
	done := make(chan struct{})
	go func() { close(done) }()
	<-done
	r.run()
	if r.failed {
		t.Fatal("a goroutine that exited was reported as leaked")
	}
}

// A goroutine parked in a network read is the commonest leak in a proxy
// (a relay or stream reader nobody closed); it must be reported too.
func TestDetectsLeakBlockedOnNetworkRead(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the leak timeout")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := &recorder{TB: t}
	leakcheck.Check(r)
	go func() { _, _ = c.Read(make([]byte, 1)) }()
	r.run()
	c.Close()
	if !r.failed {
		t.Fatal("a goroutine blocked in conn.Read for the whole wait was not reported")
	}
}
