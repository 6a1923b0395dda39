package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshblocks/meshblocks/hbone"
	"github.com/meshblocks/meshblocks/identity"
	"github.com/meshblocks/meshblocks/proxy"
	"github.com/meshblocks/meshblocks/proxy/waypointconfig"
)

// A waypoint in front of the web Service: the app's node proxy on
// 127.79.0.3, the waypoint on 127.79.0.4, and a client that opens HBONE
// tunnels to the waypoint as a node proxy would. The policy lets sleep GET
// and nothing else.
func ExampleNewWaypoint() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: td})
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

	lc, err := proxy.ParseLocalConfig([]byte(`
workloads:
- {uid: web, name: web, namespace: default, serviceAccount: web, workloadIps: [127.79.0.3],
   protocol: HBONE, node: n2, services: {"default/web.default.svc.cluster.local": {80: 8080}}}
- {uid: waypoint, name: waypoint, namespace: default, serviceAccount: waypoint,
   workloadIps: [127.79.0.4], protocol: HBONE}
services:
- {name: web, namespace: default, hostname: web.default.svc.cluster.local, vips: [/127.79.10.1],
   ports: {80: 8080}, waypoint: {destination: /127.79.0.4}}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	st, err := proxy.NewState(lc.Workloads, lc.Services)
	if err != nil {
		fmt.Println(err)
		return
	}
	state := &proxy.StateHolder{}
	state.Store(st)

	// The app and its node proxy.
	app, err := net.Listen("tcp", "127.79.0.3:8080")
	if err != nil {
		fmt.Println(err)
		return
	}
	appSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from web")
	})}
	go appSrv.Serve(app)
	defer appSrv.Close()
	node, err := proxy.New(proxy.Config{
		State:    state,
		Identity: func(id spiffeid.ID) identity.Source { return ids.Source(id) },
		Node:     "n2",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	nodeLn, err := net.Listen("tcp", "127.79.0.3:15008")
	if err != nil {
		fmt.Println(err)
		return
	}
	go node.ServeInboundHBONE(nodeLn)

	// The waypoint, with rules from Istio YAML.
	res, err := waypointconfig.Parse(waypointconfig.Options{}, waypointconfig.File{Data: []byte(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-viewer, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {methods: [GET]}}]
`)})
	if err != nil {
		fmt.Println(err)
		return
	}
	wp, err := proxy.NewWaypoint(proxy.WaypointConfig{
		State:  state,
		Source: ids.Source(spiffeid.RequireFromPath(td, "/ns/default/sa/waypoint")),
		Name:   "waypoint", Namespace: "default",
		Addresses: []netip.Addr{netip.MustParseAddr("127.79.0.4")},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := wp.SetRules(res.Rules); err != nil {
		fmt.Println(err)
		return
	}
	wpLn, err := net.Listen("tcp", "127.79.0.4:15008")
	if err != nil {
		fmt.Println(err)
		return
	}
	go wp.Serve(wpLn)

	// sleep's node proxy would open these tunnels: to the waypoint, for
	// the Service VIP and port the app dialled.
	d := &hbone.Dialer{
		Source:   ids.Source(spiffeid.RequireFromPath(td, "/ns/default/sa/sleep")),
		Expected: []spiffeid.ID{spiffeid.RequireFromPath(td, "/ns/default/sa/waypoint")},
	}
	defer d.Close()
	for _, method := range []string{"GET", "POST"} {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		tun, err := d.Dial(dctx, hbone.Route{Address: "127.79.0.4:15008", Authority: "127.79.10.1:80"})
		dcancel()
		if err != nil {
			fmt.Println(err)
			return
		}
		req, _ := http.NewRequest(method, "http://web.default.svc.cluster.local/", nil)
		req.Write(tun)
		resp, err := http.ReadResponse(bufio.NewReader(tun), req)
		if err != nil {
			fmt.Println(err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		fmt.Println(method, resp.StatusCode, string(body))
		tun.Close()
	}

	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	fmt.Println(wp.Shutdown(sctx), node.Shutdown(sctx))
	// Output:
	// GET 200 hello from web
	// POST 403 RBAC: access denied
	// <nil> <nil>
}
