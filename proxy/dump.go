package proxy

import (
	"context"
	"net/netip"
	"sort"
	"time"
)

// ConfigDump is what a proxy's admin endpoint shows (ztunnel's
// /config_dump): the state it works from and its certificates.
type ConfigDump struct {
	Workloads    []WorkloadDump    `json:"workloads"`
	Services     []ServiceDump     `json:"services"`
	Policies     []PolicyDump      `json:"policies"`
	Certificates []CertificateDump `json:"certificates"`
}

// WorkloadDump is one workload in a [ConfigDump].
type WorkloadDump struct {
	UID            string                 `json:"uid"`
	Name           string                 `json:"name"`
	Namespace      string                 `json:"namespace"`
	ServiceAccount string                 `json:"serviceAccount"`
	WorkloadIPs    []netip.Addr           `json:"workloadIps"`
	Protocol       string                 `json:"protocol"`
	Node           string                 `json:"node,omitempty"`
	Network        string                 `json:"network,omitempty"`
	Identity       string                 `json:"identity"`
	Waypoint       *Gateway               `json:"waypoint,omitempty"`
	Services       map[string]map[int]int `json:"services,omitempty"`
	Status         string                 `json:"status"`
}

// ServiceDump is one service in a [ConfigDump].
type ServiceDump struct {
	Name      string       `json:"name"`
	Namespace string       `json:"namespace"`
	Hostname  string       `json:"hostname"`
	VIPs      []netip.Addr `json:"vips"`
	Ports     map[int]int  `json:"ports"`
	Endpoints []string     `json:"endpoints"`
	Waypoint  *Gateway     `json:"waypoint,omitempty"`
}

// PolicyDump names one authorization policy in a [ConfigDump].
type PolicyDump struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Action    string `json:"action"`
	Rules     int    `json:"rules"`
}

// CertificateDump describes the certificate of one identity served here.
type CertificateDump struct {
	Identity  string    `json:"identity"`
	State     string    `json:"state"` // "Available" or the error
	Serial    string    `json:"serialNumber,omitempty"`
	NotBefore time.Time `json:"validFrom,omitzero"`
	NotAfter  time.Time `json:"expirationTime,omitzero"`
}

// ConfigDump returns the current state and, for every workload of this
// node, its certificate. ctx bounds waiting for certificates.
func (p *Proxy) ConfigDump(ctx context.Context) ConfigDump {
	st := p.cfg.State.Load()
	var d ConfigDump
	seen := map[string]bool{}
	for i := range st.workloads {
		w := &st.workloads[i]
		wd := WorkloadDump{
			UID: w.UID, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
			WorkloadIPs: w.Addresses, Node: w.Node, Network: w.Network, Waypoint: w.Waypoint,
			Identity: st.IdentityOf(w).String(), Protocol: "TCP", Status: "Healthy",
		}
		if w.Protocol == TunnelHBONE {
			wd.Protocol = "HBONE"
		}
		if w.Unhealthy {
			wd.Status = "Unhealthy"
		}
		if len(w.Services) > 0 {
			wd.Services = map[string]map[int]int{}
			for k, ms := range w.Services {
				pm := map[int]int{}
				for _, m := range ms {
					pm[int(m.ServicePort)] = int(m.TargetPort)
				}
				wd.Services[k] = pm
			}
		}
		d.Workloads = append(d.Workloads, wd)
		if !p.local(w) || seen[wd.Identity] {
			continue
		}
		seen[wd.Identity] = true
		cd := CertificateDump{Identity: wd.Identity, State: "Available"}
		svid, err := p.cfg.Identity(st.IdentityOf(w)).SVID(ctx)
		if err != nil {
			cd.State = err.Error()
		} else if len(svid.Certificates) > 0 {
			leaf := svid.Certificates[0]
			cd.Serial = leaf.SerialNumber.Text(16)
			cd.NotBefore, cd.NotAfter = leaf.NotBefore, leaf.NotAfter
		}
		d.Certificates = append(d.Certificates, cd)
	}
	for i := range st.services {
		s := &st.services[i]
		sd := ServiceDump{Name: s.Name, Namespace: s.Namespace, Hostname: s.Hostname, VIPs: s.Addresses,
			Ports: map[int]int{}, Waypoint: s.Waypoint}
		for _, sp := range s.Ports {
			sd.Ports[int(sp.Port)] = int(sp.TargetPort)
		}
		for _, w := range st.endpoints[s.Key()] {
			sd.Endpoints = append(sd.Endpoints, w.UID)
		}
		d.Services = append(d.Services, sd)
	}
	if e := st.Authz(); e != nil {
		for _, pol := range e.Policies() {
			d.Policies = append(d.Policies, PolicyDump{Name: pol.Name, Namespace: pol.Namespace,
				Action: pol.Action.String(), Rules: len(pol.Rules)})
		}
	}
	sort.Slice(d.Certificates, func(i, j int) bool { return d.Certificates[i].Identity < d.Certificates[j].Identity })
	return d
}
