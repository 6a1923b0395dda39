package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/internal/leakcheck"
	"github.com/meshblocks/meshblocks/proxy"
	"github.com/meshblocks/meshblocks/route"
)

// TestWaypointSeedFlow is the seed flow: a Service with a waypoint and the
// policy "GET only from sleep". sleep's GET passes, sleep's POST and
// curl's GET get Envoy's 403.
func TestWaypointSeedFlow(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{})
	sleep, curl := m.client(wpIPSleep, false), m.client(wpIPCurl, false)
	const url = "http://ratings.default.svc.cluster.local/ratings/1"

	r := m.do(t, sleep, "GET", url, nil, "")
	assert.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, "/ratings/1", r.app.Path)
	assert.Equal(t, "ratings.default.svc.cluster.local", r.app.Host)
	assert.NotEmpty(t, r.app.Header.Get("X-Request-Id"), "the waypoint adds x-request-id")

	for _, tc := range []struct {
		name   string
		client *http.Client
		method string
	}{
		{"sleep POST", sleep, "POST"},
		{"curl GET", curl, "GET"},
	} {
		r := m.do(t, tc.client, tc.method, url, nil, "{}")
		assert.Equal(t, http.StatusForbidden, r.status, tc.name)
		assert.Equal(t, "RBAC: access denied", r.body, tc.name)
		assert.Equal(t, "text/plain", r.header.Get("Content-Type"), tc.name)
		assert.Equal(t, "19", r.header.Get("Content-Length"), tc.name)
	}

	// Access log and metric hook.
	allowed := m.log.wait(t, "request complete", func(l map[string]any) bool {
		return l["method"] == "GET" && l["src.identity"] == "spiffe://cluster.local/ns/default/sa/sleep"
	})
	assert.Equal(t, float64(200), allowed["response_code"])
	assert.Equal(t, "-", allowed["response_flags"])
	assert.Equal(t, "ratings.default.svc.cluster.local", allowed["dst.service"])
	assert.Contains(t, []any{"127.81.0.31:8080", "127.81.0.32:8080"}, allowed["upstream_host"])
	assert.Equal(t, "outbound|80||ratings.default.svc.cluster.local", allowed["upstream_cluster"])
	denied := m.log.wait(t, "request complete", func(l map[string]any) bool {
		return l["src.identity"] == "spiffe://cluster.local/ns/default/sa/curl"
	})
	assert.Equal(t, float64(403), denied["response_code"])
	assert.Equal(t, "RBAC", denied["response_flags"])
	assert.Equal(t, "default/ratings-viewer", denied["authz_policy"])
	m.log.wait(t, "RBAC rejected", func(l map[string]any) bool {
		return strings.HasPrefix(l["conn"].(string), "127.81.0.3(spiffe://cluster.local/ns/default/sa/curl)->127.81.10.8:80")
	})

	info := m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.Method == "POST" })
	labels := map[string]string{}
	for _, l := range info.Labels() {
		labels[l.Name] = l.Value
	}
	assert.Equal(t, "waypoint", labels["reporter"])
	assert.Equal(t, "spiffe://cluster.local/ns/default/sa/sleep", labels["source_principal"])
	assert.Equal(t, "sleep", labels["source_workload"])
	assert.Equal(t, "ratings.default.svc.cluster.local", labels["destination_service"])
	assert.Equal(t, "ratings", labels["destination_service_name"])
	assert.Equal(t, "403", labels["response_code"])
	assert.Equal(t, "RBAC", labels["response_flags"])
	assert.Equal(t, "mutual_tls", labels["connection_security_policy"])
	ok := m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.Method == "GET" && ri.Status == 200 })
	assert.Equal(t, "spiffe://cluster.local/ns/default/sa/echo", ok.DstIdentity.String())
	assert.Equal(t, 1, ok.Attempts)
}

// wpShares sends n requests from sleep with c workers and counts the
// answers by key.
func wpShares(t *testing.T, m *wpMesh, url string, n int, key func(appSeen) string) map[string]int {
	c := m.client(wpIPSleep, false)
	counts := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				r, err := m.try(c, "GET", url, nil, "")
				if err == nil && r.status != 200 {
					err = fmt.Errorf("status %d: %s", r.status, r.body)
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
				mu.Lock()
				counts[key(r.app)]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return counts
}

// wpJudge checks shares as route's tests do (the Gateway API conformance
// bound of 0.05, tightened to five standard deviations for small
// shares); a share above zero must be seen at least once.
func wpJudge(t *testing.T, counts map[string]int, want map[string]float64) {
	t.Helper()
	n := 0
	for _, c := range counts {
		n += c
	}
	for k := range counts {
		_, ok := want[k]
		assert.True(t, ok, "unexpected key %q", k)
	}
	for k, p := range want {
		got := float64(counts[k]) / float64(n)
		tol := math.Min(0.05, 5*math.Sqrt(p*(1-p)/float64(n))+1/float64(n))
		assert.InDelta(t, p, got, tol, "%s: %d of %d", k, counts[k], n)
		if p > 0 {
			assert.Positive(t, counts[k], k)
		}
	}
}

// TestWaypointWeightedSubsets: a VirtualService splits purchase-history
// 80/19/1 over subsets v1/v2/v3 (DestinationRule, by version label).
func TestWaypointWeightedSubsets(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{quiet: true})
	counts := wpShares(t, m, "http://purchase-history.default.svc.cluster.local/history", 2000,
		func(a appSeen) string { return a.Version })
	wpJudge(t, counts, map[string]float64{"v1": 0.80, "v2": 0.19, "v3": 0.01})
}

// TestWaypointHTTPRouteSplit: an HTTPRoute on reviews sends 90/10 to the
// reviews-v1 and reviews-v2 Services.
func TestWaypointHTTPRouteSplit(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{quiet: true})
	counts := wpShares(t, m, "http://reviews.default.svc.cluster.local/reviews/0", 1000,
		func(a appSeen) string { return a.Name })
	wpJudge(t, counts, map[string]float64{"reviews-v1": 0.9, "reviews-v2": 0.1})
}

// TestWaypointFilters runs the route actions of the echo VirtualService
// (testdata/waypoint/istio.yaml) end to end.
func TestWaypointFilters(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{})
	c := m.client(wpIPSleep, false)
	const echo = "http://echo.default.svc.cluster.local"
	flags := func(t *testing.T, path string) []string {
		t.Helper()
		return m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.Path == path }).Flags
	}

	t.Run("header operations", func(t *testing.T) {
		r := m.do(t, c, "GET", echo+"/headers", http.Header{"X-Added": {"0"}, "X-Remove": {"gone"}, "X-Set": {"no"}}, "")
		require.Equal(t, 200, r.status)
		assert.Equal(t, []string{"yes"}, r.app.Header["X-Set"])
		assert.Equal(t, []string{"0", "1"}, r.app.Header["X-Added"])
		assert.Empty(t, r.app.Header.Get("X-Remove"))
		assert.Equal(t, "resp", r.header.Get("X-Resp"))
		assert.Empty(t, r.header.Get("X-App-Secret"), "removed from the response")
	})
	t.Run("prefix rewrite keeps the query", func(t *testing.T) {
		r := m.do(t, c, "GET", echo+"/old/thing?q=1", nil, "")
		require.Equal(t, 200, r.status)
		assert.Equal(t, "/new/thing?q=1", r.app.Path)
	})
	t.Run("regex rewrite", func(t *testing.T) {
		r := m.do(t, c, "GET", echo+"/regex/a/b", nil, "")
		require.Equal(t, 200, r.status)
		assert.Equal(t, "/swapped/b/a", r.app.Path)
	})
	t.Run("path normalization before routing", func(t *testing.T) {
		r := m.do(t, c, "GET", echo+"/x/../old/%74hing", nil, "")
		require.Equal(t, 200, r.status)
		assert.Equal(t, "/new/thing", r.app.Path)
	})
	t.Run("redirect", func(t *testing.T) {
		r := m.do(t, c, "GET", echo+"/redirect", nil, "")
		assert.Equal(t, http.StatusMovedPermanently, r.status)
		assert.Equal(t, "http://elsewhere.example/moved", r.header.Get("Location"))
	})
	t.Run("direct response", func(t *testing.T) {
		r := m.do(t, c, "GET", echo+"/direct", nil, "")
		assert.Equal(t, http.StatusTeapot, r.status)
		assert.Equal(t, "short and stout", r.body)
		assert.Equal(t, "1", r.header.Get("X-Direct"))
	})
	t.Run("timeout", func(t *testing.T) {
		r := m.do(t, c, "GET", echo+"/slow", nil, "")
		assert.Equal(t, http.StatusGatewayTimeout, r.status)
		assert.Equal(t, "upstream request timeout", r.body)
		assert.Equal(t, []string{proxy.FlagTimeout}, flags(t, "/slow"))
	})
	t.Run("retry on 503 succeeds", func(t *testing.T) {
		r := m.do(t, c, "POST", echo+"/flaky", http.Header{"X-Key": {"flaky-1"}}, "payload")
		assert.Equal(t, 200, r.status)
		assert.Equal(t, "payload", r.app.Body, "the body is replayed")
		info := m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.Path == "/flaky" })
		assert.Equal(t, 3, info.Attempts)
		assert.Empty(t, info.Flags)
	})
	t.Run("no retry without a policy for 503", func(t *testing.T) {
		r := m.do(t, c, "GET", echo+"/fragile", http.Header{"X-Key": {"fragile-1"}}, "")
		assert.Equal(t, http.StatusServiceUnavailable, r.status)
		assert.Equal(t, "app unavailable", r.body)
		assert.Equal(t, 1, m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.Path == "/fragile" }).Attempts)
	})
	t.Run("fault abort", func(t *testing.T) {
		before := len(m.apps["echo-a"].requests()) + len(m.apps["echo-b"].requests())
		r := m.do(t, c, "GET", echo+"/abort", nil, "")
		assert.Equal(t, http.StatusServiceUnavailable, r.status)
		assert.Equal(t, "fault filter abort", r.body)
		assert.Equal(t, []string{proxy.FlagFaultAbort}, flags(t, "/abort"))
		assert.Equal(t, before, len(m.apps["echo-a"].requests())+len(m.apps["echo-b"].requests()), "an abort never reaches an endpoint")
	})
	t.Run("fault delay", func(t *testing.T) {
		r := m.do(t, c, "GET", echo+"/delay", nil, "")
		assert.Equal(t, 200, r.status)
		assert.Equal(t, []string{proxy.FlagDelayInjected}, flags(t, "/delay"))
	})
	t.Run("mirror", func(t *testing.T) {
		r := m.do(t, c, "POST", echo+"/mirror?m=1", nil, "copy me")
		assert.Equal(t, 200, r.status)
		assert.Contains(t, []string{"echo-a", "echo-b"}, r.app.Name)
		deadline := time.Now().Add(5 * time.Second)
		for len(m.apps["mirror"].requests()) == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		seen := m.apps["mirror"].requests()
		require.Len(t, seen, 1)
		assert.Equal(t, "/mirror?m=1", seen[0].Path)
		assert.Equal(t, "copy me", seen[0].Body)
		assert.Equal(t, "echo.default.svc.cluster.local", seen[0].Host, "mirrors keep the Host")
	})
	t.Run("no healthy upstream", func(t *testing.T) {
		r := m.do(t, c, "GET", "http://empty.default.svc.cluster.local/", nil, "")
		assert.Equal(t, http.StatusServiceUnavailable, r.status)
		assert.Equal(t, "no healthy upstream", r.body)
		info := m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.DstService == "empty.default.svc.cluster.local" })
		assert.Equal(t, []string{proxy.FlagNoHealthy}, info.Flags)
	})
	t.Run("missing backend is 500 for Gateway API", func(t *testing.T) {
		r := m.do(t, c, "GET", "http://broken.default.svc.cluster.local/api/x", nil, "")
		assert.Equal(t, http.StatusInternalServerError, r.status)
	})
	t.Run("no route is 404", func(t *testing.T) {
		r := m.do(t, c, "GET", "http://broken.default.svc.cluster.local/other", nil, "")
		assert.Equal(t, http.StatusNotFound, r.status)
	})
}

// TestWaypointHTTP2: an HTTP/2 prior-knowledge client; the upstream
// protocol follows the port's appProtocol, or the downstream protocol on
// a sniffed port.
func TestWaypointHTTP2(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{})
	h1, h2 := m.client(wpIPSleep, false), m.client(wpIPSleep, true)
	for _, tc := range []struct {
		name     string
		client   *http.Client
		url      string
		up, down string
	}{
		{"sniffed port follows h2", h2, "http://echo.default.svc.cluster.local/", "HTTP/2.0", "HTTP/2.0"},
		{"sniffed port follows h1", h1, "http://echo.default.svc.cluster.local/", "HTTP/1.1", "HTTP/1.1"},
		{"http2 port upgrades h1", h1, "http://echo-h2.default.svc.cluster.local/", "HTTP/2.0", "HTTP/1.1"},
		{"http port downgrades h2", h2, "http://ratings.default.svc.cluster.local/", "HTTP/1.1", "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := m.do(t, tc.client, "GET", tc.url, nil, "")
			require.Equal(t, 200, r.status, r.body)
			assert.Equal(t, tc.up, r.app.Proto)
		})
	}
	// Many concurrent streams on one HTTP/2 connection, each authorized
	// and routed on its own.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := m.try(h2, "GET", fmt.Sprintf("http://echo.default.svc.cluster.local/old/%d", i), nil, "")
			if assert.NoError(t, err) {
				assert.Equal(t, fmt.Sprintf("/new/%d", i), r.app.Path)
			}
		}()
	}
	wg.Wait()
	info := m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.Protocol == "HTTP/2.0" })
	assert.Equal(t, "HTTP/2.0", info.Protocol)
	// A denied HTTP/2 request gets the same 403; a denied gRPC call a
	// trailers-only PERMISSION_DENIED.
	curl := m.client(wpIPCurl, true)
	r := m.do(t, curl, "GET", "http://ratings.default.svc.cluster.local/", nil, "")
	assert.Equal(t, http.StatusForbidden, r.status)
	assert.Equal(t, "RBAC: access denied", r.body)
	r = m.do(t, curl, "POST", "http://ratings.default.svc.cluster.local/ratings.Ratings/Get",
		http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}}, "\x00\x00\x00\x00\x00")
	assert.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, "7", r.header.Get("Grpc-Status"))
	assert.Equal(t, "RBAC: access denied", r.header.Get("Grpc-Message"))
	assert.Empty(t, r.body)
	info = m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.GRPC })
	assert.Equal(t, "7", info.GRPCStatus)
	assert.Equal(t, []string{proxy.FlagRBAC}, info.Flags)
}

// TestWaypointGatewayPolicyAndWorkload: a policy attached to the waypoint
// itself applies to Services and to workloads addressed directly; a
// workload with its own waypoint is reached by its address.
func TestWaypointGatewayPolicyAndWorkload(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{})
	c := m.client(wpIPSleep, false)
	block := http.Header{"X-Block": {"yes"}}

	r := m.do(t, c, "GET", "http://127.81.0.51:8080/solo?x=1", nil, "")
	require.Equal(t, 200, r.status, r.body)
	assert.Equal(t, "solo", r.app.Name)
	assert.Equal(t, "/solo?x=1", r.app.Path)
	assert.Equal(t, "127.81.0.51:8080", r.app.Host)
	info := m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.Path == "/solo?x=1" })
	assert.Empty(t, info.DstService)
	assert.Equal(t, "spiffe://cluster.local/ns/default/sa/solo", info.DstIdentity.String())

	for _, url := range []string{"http://127.81.0.51:8080/", "http://echo.default.svc.cluster.local/"} {
		r := m.do(t, c, "GET", url, block, "")
		assert.Equal(t, http.StatusForbidden, r.status, url)
		assert.Equal(t, "RBAC: access denied", r.body, url)
	}
	denied := m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.Status == 403 })
	assert.Equal(t, "default/waypoint-block", denied.Policy)
}

// TestWaypointCustom: a CUSTOM policy asks the ExtAuthz hook for its
// provider; without the hook's approval the request is denied (UAEX). A
// CUSTOM policy naming an unknown provider denies what it matches.
func TestWaypointCustom(t *testing.T) {
	leakcheck.Check(t)
	var asked []string
	var mu sync.Mutex
	m := newWPMesh(t, wpMeshOptions{extAuthz: func(_ context.Context, provider string, r *http.Request) (bool, error) {
		mu.Lock()
		asked = append(asked, provider+" "+r.URL.Path)
		mu.Unlock()
		if r.Header.Get("X-Ext") == "fail" {
			return true, errors.New("ext_authz unreachable")
		}
		return r.Header.Get("X-Ext") == "allow", nil
	}})
	rules := m.rules
	rules.Authz.Providers = []string{"ext"}
	// One provider per Service: with two, Istio turns every CUSTOM rule
	// into a deny rule (authz.Config.MultipleCustomProviders).
	custom := func(name, provider, svc, path string) authz.Policy {
		return authz.Policy{Namespace: "default", Name: name, Action: authz.Custom, Provider: provider,
			TargetRefs: []authz.TargetRef{{Kind: "Service", Name: svc}},
			Rules:      []authz.Rule{{To: []*authz.Operation{{Paths: []string{path}}}}}}
	}
	rules.Policies = append(slices.Clone(rules.Policies),
		custom("ext", "ext", "echo", "/ext/*"), custom("bad", "nope", "ratings", "/bad/*"))
	require.NoError(t, m.wp.SetRules(rules))
	c := m.client(wpIPSleep, false)
	const echo = "http://echo.default.svc.cluster.local"

	assert.Equal(t, 200, m.do(t, c, "GET", echo+"/ext/a", http.Header{"X-Ext": {"allow"}}, "").status)
	r := m.do(t, c, "GET", echo+"/ext/b", nil, "")
	assert.Equal(t, http.StatusForbidden, r.status)
	assert.Empty(t, r.body)
	assert.Equal(t, []string{proxy.FlagExtAuthzDenied}, m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.Path == "/ext/b" }).Flags)
	assert.Equal(t, http.StatusForbidden, m.do(t, c, "GET", echo+"/ext/c", http.Header{"X-Ext": {"fail"}}, "").status, "an error denies")
	assert.Equal(t, 200, m.do(t, c, "GET", echo+"/other", nil, "").status, "not matched: not asked")
	assert.Equal(t, 200, m.do(t, c, "GET", "http://ratings.default.svc.cluster.local/ok", nil, "").status)
	r = m.do(t, c, "GET", "http://ratings.default.svc.cluster.local/bad/x", http.Header{"X-Ext": {"allow"}}, "")
	assert.Equal(t, http.StatusForbidden, r.status)
	assert.Equal(t, "RBAC: access denied", r.body)
	mu.Lock()
	assert.Equal(t, []string{"ext /ext/a", "ext /ext/b", "ext /ext/c"}, asked)
	mu.Unlock()
}

// TestWaypointUpgrade: a protocol upgrade (as WebSocket does) goes
// through the waypoint, and the tunnel then carries the new protocol.
func TestWaypointUpgrade(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.dial(ctx, wpIPSleep, netip.AddrPortFrom(m.vips["echo.default.svc.cluster.local"], 80))
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: echo.default.svc.cluster.local\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	assert.Equal(t, "echo", resp.Header.Get("Upgrade"))
	_, err = io.WriteString(c, "ping\n")
	require.NoError(t, err)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "ping\n", line)
	c.Close()
	info := m.waitInfo(t, func(ri *proxy.RequestInfo) bool { return ri.Path == "/chat" })
	assert.Equal(t, http.StatusSwitchingProtocols, info.Status)
	assert.Empty(t, info.Flags)
}

// TestWaypointTCP: a tcp port is authorized at L4 and relayed; an
// undeclared port whose first bytes are not HTTP is relayed too.
func TestWaypointTCP(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{})
	vip := m.vips["tcp-echo.default.svc.cluster.local"]
	roundTrip := func(src netip.Addr, port uint16, msg string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := m.dial(ctx, src, netip.AddrPortFrom(vip, port))
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			return "", err
		}
		c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	got, err := roundTrip(wpIPSleep, 9000, "hello over tcp")
	require.NoError(t, err)
	assert.Equal(t, "hello over tcp", got)

	_, err = roundTrip(wpIPCurl, 9000, "let me in")
	assert.Error(t, err, "curl is not allowed on tcp-echo")
	m.log.wait(t, "RBAC rejected", func(l map[string]any) bool {
		return strings.Contains(l["conn"].(string), "sa/curl)->127.81.10.7:9000")
	})

	got, err = roundTrip(wpIPSleep, 9001, "ping\n")
	require.NoError(t, err)
	assert.Equal(t, "ping\n", got)

	l := m.log.wait(t, "connection complete", func(l map[string]any) bool {
		return l["dst.hbone_addr"] == "127.81.10.7:9000" && l["error"] == nil
	})
	assert.Equal(t, "127.81.0.41:9000", l["dst.addr"])
	assert.Equal(t, "tcp-echo.default.svc.cluster.local", l["dst.service"])
	assert.Equal(t, float64(len("hello over tcp")), l["bytes_sent"])
}

// TestWaypointRefusesUnservedDestination: a tunnel for a Service that
// does not use this waypoint is refused.
func TestWaypointRefusesUnservedDestination(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{})
	d := &hbone.Dialer{Source: m.ids.Source(m.ca.ID("ns/default/sa/sleep")), Expected: []spiffeid.ID{m.ca.ID("ns/default/sa/waypoint")}}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, authority := range []string{"127.81.10.3:80", "127.81.99.1:80", "127.81.10.5:81"} {
		_, err := d.Dial(ctx, hbone.Route{Address: "127.81.0.4:15008", Authority: authority})
		var ce *hbone.ConnectError
		require.ErrorAs(t, err, &ce, authority)
		assert.Equal(t, http.StatusServiceUnavailable, ce.StatusCode, authority)
	}
}

// TestWaypointSetRules: rules swap atomically; routes that do not build
// leave the previous rules in force.
func TestWaypointSetRules(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{})
	curl := m.client(wpIPCurl, false)
	const url = "http://ratings.default.svc.cluster.local/"
	require.Equal(t, 403, m.do(t, curl, "GET", url, nil, "").status)

	bad := m.rules
	bad.Policies = nil
	bad.Routes = append(bad.Routes, route.RouteConfig{Kind: "VirtualService", Name: "bad", Namespace: "default",
		Hosts: []string{"ratings.default.svc.cluster.local"},
		HTTP:  []route.HTTPRoute{{Matches: []route.Match{{PathKind: route.PathRegex, Path: "(("}}}}})
	err := m.wp.SetRules(bad)
	require.ErrorIs(t, err, proxy.ErrRulesRejected)
	require.ErrorIs(t, err, route.ErrInvalidConfig)
	assert.Equal(t, 403, m.do(t, curl, "GET", url, nil, "").status, "the previous policies stay")

	open := m.rules
	open.Policies = nil
	require.NoError(t, m.wp.SetRules(open))
	assert.Equal(t, 200, m.do(t, curl, "GET", url, nil, "").status)
}

// TestWaypointShutdownDrains: Shutdown lets a request in flight finish,
// then Serve returns ErrWaypointClosed and no tunnel is accepted.
func TestWaypointShutdownDrains(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{})
	c := m.client(wpIPSleep, false)
	// Warm up: an idle keep-alive connection must not hold Shutdown.
	require.Equal(t, 200, m.do(t, c, "GET", "http://echo.default.svc.cluster.local/", nil, "").status)

	res := make(chan wpResp, 1)
	go func() {
		r, err := m.try(c, "GET", "http://echo.default.svc.cluster.local/hold?ms=300", nil, "")
		if err != nil {
			r.body = err.Error()
		}
		res <- r
	}()
	// Wait until the app has the request.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n := 0
		for _, a := range []string{"echo-a", "echo-b"} {
			for _, s := range m.apps[a].requests() {
				if strings.HasPrefix(s.Path, "/hold") {
					n++
				}
			}
		}
		if n > 0 {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, m.wp.Shutdown(ctx))
	r := <-res
	assert.Equal(t, 200, r.status, r.body)
	assert.True(t, errors.Is(<-m.wpDone, proxy.ErrWaypointClosed))
	m.wpDone <- proxy.ErrWaypointClosed // for the mesh's own cleanup

	_, err := m.try(m.client(wpIPSleep, false), "GET", "http://echo.default.svc.cluster.local/", nil, "")
	assert.Error(t, err, "the waypoint no longer accepts tunnels")
}

// TestWaypointShutdownForcesRelays: a TCP relay still open when
// Shutdown's context ends is closed, and Shutdown reports the deadline.
func TestWaypointShutdownForcesRelays(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.dial(ctx, wpIPSleep, netip.AddrPortFrom(m.vips["tcp-echo.default.svc.cluster.local"], 9000))
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(c, "open")
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)

	sctx, scancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer scancel()
	assert.ErrorIs(t, m.wp.Shutdown(sctx), context.DeadlineExceeded)
	_, err = io.ReadAll(c) // the relay was closed: EOF or reset, not the 10 s deadline
	if err != nil {
		var ne net.Error
		assert.False(t, errors.As(err, &ne) && ne.Timeout(), "relay not closed: %v", err)
	}
	assert.True(t, errors.Is(<-m.wpDone, proxy.ErrWaypointClosed))
	m.wpDone <- proxy.ErrWaypointClosed
}

// TestWaypointStateSwap: a State stored in the holder is used by the next
// request; here purchase-history loses its v2 and v3 endpoints, and the
// subsets that selected them answer 503.
func TestWaypointStateSwap(t *testing.T) {
	leakcheck.Check(t)
	m := newWPMesh(t, wpMeshOptions{quiet: true})
	st := m.state.Load()
	var ws []proxy.Workload
	for _, w := range st.Workloads() {
		if w.Name != "purchase-history-v2" && w.Name != "purchase-history-v3" {
			ws = append(ws, w)
		}
	}
	next, err := proxy.NewState(ws, st.Services())
	require.NoError(t, err)
	m.state.Store(next)
	c := m.client(wpIPSleep, false)
	codes := map[string]int{}
	for range 200 {
		r := m.do(t, c, "GET", "http://purchase-history.default.svc.cluster.local/", nil, "")
		switch r.status {
		case 200:
			codes[r.app.Version]++
		default:
			codes[fmt.Sprint(r.status, " ", r.body)]++
		}
	}
	assert.Greater(t, codes["v1"], 120)
	assert.Greater(t, codes["503 no healthy upstream"], 10)
	assert.Len(t, codes, 2, "%v", codes)
}
