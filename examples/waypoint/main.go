// Command waypoint is an L7 waypoint in the style of Istio's ambient
// waypoint, wired from meshblocks packages: proxy.Waypoint terminates HBONE
// on 15008 and serves the HTTP inside it with L7 authorization and
// routing, package identity issues its certificate from a local CA (the
// same -ca-dir as examples/ztunnel), the workloads and Services come from a
// ztunnel LOCAL_XDS_PATH file (the one the ztunnels read), and the rules
// from a directory of ordinary Istio YAML: AuthorizationPolicy (with
// targetRefs), VirtualService, DestinationRule, Gateway API HTTPRoute,
// GRPCRoute, TCPRoute and TLSRoute, and core v1 Services for the
// protocol of each port (package proxy/waypointconfig).
//
// The waypoint is one of the workloads of the local config (-uid, or the
// workload that owns -ip): that gives its identity, address and namespace.
// Services and workloads whose waypoint is that address (or that
// namespace/hostname with -service) are served.
//
// It also serves readiness on 15021 (/healthz/ready), Prometheus metrics on
// 15020 (/metrics, /stats/prometheus) with Istio's request metrics
// (reporter "waypoint"), and an admin endpoint on 15000 (/config_dump).
// SIGHUP re-reads the local config and the YAML; a file that does not
// parse keeps the previous configuration.
//
//	ztunnel  -config mesh.yaml -ca-dir /tmp/ca -node n1 -ip 127.0.0.2
//	ztunnel  -config mesh.yaml -ca-dir /tmp/ca -node n2 -ip 127.0.0.3
//	waypoint -config mesh.yaml -istio ./istio -ca-dir /tmp/ca -uid c//Pod/default/waypoint
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshblocks/meshblocks/examples/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	// SIGHUP reloads the configuration files.
	reload, stopReload := cli.ReloadOnSIGHUP()
	defer stopReload()
	cfg.Reload = reload
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintf(stderr, "waypoint: %v\n", err)
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (Config, error) {
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Config
	var level string
	fs.StringVar(&c.LocalConfig, "config", "", "ztunnel local config file (LOCAL_XDS_PATH format): workloads and services")
	fs.StringVar(&c.IstioConfig, "istio", "", "Istio YAML: a file, or a directory of *.yaml/*.yml (AuthorizationPolicy, VirtualService, DestinationRule, HTTPRoute, ..., v1 Service)")
	fs.StringVar(&c.CADir, "ca-dir", "", "CA directory (Istio cacerts layout); created with a new CA if missing; empty = in-memory CA")
	fs.StringVar(&c.TrustDomain, "trust-domain", "cluster.local", "trust domain")
	fs.StringVar(&c.UID, "uid", "", "uid of the waypoint's workload in the local config (default: the workload that owns -ip)")
	fs.StringVar(&c.Name, "name", "", "name of the waypoint Gateway, for targetRefs (default: the workload's gateway.networking.k8s.io/gateway-name label, else \"waypoint\")")
	fs.StringVar(&c.Service, "service", "", "namespace/hostname of the waypoint's Service, when Services name their waypoint by Service rather than by address")
	fs.StringVar(&c.IP, "ip", "", "the listeners bind to this IP (default: the waypoint workload's address)")
	fs.StringVar(&c.HBONE, "hbone", ":15008", "HBONE listener")
	fs.StringVar(&c.Admin, "admin", ":15000", "admin listener (/config_dump)")
	fs.StringVar(&c.Metrics, "metrics", ":15020", "Prometheus listener")
	fs.StringVar(&c.Readiness, "readiness", ":15021", "readiness listener")
	fs.StringVar(&c.RootNamespace, "root-namespace", "istio-system", "mesh root namespace")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "waypoint: unexpected arguments %q\n", fs.Args())
		return c, fmt.Errorf("arguments")
	}
	if err := c.LogLevel.UnmarshalText([]byte(level)); err != nil {
		fmt.Fprintf(stderr, "waypoint: -log-level: %v\n", err)
		return c, err
	}
	return c, nil
}
