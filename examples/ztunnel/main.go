// Command ztunnel is a node proxy in the style of Istio's ztunnel, wired
// from meshblocks packages: package proxy carries the L4 data paths
// (outbound 15001, inbound HBONE 15008, inbound plaintext 15006, SOCKS5
// 15080), package identity issues certificates from a local CA, and the
// state comes from a ztunnel LOCAL_XDS_PATH file: workloads, services and
// ztunnel's own authorization policies (istio.security.Authorization, the
// form istiod sends; `meshctl authz convert` writes them from Istio
// AuthorizationPolicy and PeerAuthentication YAML). Like Istio's ztunnel,
// it never parses Istio's CRDs itself, so the binary links neither Istio's
// API types nor CEL.
//
// It also serves readiness on 15021 (/healthz/ready), Prometheus metrics
// on 15020 (/metrics, /stats/prometheus) with Istio's metric names and
// labels, and an admin endpoint on localhost:15000 (/config_dump).
//
// Build it without cgo (CGO_ENABLED=0 go build ./ztunnel): it needs no C
// resolver, and the static binary is smaller in memory. Two ztunnels can run
// side by side on loopback addresses:
//
//	ztunnel -config mesh.yaml -ca-dir /tmp/ca -node n1 -ip 127.0.0.2
//	ztunnel -config mesh.yaml -ca-dir /tmp/ca -node n2 -ip 127.0.0.3
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
	// SIGHUP reloads the config files.
	reload, stopReload := cli.ReloadOnSIGHUP()
	defer stopReload()
	cfg.Reload = reload
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintf(stderr, "ztunnel: %v\n", err)
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (Config, error) {
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Config
	var ip, level string
	fs.StringVar(&c.LocalConfig, "config", "", "ztunnel local config file (LOCAL_XDS_PATH format): workloads, services, policies")
	fs.StringVar(&c.Policies, "policies", "", "more files in that format, e.g. holding only policies: a file or a directory of *.yaml (write them from Istio YAML with meshctl authz convert)")
	fs.StringVar(&c.CADir, "ca-dir", "", "CA directory (Istio cacerts layout); created with a new CA if missing; empty = in-memory CA")
	fs.StringVar(&c.TrustDomain, "trust-domain", "cluster.local", "trust domain")
	fs.StringVar(&c.Node, "node", "", "this node's name: inbound traffic is accepted for workloads on this node")
	fs.StringVar(&ip, "ip", "", "if set, the data-path listeners bind to this IP (e.g. 127.0.0.2 for a local demo)")
	fs.StringVar(&c.Outbound, "outbound", "127.0.0.1:15001", "outbound listener (redirected app traffic)")
	fs.StringVar(&c.InboundHBONE, "inbound", ":15008", "inbound HBONE listener")
	fs.StringVar(&c.InboundPlaintext, "inbound-plaintext", ":15006", "inbound plaintext listener")
	fs.StringVar(&c.SOCKS5, "socks5", "127.0.0.1:15080", "SOCKS5 listener (empty to disable)")
	fs.StringVar(&c.SOCKS5Source, "socks5-source", "", "uid of the workload SOCKS5 clients act as (empty: by client address)")
	fs.StringVar(&c.Admin, "admin", "127.0.0.1:15000", "admin listener (/config_dump)")
	fs.StringVar(&c.Metrics, "metrics", ":15020", "Prometheus listener")
	fs.StringVar(&c.Readiness, "readiness", ":15021", "readiness listener")
	fs.Var(podFlag{&c.Pods}, "pod", "serve a workload in-pod: uid=/var/run/netns/<name> (repeatable); listeners 15001/15006/15008 open inside the namespace")
	fs.StringVar(&c.ZDS, "zds", "", "node agent's ZDS socket (e.g. /var/run/ztunnel/ztunnel.sock): serve the pods it hands over in-pod")
	fs.BoolVar(&c.Redirected, "redirected", false, "outbound and plaintext inbound traffic is redirected by iptables (use SO_ORIGINAL_DST)")
	fs.BoolVar(&c.BindSourceIP, "bind-source-ip", true, "bind outbound HBONE connections to the source workload's IP")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ztunnel: unexpected arguments %q\n", fs.Args())
		return c, fmt.Errorf("arguments")
	}
	if err := c.LogLevel.UnmarshalText([]byte(level)); err != nil {
		fmt.Fprintf(stderr, "ztunnel: -log-level: %v\n", err)
		return c, err
	}
	if ip != "" {
		c.Outbound = withIP(c.Outbound, ip)
		c.InboundHBONE = withIP(c.InboundHBONE, ip)
		c.InboundPlaintext = withIP(c.InboundPlaintext, ip)
		c.Readiness = withIP(c.Readiness, ip)
		c.Metrics = withIP(c.Metrics, ip)
		c.Admin = withIP(c.Admin, ip)
		c.SOCKS5 = withIP(c.SOCKS5, ip)
	}
	return c, nil
}
