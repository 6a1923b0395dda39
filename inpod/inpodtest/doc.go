// Package inpodtest creates real network namespaces for tests: a fresh
// namespace per test, with loopback up, that is deleted when the test ends.
//
// Namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the iproute2
// and iptables commands. Without root, [RequireRoot] skips the test, except
// when the environment variable CI is "true": there a skip would hide a
// missing privilege, so the test fails instead.
//
// In a test:
//
//	pod := inpodtest.NewNamespace(t)
//	pod.Run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "80",
//		"-j", "REDIRECT", "--to-ports", "15001")
//	ln, err := pod.Netns.Listen(ctx, "tcp4", "127.0.0.1:15001", inpod.SocketOptions{Mark: inpod.PacketMark})
package inpodtest
