package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/meshblocks/meshblocks/authz/authztest"
	"github.com/meshblocks/meshblocks/authz/istio"
)

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// kvFlag is a repeatable key=value flag.
type kvFlag map[string]string

func (m kvFlag) String() string { return fmt.Sprint(map[string]string(m)) }
func (m kvFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value", v)
	}
	m[k] = val
	return nil
}

func authzCommand() command {
	return command{
		summary: "offline authorization: test policy suites, check one request",
		run:     runAuthz,
	}
}

const authzUsage = `usage:
  meshctl authz test FILE...     run offline policy test suites
  meshctl authz check [flags]    decide one request; prints ALLOW/DENY and what decided
                                 (exit 0 ALLOW, 1 DENY, 2 bad input, including policy
                                 YAML that cannot be decoded; policies that decode but
                                 are invalid are reported and deny their scope)
`

func runAuthz(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, authzUsage)
		return 2
	}
	switch args[0] {
	case "test":
		if len(args) == 1 {
			fmt.Fprint(stderr, authzUsage)
			return 2
		}
		return authztest.RunFiles(stdout, args[1:]...)
	case "check":
		return authzCheck(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, authzUsage)
		return 0
	}
	fmt.Fprintf(stderr, "meshctl authz: unknown subcommand %q\n%s", args[0], authzUsage)
	return 2
}

func authzCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meshctl authz check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		policies, providers, services listFlag
		labels                        = kvFlag{}
		hdrs                          = kvFlag{}
		c                             authztest.Case
	)
	reqFile := fs.String("request", "", "YAML file with layer, workload, request (and optionally policies), as in a test case")
	fs.Var(&policies, "policies", "policy YAML file (repeatable)")
	fs.StringVar(&c.Layer, "layer", "L4", "L4 (destination ztunnel) or L7 (waypoint)")
	fs.StringVar(&c.RootNamespace, "root-namespace", "", "mesh root namespace (default istio-system)")
	fs.Var(&providers, "provider", "known extension provider name (repeatable)")
	fs.StringVar(&c.Workload.Namespace, "namespace", "", "destination namespace")
	fs.Var(labels, "label", "destination workload label key=value (repeatable)")
	fs.StringVar(&c.Workload.ServiceAccount, "service-account", "", "destination service account")
	fs.Var(&services, "service", "destination Service name (repeatable)")
	fs.StringVar(&c.Workload.Waypoint, "waypoint", "", "waypoint Gateway name (L7)")
	fs.StringVar(&c.Request.Source.Principal, "principal", "", "peer identity, e.g. cluster.local/ns/test/sa/sleep (empty = plaintext)")
	fs.StringVar(&c.Request.Source.IP, "source-ip", "", "source (peer) IP")
	fs.StringVar(&c.Request.RemoteIP, "remote-ip", "", "original client IP from X-Forwarded-For (L7)")
	fs.StringVar(&c.Request.Destination.IP, "dest-ip", "", "destination IP")
	fs.IntVar(&c.Request.Destination.Port, "port", 0, "destination port")
	fs.StringVar(&c.Request.SNI, "sni", "", "TLS SNI")
	fs.StringVar(&c.Request.Method, "method", "", "HTTP method (L7)")
	fs.StringVar(&c.Request.Path, "path", "", "raw :path (L7)")
	fs.StringVar(&c.Request.Host, "host", "", ":authority (L7)")
	fs.Var(hdrs, "header", "request header name=value (repeatable, L7)")
	jwtPrincipal := fs.String("jwt-principal", "", `validated JWT "iss/sub" (L7)`)
	jwtClaims := fs.String("jwt-claims", "", "validated JWT payload as JSON (L7)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meshctl authz check: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *reqFile != "" {
		data, err := os.ReadFile(*reqFile)
		if err != nil {
			fmt.Fprintf(stderr, "meshctl authz check: %v\n", err)
			return 2
		}
		rc, err := authztest.ParseRequest(*reqFile, data)
		if err != nil {
			fmt.Fprintf(stderr, "meshctl authz check: %v\n", err)
			return 2
		}
		c = *rc
	} else {
		c.ExtensionProviders = providers
		c.Workload.Services = services
		if len(labels) > 0 {
			c.Workload.Labels = labels
		}
		if len(hdrs) > 0 {
			c.Request.Headers = hdrs
		}
		if *jwtPrincipal != "" || *jwtClaims != "" {
			c.Request.Auth = &authztest.Auth{Principal: *jwtPrincipal}
			if *jwtClaims != "" {
				if err := json.Unmarshal([]byte(*jwtClaims), &c.Request.Auth.Claims); err != nil {
					fmt.Fprintf(stderr, "meshctl authz check: -jwt-claims: %v\n", err)
					return 2
				}
			}
		}
	}
	var docs []string
	for _, p := range policies {
		data, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintf(stderr, "meshctl authz check: %v\n", err)
			return 2
		}
		if undecodable(stderr, p, data) {
			return 2
		}
		docs = append(docs, string(data))
	}
	if len(docs) > 0 {
		c.Policies = strings.Join(docs, "\n---\n")
	} else if *reqFile != "" && undecodable(stderr, *reqFile+": policies", []byte(c.Policies)) {
		return 2
	}
	if _, err := c.BuildRequest(); err != nil {
		fmt.Fprintf(stderr, "meshctl authz check: %v\n", err)
		return 2
	}
	d, err := c.Evaluate()
	if err != nil {
		// Policies that decode but are invalid are reported; they deny
		// their scope (fail closed).
		fmt.Fprintf(stderr, "meshctl authz check: policy errors:\n%v\n", err)
	}
	fmt.Fprintln(stdout, d)
	if d.Allowed {
		return 0
	}
	return 1
}

// undecodable reports (to stderr, naming the source) whether policy YAML
// holds anything that cannot be decoded: a document that is not YAML or not
// an object, or a policy whose fields have the wrong shape. Deciding without
// it would silently drop a policy, so it is bad input.
func undecodable(stderr io.Writer, source string, data []byte) bool {
	_, err := istio.Parse(data, istio.Options{})
	if !errors.Is(err, istio.ErrDecode) {
		return false
	}
	fmt.Fprintf(stderr, "meshctl authz check: %s: cannot decode the policies:\n%v\n", source, err)
	return true
}
