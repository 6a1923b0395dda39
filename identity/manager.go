package identity

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ManagerConfig configures a Manager. The zero value of every field except
// Fetcher is a documented default. NewManager does not modify the Config.
type ManagerConfig struct {
	// Fetcher issues certificates (e.g. a *CA, or an Istio CA client).
	// Required.
	Fetcher Fetcher

	// RefreshJitter is the largest fraction of a certificate's lifetime
	// by which its refresh is moved earlier than half-life, at random, so
	// that many identities issued together do not all renew together. If
	// zero, 0.05 (refresh between 45% and 50% of the lifetime); if
	// negative, no jitter. Values of 0.5 or more are an error.
	RefreshJitter float64

	// MinBackoff is the wait before the first retry after a failed fetch;
	// each further failure doubles it up to MaxBackoff. Each wait is
	// randomised between half and all of the nominal value. If zero, 1s.
	MinBackoff time.Duration

	// MaxBackoff caps the wait between retries. If zero, 1m.
	MaxBackoff time.Duration

	// FetchTimeout bounds one call to Fetcher.Fetch. If zero, 30s; if
	// negative, none (the call is bounded only by Run's context).
	FetchTimeout time.Duration

	// IdleTimeout forgets an identity nobody has asked for (through its
	// Source, Fetch or Add) for this long: its certificate is dropped
	// and no longer renewed. If zero, 1h; if negative, never.
	IdleTimeout time.Duration

	// Logger receives renewal failures (Warn) and issuance (Debug). If
	// nil, logs are discarded.
	Logger *slog.Logger

	// Hooks are called for metrics. Nil funcs are skipped.
	Hooks ManagerHooks
}

// ManagerHooks are metric callbacks of a Manager. They run on the
// Manager's goroutines and must not block.
type ManagerHooks struct {
	// Issued is called when a new certificate for id is stored.
	Issued func(id spiffeid.ID, svid *x509svid.SVID)
	// FetchFailed is called when a fetch fails; attempt counts the
	// consecutive failures for id, from 1.
	FetchFailed func(id spiffeid.ID, attempt int, err error)
	// Evicted is called when an idle identity is forgotten.
	Evicted func(id spiffeid.ID)
}

// Manager keeps certificates for many identities, fetched through a
// Fetcher: it fetches an identity's first certificate as soon as the
// identity is registered (by Source, Add or Fetch), renews it at half of
// its lifetime (with jitter), retries failed fetches with exponential
// backoff while it keeps serving the previous certificate, never hands out
// an expired certificate (ErrExpired instead), and forgets identities
// unused for IdleTimeout.
//
// Background work happens in Run; fetches start once Run is running.
type Manager struct {
	cfg ManagerConfig
	log *slog.Logger

	mu      sync.RWMutex
	entries map[spiffeid.ID]*entry
	state   int             // guarded by mu; one of the state constants
	runCtx  context.Context // guarded by mu; set when Run starts
	wg      sync.WaitGroup  // workers
	stopped chan struct{}   // closed when Run has returned
}

const (
	stateNew = iota
	stateRunning
	stateStopped
)

type entry struct {
	id       spiffeid.ID
	ready    chan struct{} // closed when the first certificate is stored
	gone     chan struct{} // closed when the entry is evicted or removed
	cur      atomic.Pointer[issued]
	lastUsed atomic.Int64 // unix nanoseconds

	mu      sync.Mutex
	lastErr error
}

type issued struct {
	svid     *x509svid.SVID
	bundle   *x509bundle.Bundle
	notAfter time.Time
}

// NewManager validates cfg and returns a Manager. It starts nothing.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	if cfg.Fetcher == nil {
		return nil, errors.New("identity: ManagerConfig.Fetcher is nil")
	}
	if cfg.RefreshJitter >= 0.5 {
		return nil, fmt.Errorf("identity: ManagerConfig.RefreshJitter is %v; want less than 0.5", cfg.RefreshJitter)
	}
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < 0 {
		return nil, errors.New("identity: ManagerConfig.MinBackoff and MaxBackoff must not be negative")
	}
	if cfg.RefreshJitter == 0 {
		cfg.RefreshJitter = 0.05
	}
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, time.Second)
	cfg.MaxBackoff = cmp.Or(cfg.MaxBackoff, time.Minute)
	if cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("identity: ManagerConfig.MaxBackoff (%v) is less than MinBackoff (%v)", cfg.MaxBackoff, cfg.MinBackoff)
	}
	cfg.FetchTimeout = cmp.Or(cfg.FetchTimeout, 30*time.Second)
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, time.Hour)
	return &Manager{
		cfg:     cfg,
		log:     cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler)),
		entries: make(map[spiffeid.ID]*entry),
		stopped: make(chan struct{}),
	}, nil
}

// Run fetches and renews certificates until ctx is done, then returns nil
// after its goroutines have exited. Afterwards every call on the Manager
// fails with ErrClosed. Run may be called once.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.state != stateNew {
		m.mu.Unlock()
		return errors.New("identity: Manager.Run called more than once")
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.runCtx, m.state = rctx, stateRunning
	for _, e := range m.entries {
		m.start(e)
	}
	m.mu.Unlock()

	<-ctx.Done()
	m.mu.Lock()
	m.state = stateStopped
	m.mu.Unlock()
	cancel()
	m.wg.Wait()
	close(m.stopped)
	return nil
}

// start runs e's worker; m.mu must be held and the Manager running.
func (m *Manager) start(e *entry) {
	ctx := m.runCtx
	m.wg.Go(func() { m.work(ctx, e) })
}

// Add registers identities so that their certificates are fetched ahead of
// their first use. It counts as a use for IdleTimeout.
func (m *Manager) Add(ids ...spiffeid.ID) error {
	for _, id := range ids {
		if _, err := m.lookup(id); err != nil {
			return err
		}
	}
	return nil
}

// Remove forgets an identity at once: its certificate is dropped and no
// longer renewed. A later use registers it again.
func (m *Manager) Remove(id spiffeid.ID) {
	m.mu.Lock()
	e, ok := m.entries[id]
	if ok {
		delete(m.entries, id)
		close(e.gone)
	}
	m.mu.Unlock()
}

// Len returns the number of identities the Manager keeps.
func (m *Manager) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.entries)
}

// lookup returns the entry of id, creating (and, if running, starting) it,
// and marks it used.
func (m *Manager) lookup(id spiffeid.ID) (*entry, error) {
	if id.IsZero() {
		return nil, errors.New("identity: manager: the SPIFFE ID is empty")
	}
	now := time.Now().UnixNano()
	m.mu.RLock()
	e, ok := m.entries[id]
	if ok {
		e.lastUsed.Store(now) // under the read lock, so eviction sees it
	}
	state := m.state
	m.mu.RUnlock()
	if state == stateStopped {
		return nil, fmt.Errorf("identity: manager: %w", ErrClosed)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state == stateStopped {
		return nil, fmt.Errorf("identity: manager: %w", ErrClosed)
	}
	if ok {
		return e, nil
	}
	if e, ok := m.entries[id]; ok {
		e.lastUsed.Store(now)
		return e, nil
	}
	e = &entry{id: id, ready: make(chan struct{}), gone: make(chan struct{})}
	e.lastUsed.Store(now)
	m.entries[id] = e
	if m.state == stateRunning {
		m.start(e)
	}
	return e, nil
}

// get returns a valid certificate for id, waiting for the first one.
func (m *Manager) get(ctx context.Context, id spiffeid.ID) (*issued, error) {
	for {
		e, err := m.lookup(id)
		if err != nil {
			return nil, err
		}
		if c := e.cur.Load(); c != nil {
			if now := time.Now(); now.Before(c.notAfter) {
				return c, nil
			}
			return nil, fmt.Errorf("%w for %s: it expired at %s and renewal has not succeeded (last error: %v)",
				ErrExpired, id, c.notAfter.UTC().Format(time.RFC3339), e.err())
		}
		select {
		case <-e.ready:
		case <-e.gone: // removed while we waited: register again
		case <-m.stopped:
			return nil, fmt.Errorf("identity: manager: %w", ErrClosed)
		case <-ctx.Done():
			if last := e.err(); last != nil {
				return nil, fmt.Errorf("identity: waiting for the first certificate of %s: %w (last fetch error: %v)", id, ctx.Err(), last)
			}
			return nil, fmt.Errorf("identity: waiting for the first certificate of %s: %w", id, ctx.Err())
		}
	}
}

// Fetch implements Fetcher: it returns the current certificate of id,
// registering id and waiting for its first certificate if needed.
func (m *Manager) Fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
	c, err := m.get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	return c.svid, c.bundle, nil
}

// WaitReady blocks until every identity registered so far holds a
// certificate, ctx is done, or Run has returned (ErrClosed). With no
// identities registered it returns nil at once.
func (m *Manager) WaitReady(ctx context.Context) error {
	m.mu.RLock()
	if m.state == stateStopped {
		m.mu.RUnlock()
		return fmt.Errorf("identity: manager: %w", ErrClosed)
	}
	pending := make([]*entry, 0, len(m.entries))
	for _, e := range m.entries {
		pending = append(pending, e)
	}
	m.mu.RUnlock()
	for _, e := range pending {
		select {
		case <-e.ready:
		case <-e.gone:
		case <-m.stopped:
			return fmt.Errorf("identity: manager: %w", ErrClosed)
		case <-ctx.Done():
			if last := e.err(); last != nil {
				return fmt.Errorf("identity: waiting for %s: %w (last fetch error: %v)", e.id, ctx.Err(), last)
			}
			return fmt.Errorf("identity: waiting for %s: %w", e.id, ctx.Err())
		}
	}
	return nil
}

// Source returns the Source of one identity and registers the identity,
// so that its first certificate is fetched at once. The Source's SVID
// waits for that first certificate (bounded by its ctx), then always
// answers from memory; it fails with ErrExpired rather than return an
// expired certificate.
func (m *Manager) Source(id spiffeid.ID) *ManagedSource {
	_, _ = m.lookup(id) // errors resurface on use
	return &ManagedSource{m: m, id: id}
}

// ManagedSource is the Source of one identity of a Manager.
type ManagedSource struct {
	m  *Manager
	id spiffeid.ID
}

// ID returns the identity.
func (s *ManagedSource) ID() spiffeid.ID { return s.id }

// SVID implements Source.
func (s *ManagedSource) SVID(ctx context.Context) (*x509svid.SVID, error) {
	c, err := s.m.get(ctx, s.id)
	if err != nil {
		return nil, err
	}
	return c.svid, nil
}

// Bundle implements Source.
func (s *ManagedSource) Bundle(ctx context.Context) (*x509bundle.Bundle, error) {
	c, err := s.m.get(ctx, s.id)
	if err != nil {
		return nil, err
	}
	return c.bundle, nil
}

func (e *entry) err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastErr
}

func (e *entry) setErr(err error) {
	e.mu.Lock()
	e.lastErr = err
	e.mu.Unlock()
}

// work fetches and renews e's certificate until ctx is done or e is
// evicted.
func (m *Manager) work(ctx context.Context, e *entry) {
	var (
		next     time.Time // when to fetch; zero: now
		failures int
	)
	for {
		if !m.sleepUntil(ctx, e, next) {
			return
		}
		svid, bundle, err := m.fetch(ctx, e.id)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			e.setErr(err)
			if h := m.cfg.Hooks.FetchFailed; h != nil {
				h(e.id, failures, err)
			}
			d := m.backoff(failures)
			m.log.Warn("identity: certificate fetch failed", "id", e.id.String(), "attempt", failures, "retry_in", d, "error", err)
			next = time.Now().Add(d)
			continue
		}
		failures = 0
		e.setErr(nil)
		leaf := svid.Certificates[0]
		e.cur.Store(&issued{svid: svid, bundle: bundle, notAfter: leaf.NotAfter})
		select {
		case <-e.ready:
		default:
			close(e.ready)
		}
		if h := m.cfg.Hooks.Issued; h != nil {
			h(e.id, svid)
		}
		next = m.refreshAt(leaf.NotBefore, leaf.NotAfter)
		m.log.Debug("identity: certificate issued", "id", e.id.String(), "not_after", leaf.NotAfter, "refresh_at", next)
	}
}

// sleepUntil waits until t, evicting e if it goes unused for IdleTimeout
// meanwhile. It reports false if the worker should stop.
func (m *Manager) sleepUntil(ctx context.Context, e *entry, t time.Time) bool {
	for {
		wake := t
		idle := m.cfg.IdleTimeout
		if idle > 0 {
			if at := time.Unix(0, e.lastUsed.Load()).Add(idle); at.Before(wake) {
				wake = at
			}
		}
		if d := time.Until(wake); d > 0 {
			timer := time.NewTimer(d)
			select {
			case <-ctx.Done():
				timer.Stop()
				return false
			case <-e.gone:
				timer.Stop()
				return false
			case <-timer.C:
			}
		} else {
			select {
			case <-ctx.Done():
				return false
			case <-e.gone:
				return false
			default:
			}
		}
		if idle > 0 && m.evictIfIdle(e, idle) {
			return false
		}
		if !time.Now().Before(t) {
			return true
		}
	}
}

func (m *Manager) evictIfIdle(e *entry, idle time.Duration) bool {
	m.mu.Lock()
	if time.Since(time.Unix(0, e.lastUsed.Load())) < idle || m.entries[e.id] != e {
		m.mu.Unlock()
		return false
	}
	delete(m.entries, e.id)
	close(e.gone)
	m.mu.Unlock()
	if h := m.cfg.Hooks.Evicted; h != nil {
		h(e.id)
	}
	m.log.Debug("identity: idle identity forgotten", "id", e.id.String())
	return true
}

// fetch calls the Fetcher once and checks what it returned.
func (m *Manager) fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, *x509bundle.Bundle, error) {
	if m.cfg.FetchTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, m.cfg.FetchTimeout)
		defer cancel()
	}
	svid, bundle, err := m.cfg.Fetcher.Fetch(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if err := checkPair(svid, bundle); err != nil {
		return nil, nil, fmt.Errorf("identity: fetcher answer for %s: %w", id, err)
	}
	if svid.ID != id {
		return nil, nil, fmt.Errorf("identity: fetcher returned a certificate for %s, want %s", svid.ID, id)
	}
	if na := svid.Certificates[0].NotAfter; !time.Now().Before(na) {
		return nil, nil, fmt.Errorf("identity: fetcher returned a certificate for %s that expired at %s", id, na.UTC().Format(time.RFC3339))
	}
	// A certificate that does not chain to the bundle handed out with it
	// would be refused by every peer: keep serving the previous one.
	if _, _, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(time.Now())); err != nil {
		return nil, nil, fmt.Errorf("identity: fetcher answer for %s does not verify against its bundle: %w", id, err)
	}
	return svid, bundle, nil
}

// refreshAt is half-way through the validity period, moved earlier by a
// random part of RefreshJitter, and no sooner than MinBackoff from now.
func (m *Manager) refreshAt(notBefore, notAfter time.Time) time.Time {
	life := notAfter.Sub(notBefore)
	at := notBefore.Add(life / 2)
	if j := m.cfg.RefreshJitter; j > 0 {
		if span := int64(float64(life) * j); span > 0 {
			at = at.Add(-time.Duration(rand.Int64N(span)))
		}
	}
	if earliest := time.Now().Add(m.cfg.MinBackoff); at.Before(earliest) {
		at = earliest
	}
	return at
}

// backoff is the randomised wait after the n-th consecutive failure.
func (m *Manager) backoff(n int) time.Duration {
	d := m.cfg.MinBackoff
	for i := 1; i < n && d < m.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, m.cfg.MaxBackoff)
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(d-half)+1))
}

var (
	_ Fetcher = (*Manager)(nil)
	_ Source  = (*ManagedSource)(nil)
)
