// Package inpod redirects a pod's traffic to a node proxy running outside the
// pod, the way Istio's ambient mode does it ("in-pod" mode): the node agent
// hands the proxy a handle to the pod's network namespace, the proxy opens
// its listeners inside that namespace, and in-pod iptables or nftables rules
// send the pod's TCP to them.
//
// This file set covers the socket side:
//
//   - [Netns] is a handle to a network namespace. [Netns.Do] runs a function
//     on an OS thread that has entered the namespace; only socket creation
//     needs to happen there, because a socket stays in the namespace it was
//     created in.
//   - [Netns.Listen] and [Netns.Dial] create listeners and connections inside
//     the namespace, with the packet mark ([PacketMark], 0x539) that the
//     in-pod rules use to let the proxy's own traffic through unredirected.
//   - [OriginalDst] recovers the destination an application dialed before
//     iptables redirected it (SO_ORIGINAL_DST, then IP6T_SO_ORIGINAL_DST).
//
// Everything here needs Linux; on other systems the functions return
// [errors.ErrUnsupported]. Entering another network namespace needs
// CAP_SYS_ADMIN, and setting SO_MARK needs CAP_NET_ADMIN.
//
// A typical outbound listener inside a pod:
//
//	ns, err := inpod.OpenNetns("/var/run/netns/pod-1")
//	if err != nil { ... }
//	defer ns.Close()
//	ln, err := ns.Listen(ctx, "tcp", "[::]:15001", inpod.SocketOptions{Mark: inpod.PacketMark})
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
	// (0x111), so that replies leave the pod unredirected.
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
