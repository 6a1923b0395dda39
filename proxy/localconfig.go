package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/ztunnel"
)

// ErrLocalConfig is wrapped by every error of [ParseLocalConfig].
var ErrLocalConfig = errors.New("proxy: local config")

// LocalConfig is the content of a ztunnel LOCAL_XDS_PATH file: workloads,
// services and authorization policies with ztunnel's field names.
type LocalConfig struct {
	Workloads []Workload
	Services  []Service
	// Policies are the file's policies converted for the authz engine
	// (see [ztunnel.ToAuthz]); build the engine with
	// authz.New(authz.Config{RootNamespace: RootNamespace}, Policies). The
	// Labels of Workloads carry the binding labels that attach the
	// policies each workload lists in its authorizationPolicies.
	Policies []authz.Policy
	// RootNamespace is the root namespace the policies imply.
	RootNamespace string
}

type lcFile struct {
	Workloads []lcWorkload     `yaml:"workloads"`
	Services  []lcService      `yaml:"services"`
	Policies  ztunnel.Policies `yaml:"policies"`
}

type lcGateway struct {
	Destination   string `yaml:"destination"`
	HBONEMtlsPort uint16 `yaml:"hboneMtlsPort"`
}

type lcLocality struct {
	Region  string `yaml:"region"`
	Zone    string `yaml:"zone"`
	Subzone string `yaml:"subzone"`
}

type lcWorkload struct {
	UID               string                       `yaml:"uid"`
	Name              string                       `yaml:"name"`
	Namespace         string                       `yaml:"namespace"`
	ServiceAccount    string                       `yaml:"serviceAccount"`
	TrustDomain       string                       `yaml:"trustDomain"`
	WorkloadIPs       []string                     `yaml:"workloadIps"`
	WorkloadIP        string                       `yaml:"workloadIp"`
	Protocol          string                       `yaml:"protocol"`
	Node              string                       `yaml:"node"`
	Network           string                       `yaml:"network"`
	ClusterID         string                       `yaml:"clusterId"`
	CanonicalName     string                       `yaml:"canonicalName"`
	CanonicalRevision string                       `yaml:"canonicalRevision"`
	WorkloadName      string                       `yaml:"workloadName"`
	WorkloadType      string                       `yaml:"workloadType"`
	Status            string                       `yaml:"status"`
	Capacity          uint32                       `yaml:"capacity"`
	Locality          lcLocality                   `yaml:"locality"`
	Labels            map[string]string            `yaml:"labels"`
	Waypoint          *lcGateway                   `yaml:"waypoint"`
	Services          map[string]map[string]uint16 `yaml:"services"`
	// AuthorizationPolicies are the "namespace/name" keys of the
	// WorkloadSelector policies that apply to the workload.
	AuthorizationPolicies []string `yaml:"authorizationPolicies"`
}

type lcLoadBalancing struct {
	Mode              string   `yaml:"mode"`
	RoutingPreference []string `yaml:"routingPreference"`
	HealthPolicy      string   `yaml:"healthPolicy"`
}

type lcService struct {
	Name            string            `yaml:"name"`
	Namespace       string            `yaml:"namespace"`
	Hostname        string            `yaml:"hostname"`
	VIPs            []string          `yaml:"vips"`
	Ports           map[string]uint16 `yaml:"ports"`
	SubjectAltNames []string          `yaml:"subjectAltNames"`
	Waypoint        *lcGateway        `yaml:"waypoint"`
	LoadBalancing   *lcLoadBalancing  `yaml:"loadBalancing"`
	IPFamilies      string            `yaml:"ipFamilies"`
	Canonical       bool              `yaml:"canonical"` // accepted, unused
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
//	  authorizationPolicies: [default/local-from-sleep]
//	services:
//	- name: local
//	  namespace: default
//	  hostname: example.com
//	  vips: ["/127.10.0.1"]
//	  ports:
//	    80: 8080
//	policies:
//	- name: local-from-sleep
//	  namespace: default
//	  scope: WorkloadSelector
//	  action: Allow
//	  rules:
//	  - - - principals:
//	        - !Exact cluster.local/ns/default/sa/sleep
//	  dryRun: false
//
// Waypoints are {destination: "network/IP" or "namespace/hostname",
// hboneMtlsPort: 15008}. Policies are ztunnel's Authorizations (see
// package authz/ztunnel for the format): Global, Namespace-wide, or
// WorkloadSelector-scoped and then applied to the workloads that list them
// in authorizationPolicies, exactly as ztunnel applies them; they come out
// as [LocalConfig.Policies] for the authz engine. `meshctl authz convert`
// writes them from Istio AuthorizationPolicy and PeerAuthentication YAML.
//
// Unknown fields are errors. Errors name the field at fault and wrap
// [ErrLocalConfig].
func ParseLocalConfig(data []byte) (*LocalConfig, error) {
	return ParseLocalConfigFiles(LocalConfigFile{Data: data})
}

// LocalConfigFile is one input of [ParseLocalConfigFiles].
type LocalConfigFile struct {
	// Name prefixes the errors about the file (for example its path).
	Name string
	Data []byte
}

// ParseLocalConfigFiles decodes several local config files as one: their
// workloads, services and policies are concatenated in order, so that a
// workload of one file may list a policy of another (for example a file
// that holds only policies).
func ParseLocalConfigFiles(files ...LocalConfigFile) (*LocalConfig, error) {
	out := &LocalConfig{}
	var policies []ztunnel.Authorization
	var bindings [][]string
	for _, file := range files {
		var f lcFile
		if err := decodeLocalConfig(file.Data, &f); err != nil {
			return nil, fileErr(file.Name, fmt.Errorf("%w: %w", ErrLocalConfig, err))
		}
		for i, w := range f.Workloads {
			pw, err := w.convert(fmt.Sprintf("workloads[%d]", i))
			if err != nil {
				return nil, fileErr(file.Name, err)
			}
			out.Workloads = append(out.Workloads, pw)
			bindings = append(bindings, w.AuthorizationPolicies)
		}
		for i, s := range f.Services {
			ps, err := s.convert(fmt.Sprintf("services[%d]", i))
			if err != nil {
				return nil, fileErr(file.Name, err)
			}
			out.Services = append(out.Services, ps)
		}
		policies = append(policies, f.Policies...)
	}
	var err error
	out.Policies, out.RootNamespace, err = BindPolicies(out.Workloads, policies, bindings)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLocalConfig, err)
	}
	return out, nil
}

// BindPolicies turns ztunnel's own policies, and the policies each
// workload lists (bindings[i] for workloads[i], as "namespace/name": the
// authorizationPolicies istiod sends with a workload, or
// ztunnel.Output.Bindings), into what the authz engine evaluates, as
// [ParseLocalConfigFiles] does for a file (see [ztunnel.ToAuthz]): it
// returns the policies and root namespace for authz.New, and gives the
// workloads bound to selector-scoped policies the labels that attach
// them (each such workload gets a new Labels map; the others are left
// alone). bindings may be shorter than workloads.
func BindPolicies(workloads []Workload, auths []ztunnel.Authorization, bindings [][]string) ([]authz.Policy, string, error) {
	bs := make([]ztunnel.Binding, len(workloads))
	for i, w := range workloads {
		bs[i] = ztunnel.Binding{Name: w.UID, Namespace: w.Namespace}
		if i < len(bindings) {
			bs[i].Policies = bindings[i]
		}
	}
	az, err := ztunnel.ToAuthz(auths, bs)
	if err != nil {
		return nil, "", err
	}
	for i, l := range az.Labels {
		if len(l) == 0 {
			continue
		}
		w := &workloads[i]
		labels := make(map[string]string, len(w.Labels)+len(l))
		maps.Copy(labels, w.Labels)
		maps.Copy(labels, l)
		w.Labels = labels
	}
	return az.Policies, az.RootNamespace, nil
}

// decodeLocalConfig decodes one YAML (or JSON) document strictly.
func decodeLocalConfig(data []byte, f *lcFile) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file
		}
		return err
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return errors.New("a local config file holds one YAML document")
	}
	return nil
}

func fileErr(name string, err error) error {
	if name == "" {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}

func lcErr(where, field, format string, args ...any) error {
	return fmt.Errorf("%w: %s.%s: %s", ErrLocalConfig, where, field, fmt.Sprintf(format, args...))
}

func (w *lcWorkload) convert(where string) (Workload, error) {
	pw := Workload{
		UID: w.UID, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
		TrustDomain: w.TrustDomain, Node: w.Node, Network: w.Network, Labels: w.Labels,
		Capacity: w.Capacity, WorkloadName: w.WorkloadName, CanonicalName: w.CanonicalName,
		CanonicalRevision: w.CanonicalRevision, ClusterID: w.ClusterID,
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
