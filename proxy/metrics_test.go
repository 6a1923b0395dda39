package proxy_test

import (
	"fmt"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"

	"github.com/meshblocks/meshblocks/proxy"
)

func TestConnInfoLabels(t *testing.T) {
	sleep := &proxy.Workload{Name: "sleep-7d9", Namespace: "default", WorkloadName: "sleep", CanonicalName: "sleep",
		CanonicalRevision: "v1", ClusterID: "c1", Locality: proxy.Locality{Region: "r1", Zone: "z1"}}
	echo := &proxy.Workload{Name: "echo-5f", Namespace: "apps", WorkloadName: "echo"}
	svc := &proxy.Service{Name: "echo", Namespace: "apps", Hostname: "echo.apps.svc.cluster.local"}
	sleepID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	echoID := spiffeid.RequireFromString("spiffe://cluster.local/ns/apps/sa/echo")
	tests := []struct {
		name string
		c    proxy.ConnInfo
		svc  *proxy.Service
		want map[string]string // every label
	}{{
		name: "inbound over HBONE",
		c: proxy.ConnInfo{Direction: proxy.Inbound, SrcWorkload: sleep, DstWorkload: echo, SrcIdentity: sleepID,
			DstIdentity: echoID, DstService: svc.Hostname, MTLS: true},
		svc: svc,
		want: map[string]string{
			"reporter": "destination", "source_workload": "sleep", "source_canonical_service": "sleep",
			"source_canonical_revision": "v1", "source_workload_namespace": "default",
			"source_principal": "spiffe://cluster.local/ns/default/sa/sleep", "source_app": "sleep", "source_version": "v1",
			"source_cluster": "c1", "destination_service": "echo.apps.svc.cluster.local",
			"destination_service_namespace": "apps", "destination_service_name": "echo", "destination_workload": "echo",
			"destination_canonical_service": "unknown", "destination_canonical_revision": "unknown",
			"destination_workload_namespace": "apps", "destination_principal": "spiffe://cluster.local/ns/apps/sa/echo",
			"destination_app": "unknown", "destination_version": "unknown", "destination_cluster": "unknown",
			"request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "mutual_tls",
			"source_region": "r1", "source_zone": "z1", "destination_region": "unknown", "destination_zone": "unknown",
		},
	}, {
		name: "outbound passthrough to an unknown destination",
		c:    proxy.ConnInfo{Direction: proxy.Outbound},
		want: map[string]string{
			"reporter": "source", "source_workload": "unknown", "source_canonical_service": "unknown",
			"source_canonical_revision": "unknown", "source_workload_namespace": "unknown", "source_principal": "unknown",
			"source_app": "unknown", "source_version": "unknown", "source_cluster": "unknown",
			"destination_service": "unknown", "destination_service_namespace": "unknown",
			"destination_service_name": "unknown", "destination_workload": "unknown",
			"destination_canonical_service": "unknown", "destination_canonical_revision": "unknown",
			"destination_workload_namespace": "unknown", "destination_principal": "unknown", "destination_app": "unknown",
			"destination_version": "unknown", "destination_cluster": "unknown", "request_protocol": "tcp",
			"response_flags": "-", "connection_security_policy": "unknown",
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]string{}
			for _, l := range tc.c.Labels(tc.svc) {
				_, dup := got[l.Name]
				assert.False(t, dup, "label %s twice", l.Name)
				got[l.Name] = l.Value
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

func ExampleConnInfo_Labels() {
	c := proxy.ConnInfo{
		Direction:   proxy.Inbound,
		SrcIdentity: spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep"),
		MTLS:        true,
	}
	for _, l := range c.Labels(nil) {
		switch l.Name {
		case "reporter", "source_principal", "connection_security_policy":
			fmt.Printf("%s=%q\n", l.Name, l.Value)
		}
	}
	// Output:
	// reporter="destination"
	// source_principal="spiffe://cluster.local/ns/default/sa/sleep"
	// connection_security_policy="mutual_tls"
}
