//go:build linux

package inpod_test

import (
	"context"
	"fmt"
	"log"

	"github.com/meshblocks/meshblocks/inpod"
)

// A node proxy opens its outbound listener inside a pod's network namespace
// and learns, for each redirected connection, where the app meant to go.
func ExampleOriginalDst() {
	ns, err := inpod.OpenNetns("/var/run/netns/pod-1")
	if err != nil {
		log.Print(err)
		return
	}
	defer ns.Close()
	ln, err := ns.Listen(context.Background(), "tcp", "[::]:15001", inpod.SocketOptions{Mark: inpod.PacketMark})
	if err != nil {
		log.Print(err)
		return
	}
	defer ln.Close()
	conn, err := ln.Accept()
	if err != nil {
		log.Print(err)
		return
	}
	defer conn.Close()
	dst, err := inpod.OriginalDst(conn)
	if err != nil {
		log.Print(err)
		return
	}
	fmt.Println("app dialed", dst)
}

// Do runs a function inside a namespace; only socket creation needs it.
func ExampleNetns_Do() {
	ns, err := inpod.OpenNetns("/var/run/netns/pod-1")
	if err != nil {
		log.Print(err)
		return
	}
	defer ns.Close()
	err = ns.Do(func() error {
		// Create sockets here; they stay in the pod's namespace.
		return nil
	})
	fmt.Println(err)
}
