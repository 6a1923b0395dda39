package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/meshblocks/meshblocks/examples/internal/cli"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/proxy"
	"github.com/meshblocks/meshblocks/proxy/waypointconfig"
	"github.com/meshblocks/meshblocks/route"
)

// Config is everything Run needs. Empty listener addresses disable that
// listener, except HBONE.
type Config struct {
	LocalConfig string // ztunnel local config file; required
	// IstioConfig is a file, or a directory of *.yaml/*.yml files, of
	// Istio YAML; optional (no policies, default routing, sniffed ports).
	IstioConfig   string
	CADir         string // CA directory; empty = in-memory CA
	TrustDomain   string // if empty, cluster.local
	UID           string // the waypoint's workload; if empty, the one owning IP
	Name          string // the waypoint Gateway's name
	Service       string // namespace/hostname of the waypoint's Service, optional
	IP            string // listeners bind here; if empty, the workload's address
	RootNamespace string // if empty, istio-system

	HBONE, Admin, Metrics, Readiness string

	// Reload, when it receives, re-reads LocalConfig and IstioConfig and
	// swaps them in (main sends on SIGHUP). Files that do not parse keep
	// the previous configuration.
	Reload <-chan struct{}

	LogLevel slog.Level
	Logger   *slog.Logger // if nil, discard
}

func withIP(addr, ip string) string {
	if addr == "" || ip == "" {
		return addr
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return net.JoinHostPort(ip, port)
}

// loaded is one reading of the configuration files.
type loaded struct {
	state   *proxy.State
	self    *proxy.Workload
	rules   proxy.WaypointRules
	skipped []string
	files   []string
}

// load reads the local config (workloads and services; the ztunnel
// policies it may hold are L4 and not the waypoint's) and the Istio YAML.
func load(cfg *Config) (*loaded, error) {
	data, err := os.ReadFile(cfg.LocalConfig)
	if err != nil {
		return nil, err
	}
	lc, err := proxy.ParseLocalConfigFiles(proxy.LocalConfigFile{Name: cfg.LocalConfig, Data: data})
	if err != nil {
		return nil, err
	}
	st, err := proxy.NewState(lc.Workloads, lc.Services)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.LocalConfig, err)
	}
	l := &loaded{state: st}
	if l.self, err = findSelf(st, cfg); err != nil {
		return nil, err
	}
	var files []waypointconfig.File
	if cfg.IstioConfig != "" {
		paths, err := cli.YAMLFiles(cfg.IstioConfig)
		if err != nil {
			return nil, err
		}
		for _, p := range paths {
			data, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			files = append(files, waypointconfig.File{Name: p, Data: data})
		}
		l.files = paths
	}
	res, err := waypointconfig.Parse(waypointconfig.Options{RootNamespace: cfg.RootNamespace}, files...)
	if err != nil {
		// Invalid policies would fail closed, but a configuration that
		// does not read as written is refused as a whole: the previous
		// one stays, or the waypoint does not start.
		return nil, err
	}
	l.rules, l.skipped = res.Rules, res.Skipped
	return l, nil
}

// findSelf returns the waypoint's own workload: by uid, else by address.
func findSelf(st *proxy.State, cfg *Config) (*proxy.Workload, error) {
	if cfg.UID != "" {
		if w, ok := st.WorkloadByUID(cfg.UID); ok {
			return w, nil
		}
		return nil, fmt.Errorf("-uid %q: no such workload in %s", cfg.UID, cfg.LocalConfig)
	}
	if cfg.IP != "" {
		ip, err := netip.ParseAddr(cfg.IP)
		if err != nil {
			return nil, fmt.Errorf("-ip: %w", err)
		}
		if w, ok := st.WorkloadByAddr(ip); ok {
			return w, nil
		}
		return nil, fmt.Errorf("-ip %s: no workload of %s has this address", ip, cfg.LocalConfig)
	}
	return nil, errors.New("the waypoint's workload is needed: set -uid (or -ip)")
}

// Run runs the waypoint until ctx is done, then drains for up to 5 s.
func Run(ctx context.Context, cfg Config) error {
	if cfg.LocalConfig == "" {
		return errors.New("config: a local config file is required")
	}
	cfg.TrustDomain = cmp.Or(cfg.TrustDomain, "cluster.local")
	cfg.RootNamespace = cmp.Or(cfg.RootNamespace, "istio-system")
	cfg.HBONE = cmp.Or(cfg.HBONE, ":15008")
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l, err := load(&cfg)
	if err != nil {
		return err
	}
	self := l.self
	ip := cfg.IP
	if ip == "" && len(self.Addresses) > 0 {
		ip = self.Addresses[0].String()
	}
	for _, a := range []*string{&cfg.HBONE, &cfg.Admin, &cfg.Metrics, &cfg.Readiness} {
		*a = withIP(*a, ip)
	}
	name := cmp.Or(cfg.Name, self.Labels["gateway.networking.k8s.io/gateway-name"], "waypoint")
	id, err := self.Identity()
	if err != nil {
		return err
	}
	ca, err := cli.LoadCA(cfg.TrustDomain, cfg.CADir)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	ids, err := identity.NewManager(identity.ManagerConfig{Fetcher: ca, Logger: log})
	if err != nil {
		return err
	}
	holder := &proxy.StateHolder{}
	holder.Store(l.state)
	m := newMetrics()
	wcfg := proxy.WaypointConfig{
		State:     holder,
		Source:    ids.Source(id),
		Name:      name,
		Namespace: self.Namespace,
		Addresses: self.Addresses,
		Service:   cfg.Service,
		Locality: route.Locality{Network: self.Network, Region: self.Locality.Region, Zone: self.Locality.Zone,
			Subzone: self.Locality.Subzone, Node: self.Node},
		Logger: log.With("scope", "access"),
		Hooks:  m.hooks(),
	}
	if a, err := netip.ParseAddr(ip); err == nil && slices.Contains(self.Addresses, a) {
		wcfg.SourceIP = a
	}
	wp, err := proxy.NewWaypoint(wcfg)
	if err != nil {
		return err
	}
	if err := wp.SetRules(l.rules); err != nil {
		return err
	}
	for _, s := range l.skipped {
		log.Warn("ignored: not configuration a waypoint reads", "object", s)
	}
	var cur atomic.Pointer[loaded]
	cur.Store(l)

	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	hboneLn, err := net.Listen("tcp", cfg.HBONE)
	if err != nil {
		return fmt.Errorf("hbone listener: %w", err)
	}
	lns = append(lns, hboneLn)

	var ready atomic.Bool
	servers := []struct {
		name, addr string
		h          http.Handler
	}{
		{"metrics", cfg.Metrics, muxOf(map[string]http.Handler{"/metrics": m, "/stats/prometheus": m})},
		{"readiness", cfg.Readiness, muxOf(map[string]http.Handler{"/healthz/ready": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if !ready.Load() {
				http.Error(w, "not ready", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ready")
		})})},
		{"admin", cfg.Admin, muxOf(map[string]http.Handler{"/config_dump": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			enc.Encode(configDump(cur.Load(), wcfg, id))
		})})},
	}
	var https []*http.Server
	var httpLns []net.Listener
	for _, s := range servers {
		if s.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("%s listener: %w", s.name, err)
		}
		lns = append(lns, ln)
		https = append(https, &http.Server{Handler: s.h, ReadHeaderTimeout: 10 * time.Second})
		httpLns = append(httpLns, ln)
	}

	g, gctx := errgroup.WithContext(ctx)
	idsCtx, stopIDs := context.WithCancel(context.Background())
	defer stopIDs()
	idsDone := make(chan struct{})
	go func() { ids.Run(idsCtx); close(idsDone) }()
	defer func() { stopIDs(); <-idsDone }()
	g.Go(func() error {
		if err := wp.Serve(hboneLn); !errors.Is(err, proxy.ErrWaypointClosed) {
			return fmt.Errorf("hbone: %w", err)
		}
		return nil
	})
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
		log.Info("ready", "identity", id.String(), "gateway", self.Namespace+"/"+name, "hbone", cfg.HBONE,
			"services", len(served(l.state, wcfg)), "policies", len(l.rules.Policies), "routes", len(l.rules.Routes))
		return nil
	})
	if cfg.Reload != nil {
		g.Go(func() error {
			for {
				select {
				case <-gctx.Done():
					return nil
				case <-cfg.Reload:
				}
				next, err := load(&cfg)
				if err == nil && next.self.UID != self.UID {
					err = fmt.Errorf("the waypoint's workload changed from %s to %s; restart instead", self.UID, next.self.UID)
				}
				if err != nil {
					log.Warn("reload failed; keeping the previous configuration", "error", err)
					continue
				}
				holder.Store(next.state)
				if err := wp.SetRules(next.rules); err != nil {
					log.Warn("reload: rules rejected; keeping the previous rules", "error", err)
					continue
				}
				cur.Store(next)
				log.Info("configuration reloaded", "workloads", len(next.state.Workloads()), "services", len(next.state.Services()),
					"policies", len(next.rules.Policies), "routes", len(next.rules.Routes))
			}
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		ready.Store(false)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		wp.Shutdown(sctx)
		for _, srv := range https {
			srv.Shutdown(sctx)
		}
		return nil
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func muxOf(routes map[string]http.Handler) http.Handler {
	mx := http.NewServeMux()
	for p, h := range routes {
		mx.Handle(p, h)
	}
	return mx
}

// served lists the Services whose waypoint is this one.
func served(st *proxy.State, wcfg proxy.WaypointConfig) []string {
	var out []string
	for _, s := range st.Services() {
		g := s.Waypoint
		if g == nil {
			continue
		}
		if (g.Address.IsValid() && slices.Contains(wcfg.Addresses, g.Address)) || (g.Service != "" && g.Service == wcfg.Service) {
			out = append(out, s.Key())
		}
	}
	return out
}

// dump is what /config_dump shows.
type dump struct {
	Identity     string            `json:"identity"`
	Gateway      string            `json:"gateway"`
	Services     []string          `json:"services"`
	Policies     []string          `json:"policies"`
	Routes       []string          `json:"routes"`
	Destinations []string          `json:"destinationRules"`
	AppProtocols map[string]string `json:"appProtocols"`
	Files        []string          `json:"files"`
	Ignored      []string          `json:"ignored,omitempty"`
}

func configDump(l *loaded, wcfg proxy.WaypointConfig, id spiffeid.ID) dump {
	d := dump{Identity: id.String(), Gateway: wcfg.Namespace + "/" + wcfg.Name, Services: served(l.state, wcfg),
		AppProtocols: l.rules.AppProtocols, Files: l.files, Ignored: l.skipped}
	for _, p := range l.rules.Policies {
		d.Policies = append(d.Policies, p.Namespace+"/"+p.Name)
	}
	seen := map[string]bool{}
	for _, r := range l.rules.Routes {
		k := r.Kind + " " + r.Namespace + "/" + r.Name
		if !seen[k] {
			seen[k] = true
			d.Routes = append(d.Routes, k)
		}
	}
	for _, p := range l.rules.Destinations {
		d.Destinations = append(d.Destinations, p.Namespace+"/"+p.Name)
	}
	return d
}
