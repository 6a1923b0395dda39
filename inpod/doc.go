// Package inpod redirects a pod's traffic to a node proxy running outside the
// pod, the way Istio's ambient mode does it ("in-pod" mode): a node agent
// installs redirection rules inside the pod's network namespace and hands
// the proxy a handle to that namespace over ZDS; the proxy opens its
// listeners inside the namespace, and the rules send the pod's TCP to them.
//
// The package has the pieces of both sides, wire-compatible with Istio's
// istio-cni (the node agent) and ztunnel (the proxy):
//
//   - [Netns] is a handle to a network namespace. [Netns.Do] runs a function
//     on an OS thread that has entered the namespace; only socket creation
//     needs to happen there, because a socket stays in the namespace it was
//     created in. [Netns.Listen] and [Netns.Dial] create listeners and
//     connections inside it, with the packet mark ([PacketMark], 0x539) that
//     the in-pod rules use to let the proxy's own traffic through.
//   - [OriginalDst] recovers the destination an application dialed before
//     the rules redirected it (SO_ORIGINAL_DST, then IP6T_SO_ORIGINAL_DST).
//   - [Rules] renders istio-cni's in-pod rule set (Istio 1.24+: nat
//     REDIRECT of outbound TCP to 15001 and inbound TCP to 15006, 15008
//     untouched, the 0x111 connection mark with its ip rule and local
//     route, optional DNS capture to 15053) as iptables-restore input or an
//     nft script, and [Rules.Apply] and [Rules.Remove] install and remove
//     it inside a namespace, idempotently.
//   - The ZDS messages ([AddWorkload], [DelWorkload], [KeepWorkload],
//     [SnapshotSent], [WorkloadResponse], [ZDSHello]) are encoded by hand,
//     byte for byte as Istio's zds.proto, without registering anything with
//     the protobuf runtime.
//   - [Server] is the node agent's end of ZDS: a pod cache, a snapshot for
//     every proxy that connects, live adds to the newest connection and
//     deletes to all, and (with ServerConfig.Rules) the rules programmed as
//     pods come and go.
//   - [Client] is the proxy's end: it reconnects with backoff, applies the
//     snapshot and live updates through a [Handler] that starts and stops
//     each pod's listeners, and acknowledges every message.
//
// ZDS runs over a SOCK_SEQPACKET Unix socket (default [DefaultSocketPath]),
// one protobuf message per datagram of less than [MaxMessageSize] bytes;
// an AddWorkload carries the pod's namespace as exactly one SCM_RIGHTS
// descriptor.
//
// Everything but the rule rendering and the message encoding needs Linux;
// on other systems those functions return [errors.ErrUnsupported].
// Entering another network namespace needs CAP_SYS_ADMIN, and setting
// SO_MARK or programming rules needs CAP_NET_ADMIN; Apply also needs the
// iptables-restore/iptables-save (or nft) commands.
//
// A node agent:
//
//	srv, err := inpod.NewServer(inpod.ServerConfig{Rules: &inpod.Rules{}})
//	if err != nil { ... }
//	go srv.Run(ctx)
//	// for each pod scheduled on the node:
//	err = srv.AddPod(ctx, podUID, inpod.WorkloadInfo{Name: name, Namespace: ns, ServiceAccount: sa},
//		"/var/run/netns/"+sandbox)
//
// A node proxy:
//
//	c, err := inpod.NewClient(inpod.ClientConfig{Handler: proxy}) // proxy implements Handler
//	if err != nil { ... }
//	go c.Run(ctx)
//	// in proxy.AddPod(ctx, uid, info, ns):
//	ln, err := ns.Listen(ctx, "tcp", "[::]:15001", inpod.SocketOptions{Mark: inpod.PacketMark, ReusePort: true})
//	...
//	conn, _ := ln.Accept()
//	dst, err := inpod.OriginalDst(conn) // the address the app dialed
package inpod

// Marks and ports used by Istio's in-pod redirection (see Istio's
// istio-cni and ztunnel). Every socket the proxy creates in a pod carries
// PacketMark so that the in-pod rules let it through unredirected.
const (
	// PacketMark is the SO_MARK of the node proxy's sockets (1337).
	PacketMark uint32 = 0x539
	// ProxyMask is the mask applied when the rules compare marks.
	ProxyMask uint32 = 0xfff
	// ConnMark is the connmark of connections accepted from the proxy
	// (0x111): an ip rule routes their replies back to the proxy, which
	// may have connected with the client's address as source.
	ConnMark uint32 = 0x111

	// OutboundPort is where the pod's outbound TCP is redirected.
	OutboundPort = 15001
	// InboundPlaintextPort is where non-HBONE inbound TCP is redirected.
	InboundPlaintextPort = 15006
	// InboundHBONEPort is the HBONE (mTLS HTTP/2 CONNECT) port.
	InboundHBONEPort = 15008
	// DNSPort is the pod-local DNS proxy port.
	DNSPort = 15053
)
