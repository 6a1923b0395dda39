package identity_test

import (
	"context"
	"sync"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// swapSource is a Source whose backing Source a test can replace.
type swapSource struct {
	mu  sync.Mutex
	src identity.Source
}

func (s *swapSource) set(src identity.Source) {
	s.mu.Lock()
	s.src = src
	s.mu.Unlock()
}

func (s *swapSource) get() identity.Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.src
}

func (s *swapSource) SVID(ctx context.Context) (*x509svid.SVID, error) { return s.get().SVID(ctx) }
func (s *swapSource) Bundle(ctx context.Context) (*x509bundle.Bundle, error) {
	return s.get().Bundle(ctx)
}

// list is a slice that hooks append to from other goroutines.
type list[T any] struct {
	mu    sync.Mutex
	items []T
}

func (l *list[T]) add(v T) {
	l.mu.Lock()
	l.items = append(l.items, v)
	l.mu.Unlock()
}

func (l *list[T]) get() []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]T(nil), l.items...)
}
