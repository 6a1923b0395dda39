package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshblocks/meshblocks/route"
)

// Bodies of the waypoint's local replies, as Envoy writes them.
const (
	bodyRBACDenied      = "RBAC: access denied"
	bodyNoHealthy       = "no healthy upstream"
	bodyFaultAbort      = "fault filter abort"
	bodyUpstreamTimeout = "upstream request timeout"
	bodyConnectFailure  = "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
	bodyUpstreamReset   = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
)

// Envoy response flags the waypoint reports (RequestInfo.Flags).
const (
	FlagRBAC            = "RBAC" // denied by an authorization policy
	FlagExtAuthzDenied  = "UAEX" // denied by the CUSTOM (ext_authz) provider
	FlagNoRoute         = "NR"   // no route matched (404)
	FlagNoCluster       = "NC"   // the route's destination does not exist
	FlagNoHealthy       = "UH"   // no healthy endpoint (503)
	FlagConnectFailure  = "UF"   // connecting to the endpoint failed
	FlagUpstreamReset   = "UR"   // the endpoint reset or closed the stream
	FlagTimeout         = "UT"   // route or per-try timeout (504)
	FlagRetryLimit      = "URX"  // retries exhausted
	FlagDelayInjected   = "DI"   // fault delay
	FlagFaultAbort      = "FI"   // fault abort
	FlagDownstreamClose = "DC"   // the client went away
)

// RequestInfo describes one HTTP request a waypoint served, for logs and
// metrics (Envoy's access log fields, Istio's request metric labels).
type RequestInfo struct {
	Start    time.Time
	Duration time.Duration
	// Protocol is the downstream protocol: "HTTP/1.1" or "HTTP/2.0".
	Protocol string
	// Method, Path (normalized, with query) and Authority as received.
	Method, Path, Authority string
	RequestID, UserAgent    string
	// GRPC reports a gRPC request (content-type application/grpc).
	GRPC bool
	// Status is the status sent downstream; 0 when none was (the client
	// went away). GRPCStatus is the grpc-status sent, if any.
	Status     int
	GRPCStatus string
	// Flags are Envoy's response flags (FlagRBAC, ...), in order.
	Flags []string

	SrcAddr     netip.AddrPort
	SrcWorkload *Workload
	SrcIdentity spiffeid.ID
	// DstService is the hostname of the Service the request was
	// addressed to (empty for a workload addressed directly), with its
	// name and namespace.
	DstService, DstServiceName, DstServiceNamespace string
	// Upstream is the endpoint of the last attempt, DstWorkload and
	// DstIdentity its workload.
	Upstream    netip.AddrPort
	DstWorkload *Workload
	DstIdentity spiffeid.ID
	// Cluster names the destination as Envoy does:
	// outbound|<port>|<subset>|<host>.
	Cluster string
	// Route is the route rule that matched: "<Kind> <ns>/<name> <field>".
	Route string
	// Policy is the authorization policy that denied the request
	// ("namespace/name"): the DENY policy that matched, or for a default
	// deny the first ALLOW policy that applied but did not match.
	Policy string
	// Attempts counts the upstream tries (retries included).
	Attempts int
	// BytesReceived counts request body bytes, BytesSent response body
	// bytes.
	BytesReceived, BytesSent int64
	// Err is why the request failed upstream, if it did.
	Err error
}

// FlagString returns the response flags comma-joined, or "-" for none.
func (ri *RequestInfo) FlagString() string {
	if len(ri.Flags) == 0 {
		return "-"
	}
	return strings.Join(ri.Flags, ",")
}

func (ri *RequestInfo) addFlag(f string) {
	for _, have := range ri.Flags {
		if have == f {
			return
		}
	}
	ri.Flags = append(ri.Flags, f)
}

// MetricLabel is one label of a metric series.
type MetricLabel struct{ Name, Value string }

// Labels returns the labels of Istio's request metrics
// (istio_requests_total, istio_request_duration_milliseconds, ...) for
// the request, as a waypoint reports them (reporter "waypoint"). Values
// that are not known are "unknown".
func (ri *RequestInfo) Labels() []MetricLabel {
	or := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	var sw, dw Workload
	if ri.SrcWorkload != nil {
		sw = *ri.SrcWorkload
	}
	if ri.DstWorkload != nil {
		dw = *ri.DstWorkload
	}
	id := func(i spiffeid.ID) string {
		if i.IsZero() {
			return ""
		}
		return i.String()
	}
	proto := "http"
	if ri.GRPC {
		proto = "grpc"
	}
	grpc := ri.GRPCStatus
	if grpc == "" && !ri.GRPC {
		grpc = "-"
	}
	return []MetricLabel{
		{"reporter", "waypoint"},
		{"source_workload", or(cmpString(sw.WorkloadName, sw.Name))},
		{"source_workload_namespace", or(sw.Namespace)},
		{"source_principal", or(id(ri.SrcIdentity))},
		{"source_app", or(cmpString(sw.CanonicalName, sw.Labels["app"]))},
		{"source_version", or(cmpString(sw.CanonicalRevision, sw.Labels["version"]))},
		{"source_canonical_service", or(cmpString(sw.CanonicalName, sw.Labels["app"]))},
		{"source_canonical_revision", or(cmpString(sw.CanonicalRevision, sw.Labels["version"]))},
		{"source_cluster", or(sw.ClusterID)},
		{"destination_workload", or(cmpString(dw.WorkloadName, dw.Name))},
		{"destination_workload_namespace", or(dw.Namespace)},
		{"destination_principal", or(id(ri.DstIdentity))},
		{"destination_app", or(cmpString(dw.CanonicalName, dw.Labels["app"]))},
		{"destination_version", or(cmpString(dw.CanonicalRevision, dw.Labels["version"]))},
		{"destination_service", or(ri.DstService)},
		{"destination_service_name", or(ri.DstServiceName)},
		{"destination_service_namespace", or(ri.DstServiceNamespace)},
		{"destination_canonical_service", or(cmpString(dw.CanonicalName, dw.Labels["app"]))},
		{"destination_canonical_revision", or(cmpString(dw.CanonicalRevision, dw.Labels["version"]))},
		{"destination_cluster", or(dw.ClusterID)},
		{"request_protocol", proto},
		{"response_code", strconv.Itoa(ri.Status)},
		{"grpc_response_status", or(grpc)},
		{"response_flags", ri.FlagString()},
		{"connection_security_policy", "mutual_tls"},
	}
}

// wpRequest carries one request through the reverse proxy.
type wpRequest struct {
	snap *wpSnapshot
	st   *wpStream
	info *RequestInfo
	// down is the downstream request's own context (before the route
	// timeout).
	down context.Context

	rreq route.Request
	res  route.Result

	target    netip.AddrPort // endpoint of the current attempt
	port      int            // the destination's Service port
	cluster   *route.Cluster // nil for a workload addressed directly
	tried     []netip.AddrPort
	h2        bool
	path      string // upstream path with query
	authority string
	timeout   time.Duration
	retry     route.Retry
	// upgraded is set when the upstream switched protocols (101): the
	// reverse proxy then answers on the hijacked connection.
	upgraded bool
}

type requestKey struct{}

func requestFrom(ctx context.Context) *wpRequest {
	q, _ := ctx.Value(requestKey{}).(*wpRequest)
	return q
}

// ServeHTTP serves one request of a tunnel: path normalization, L7
// authorization, fault injection, routing, and the upstream request with
// timeouts, retries and mirrors. It only serves requests that arrived
// through the waypoint's own tunnels.
func (w *Waypoint) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	st := streamFrom(r.Context())
	if st == nil {
		http.Error(rw, "proxy: not a waypoint tunnel", http.StatusInternalServerError)
		return
	}
	info := &RequestInfo{
		Start: time.Now(), Protocol: r.Proto, Method: r.Method, Authority: r.Host,
		UserAgent: r.UserAgent(), GRPC: isGRPC(r),
		SrcAddr: st.src, SrcWorkload: st.srcWorkload, SrcIdentity: st.peer,
	}
	if st.dst.svc {
		info.DstService, info.DstServiceName, info.DstServiceNamespace = st.dst.host, st.dst.name, st.dst.ns
	}
	if info.RequestID = r.Header.Get("X-Request-Id"); info.RequestID == "" {
		info.RequestID = newRequestID()
		r.Header.Set("X-Request-Id", info.RequestID)
	}
	lw := &wpWriter{ResponseWriter: rw}
	var body *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingBody{ReadCloser: r.Body}
		r.Body = body
	}
	q := &wpRequest{snap: w.snapshot(), st: st, info: info, down: r.Context()}
	defer func() {
		v := recover()
		if v == http.ErrAbortHandler {
			// The response was cut short (upstream reset or timeout in
			// the middle of the body, or the client went away).
			switch {
			case q.down.Err() != nil:
				info.addFlag(FlagDownstreamClose)
			case r.Context().Err() != nil:
				info.addFlag(FlagTimeout)
			default:
				info.addFlag(FlagUpstreamReset)
			}
		}
		if body != nil {
			info.BytesReceived = body.n.Load()
		}
		w.requestComplete(q, lw)
		if v != nil {
			panic(v)
		}
	}()
	w.serveRequest(lw, r, q)
}

// requestTarget returns the request's path and query as received.
func requestTarget(r *http.Request) string {
	if strings.HasPrefix(r.RequestURI, "/") || r.RequestURI == "*" {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}

func (w *Waypoint) serveRequest(rw *wpWriter, r *http.Request, q *wpRequest) {
	st, info := q.st, q.info
	rawPath, query := splitPathQuery(requestTarget(r))
	path, ok := rawPath, rawPath == "*"
	if !ok {
		path, ok = normalizePath(rawPath)
	}
	if !ok {
		w.localReply(rw, q, http.StatusBadRequest, -1, "Bad Request", "", false)
		return
	}
	info.Path = path + query

	// L7 authorization.
	areq := st.authzRequest()
	areq.Method, areq.Path, areq.Host = r.Method, info.Path, r.Host
	areq.Headers = make(map[string]string, len(r.Header))
	for k, v := range r.Header {
		areq.Headers[strings.ToLower(k)] = strings.Join(v, ",")
	}
	d := q.snap.rules.l7.Evaluate(&areq)
	if d.Allowed && d.Custom != "" {
		allowed := false
		if w.cfg.ExtAuthz != nil {
			var err error
			allowed, err = w.cfg.ExtAuthz(r.Context(), d.Custom, r)
			allowed = allowed && err == nil
		}
		if !allowed {
			info.Policy = "ext_authz:" + d.Custom
			w.localReply(rw, q, http.StatusForbidden, -1, "", FlagExtAuthzDenied, false)
			return
		}
	}
	if !d.Allowed {
		if d.Policy != nil {
			info.Policy = d.Policy.Namespace + "/" + d.Policy.Name
		} else if ps, _ := d.Unmatched(); len(ps) > 0 {
			info.Policy = ps[0].Namespace + "/" + ps[0].Name
		}
		w.rbacRejected(st, d)
		w.localReply(rw, q, http.StatusForbidden, -1, bodyRBACDenied, FlagRBAC, false)
		return
	}

	// Routing.
	q.h2 = r.ProtoMajor == 2
	if !st.dst.svc {
		// A workload addressed directly: no Service routes (route.md
		// §1.3), the mesh default retries.
		q.target, q.port = st.dst.addr, int(st.dst.addr.Port())
		q.path, q.authority, q.retry = info.Path, r.Host, route.DefaultRetry()
		q.info.Cluster = "inbound-pod|" + strconv.Itoa(int(st.dst.addr.Port())) + "||" + st.dst.addr.Addr().String()
		w.forward(rw, r, q)
		return
	}
	q.rreq = route.Request{
		Host: st.dst.host, Port: int(st.dst.addr.Port()), Method: r.Method, Scheme: "http",
		Path: info.Path, Authority: r.Host, Header: r.Header, SourceIP: st.src.Addr().String(),
	}
	if st.dst.proto == protoGRPC {
		q.rreq.Protocol = route.GRPC
	}
	q.res = q.snap.table.Pick(&q.rreq, nil)
	defer q.res.Done()
	res := &q.res
	if res.Rule != nil {
		info.Route = res.Rule.Origin + " " + res.Rule.Route.Field
	}
	if res.Delay > 0 {
		info.addFlag(FlagDelayInjected)
		t := time.NewTimer(res.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			info.addFlag(FlagDownstreamClose)
			return
		}
	}
	switch res.Kind {
	case route.Local:
		w.routeLocal(rw, q)
		return
	case route.RedirectResponse:
		h := rw.Header()
		h.Set("Location", res.Location(&q.rreq))
		res.ApplyResponseHeaders(h)
		rw.WriteHeader(res.Status)
		return
	case route.Refused:
		w.localReply(rw, q, http.StatusServiceUnavailable, -1, bodyNoHealthy, FlagNoHealthy, false)
		return
	}
	if res.Endpoint == nil || res.Cluster == nil {
		w.localReply(rw, q, http.StatusServiceUnavailable, -1, bodyNoHealthy, FlagNoHealthy, true)
		return
	}
	c := res.Cluster
	target, err := endpointTarget(res.Endpoint, c.Port)
	if err != nil {
		w.localReply(rw, q, http.StatusServiceUnavailable, -1, bodyNoHealthy, FlagNoHealthy, true)
		return
	}
	q.target, q.port, q.cluster = target, c.Port, c
	info.Cluster = "outbound|" + strconv.Itoa(c.Port) + "|" + c.Subset + "|" + c.Host
	q.path = res.RewritePath(info.Path)
	q.authority = res.Authority(&q.rreq)
	q.retry = route.DefaultRetry()
	if res.Rule != nil {
		q.timeout = res.Rule.Route.Timeout
		if res.Rule.Route.Retry != nil {
			q.retry = *res.Rule.Route.Retry
		}
	}
	switch q.snap.proto(c.Host, uint16(c.Port)) {
	case protoHTTP2, protoGRPC:
		q.h2 = true
	case protoHTTP:
		q.h2 = false
	}
	if res.Mirrors != 0 && res.Rule != nil {
		w.mirror(r, q)
	}
	w.forward(rw, r, q)
}

// forward sends the request upstream through the reverse proxy, bounded
// by the route timeout.
func (w *Waypoint) forward(rw *wpWriter, r *http.Request, q *wpRequest) {
	ctx := context.WithValue(r.Context(), requestKey{}, q)
	if q.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, q.timeout)
		defer cancel()
	}
	w.rp.ServeHTTP(rw, r.WithContext(ctx))
}

// routeLocal answers a request the route table answered itself.
func (w *Waypoint) routeLocal(rw *wpWriter, q *wpRequest) {
	res := &q.res
	switch res.Reason {
	case route.ReasonNoRoute:
		w.localReply(rw, q, res.Status, -1, "", FlagNoRoute, false)
	case route.ReasonNoCluster, route.ReasonNoBackend:
		w.localReply(rw, q, res.Status, -1, "", FlagNoCluster, true)
	case route.ReasonNoHealthy:
		w.localReply(rw, q, res.Status, -1, bodyNoHealthy, FlagNoHealthy, true)
	case route.ReasonDirect:
		w.localReply(rw, q, res.Status, -1, res.Rule.Route.DirectResponse.Body, "", true)
	case route.ReasonAbort:
		grpcStatus := -1
		if f := res.Rule.Route.Fault; res.GRPCStatus != 0 || f.AbortStatus == 0 {
			grpcStatus = res.GRPCStatus
		}
		w.localReply(rw, q, res.Status, grpcStatus, bodyFaultAbort, FlagFaultAbort, true)
	default:
		w.localReply(rw, q, cmpInt(res.Status, http.StatusServiceUnavailable), -1, bodyNoHealthy, FlagNoHealthy, true)
	}
}

func cmpInt(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// localReply answers a request from the waypoint itself, as Envoy's
// local replies: a text/plain body, or for a gRPC request a
// trailers-only response whose grpc-status is grpcStatus (or, when
// negative, the code Envoy maps status to) and whose grpc-message is the
// body. routeOps applies the route's response header operations.
func (w *Waypoint) localReply(rw *wpWriter, q *wpRequest, status, grpcStatus int, body, flag string, routeOps bool) {
	if flag != "" {
		q.info.addFlag(flag)
	}
	h := rw.Header()
	if q.info.GRPC {
		if grpcStatus < 0 {
			grpcStatus = grpcFromHTTP(status)
		}
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(grpcStatus))
		if body != "" {
			h.Set("Grpc-Message", grpcMessage(body))
		}
		status, body = http.StatusOK, ""
	} else if body != "" {
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", strconv.Itoa(len(body)))
	}
	if routeOps {
		q.res.ApplyResponseHeaders(h)
	}
	rw.WriteHeader(status)
	if body != "" && q.info.Method != http.MethodHead {
		io.WriteString(rw, body)
	}
}

// grpcFromHTTP maps an HTTP status to a gRPC status code as Envoy does
// for local replies to gRPC requests.
func grpcFromHTTP(status int) int {
	switch status {
	case 400:
		return 13 // INTERNAL
	case 401:
		return 16 // UNAUTHENTICATED
	case 403:
		return 7 // PERMISSION_DENIED
	case 404:
		return 12 // UNIMPLEMENTED
	case 429, 502, 503, 504:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// grpcMessage percent-encodes a grpc-message value (gRPC over HTTP/2:
// bytes outside 0x20-0x7E, and "%").
func grpcMessage(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// newRequestID returns a random UUID (version 4), as Envoy generates
// x-request-id.
func newRequestID() string {
	var b [16]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i], b[8+i] = byte(hi>>(8*i)), byte(lo>>(8*i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hex = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hex[c>>4], hex[c&0xf])
	}
	return string(out)
}

// rewrite turns the downstream request into the upstream one (the
// reverse proxy has removed hop-by-hop headers already).
func (w *Waypoint) rewrite(pr *httputil.ProxyRequest) {
	q := requestFrom(pr.In.Context())
	// The reverse proxy drops the forwarding headers before Rewrite;
	// a waypoint passes the client's through unchanged.
	for _, k := range [...]string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v, ok := pr.In.Header[k]; ok {
			pr.Out.Header[k] = v
		}
	}
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = q.target.String()
	pr.Out.URL.Opaque, pr.Out.URL.RawFragment, pr.Out.URL.Fragment = "", "", ""
	if u, err := url.ParseRequestURI(q.path); err == nil {
		pr.Out.URL.Path, pr.Out.URL.RawPath, pr.Out.URL.RawQuery = u.Path, u.RawPath, u.RawQuery
	} else {
		path, query := splitPathQuery(q.path)
		pr.Out.URL.Path, pr.Out.URL.RawPath, pr.Out.URL.RawQuery = path, "", strings.TrimPrefix(query, "?")
	}
	pr.Out.Host = q.authority
	if q.res.Rule != nil {
		q.res.ApplyRequestHeaders(pr.Out.Header)
	}
}

// modifyResponse applies the route's response header operations.
func (w *Waypoint) modifyResponse(resp *http.Response) error {
	q := requestFrom(resp.Request.Context())
	if q == nil {
		return nil
	}
	if q.res.Rule != nil {
		q.res.ApplyResponseHeaders(resp.Header)
	}
	q.upgraded = resp.StatusCode == http.StatusSwitchingProtocols
	return nil
}

// upstreamError answers a request whose upstream failed: 504 after a
// timeout, 503 when connecting or the stream failed; nothing when the
// client went away.
func (w *Waypoint) upstreamError(rw http.ResponseWriter, r *http.Request, err error) {
	q := requestFrom(r.Context())
	lw, ok := rw.(*wpWriter)
	if q == nil || !ok {
		rw.WriteHeader(http.StatusBadGateway)
		return
	}
	q.info.Err = err
	var ce *upstreamConnectError
	switch {
	case q.down.Err() != nil:
		q.info.addFlag(FlagDownstreamClose)
	case r.Context().Err() != nil, isTimeout(err):
		w.localReply(lw, q, http.StatusGatewayTimeout, -1, bodyUpstreamTimeout, FlagTimeout, false)
	case asError(err, &ce):
		w.localReply(lw, q, http.StatusServiceUnavailable, -1, bodyConnectFailure, FlagConnectFailure, false)
	default:
		w.localReply(lw, q, http.StatusServiceUnavailable, -1, bodyUpstreamReset, FlagUpstreamReset, false)
	}
}

// mirror sends fire-and-forget copies of the request to the mirrors the
// pick chose. The body is copied only when it fits in BufferLimit;
// a larger body is not mirrored.
func (w *Waypoint) mirror(r *http.Request, q *wpRequest) {
	var body []byte
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		buf, err := io.ReadAll(io.LimitReader(r.Body, int64(w.cfg.BufferLimit)+1))
		r.Body = readCloser{Reader: io.MultiReader(bytes.NewReader(buf), r.Body), Closer: r.Body}
		if err != nil || len(buf) > w.cfg.BufferLimit {
			w.log.Debug("waypoint: request body too large to mirror", "path", q.info.Path, "limit", w.cfg.BufferLimit)
			return
		}
		body = buf
	}
	h := r.Header.Clone()
	for _, k := range [...]string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Transfer-Encoding", "Upgrade", "Trailer"} {
		h.Del(k)
	}
	q.res.Rule.Route.RequestHeaders.Apply(h)
	timeout := cmpDuration(q.timeout, w.cfg.MirrorTimeout)
	for i := range q.res.Rule.Route.Mirrors {
		if i >= 64 || q.res.Mirrors&(1<<i) == 0 {
			continue
		}
		m := &q.res.Rule.Route.Mirrors[i]
		addr, proto, err := q.snap.mirrorEndpoint(m, q.rreq.Port, rand.IntN)
		if err != nil {
			w.log.Debug("waypoint: mirror", "mirror", m.Host, "error", err)
			continue
		}
		tr := w.h1
		if proto == protoHTTP2 || proto == protoGRPC || (proto == protoAuto && r.ProtoMajor == 2) {
			tr = w.h2
		}
		method, path, authority := r.Method, q.path, q.authority
		w.goBackground(func(ctx context.Context) {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, method, "http://"+addr.String()+"/", bytes.NewReader(body))
			if err != nil {
				return
			}
			if u, err := url.ParseRequestURI(path); err == nil {
				req.URL.Path, req.URL.RawPath, req.URL.RawQuery = u.Path, u.RawPath, u.RawQuery
			}
			if len(body) == 0 {
				req.Body, req.ContentLength = http.NoBody, 0
			}
			req.Header, req.Host = h.Clone(), authority
			resp, err := tr.RoundTrip(req)
			if err != nil {
				w.log.Debug("waypoint: mirror failed", "mirror", m.Host, "upstream_host", addr.String(), "error", err)
				return
			}
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			w.log.Debug("waypoint: mirrored", "mirror", m.Host, "upstream_host", addr.String(), "response_code", resp.StatusCode)
		})
	}
}

func cmpDuration(a, b time.Duration) time.Duration {
	if a > 0 {
		return a
	}
	return b
}

type readCloser struct {
	io.Reader
	io.Closer
}

// requestComplete writes the access log line and calls the Request hook.
func (w *Waypoint) requestComplete(q *wpRequest, lw *wpWriter) {
	info := q.info
	info.Duration = time.Since(info.Start)
	info.Status = lw.status
	info.BytesSent = lw.bytes
	if info.Status == 0 && q.upgraded {
		info.Status, lw.hijacked = http.StatusSwitchingProtocols, true
	}
	h := lw.Header()
	if gs := h.Get("Grpc-Status"); gs != "" {
		info.GRPCStatus = gs
	} else if gs := h.Get(http.TrailerPrefix + "Grpc-Status"); gs != "" {
		info.GRPCStatus = gs
	}
	if info.Status == 0 && !lw.hijacked {
		info.addFlag(FlagDownstreamClose)
	}
	ctx := context.Background()
	if w.log.Enabled(ctx, slog.LevelInfo) {
		attrs := make([]slog.Attr, 0, 24)
		attrs = append(attrs,
			slog.String("method", info.Method),
			slog.String("path", info.Path),
			slog.String("protocol", info.Protocol),
			slog.Int("response_code", info.Status),
			slog.String("response_flags", info.FlagString()),
			slog.String("authority", info.Authority),
			slog.String("src.addr", info.SrcAddr.String()),
		)
		if wl := info.SrcWorkload; wl != nil {
			attrs = append(attrs, slog.String("src.workload", wl.Name), slog.String("src.namespace", wl.Namespace))
		}
		if !info.SrcIdentity.IsZero() {
			attrs = append(attrs, slog.String("src.identity", info.SrcIdentity.String()))
		}
		if info.DstService != "" {
			attrs = append(attrs, slog.String("dst.service", info.DstService))
		}
		if info.Upstream.IsValid() {
			attrs = append(attrs, slog.String("upstream_host", info.Upstream.String()))
		}
		if info.Cluster != "" {
			attrs = append(attrs, slog.String("upstream_cluster", info.Cluster))
		}
		if wl := info.DstWorkload; wl != nil {
			attrs = append(attrs, slog.String("dst.workload", wl.Name), slog.String("dst.namespace", wl.Namespace))
		}
		if info.Route != "" {
			attrs = append(attrs, slog.String("route_name", info.Route))
		}
		if info.Policy != "" {
			attrs = append(attrs, slog.String("authz_policy", info.Policy))
		}
		if info.GRPCStatus != "" {
			attrs = append(attrs, slog.String("grpc_status", info.GRPCStatus))
		}
		attrs = append(attrs,
			slog.Int("attempts", info.Attempts),
			slog.Int64("bytes_received", info.BytesReceived),
			slog.Int64("bytes_sent", info.BytesSent),
			slog.String("duration", fmt.Sprintf("%dms", info.Duration.Milliseconds())),
			slog.String("x_request_id", info.RequestID),
		)
		if info.UserAgent != "" {
			attrs = append(attrs, slog.String("user_agent", info.UserAgent))
		}
		if info.Err != nil {
			attrs = append(attrs, slog.String("error", info.Err.Error()))
		}
		w.log.LogAttrs(ctx, slog.LevelInfo, "request complete", attrs...)
	}
	if w.cfg.Hooks.Request != nil {
		w.cfg.Hooks.Request(info)
	}
}

// wpWriter records the status and body size of a response.
type wpWriter struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
	hijacked    bool
}

func (w *wpWriter) WriteHeader(code int) {
	if !w.wroteHeader && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status, w.wroteHeader = code, true
		if code == http.StatusSwitchingProtocols {
			w.hijacked = true
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *wpWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = http.StatusOK, true
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// Flush sends buffered data (streaming responses, gRPC).
func (w *wpWriter) Flush() { http.NewResponseController(w.ResponseWriter).Flush() }

// Unwrap lets http.ResponseController reach the server's writer (Hijack
// for protocol upgrades).
func (w *wpWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts the request body bytes read.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64 // read by the transport's goroutine
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
