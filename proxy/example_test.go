package proxy_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/proxy"
)

func ExampleParseLocalConfig() {
	cfg, err := proxy.ParseLocalConfig([]byte(`
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: local
  services:
    "default/example.com":
      80: 8080
services:
- name: local
  namespace: default
  hostname: example.com
  vips: ["/127.10.0.1"]
  ports:
    80: 8080
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	st, err := proxy.NewState(cfg.Workloads, cfg.Services)
	if err != nil {
		fmt.Println(err)
		return
	}
	plan, err := st.Resolve(nil, netip.MustParseAddrPort("127.10.0.1:80"), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(plan.Kind, plan.NextHop, plan.Authority, plan.Expected[0])
	// Output: direct 127.0.0.1:15008 127.0.0.1:8080 spiffe://cluster.local/ns/default/sa/default
}

// A node proxy for one workload on loopback: certificates from a local CA,
// outbound on 127.0.0.1:15001 and inbound HBONE on the workload's address.
func ExampleNew() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		fmt.Println(err)
		return
	}
	ids, err := identity.NewManager(identity.ManagerConfig{Fetcher: ca})
	if err != nil {
		fmt.Println(err)
		return
	}
	go ids.Run(ctx)

	st, err := proxy.NewState([]proxy.Workload{{
		UID: "local", Name: "local", Namespace: "default", ServiceAccount: "default",
		Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Protocol: proxy.TunnelHBONE,
	}}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	holder := &proxy.StateHolder{}
	holder.Store(st)
	p, err := proxy.New(proxy.Config{
		State:    holder,
		Identity: func(id spiffeid.ID) identity.Source { return ids.Source(id) },
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	out, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	go p.ServeOutbound(out, "")
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	fmt.Println(p.Shutdown(sctx))
	// Output: <nil>
}

// The proxy's own ports are never dialled for inbound traffic. A node
// proxy that also serves something else in the workloads' network (here a
// debug endpoint on 15090) adds it to the defaults.
func ExampleDefaultReservedPorts() {
	fmt.Println(proxy.DefaultReservedPorts())
	cfg := proxy.Config{ReservedPorts: append(proxy.DefaultReservedPorts(), 15090)}
	fmt.Println(len(cfg.ReservedPorts))
	// Output:
	// [15000 15001 15006 15008 15020 15021 15080]
	// 8
}

// A component that follows the State (a cache, a config dump writer) takes
// the channel before it reads, so that no Store goes unnoticed.
func ExampleStateHolder_Changed() {
	holder := &proxy.StateHolder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := make(chan int)
	go func() {
		defer close(seen)
		for {
			changed := holder.Changed()
			seen <- len(holder.Load().Workloads())
			select {
			case <-changed:
			case <-ctx.Done():
				return
			}
		}
	}()
	fmt.Println(<-seen)
	st, err := proxy.NewState([]proxy.Workload{{UID: "a", Namespace: "default", ServiceAccount: "default"}}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	holder.Store(st)
	fmt.Println(<-seen)
	cancel()
	<-seen
	// Output:
	// 0
	// 1
}
