package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// ErrLocalConfig is wrapped by every error of [ParseLocalConfig].
var ErrLocalConfig = errors.New("proxy: local config")

// LocalConfig is the content of a ztunnel LOCAL_XDS_PATH file: workloads
// and services with ztunnel's field names.
type LocalConfig struct {
	Workloads []Workload
	Services  []Service
}

type lcFile struct {
	Workloads []lcWorkload `json:"workloads"`
	Services  []lcService  `json:"services"`
	Policies  []any        `json:"policies"`
}

type lcGateway struct {
	Destination   string `json:"destination"`
	HBONEMtlsPort uint16 `json:"hboneMtlsPort"`
}

type lcLocality struct {
	Region  string `json:"region"`
	Zone    string `json:"zone"`
	Subzone string `json:"subzone"`
}

type lcWorkload struct {
	UID               string                       `json:"uid"`
	Name              string                       `json:"name"`
	Namespace         string                       `json:"namespace"`
	ServiceAccount    string                       `json:"serviceAccount"`
	TrustDomain       string                       `json:"trustDomain"`
	WorkloadIPs       []string                     `json:"workloadIps"`
	WorkloadIP        string                       `json:"workloadIp"`
	Protocol          string                       `json:"protocol"`
	Node              string                       `json:"node"`
	Network           string                       `json:"network"`
	ClusterID         string                       `json:"clusterId"`
	CanonicalName     string                       `json:"canonicalName"`
	CanonicalRevision string                       `json:"canonicalRevision"`
	WorkloadName      string                       `json:"workloadName"`
	WorkloadType      string                       `json:"workloadType"`
	Status            string                       `json:"status"`
	Capacity          uint32                       `json:"capacity"`
	Locality          lcLocality                   `json:"locality"`
	Labels            map[string]string            `json:"labels"`
	Waypoint          *lcGateway                   `json:"waypoint"`
	Services          map[string]map[string]uint16 `json:"services"`
}

type lcLoadBalancing struct {
	Mode              string   `json:"mode"`
	RoutingPreference []string `json:"routingPreference"`
	HealthPolicy      string   `json:"healthPolicy"`
}

type lcService struct {
	Name            string            `json:"name"`
	Namespace       string            `json:"namespace"`
	Hostname        string            `json:"hostname"`
	VIPs            []string          `json:"vips"`
	Ports           map[string]uint16 `json:"ports"`
	SubjectAltNames []string          `json:"subjectAltNames"`
	Waypoint        *lcGateway        `json:"waypoint"`
	LoadBalancing   *lcLoadBalancing  `json:"loadBalancing"`
	IPFamilies      string            `json:"ipFamilies"`
}

// ParseLocalConfig decodes a ztunnel local config file (YAML or JSON):
//
//	workloads:
//	- uid: cluster1//v1/Pod/default/local
//	  name: local
//	  namespace: default
//	  serviceAccount: default
//	  workloadIps: ["127.0.0.1"]
//	  protocol: HBONE
//	  node: local
//	  services:
//	    "default/example.com":
//	      80: 8080
//	services:
//	- name: local
//	  namespace: default
//	  hostname: example.com
//	  vips: ["/127.10.0.1"]
//	  ports:
//	    80: 8080
//
// Waypoints are {destination: "network/IP" or "namespace/hostname",
// hboneMtlsPort: 15008}. ztunnel's own "policies" section is refused:
// give authorization policies as Istio YAML instead. Unknown fields are
// errors. Errors name the field at fault and wrap [ErrLocalConfig].
func ParseLocalConfig(data []byte) (*LocalConfig, error) {
	var f lcFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLocalConfig, err)
	}
	if len(f.Policies) > 0 {
		return nil, fmt.Errorf("%w: policies: ztunnel's policy format is not supported; use Istio AuthorizationPolicy YAML", ErrLocalConfig)
	}
	out := &LocalConfig{}
	for i, w := range f.Workloads {
		where := fmt.Sprintf("workloads[%d]", i)
		pw, err := w.convert(where)
		if err != nil {
			return nil, err
		}
		out.Workloads = append(out.Workloads, pw)
	}
	for i, s := range f.Services {
		where := fmt.Sprintf("services[%d]", i)
		ps, err := s.convert(where)
		if err != nil {
			return nil, err
		}
		out.Services = append(out.Services, ps)
	}
	return out, nil
}

func lcErr(where, field, format string, args ...any) error {
	return fmt.Errorf("%w: %s.%s: %s", ErrLocalConfig, where, field, fmt.Sprintf(format, args...))
}

func (w *lcWorkload) convert(where string) (Workload, error) {
	pw := Workload{
		UID: w.UID, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
		TrustDomain: w.TrustDomain, Node: w.Node, Network: w.Network, Labels: w.Labels,
		Capacity: w.Capacity,
		Locality: Locality{Region: w.Locality.Region, Zone: w.Locality.Zone, Subzone: w.Locality.Subzone},
	}
	if pw.Name == "" {
		return pw, lcErr(where, "name", "required")
	}
	if pw.Namespace == "" {
		return pw, lcErr(where, "namespace", "required")
	}
	if pw.ServiceAccount == "" {
		pw.ServiceAccount = "default"
	}
	if pw.UID == "" {
		pw.UID = fmt.Sprintf("%s//Pod/%s/%s", w.ClusterID, w.Namespace, w.Name)
	}
	ips := w.WorkloadIPs
	if w.WorkloadIP != "" {
		ips = append([]string{w.WorkloadIP}, ips...)
	}
	for j, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return pw, lcErr(where, fmt.Sprintf("workloadIps[%d]", j), "%q is not an IP address", s)
		}
		pw.Addresses = append(pw.Addresses, a.Unmap())
	}
	switch strings.ToUpper(w.Protocol) {
	case "HBONE":
		pw.Protocol = TunnelHBONE
	case "", "TCP", "NONE":
		pw.Protocol = TunnelNone
	default:
		return pw, lcErr(where, "protocol", "%q is not HBONE or TCP", w.Protocol)
	}
	switch strings.ToLower(w.Status) {
	case "", "healthy":
	case "unhealthy":
		pw.Unhealthy = true
	default:
		return pw, lcErr(where, "status", "%q is not Healthy or Unhealthy", w.Status)
	}
	if w.Waypoint != nil {
		g, err := w.Waypoint.convert()
		if err != nil {
			return pw, lcErr(where, "waypoint", "%v", err)
		}
		pw.Waypoint = g
	}
	if len(w.Services) > 0 {
		pw.Services = make(map[string][]PortMapping, len(w.Services))
		for _, key := range sortedKeys(w.Services) {
			if !strings.Contains(key, "/") {
				return pw, lcErr(where, "services", "key %q must be namespace/hostname", key)
			}
			ports, err := convertPorts(w.Services[key])
			if err != nil {
				return pw, lcErr(where, fmt.Sprintf("services[%q]", key), "%v", err)
			}
			for _, p := range ports {
				pw.Services[key] = append(pw.Services[key], PortMapping{ServicePort: p.Port, TargetPort: p.TargetPort})
			}
		}
	}
	return pw, nil
}

func (s *lcService) convert(where string) (Service, error) {
	ps := Service{Name: s.Name, Namespace: s.Namespace, Hostname: s.Hostname, SubjectAltNames: s.SubjectAltNames}
	if ps.Namespace == "" {
		return ps, lcErr(where, "namespace", "required")
	}
	if ps.Hostname == "" {
		return ps, lcErr(where, "hostname", "required")
	}
	for j, v := range s.VIPs {
		// "network/ip"; the network part may be empty.
		ipStr := v
		if k := strings.LastIndexByte(v, '/'); k >= 0 {
			ipStr = v[k+1:]
		}
		a, err := netip.ParseAddr(ipStr)
		if err != nil {
			return ps, lcErr(where, fmt.Sprintf("vips[%d]", j), "%q is not network/IP", v)
		}
		ps.Addresses = append(ps.Addresses, a.Unmap())
	}
	ports, err := convertPorts(s.Ports)
	if err != nil {
		return ps, lcErr(where, "ports", "%v", err)
	}
	ps.Ports = ports
	if s.Waypoint != nil {
		g, err := s.Waypoint.convert()
		if err != nil {
			return ps, lcErr(where, "waypoint", "%v", err)
		}
		ps.Waypoint = g
	}
	if lb := s.LoadBalancing; lb != nil {
		plb := &LoadBalancing{}
		switch strings.ToUpper(lb.Mode) {
		case "", "UNSPECIFIED_MODE", "STANDARD":
			plb.Mode = LBStandard
		case "STRICT":
			plb.Mode = LBStrict
		case "FAILOVER":
			plb.Mode = LBFailover
		case "PASSTHROUGH":
			plb.Mode = LBPassthrough
		default:
			return ps, lcErr(where, "loadBalancing.mode", "unknown mode %q", lb.Mode)
		}
		for j, scope := range lb.RoutingPreference {
			sc := strings.ToLower(scope)
			switch sc {
			case "network", "region", "zone", "subzone", "node":
			case "cluster":
				// Single cluster: every endpoint matches.
				continue
			default:
				return ps, lcErr(where, fmt.Sprintf("loadBalancing.routingPreference[%d]", j), "unknown scope %q", scope)
			}
			plb.RoutingPreference = append(plb.RoutingPreference, sc)
		}
		switch strings.ToUpper(lb.HealthPolicy) {
		case "", "ONLY_HEALTHY":
		case "ALLOW_ALL":
			plb.AllowUnhealthy = true
		default:
			return ps, lcErr(where, "loadBalancing.healthPolicy", "unknown policy %q", lb.HealthPolicy)
		}
		if plb.Mode == LBStrict || plb.Mode == LBFailover {
			if _, _, ok := routeSettings(plb); !ok {
				return ps, lcErr(where, "loadBalancing.routingPreference", "%v is not a preference Istio generates for %s", lb.RoutingPreference, lb.Mode)
			}
		}
		ps.LoadBalancing = plb
	}
	return ps, nil
}

func (g *lcGateway) convert() (*Gateway, error) {
	k := strings.LastIndexByte(g.Destination, '/')
	if k < 0 {
		return nil, fmt.Errorf("destination %q must be network/IP or namespace/hostname", g.Destination)
	}
	out := &Gateway{HBONEPort: g.HBONEMtlsPort}
	if a, err := netip.ParseAddr(g.Destination[k+1:]); err == nil {
		out.Address = a.Unmap()
	} else if k > 0 && k < len(g.Destination)-1 {
		out.Service = g.Destination
	} else {
		return nil, fmt.Errorf("destination %q must be network/IP or namespace/hostname", g.Destination)
	}
	return out, nil
}

func convertPorts(m map[string]uint16) ([]ServicePort, error) {
	var out []ServicePort
	for _, k := range sortedKeys(m) {
		p, err := strconv.ParseUint(k, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("port %q is not a number in 1-65535", k)
		}
		out = append(out, ServicePort{Port: uint16(p), TargetPort: m[k]})
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
