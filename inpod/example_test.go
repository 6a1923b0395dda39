//go:build linux

package inpod_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"sync"

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

// A node agent installs the in-pod rules in a pod's namespace, and takes
// them out again when the pod goes.
func ExampleRules_Apply() {
	ctx := context.Background()
	ns, err := inpod.OpenNetns("/var/run/netns/pod-1")
	if err != nil {
		log.Print(err)
		return
	}
	defer ns.Close()
	rules := &inpod.Rules{CaptureDNS: true}
	if err := rules.Apply(ctx, ns); err != nil { // safe to repeat
		log.Print(err)
		return
	}
	// ... later, when the pod leaves the mesh:
	if err := rules.Remove(ctx, ns); err != nil {
		log.Print(err)
	}
}

// A node agent serves ZDS and hands each of its pods to the node proxy,
// programming the pod's rules first.
func ExampleServer() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := inpod.NewServer(inpod.ServerConfig{
		Path:  "/var/run/ztunnel/ztunnel.sock",
		Rules: &inpod.Rules{},
	})
	if err != nil {
		log.Print(err)
		return
	}
	defer srv.Close()
	go func() {
		if err := srv.Run(ctx); err != nil {
			log.Print(err)
		}
	}()
	info := inpod.WorkloadInfo{Name: "sleep-7d9f", Namespace: "default", ServiceAccount: "sleep"}
	err = srv.AddPod(ctx, "0f8a3a4e-8d8c-4c55-b2d4-1f7d6d8a9e01", info, "/var/run/netns/cni-1234")
	if errors.Is(err, inpod.ErrNoConnection) {
		// Cached: the proxy gets it in its snapshot when it connects.
	} else if err != nil {
		log.Print(err)
	}
	// When the pod is deleted:
	_ = srv.RemovePod(ctx, "0f8a3a4e-8d8c-4c55-b2d4-1f7d6d8a9e01")
}

// podProxy is a minimal Handler: one outbound listener per pod.
type podProxy struct {
	mu  sync.Mutex
	lns map[string]net.Listener
}

func (p *podProxy) AddPod(ctx context.Context, uid string, info inpod.WorkloadInfo, ns *inpod.Netns) error {
	ln, err := ns.Listen(ctx, "tcp", "0.0.0.0:15001", inpod.SocketOptions{Mark: inpod.PacketMark, ReusePort: true})
	if err != nil {
		return err // NACKed; the client retries
	}
	p.mu.Lock()
	p.lns[uid] = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dst, _ := inpod.OriginalDst(c)
			fmt.Println(info.Name, "dialed", dst) // a real proxy tunnels it
			c.Close()
		}
	}()
	return nil
}

func (p *podProxy) DelPod(uid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ln := p.lns[uid]; ln != nil {
		ln.Close()
		delete(p.lns, uid)
	}
}

// A node proxy takes its pods from the node agent over ZDS.
func ExampleClient() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := inpod.NewClient(inpod.ClientConfig{
		Path:    "/var/run/ztunnel/ztunnel.sock",
		Handler: &podProxy{lns: map[string]net.Listener{}},
	})
	if err != nil {
		log.Print(err)
		return
	}
	go func() {
		if err := c.Run(ctx); err != nil {
			log.Print(err) // the agent broke the protocol
		}
	}()
	if err := c.WaitReady(ctx); err != nil {
		log.Print(err)
		return
	}
	fmt.Println("serving", c.Pods())
}
