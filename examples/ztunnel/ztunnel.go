package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/examples/internal/cli"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/inpod"
	"github.com/meshblocks/meshblocks/proxy"
)

// Config is everything Run needs. Empty listener addresses disable that
// listener (except the data paths, which are required).
type Config struct {
	LocalConfig string // ztunnel local config file; required
	// Policies is an optional file, or directory of *.yaml/*.yml files, in
	// the same format (typically holding only a policies section), read
	// together with LocalConfig.
	Policies    string
	CADir       string // CA directory; empty = in-memory CA
	TrustDomain string // if empty, cluster.local
	Node        string

	Outbound, InboundHBONE, InboundPlaintext, SOCKS5 string
	SOCKS5Source                                     string
	Admin, Metrics, Readiness                        string

	// Pods are served in-pod: listeners inside each pod's namespace.
	Pods []Pod
	// ZDS, if set, is a node agent's ZDS socket: the pods it hands over
	// are served in-pod as they come and go (see inpod.go).
	ZDS string

	Redirected   bool // use SO_ORIGINAL_DST (iptables redirection)
	BindSourceIP bool

	// Reload, when it receives, re-reads LocalConfig and Policies and
	// swaps the state atomically (main sends on SIGHUP). A file that does
	// not parse keeps the previous state.
	Reload <-chan struct{}

	LogLevel slog.Level
	Logger   *slog.Logger // if nil, discard
}

func withIP(addr, ip string) string {
	if addr == "" {
		return ""
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return net.JoinHostPort(ip, port)
}

// loadState builds the proxy state from the local config file and the
// policy files: workloads, services and ztunnel's own authorization
// policies (istio.security.Authorization), which `meshctl authz convert`
// writes from Istio YAML. PeerAuthentication arrives as those policies
// too, as istiod sends it.
func loadState(cfg *Config) (*proxy.State, error) {
	paths := []string{cfg.LocalConfig}
	if cfg.Policies != "" {
		more, err := cli.YAMLFiles(cfg.Policies)
		if err != nil {
			return nil, err
		}
		paths = append(paths, more...)
	}
	var files []proxy.LocalConfigFile
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		files = append(files, proxy.LocalConfigFile{Name: p, Data: data})
	}
	lc, err := proxy.ParseLocalConfigFiles(files...)
	if err != nil {
		return nil, err
	}
	engine, err := authz.New(authz.Config{RootNamespace: lc.RootNamespace}, lc.Policies)
	if err != nil {
		return nil, err // ParseLocalConfigFiles only returns valid policies
	}
	return proxy.NewState(lc.Workloads, lc.Services, proxy.WithAuthz(engine))
}

// Run runs the ztunnel until ctx is done, then drains for up to 5 s.
func Run(ctx context.Context, cfg Config) error {
	if cfg.LocalConfig == "" {
		return errors.New("config: a local config file is required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cluster.local"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, err := loadState(&cfg)
	if err != nil {
		return err
	}
	holder := &proxy.StateHolder{}
	holder.Store(st)
	// Parsing leaves garbage several times the size of the state; give
	// it back to the OS once instead of carrying it as RSS.
	debug.FreeOSMemory()
	ca, err := cli.LoadCA(cfg.TrustDomain, cfg.CADir)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	ids, err := identity.NewManager(identity.ManagerConfig{Fetcher: ca, Logger: log})
	if err != nil {
		return err
	}
	m := newMetrics(holder)
	pcfg := proxy.Config{
		State:        holder,
		Identity:     func(id spiffeid.ID) identity.Source { return ids.Source(id) },
		Node:         cfg.Node,
		BindSourceIP: cfg.BindSourceIP,
		Logger:       log.With("scope", "access"),
		Hooks:        m.hooks(),
	}
	if cfg.Redirected {
		pcfg.OriginalDst = inpod.OriginalDst
	}
	var pods *inPod
	if len(cfg.Pods) > 0 || cfg.ZDS != "" {
		if pods, err = openPods(cfg.Pods); err != nil {
			return err
		}
		defer pods.close()
		pods.wire(&pcfg)
	}
	px, err := proxy.New(pcfg)
	if err != nil {
		return err
	}
	// Certificates of this node's workloads are fetched up front.
	for _, w := range st.Workloads() {
		if cfg.Node == "" || w.Node == cfg.Node {
			if id, err := w.Identity(); err == nil {
				ids.Add(id)
			}
		}
	}

	listen := func(addr string) (net.Listener, error) {
		if addr == "" {
			return nil, nil
		}
		return net.Listen("tcp", addr)
	}
	type lnSpec struct {
		name, addr string
		serve      func(net.Listener) error
	}
	specs := []lnSpec{
		{"outbound", cfg.Outbound, func(l net.Listener) error { return px.ServeOutbound(l, "") }},
		{"inbound", cfg.InboundHBONE, px.ServeInboundHBONE},
		{"inbound-plaintext", cfg.InboundPlaintext, px.ServeInboundPlaintext},
		{"socks5", cfg.SOCKS5, func(l net.Listener) error { return px.ServeSOCKS5(l, cfg.SOCKS5Source) }},
	}
	var lns []net.Listener
	closeAll := func() {
		for _, l := range lns {
			l.Close()
		}
	}
	var dataLns []net.Listener
	for _, s := range specs {
		l, err := listen(s.addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("%s listener: %w", s.name, err)
		}
		dataLns = append(dataLns, l)
		if l != nil {
			lns = append(lns, l)
		}
	}
	for _, pod := range cfg.Pods {
		n := pods.ns[pod.UID]
		for _, ps := range []struct {
			port  int
			serve func(net.Listener) error
		}{
			{15001, func(l net.Listener) error { return px.ServeOutbound(l, pod.UID) }},
			{15006, px.ServeInboundPlaintext},
			{proxy.DefaultHBONEPort, px.ServeInboundHBONE},
		} {
			l, err := listenIn(ctx, n, ps.port)
			if err != nil {
				closeAll()
				return fmt.Errorf("pod %s: listener %d: %w", pod.UID, ps.port, err)
			}
			lns = append(lns, l)
			dataLns = append(dataLns, l)
			specs = append(specs, lnSpec{fmt.Sprintf("pod %s :%d", pod.UID, ps.port), "", ps.serve})
		}
	}

	var ready atomic.Bool
	mux := func(routes map[string]http.Handler) http.Handler {
		mx := http.NewServeMux()
		for p, h := range routes {
			mx.Handle(p, h)
		}
		return mx
	}
	servers := []struct {
		name, addr string
		h          http.Handler
	}{
		{"metrics", cfg.Metrics, mux(map[string]http.Handler{"/metrics": m, "/stats/prometheus": m})},
		{"readiness", cfg.Readiness, mux(map[string]http.Handler{"/healthz/ready": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if !ready.Load() || !pods.zdsReady() {
				http.Error(w, "not ready", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ready")
		})})},
		{"admin", cfg.Admin, mux(map[string]http.Handler{"/config_dump": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			defer cancel()
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			enc.Encode(px.ConfigDump(ctx))
		})})},
	}
	var https []*http.Server
	var httpLns []net.Listener
	for _, s := range servers {
		l, err := listen(s.addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("%s listener: %w", s.name, err)
		}
		if l == nil {
			continue
		}
		lns = append(lns, l)
		https = append(https, &http.Server{Handler: s.h, ReadHeaderTimeout: 10 * time.Second})
		httpLns = append(httpLns, l)
	}

	g, gctx := errgroup.WithContext(ctx)
	idsCtx, stopIDs := context.WithCancel(context.Background())
	defer stopIDs()
	idsDone := make(chan struct{})
	go func() { ids.Run(idsCtx); close(idsDone) }()
	defer func() { stopIDs(); <-idsDone }()
	for i, s := range specs {
		if l := dataLns[i]; l != nil {
			g.Go(func() error {
				err := s.serve(l)
				if errors.Is(err, proxy.ErrProxyClosed) {
					return nil
				}
				return fmt.Errorf("%s: %w", s.name, err)
			})
		}
	}
	for i, srv := range https {
		g.Go(func() error {
			if err := srv.Serve(httpLns[i]); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	g.Go(func() error {
		wctx, cancel := context.WithTimeout(gctx, 30*time.Second)
		defer cancel()
		if err := ids.WaitReady(wctx); err != nil {
			if gctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("certificates: %w", err)
		}
		ready.Store(true)
		log.Info("ready", "workloads", len(st.Workloads()), "services", len(st.Services()),
			"outbound", cfg.Outbound, "inbound", cfg.InboundHBONE)
		return nil
	})
	if cfg.ZDS != "" {
		g.Go(func() error { return pods.runZDS(gctx, cfg.ZDS, px, holder, cfg.Node, log) })
	}
	if cfg.Reload != nil {
		g.Go(func() error {
			for {
				select {
				case <-gctx.Done():
					return nil
				case <-cfg.Reload:
				}
				next, err := loadState(&cfg)
				if err != nil {
					log.Warn("reload failed; keeping the previous state", "error", err)
					continue
				}
				holder.Store(next)
				for _, w := range next.Workloads() {
					if cfg.Node == "" || w.Node == cfg.Node {
						if id, err := w.Identity(); err == nil {
							ids.Add(id)
						}
					}
				}
				log.Info("state reloaded", "workloads", len(next.Workloads()), "services", len(next.Services()))
			}
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		ready.Store(false)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		px.Shutdown(sctx)
		for _, srv := range https {
			srv.Shutdown(sctx)
		}
		return nil
	})
	err = g.Wait()
	if err != nil && !strings.Contains(err.Error(), "context canceled") {
		return err
	}
	return nil
}
