package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/meshblocks/meshblocks/route/routetest"
)

func routeCommand() command {
	return command{
		summary: "check one request or run route test files (route check|test)",
		run:     runRoute,
	}
}

const routeUsage = `usage:
  meshctl route test FILE...
      run route test files; ends with "N passed, M failed";
      exit 1 if a case failed, 2 if a file is invalid (including a case
      whose configuration is rejected)
  meshctl route check [-case NAME] [-path P] [-method M] [-H name=value]... FILE
      simulate the request of one case (the first by default) and print the
      chosen rule, destination, the filters applied (request and response
      headers, rewrites, mirrors) and the timeout and retry policy
`

func runRoute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, routeUsage)
		return 2
	}
	switch args[0] {
	case "test":
		return routeTest(ctx, args[1:], stdout, stderr)
	case "check":
		return routeCheck(args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "meshctl route: unknown subcommand %q\n", args[0])
		fmt.Fprint(stderr, routeUsage)
		return 2
	}
}

func routeTest(ctx context.Context, files []string, stdout, stderr io.Writer) int {
	if len(files) == 0 {
		fmt.Fprint(stderr, routeUsage)
		return 2
	}
	passed, failed, invalid := 0, 0, false
	for _, p := range files {
		if ctx.Err() != nil {
			return 1
		}
		res, err := routetest.RunFiles(p)
		if err != nil {
			fmt.Fprintf(stderr, "INVALID %v\n", err)
			invalid = true
			continue
		}
		for _, r := range res {
			switch {
			case errors.Is(r.Err, routetest.ErrInvalidFile):
				// The case's config does not build: the file is invalid.
				fmt.Fprintf(stderr, "INVALID %s: %s: %v\n", r.File, r.Name, r.Err)
				invalid = true
				continue
			case r.Err != nil:
				failed++
				fmt.Fprintf(stdout, "FAIL %s: %s: %v\n", r.File, r.Name, r.Err)
				continue
			}
			passed++
			fmt.Fprintf(stdout, "ok   %s: %s\n", r.File, r.Name)
		}
	}
	fmt.Fprintf(stdout, "%d passed, %d failed\n", passed, failed)
	switch {
	case invalid:
		return 2
	case failed > 0:
		return 1
	}
	return 0
}

type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ",") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

func routeCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("route check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("case", "", "case name (default: the first case)")
	path := fs.String("path", "", "override the request path (query included)")
	method := fs.String("method", "", "override the request method")
	var headers headerFlags
	fs.Var(&headers, "H", "add a request header name=value (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprint(stderr, routeUsage)
		return 2
	}
	f, err := routetest.LoadFile(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "meshctl route check: %v\n", err)
		return 2
	}
	c := &f.Cases[0]
	if *name != "" {
		c = nil
		for i := range f.Cases {
			if f.Cases[i].Name == *name {
				c = &f.Cases[i]
			}
		}
		if c == nil {
			fmt.Fprintf(stderr, "meshctl route check: no case %q in %s\n", *name, fs.Arg(0))
			return 2
		}
	}
	if *path != "" {
		c.Request.Path = *path
	}
	if *method != "" {
		c.Request.Method = *method
	}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, "=")
		if !ok {
			k, v, ok = strings.Cut(h, ":")
		}
		if !ok || k == "" {
			fmt.Fprintf(stderr, "meshctl route check: -H %q: want name=value\n", h)
			return 2
		}
		if c.Request.Headers == nil {
			c.Request.Headers = map[string]string{}
		}
		c.Request.Headers[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	out, err := c.Explain()
	if err != nil {
		fmt.Fprintf(stderr, "meshctl route check: %v\n", err)
		if errors.Is(err, routetest.ErrInvalidFile) {
			return 2
		}
		return 1
	}
	fmt.Fprint(stdout, out)
	return 0
}
