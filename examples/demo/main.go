// Command demo is meshblocks' local mesh demo: the flow of Istio's ambient
// tutorial, run on one machine with no root and no Kubernetes, every piece
// in one process on loopback addresses:
//
//   - two node proxies (proxy.Proxy, as ztunnel) with certificates from an
//     in-memory CA (identity.CA, identity.Manager): apps reach Services
//     through their node's SOCKS5 listener, from their own address, and
//     each pod's address has an inbound HBONE listener;
//   - a waypoint (proxy.Proxy's L7 sibling, proxy.Waypoint) once a step
//     creates one;
//   - in-process apps: echo, and purchase-history v1, v2 and v3 that answer
//     with their version; clients sleep and curl;
//   - a stand-in for the control plane: each step applies ordinary Istio
//     YAML (testdata/*.yaml, built into the binary), converts it as istiod
//     would (Namespace labels, ztunnel's L4 policy format with
//     authz/ztunnel, the waypoint's rules with proxy/waypointconfig) and
//     swaps the new state into every proxy atomically.
//
// The steps: the default namespace joins the mesh (mTLS HBONE, identities
// in the access log and metrics); allow-nothing; only sleep may reach echo;
// a waypoint for echo with "GET only, only from sleep"; a VirtualService
// splitting purchase-history 80/19/1. Each check prints PASS or FAIL; the
// exit status is 0 when every check passed, 1 when one failed or the mesh
// did not start, 130 when interrupted.
//
//	go run ./examples/demo              # the whole demo
//	go run ./examples/demo -step 3      # steps 1 to 3
//	go run ./examples/demo -v           # with every proxy's log on stderr
//
// The mesh uses 127.0.90.0/24 (pods), 127.0.91.0/24 (nodes' SOCKS5
// listeners) and 127.0.92.0/24 (Service VIPs).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	verbose := fs.Bool("v", false, "print every proxy's log lines (access logs, RBAC decisions) on stderr")
	fs.IntVar(&cfg.Steps, "step", numSteps, fmt.Sprintf("run the steps 1 to N (1-%d)", numSteps))
	fs.IntVar(&cfg.Requests, "requests", 2000, "requests step 5 sends to judge the traffic split")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "demo: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if cfg.Steps < 1 || cfg.Steps > numSteps {
		fmt.Fprintf(stderr, "demo: -step %d: must be 1 to %d\n", cfg.Steps, numSteps)
		return 2
	}
	if cfg.Requests < 1 {
		fmt.Fprintf(stderr, "demo: -requests %d: must be at least 1\n", cfg.Requests)
		return 2
	}
	if *verbose {
		cfg.Logs = stderr
	}
	err := Run(ctx, cfg, stdout)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled):
		return 130
	case !errors.Is(err, ErrFailed):
		fmt.Fprintf(stderr, "demo: %v\n", err)
	}
	return 1
}
