package proxy

// Labels returns the labels of Istio's TCP metrics
// (istio_tcp_connections_opened_total, istio_tcp_connections_closed_total,
// istio_tcp_sent_bytes_total, istio_tcp_received_bytes_total) for the
// connection, as ztunnel reports them: reporter "source" for outbound
// connections and "destination" for inbound ones, the workloads' telemetry
// fields (WorkloadName, CanonicalName, CanonicalRevision, ClusterID), the
// principals, connection_security_policy "mutual_tls" for a connection
// carried over HBONE, and the region and zone of the workloads once one of
// them is known. Values that are not known are "unknown".
//
// svc is the Service named by c.DstService (found by hostname in the
// State), or nil: it gives destination_service_name and
// destination_service_namespace.
func (c *ConnInfo) Labels(svc *Service) []MetricLabel {
	or := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	var sw, dw Workload
	if c.SrcWorkload != nil {
		sw = *c.SrcWorkload
	}
	if c.DstWorkload != nil {
		dw = *c.DstWorkload
	}
	reporter := "source"
	if c.Direction == Inbound {
		reporter = "destination"
	}
	var srcPrincipal, dstPrincipal, svcName, svcNamespace string
	if !c.SrcIdentity.IsZero() {
		srcPrincipal = c.SrcIdentity.String()
	}
	if !c.DstIdentity.IsZero() {
		dstPrincipal = c.DstIdentity.String()
	}
	if svc != nil {
		svcName, svcNamespace = svc.Name, svc.Namespace
	}
	security := "unknown"
	if c.MTLS {
		security = "mutual_tls"
	}
	labels := []MetricLabel{
		{"reporter", reporter},
		{"source_workload", or(sw.WorkloadName)},
		{"source_canonical_service", or(sw.CanonicalName)},
		{"source_canonical_revision", or(sw.CanonicalRevision)},
		{"source_workload_namespace", or(sw.Namespace)},
		{"source_principal", or(srcPrincipal)},
		{"source_app", or(sw.CanonicalName)},
		{"source_version", or(sw.CanonicalRevision)},
		{"source_cluster", or(sw.ClusterID)},
		{"destination_service", or(c.DstService)},
		{"destination_service_namespace", or(svcNamespace)},
		{"destination_service_name", or(svcName)},
		{"destination_workload", or(dw.WorkloadName)},
		{"destination_canonical_service", or(dw.CanonicalName)},
		{"destination_canonical_revision", or(dw.CanonicalRevision)},
		{"destination_workload_namespace", or(dw.Namespace)},
		{"destination_principal", or(dstPrincipal)},
		{"destination_app", or(dw.CanonicalName)},
		{"destination_version", or(dw.CanonicalRevision)},
		{"destination_cluster", or(dw.ClusterID)},
		{"request_protocol", "tcp"},
		{"response_flags", "-"},
		{"connection_security_policy", security},
	}
	if c.SrcWorkload != nil || c.DstWorkload != nil {
		labels = append(labels,
			MetricLabel{"source_region", or(sw.Locality.Region)},
			MetricLabel{"source_zone", or(sw.Locality.Zone)},
			MetricLabel{"destination_region", or(dw.Locality.Region)},
			MetricLabel{"destination_zone", or(dw.Locality.Zone)},
		)
	}
	return labels
}
