package identity_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/identity/identitytest"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func newLocalCA(t testing.TB, ttl time.Duration) *identity.CA {
	t.Helper()
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: td, TTL: ttl})
	require.NoError(t, err)
	return ca
}

// recordingFetcher wraps a Fetcher, records when it was called and can be
// told to fail.
type recordingFetcher struct {
	next identity.Fetcher
	mu   sync.Mutex
	at   []time.Time
	fail func(n int) error // n counts calls from 1; nil error means succeed
}

func (f *recordingFetcher) Fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
	f.mu.Lock()
	f.at = append(f.at, time.Now())
	n := len(f.at)
	fail := f.fail
	f.mu.Unlock()
	if fail != nil {
		if err := fail(n); err != nil {
			return nil, nil, err
		}
	}
	return f.next.Fetch(ctx, id)
}

func (f *recordingFetcher) calls() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.at...)
}

// runManager starts m.Run and stops it at cleanup of the bubble's test.
func runManager(t *testing.T, m *identity.Manager) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

func TestManagerRefreshesAtHalfLife(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = time.Hour
		f := &recordingFetcher{next: newLocalCA(t, ttl)}
		var issued atomic.Int32
		m, err := identity.NewManager(identity.ManagerConfig{
			Fetcher: f,
			Hooks:   identity.ManagerHooks{Issued: func(spiffeid.ID, *x509svid.SVID) { issued.Add(1) }},
		})
		require.NoError(t, err)
		id := td.ID()
		id, _ = id.AppendSegments("ns", "default", "sa", "sleep")
		src := m.Source(id)
		runManager(t, m)
		require.NoError(t, m.WaitReady(t.Context()))

		first, err := src.SVID(t.Context())
		require.NoError(t, err)
		require.Equal(t, id, first.ID)
		leaf := first.Certificates[0]
		life := leaf.NotAfter.Sub(leaf.NotBefore)
		start := leaf.NotBefore

		// Renewal comes between 45% (jitter 0.05) and 50% of the lifetime.
		time.Sleep(leaf.NotBefore.Add(life*45/100).Sub(time.Now()) - time.Second)
		synctest.Wait()
		same, err := src.SVID(t.Context())
		require.NoError(t, err)
		assert.Same(t, first, same, "no renewal before 45%% of the lifetime")

		time.Sleep(leaf.NotBefore.Add(life/2).Sub(time.Now()) + time.Second)
		synctest.Wait()
		second, err := src.SVID(t.Context())
		require.NoError(t, err)
		assert.NotSame(t, first, second, "renewed by half-life")
		calls := f.calls()
		require.Len(t, calls, 2)
		at := calls[1].Sub(start)
		assert.GreaterOrEqual(t, at, life*45/100)
		assert.LessOrEqual(t, at, life/2)

		// And again for the next certificates, over five lifetimes (the
		// identity stays in use, so it is not forgotten).
		for range 50 {
			time.Sleep(ttl / 10)
			_, err := src.SVID(t.Context())
			require.NoError(t, err)
			synctest.Wait()
		}
		calls = f.calls()
		assert.GreaterOrEqual(t, len(calls), 2+9, "about two renewals per lifetime")
		for i := 1; i < len(calls); i++ {
			gap := calls[i].Sub(calls[i-1])
			assert.Greater(t, gap, life*40/100, "gap %d", i)
			assert.LessOrEqual(t, gap, life*55/100, "gap %d", i)
		}
		assert.Equal(t, int32(len(calls)), issued.Load())
	})
}

func TestManagerNeverReturnsExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := newLocalCA(t, time.Hour)
		caDown := errors.New("CA unavailable")
		f := &recordingFetcher{next: ca, fail: func(n int) error {
			if n > 1 {
				return caDown
			}
			return nil
		}}
		var failures atomic.Int32
		m, err := identity.NewManager(identity.ManagerConfig{
			Fetcher: f,
			Hooks:   identity.ManagerHooks{FetchFailed: func(spiffeid.ID, int, error) { failures.Add(1) }},
		})
		require.NoError(t, err)
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
		src := m.Source(id)
		runManager(t, m)

		first, err := src.SVID(t.Context())
		require.NoError(t, err)
		notAfter := first.Certificates[0].NotAfter

		// Step through the rest of the lifetime and beyond, a minute at a
		// time: before NotAfter the old certificate keeps being served,
		// from NotAfter on the Source errors.
		served, refused := 0, 0
		for range 90 {
			time.Sleep(time.Minute)
			synctest.Wait()
			s, err := src.SVID(t.Context())
			if time.Now().Before(notAfter) {
				require.NoError(t, err)
				require.Same(t, first, s)
				served++
				continue
			}
			require.ErrorIs(t, err, identity.ErrExpired)
			require.ErrorContains(t, err, "CA unavailable")
			require.Nil(t, s)
			refused++
			_, _, err = m.Fetch(t.Context(), id)
			require.ErrorIs(t, err, identity.ErrExpired)
			b, err := src.Bundle(t.Context())
			require.ErrorIs(t, err, identity.ErrExpired)
			require.Nil(t, b)
		}
		assert.Positive(t, served)
		assert.Positive(t, refused)
		assert.Positive(t, failures.Load())

		// The CA comes back: a fresh certificate is served again.
		f.mu.Lock()
		f.fail = nil
		f.mu.Unlock()
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		s, err := src.SVID(t.Context())
		require.NoError(t, err)
		assert.True(t, time.Now().Before(s.Certificates[0].NotAfter))
	})
}

func TestManagerBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const failures = 8
		f := &recordingFetcher{next: newLocalCA(t, time.Hour), fail: func(n int) error {
			if n <= failures {
				return fmt.Errorf("attempt %d: CA overloaded", n)
			}
			return nil
		}}
		var attempts list[int]
		m, err := identity.NewManager(identity.ManagerConfig{
			Fetcher:    f,
			MinBackoff: time.Second,
			MaxBackoff: 30 * time.Second,
			Hooks:      identity.ManagerHooks{FetchFailed: func(_ spiffeid.ID, attempt int, _ error) { attempts.add(attempt) }},
		})
		require.NoError(t, err)
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
		src := m.Source(id)
		runManager(t, m)

		// The first certificate arrives only after the failures.
		s, err := src.SVID(t.Context())
		require.NoError(t, err)
		assert.Equal(t, id, s.ID)
		assert.Equal(t, []int{1, 2, 3, 4, 5, 6, 7, 8}, attempts.get())

		calls := f.calls()
		require.Len(t, calls, failures+1)
		nominal := time.Second
		for i := 1; i < len(calls); i++ {
			gap := calls[i].Sub(calls[i-1])
			assert.GreaterOrEqual(t, gap, nominal/2, "retry %d", i)
			assert.LessOrEqual(t, gap, nominal, "retry %d", i)
			nominal = min(2*nominal, 30*time.Second)
		}
	})
}

func TestManagerWaitsForFirstCertificateWithinContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &recordingFetcher{next: newLocalCA(t, time.Hour), fail: func(int) error { return errors.New("no route to CA") }}
		m, err := identity.NewManager(identity.ManagerConfig{Fetcher: f})
		require.NoError(t, err)
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
		src := m.Source(id)
		runManager(t, m)

		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, err = src.SVID(ctx)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.ErrorContains(t, err, "no route to CA")

		ctx2, cancel2 := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel2()
		err = m.WaitReady(ctx2)
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
}

func TestManagerRejectsBadFetcherAnswers(t *testing.T) {
	sleep := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/other")
	tests := []struct {
		name   string
		answer func(t *testing.T, ca *identitytest.CA) *x509svid.SVID
		reason string
	}{
		{
			name:   "wrong identity",
			answer: func(t *testing.T, ca *identitytest.CA) *x509svid.SVID { return ca.SVID(t, "ns/default/sa/other") },
			reason: "returned a certificate for " + other.String(),
		},
		{
			name: "already expired",
			answer: func(t *testing.T, ca *identitytest.CA) *x509svid.SVID {
				tmpl := ca.Template("ns/default/sa/sleep")
				tmpl.NotBefore = time.Now().Add(-2 * time.Hour)
				tmpl.NotAfter = time.Now().Add(-time.Second)
				return ca.Issue(t, tmpl)
			},
			reason: "that expired at",
		},
		{
			name: "not signed by the bundle",
			answer: func(t *testing.T, _ *identitytest.CA) *x509svid.SVID {
				return identitytest.NewCA(t, "cluster.local").SVID(t, "ns/default/sa/sleep")
			},
			reason: "fetcher answer for " + sleep.String(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ca := identitytest.NewCA(t, "cluster.local")
				var reasons list[string]
				m, err := identity.NewManager(identity.ManagerConfig{
					Fetcher: identity.FetcherFunc(func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
						return tt.answer(t, ca), ca.Bundle(), nil
					}),
					Hooks: identity.ManagerHooks{FetchFailed: func(_ spiffeid.ID, _ int, err error) { reasons.add(err.Error()) }},
				})
				require.NoError(t, err)
				src := m.Source(sleep)
				runManager(t, m)
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				got, err := src.SVID(ctx)
				require.Error(t, err, "the manager handed out %v", got)
				require.NotEmpty(t, reasons.get())
				assert.Contains(t, reasons.get()[0], tt.reason)
			})
		})
	}
}

func TestManagerForgetsIdleIdentities(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &recordingFetcher{next: newLocalCA(t, 24*time.Hour)}
		var evicted list[spiffeid.ID]
		m, err := identity.NewManager(identity.ManagerConfig{
			Fetcher:     f,
			IdleTimeout: 10 * time.Minute,
			Hooks:       identity.ManagerHooks{Evicted: func(id spiffeid.ID) { evicted.add(id) }},
		})
		require.NoError(t, err)
		busy := m.Source(spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/busy"))
		idle := m.Source(spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/idle"))
		runManager(t, m)
		require.NoError(t, m.WaitReady(t.Context()))
		require.Equal(t, 2, m.Len())

		for range 12 {
			time.Sleep(time.Minute)
			_, err := busy.SVID(t.Context())
			require.NoError(t, err)
			synctest.Wait()
		}
		assert.Equal(t, 1, m.Len())
		assert.Equal(t, []spiffeid.ID{idle.ID()}, evicted.get())

		// Using it again registers it again and fetches a new certificate.
		n := len(f.calls())
		s, err := idle.SVID(t.Context())
		require.NoError(t, err)
		assert.Equal(t, idle.ID(), s.ID)
		assert.Equal(t, 2, m.Len())
		assert.Len(t, f.calls(), n+1)

		m.Remove(idle.ID())
		synctest.Wait()
		assert.Equal(t, 1, m.Len())
	})
}

func TestManagerAfterRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := newLocalCA(t, time.Hour)
		m, err := identity.NewManager(identity.ManagerConfig{
			Fetcher: identity.FetcherFunc(func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
				if id.Path() == "/ns/default/sa/hung" {
					<-ctx.Done() // a CA that never answers
					return nil, nil, ctx.Err()
				}
				return ca.Fetch(ctx, id)
			}),
		})
		require.NoError(t, err)
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
		src := m.Source(id)

		// A caller waiting before Run starts gets its certificate once it does.
		got := make(chan error, 1)
		go func() { _, err := src.SVID(context.Background()); got <- err }()
		synctest.Wait()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		require.NoError(t, <-got)
		require.Error(t, m.Run(ctx), "second Run")

		// A caller blocked on an identity whose first fetch hangs is released by shutdown.
		hung := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/hung")
		waiting := make(chan error, 1)
		go func() { _, err := m.Source(hung).SVID(context.Background()); waiting <- err }()
		synctest.Wait()
		select {
		case err := <-waiting:
			t.Fatalf("SVID of an identity whose fetch hangs returned early: %v", err)
		default:
		}
		cancel()
		require.NoError(t, <-done)
		require.ErrorIs(t, <-waiting, identity.ErrClosed)
		_, err = src.SVID(t.Context())
		require.ErrorIs(t, err, identity.ErrClosed)
		require.ErrorIs(t, m.WaitReady(t.Context()), identity.ErrClosed)
		require.ErrorIs(t, m.Add(spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/y")), identity.ErrClosed)
	})
}

func TestManagerManyIdentities(t *testing.T) {
	leakcheck.Check(t)
	const n = 1000
	ca := newLocalCA(t, time.Hour)
	var fetches atomic.Int32
	m, err := identity.NewManager(identity.ManagerConfig{Fetcher: identity.FetcherFunc(
		func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
			fetches.Add(1)
			return ca.Fetch(ctx, id)
		})})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()

	ids := make([]spiffeid.ID, n)
	for i := range ids {
		ids[i] = spiffeid.RequireFromString(fmt.Sprintf("spiffe://cluster.local/ns/ns%d/sa/sa%d", i%37, i))
	}
	// Every identity is asked for by several goroutines at once.
	var wg sync.WaitGroup
	errs := make(chan error, 4*n)
	for r := range 4 {
		for i, id := range ids {
			wg.Go(func() {
				src := m.Source(id)
				s, err := src.SVID(ctx)
				if err == nil && s.ID != id {
					err = fmt.Errorf("round %d, identity %d: got certificate for %s", r, i, s.ID)
				}
				if err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	require.NoError(t, m.WaitReady(ctx))
	assert.Equal(t, n, m.Len())
	assert.Equal(t, int32(n), fetches.Load(), "one fetch per identity")
	cancel()
	require.NoError(t, <-done)
}

func TestNewManagerValidates(t *testing.T) {
	ca := newLocalCA(t, time.Hour)
	tests := []struct {
		name string
		cfg  identity.ManagerConfig
		want string
	}{
		{"no fetcher", identity.ManagerConfig{}, "Fetcher is nil"},
		{"jitter", identity.ManagerConfig{Fetcher: ca, RefreshJitter: 0.5}, "RefreshJitter"},
		{"negative backoff", identity.ManagerConfig{Fetcher: ca, MinBackoff: -1}, "must not be negative"},
		{"max below min", identity.ManagerConfig{Fetcher: ca, MinBackoff: time.Minute, MaxBackoff: time.Second}, "less than MinBackoff"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.NewManager(tc.cfg)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}
