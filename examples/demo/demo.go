package main

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshblocks/meshblocks/proxy"
	"github.com/meshblocks/meshblocks/route/routetest"
)

//go:embed testdata
var embedded embed.FS

// Config is what Run needs; the zero value runs the whole demo quietly.
type Config struct {
	// Steps runs the steps 1 to Steps; 0 runs them all.
	Steps int
	// Requests is how many requests step 5 sends; if zero, 2,000.
	Requests int
	// Logs, if set, receives the log lines of every proxy, the waypoint
	// and the certificate managers (access logs, "RBAC rejected").
	Logs io.Writer
	// Files holds mesh.yaml and the steps' YAML files; if nil, the
	// testdata directory built into the binary.
	Files fs.FS
}

// ErrFailed is returned by Run when a check did not behave as expected.
var ErrFailed = errors.New("demo: some checks failed")

// numSteps is the number of steps of the demo.
const numSteps = 5

// demo is one run.
type demo struct {
	ctx   context.Context
	cfg   Config
	out   io.Writer
	files fs.FS
	m     *mesh
	cp    *controlPlane
	// last is the state pushed last.
	last           *compiled
	pushes         int
	stepsRun       int
	passed, failed int
}

const sleepID = "spiffe://cluster.local/ns/default/sa/sleep"

// Run runs the demo, writing its transcript to out: it starts the mesh,
// runs the steps (each applies Istio YAML, converts it as the control
// plane would, pushes the state to the proxies and checks what happens),
// shuts everything down and returns nil when every check passed,
// ErrFailed when some did not, ctx's error when it was interrupted, or
// the error that kept the mesh from starting.
func Run(ctx context.Context, cfg Config, out io.Writer) error {
	start := time.Now()
	baseline := runtime.NumGoroutine()
	if cfg.Steps <= 0 || cfg.Steps > numSteps {
		cfg.Steps = numSteps
	}
	if cfg.Requests <= 0 {
		cfg.Requests = 2000
	}
	d := &demo{ctx: ctx, cfg: cfg, out: out, files: cfg.Files}
	if d.files == nil {
		sub, err := fs.Sub(embedded, "testdata")
		if err != nil {
			return err
		}
		d.files = sub
	}
	tap := &logTap{}
	if cfg.Logs != nil {
		tap.out = slog.NewTextHandler(cfg.Logs, nil)
	}
	d.m = &mesh{tap: tap}
	err := d.run(ctx)
	d.m.shutdown()

	// Everything the demo started has stopped: no goroutine is left.
	left := runtime.NumGoroutine()
	for deadline := time.Now().Add(3 * time.Second); left > baseline && time.Now().Before(deadline); left = runtime.NumGoroutine() {
		time.Sleep(10 * time.Millisecond)
	}
	interrupted := ctx.Err() != nil && errors.Is(err, ctx.Err())
	d.ctx = context.Background() // the shutdown is checked even after an interrupt
	if err == nil || errors.Is(err, ErrFailed) || interrupted {
		fmt.Fprintln(out, "\nShutdown")
		d.check(left <= baseline, fmt.Sprintf("proxies, waypoint, apps and certificate managers stopped; %d goroutines left of the demo's (%d before, %d after)",
			max(left-baseline, 0), baseline, left), "every goroutine the demo started has ended")
	}
	verdict := "PASS"
	switch {
	case interrupted:
		verdict = "INTERRUPTED"
	case d.failed > 0 || err != nil:
		verdict = "FAIL"
	}
	fmt.Fprintf(out, "\nSummary: %d of %d steps, %d checks: %d passed, %d failed, in %.2f s: %s\n",
		d.stepsRun, numSteps, d.passed+d.failed, d.passed, d.failed, time.Since(start).Seconds(), verdict)
	switch {
	case err != nil:
		return err
	case d.failed > 0:
		return fmt.Errorf("%w: %d of %d", ErrFailed, d.failed, d.passed+d.failed)
	}
	return nil
}

func (d *demo) run(ctx context.Context) error {
	data, err := fs.ReadFile(d.files, "mesh.yaml")
	if err != nil {
		return err
	}
	base, err := proxy.ParseLocalConfigFiles(proxy.LocalConfigFile{Name: "mesh.yaml", Data: data})
	if err != nil {
		return err
	}
	d.cp = &controlPlane{base: base}
	first, err := d.cp.compile()
	if err != nil {
		return err
	}
	d.last = first
	if err := d.m.start(ctx, first.state); err != nil {
		return err
	}
	d.header(first.state)

	steps := []struct {
		title string
		file  string
		run   func(context.Context)
	}{
		{"The default namespace joins the mesh", "1-ambient.yaml", d.step1},
		{"Deny by default: allow-nothing", "2-allow-nothing.yaml", d.step2},
		{"Only sleep may reach echo (L4, by SPIFFE identity)", "3-echo-viewer.yaml", d.step3},
		{"A waypoint for echo: GET only, only from sleep (L7)", "4-waypoint.yaml", d.step4},
		{"Traffic split across purchase-history v1/v2/v3 (80/19/1) in the waypoint", "5-purchase-history.yaml", d.step5},
	}
	for i, s := range steps[:d.cfg.Steps] {
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(d.out, "\nStep %d/%d: %s\n", i+1, numSteps, s.title)
		d.stepsRun++
		d.m.tap.reset()
		if d.m.wp != nil {
			d.m.wp.reset()
		}
		s.run(ctx)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(d.out, "\ninterrupted: shutting down")
		return ctx.Err()
	}
	return nil
}

// header describes the mesh.
func (d *demo) header(st *proxy.State) {
	fmt.Fprintln(d.out, "meshblocks local mesh demo: Istio ambient's tutorial on loopback, no root, no Kubernetes")
	ws := st.Workloads()
	for _, n := range d.m.nodes {
		var pods []string
		for i := range ws {
			if ws[i].Node == n.name {
				pods = append(pods, fmt.Sprintf("%s %s", cmpName(&ws[i]), addrs(ws[i].Addresses)))
			}
		}
		fmt.Fprintf(d.out, "  %s: ztunnel with SOCKS5 on %s, HBONE on :15008 of its pods; pods %s\n", n.name, n.socks, strings.Join(pods, ", "))
	}
	var svcs []string
	for _, s := range st.Services() {
		for _, p := range s.Ports {
			svcs = append(svcs, fmt.Sprintf("%s %s:%d", s.Hostname, addrs(s.Addresses), p.Port))
		}
	}
	fmt.Fprintf(d.out, "  services: %s\n", strings.Join(svcs, ", "))
	fmt.Fprintln(d.out, "  identities from an in-memory CA for spiffe://cluster.local; sleep and curl reach Services through node-a's SOCKS5 listener from their own addresses")
}

func addrs(as []netip.Addr) string {
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, ",")
}

// say prints a line of the transcript.
func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "  "+format+"\n", args...)
}

// check prints a check with its outcome and counts it.
func (d *demo) check(ok bool, what, want string) bool {
	if d.ctx.Err() != nil {
		return false // interrupted: what failed says nothing
	}
	if ok {
		d.passed++
		fmt.Fprintf(d.out, "  PASS  %s\n", what)
	} else {
		d.failed++
		fmt.Fprintf(d.out, "  FAIL  %s\n        expected: %s\n", what, want)
	}
	return ok
}

// apply applies a file as `kubectl apply -f` does, converts the result as
// the control plane would and pushes it to every proxy.
func (d *demo) apply(ctx context.Context, file string) bool {
	d.say("$ kubectl apply -f %s", file)
	data, err := fs.ReadFile(d.files, file)
	if err != nil {
		return d.check(false, "read "+file+": "+err.Error(), "the file exists")
	}
	lines, err := d.cp.apply(file, data)
	if err != nil {
		return d.check(false, err.Error(), "valid Kubernetes YAML")
	}
	for _, l := range lines {
		d.say("  %s", l)
	}
	c, err := d.cp.compile()
	if c == nil {
		return d.check(false, "control plane: "+err.Error(), "the objects convert")
	}
	if err != nil {
		d.check(false, "control plane: "+err.Error(), "every policy valid (invalid ones fail closed)")
	}
	for _, w := range c.warnings {
		d.say("warning: %s", w)
	}
	ws := c.state.Workloads()
	d.say("control plane: %d of %d pods on HBONE; L4 policies in ztunnel's format: %d", c.hbone, len(ws), len(c.l4))
	for _, l := range describeL4(c, ws) {
		d.say("  %s", l)
	}
	if d.m.wp == nil && len(c.waypoints) > 0 {
		gw := c.waypoints[0]
		if err := d.m.startWaypoint(ctx, gw, c.state, c.rules); err != nil {
			return d.check(false, "waypoint "+gw+": "+err.Error(), "the waypoint starts")
		}
		d.say("waypoint %s started on %s:15008 as %s", gw, d.m.wp.addr, d.m.wp.id)
	}
	// The waypoint gets its rules before any Service is sent its way.
	var to []string
	if wp := d.m.wp; wp != nil {
		if err := wp.wp.SetRules(c.rules); err != nil {
			d.check(false, "waypoint rules: "+err.Error(), "the rules install")
		}
		wp.holder.Store(c.state)
		to = append(to, "waypoint")
		d.say("waypoint rules: %s", describeRules(&c.rules))
	}
	for _, n := range d.m.nodes {
		n.holder.Store(c.state)
		to = append(to, n.name)
	}
	d.pushes++
	d.last = c
	d.say("state #%d swapped in atomically on %s", d.pushes+1, strings.Join(to, ", "))
	return true
}

// request sends one request from client name, each on its own
// connection (as curl does), and returns its outcome.
func (d *demo) request(ctx context.Context, name, method, url string) result {
	c := d.m.clients[name]
	return c.do(ctx, c.once, method, url)
}

// waitFor polls cond for up to 3 s: logs and metrics of a connection are
// written when it closes, just after the client is done with it.
func waitFor(ctx context.Context, cond func() bool) bool {
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func (d *demo) node(name string) *node {
	for _, n := range d.m.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// expectOK checks that a request was answered 200 with a body that
// starts with prefix.
func (d *demo) expectOK(ctx context.Context, who, method, url, prefix string) bool {
	r := d.request(ctx, who, method, url)
	return d.check(r.ok() && strings.HasPrefix(r.body, prefix), fmt.Sprintf("%s: %s %s -> %s", who, method, url, r),
		fmt.Sprintf("200 %q...", prefix))
}

// expectRefused checks that the mesh refused a connection, and that the
// node proxy of the destination logged why.
func (d *demo) expectRefused(ctx context.Context, who, method, url, nodeName, peer string) bool {
	r := d.request(ctx, who, method, url)
	ok := d.check(r.refused(), fmt.Sprintf("%s: %s %s -> %s", who, method, url, r), "the connection refused")
	rec, found := record{}, false
	waitFor(ctx, func() bool {
		rec, found = d.m.tap.find(nodeName, "RBAC rejected", func(a map[string]string) bool {
			return strings.Contains(a["conn"], "("+peer+")")
		})
		return found
	})
	what := nodeName + " logged: " + rec.line("conn", "policy", "reason")
	if !found {
		what = nodeName + " logged no \"RBAC rejected\" line for " + peer
	}
	return d.check(found, what, "an \"RBAC rejected\" line naming "+peer) && ok
}

func (d *demo) step1(ctx context.Context) {
	a, b := d.node("node-a"), d.node("node-b")
	plain := map[string]string{"reporter": "source", "destination_workload": "echo", "connection_security_policy": "unknown"}
	before, _ := a.opened.sum(plain)
	r := d.request(ctx, "sleep", "GET", "http://echo/")
	inbound, _ := b.opened.sum(map[string]string{"reporter": "destination"})
	plainNow := waitFor(ctx, func() bool { n, _ := a.opened.sum(plain); return n > before })
	d.check(r.ok() && plainNow && inbound == 0,
		fmt.Sprintf("before: sleep: GET http://echo/ -> %s, in plaintext (node-a passed it through; node-b saw no tunnel)", r),
		"200 in plaintext: the pods are not in the mesh yet")

	if !d.apply(ctx, "1-ambient.yaml") {
		return
	}
	d.expectOK(ctx, "sleep", "GET", "http://echo/", "echo-")
	rec, found := record{}, false
	waitFor(ctx, func() bool {
		rec, found = d.m.tap.find("node-b", "connection complete", func(a map[string]string) bool {
			return a["direction"] == "inbound" && a["src.identity"] == sleepID
		})
		return found
	})
	d.check(found && rec.attrs["dst.identity"] == "spiffe://cluster.local/ns/default/sa/echo",
		"node-b access log: "+rec.line("src.identity", "dst.identity", "dst.workload", "direction"),
		"an inbound connection from sleep's identity to echo's")
	want := map[string]string{"reporter": "destination", "source_principal": sleepID,
		"destination_principal": "spiffe://cluster.local/ns/default/sa/echo", "connection_security_policy": "mutual_tls"}
	var s *series
	n := 0
	waitFor(ctx, func() bool { n, s = b.opened.sum(want); return n > 0 })
	what := "node-b metrics: no istio_tcp_connections_opened_total series from sleep over mTLS"
	if s != nil {
		what = "node-b metrics: " + s.String("istio_tcp_connections_opened_total", "reporter", "source_principal", "destination_principal", "connection_security_policy")
	}
	d.check(n > 0, what, `connection_security_policy="mutual_tls"`)
}

func (d *demo) step2(ctx context.Context) {
	if !d.apply(ctx, "2-allow-nothing.yaml") {
		return
	}
	d.expectRefused(ctx, "sleep", "GET", "http://echo/", "node-b", sleepID)
}

func (d *demo) step3(ctx context.Context) {
	if !d.apply(ctx, "3-echo-viewer.yaml") {
		return
	}
	d.expectOK(ctx, "sleep", "GET", "http://echo/", "echo-")
	d.expectRefused(ctx, "curl", "GET", "http://echo/", "node-b", "spiffe://cluster.local/ns/default/sa/curl")
}

func (d *demo) step4(ctx context.Context) {
	if !d.apply(ctx, "4-waypoint.yaml") {
		return
	}
	if d.m.wp == nil {
		d.check(false, "no waypoint is running", "the Gateway starts a waypoint")
		return
	}
	if d.expectOK(ctx, "sleep", "GET", "http://echo/", "echo-") {
		ri, found := d.m.wp.findRequest(func(ri *proxy.RequestInfo) bool {
			return ri.Method == "GET" && ri.SrcIdentity.String() == sleepID && ri.Status == 200
		})
		d.check(found, fmt.Sprintf("waypoint: GET from %s -> %d via %s", ri.SrcIdentity, ri.Status, ri.Cluster),
			"the request went through the waypoint")
	}
	forbid := func(who, method string) {
		r := d.request(ctx, who, method, "http://echo/")
		d.check(r.err == nil && r.status == 403 && r.body == "RBAC: access denied",
			fmt.Sprintf("%s: %s http://echo/ -> %s", who, method, r), `403 "RBAC: access denied"`)
	}
	forbid("sleep", "POST")
	forbid("curl", "GET")
	// Around the waypoint, straight to echo's pod: its node admits only
	// the waypoint now.
	d.expectRefused(ctx, "sleep", "GET", "http://127.0.90.10:8080/", "node-b", sleepID)
}

func (d *demo) step5(ctx context.Context) {
	if !d.apply(ctx, "5-purchase-history.yaml") {
		return
	}
	c := d.m.clients["sleep"]
	const workers = 4
	n := d.cfg.Requests
	var next, sent atomic.Int64
	var mu sync.Mutex
	counts := map[string]int{}
	var failures []string
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				r := c.do(ctx, c.pooled, "GET", "http://purchase-history/")
				if ctx.Err() != nil {
					return
				}
				sent.Add(1)
				mu.Lock()
				if r.ok() {
					counts[r.body]++
				} else {
					failures = append(failures, r.String())
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	c.pooled.CloseIdleConnections()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		d.say("interrupted after %d requests", sent.Load())
		return
	}
	d.say("sleep sent %d requests to http://purchase-history/ on %d keep-alive connections in %.2f s; the waypoint routed each one",
		n, workers, elapsed.Seconds())
	what := fmt.Sprintf("%d of %d answered 200", n-len(failures), n)
	if len(failures) > 0 {
		what += "; first failure: " + failures[0]
	}
	d.check(len(failures) == 0, what, "every request answered 200")
	for _, s := range []struct {
		version string
		weight  float64
	}{{"v1", 0.80}, {"v2", 0.19}, {"v3", 0.01}} {
		got := counts["purchase-history-"+s.version]
		share := float64(got) / float64(n)
		tol := routetest.Tolerance(s.weight, n)
		d.check(share >= s.weight-tol && share <= s.weight+tol,
			fmt.Sprintf("%s: %5d (%5.2f %%)  weight %2.0f %% ± %.2f", s.version, got, 100*share, 100*s.weight, 100*tol),
			fmt.Sprintf("within %.2f %% of %.0f %% (five standard deviations, as route test files judge)", 100*tol, 100*s.weight))
	}
	var other []string
	for body, k := range counts {
		if !slices.Contains([]string{"purchase-history-v1", "purchase-history-v2", "purchase-history-v3"}, body) {
			other = append(other, fmt.Sprintf("%q x%d", body, k))
		}
	}
	if len(other) > 0 {
		d.check(false, "unexpected answers: "+strings.Join(other, ", "), "only v1, v2 and v3 answer")
	}
}
