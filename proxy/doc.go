// Package proxy holds the node proxy's data paths, in the style of Istio's
// ztunnel: outbound (redirected app traffic on :15001, sent through HBONE
// tunnels), inbound HBONE (:15008), inbound plaintext (:15006), and a SOCKS5
// listener (:15080) so that applications can use the mesh without root or
// traffic redirection. It also holds the L7 waypoint (see Waypoint below).
//
// The state the data path reads is a [State]: workloads (by address and
// uid, with identity, node, waypoint and service ports), services (by VIP
// and name, with endpoints and ztunnel's balancing mode), the L4
// authorization engine and PeerAuthentication. It is immutable and
// published through a [StateHolder], so updates swap it atomically and the
// data path never waits for the control plane. [ParseLocalConfig] reads
// ztunnel's LOCAL_XDS_PATH file format; xds fills it in a cluster;
// [BindPolicies] turns ztunnel policies and the workloads' bindings that
// come from elsewhere (ztunnel.Convert, for example) into the L4 engine's
// policies, as ParseLocalConfig does for a file.
//
// A [Proxy] serves listeners:
//
//   - ServeOutbound recovers the original destination, resolves it
//     ([State.Resolve]: waypoint, direct HBONE or passthrough; services are
//     balanced by [ZtunnelBalancer], route's STANDARD/STRICT/FAILOVER
//     modes) and opens HBONE to the next hop's port 15008 with the source
//     workload's certificate, expecting the destination's identity;
//   - ServeInboundHBONE presents the dialled workload's certificate (an
//     address that is no workload fails the TLS handshake), checks the
//     :authority (400), that the workload is on this node, that a hostname
//     authority names a service and port it backs, and that the target is
//     not one of the proxy's own ports or listeners (each 503), the L4
//     policy with the peer's identity and address (401, logged as
//     "RBAC rejected conn=ip(identity)->ip:port"), connects to the workload
//     and only then answers 200;
//   - ServeInboundPlaintext applies PeerAuthentication (STRICT refuses)
//     and the policy with no principal, and resets connections addressed
//     to the proxy itself;
//   - ServeSOCKS5 is the outbound path for applications that name their
//     destination themselves.
//
// Refused connections are reset (SO_LINGER 0), so clients see "connection
// reset by peer" as with ztunnel. Bytes are relayed with per-direction
// half-close, pooled buffers, splice(2) between plain sockets, optional idle
// timeouts (which keep those fast paths) and TCP keepalive; Shutdown drains,
// then closes both ends of what is left. Every connection ends with an
// access-log line ("connection complete" with src.addr, src.workload,
// src.identity, dst.addr, dst.hbone_addr, dst.service, dst.workload,
// dst.identity, direction, bytes_sent, bytes_recv, duration, error) and
// [Hooks] for metrics; [ConnInfo.Labels] gives a connection the labels of
// Istio's TCP metrics, as ztunnel reports them.
//
// Policy applies to open connections too, as in ztunnel: when the State
// is swapped ([StateHolder.Store]), each open inbound connection, HBONE or
// plaintext, is authorized again with the new State on a background
// goroutine, with the attributes its first decision used (peer identity,
// source address, destination workload and port, plaintext or not). One
// that the new State refuses (an L4 policy denies it, PeerAuthentication
// turned STRICT for a plaintext one, or its destination is no longer a
// workload of this node) has both ends of its relay closed: the client
// reads the end of its tunnel or socket. An Info line "connection no
// longer allowed after a state update; closing it" names the connection
// and the reason, and its access-log line and Closed hook carry
// [ErrPolicyChanged] ("connection closed due to policy change"). Outbound
// connections are left to the destination's proxy. Unlike ztunnel, which
// re-checks on policy updates only, any swap triggers the check, so a
// workload's new labels or removal count too. Config.DisablePolicyRecheck
// turns this off. A pass over 10,000 open connections costs about 5 ms of
// one core and allocates nothing while they stay allowed.
//
// # Waypoint
//
// A [Waypoint] is the L7 proxy of a Service, as Istio's ambient waypoint:
//
//   - it terminates HBONE on :15008 with its own identity; the CONNECT
//     authority names the destination, a Service VIP (or hostname) and
//     port, or a workload address; a destination whose Waypoint is not
//     this one is refused with 503 ([ErrNotServed]);
//   - inside the tunnel it serves HTTP/1.1 and HTTP/2 with prior
//     knowledge (net/http's server). The Service port's appProtocol, or
//     its name ([WaypointRules.AppProtocols]), says what the port
//     carries: http, http2 and grpc ports are HTTP, tcp and tls ports are
//     authorized with Envoy's network RBAC semantics (HTTP-only
//     attributes make ALLOW rules never match and widen DENY rules) and
//     relayed at L4; other ports are sniffed (the HTTP/2 preface or an
//     HTTP/1 request line is HTTP, anything else TCP);
//   - each request's path is normalized as Envoy does by default
//     (dot segments, backslashes, escapes of unreserved characters), then
//     authorized by the [WaypointRules] policies with targetRefs (peer
//     identity and address, method, path, host, headers, the Service it
//     is addressed to): a denial is answered 403 "RBAC: access denied"
//     (text/plain; gRPC requests get PERMISSION_DENIED). A CUSTOM policy
//     with a known provider asks [WaypointConfig].ExtAuthz and fails
//     closed (403, flag UAEX) without one;
//   - the route table (package route, fed by VirtualServices,
//     DestinationRules and Gateway API routes; see package
//     proxy/waypointconfig) decides: 404 with no matching route,
//     redirects, direct responses, fault delays and aborts, 503 (or 500
//     for Gateway API) for a missing backend, 503 "no healthy upstream";
//     otherwise path and host rewrites and header operations are applied,
//     a weighted backend and an endpoint chosen, and mirrors sent a copy
//     (fire and forget, bodies up to BufferLimit);
//   - the request goes to the endpoint over HBONE with the waypoint's
//     identity, expecting the endpoint's (authority endpointIP:targetPort,
//     to its node proxy on :15008), through http.Transports that pool
//     connections per endpoint; HTTP/1.1 unless the port says http2 or
//     grpc, or the port is sniffed and the client spoke HTTP/2. The
//     route timeout answers 504 "upstream request timeout"; retries
//     follow the route's policy (or Istio's default: connect failures,
//     refused streams, gRPC unavailable and cancelled), prefer an
//     endpoint not tried yet, back off with jitter and replay the body
//     (up to BufferLimit).
//
// Every request ends with an access-log line ("request complete" with
// method, path, protocol, response_code, response_flags, authority,
// upstream_host, upstream_cluster, route_name, attempts, bytes, duration,
// x_request_id, src.* and dst.*) and [WaypointHooks].Request with a
// [RequestInfo], whose Labels are Istio's request metric labels (reporter
// "waypoint"). TCP tunnels log "connection complete" like the node proxy.
// Rules are swapped with SetRules; a State swapped in the [StateHolder]
// is picked up by the next request. Shutdown sends GOAWAY, lets requests
// and relays finish and closes idle connections.
//
// The package composes identity, hbone, authz and route; it never imports
// inpod or xds. Network-namespace specifics reach it as plain functions (a
// listener, a dial function, an original-destination lookup) so that the
// same data path runs in a pod's namespace or on loopback.
package proxy
