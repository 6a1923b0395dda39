package main

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
	"github.com/meshblocks/meshblocks/authz/ztunnel"
	"github.com/meshblocks/meshblocks/proxy"
	"github.com/meshblocks/meshblocks/proxy/waypointconfig"
)

// Labels the control plane reads, as istiod does.
const (
	labelDataplaneMode = "istio.io/dataplane-mode"
	labelUseWaypoint   = "istio.io/use-waypoint"
	labelGatewayName   = "gateway.networking.k8s.io/gateway-name"
	waypointClass      = "istio-waypoint"
)

// object is one applied Kubernetes object.
type object struct {
	apiVersion, kind, namespace, name string
	labels                            map[string]string
	gatewayClass                      string // Gateways only
	file                              string
	data                              []byte // the YAML document
}

// resource names the object as kubectl apply reports it.
func (o *object) resource() string {
	group, _, ok := strings.Cut(o.apiVersion, "/")
	if !ok { // core group: "v1"
		return strings.ToLower(o.kind) + "/" + o.name
	}
	return strings.ToLower(o.kind) + "." + group + "/" + o.name
}

func (o *object) key() string {
	group, _, _ := strings.Cut(o.apiVersion, "/")
	return group + "|" + o.kind + "|" + o.namespace + "|" + o.name
}

// controlPlane stands in for istiod and the Kubernetes API server (the
// controller is not built yet): it keeps the objects applied so far, as
// `kubectl apply` leaves them, and converts them, with the cluster's pods
// and Services, into what each proxy reads: a proxy.State (workloads on
// HBONE or not, Services with their waypoint, ztunnel's L4 policies bound
// to the workloads they select) and a waypoint's rules.
type controlPlane struct {
	base    *proxy.LocalConfig
	objects []*object
}

// compiled is one conversion of the control plane's objects.
type compiled struct {
	state *proxy.State
	rules proxy.WaypointRules
	// l4 are the ztunnel policies, bindings[i] those workload i lists.
	l4       []ztunnel.Authorization
	bindings [][]string
	// waypoints are the Gateways of class istio-waypoint
	// ("namespace/name").
	waypoints []string
	hbone     int
	warnings  []string
}

// apply reads the documents of a file and stores them, replacing objects
// of the same kind and name. It returns what kubectl apply would print.
func (cp *controlPlane) apply(file string, data []byte) ([]string, error) {
	var out []string
	var added []*object
	for i, doc := range istio.SplitDocuments(data) {
		var h struct {
			APIVersion string `yaml:"apiVersion"`
			Kind       string `yaml:"kind"`
			Metadata   struct {
				Name      string            `yaml:"name"`
				Namespace string            `yaml:"namespace"`
				Labels    map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				GatewayClassName string `yaml:"gatewayClassName"`
			} `yaml:"spec"`
		}
		if err := yaml.Unmarshal(doc, &h); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, i, err)
		}
		if h.Kind == "" && h.APIVersion == "" {
			continue // comments only
		}
		if h.Kind == "" || h.APIVersion == "" || h.Metadata.Name == "" {
			return nil, fmt.Errorf("%s: document %d: apiVersion, kind and metadata.name are required", file, i)
		}
		o := &object{apiVersion: h.APIVersion, kind: h.Kind, namespace: h.Metadata.Namespace, name: h.Metadata.Name,
			labels: h.Metadata.Labels, gatewayClass: h.Spec.GatewayClassName, file: file, data: doc}
		if o.namespace == "" && o.kind != "Namespace" {
			o.namespace = "default"
		}
		added = append(added, o)
	}
	for _, o := range added {
		verb := "created"
		if cp.exists(o) {
			verb = "configured"
		}
		if i := slices.IndexFunc(cp.objects, func(p *object) bool { return p.key() == o.key() }); i >= 0 {
			if bytes.Equal(cp.objects[i].data, o.data) {
				verb = "unchanged"
			}
			cp.objects[i] = o
		} else {
			cp.objects = append(cp.objects, o)
		}
		out = append(out, o.resource()+" "+verb)
	}
	return out, nil
}

// exists reports whether the cluster had o before it was applied: an
// object applied earlier, or a namespace or Service of the topology.
func (cp *controlPlane) exists(o *object) bool {
	if slices.ContainsFunc(cp.objects, func(p *object) bool { return p.key() == o.key() }) {
		return true
	}
	switch {
	case o.apiVersion == "v1" && o.kind == "Namespace":
		return slices.ContainsFunc(cp.base.Workloads, func(w proxy.Workload) bool { return w.Namespace == o.name })
	case o.apiVersion == "v1" && o.kind == "Service":
		return slices.ContainsFunc(cp.base.Services, func(s proxy.Service) bool { return s.Namespace == o.namespace && s.Name == o.name })
	}
	return false
}

// compile converts the objects as istiod would for ztunnel and the
// waypoint. An error means the proxies must keep what they have.
func (cp *controlPlane) compile() (*compiled, error) {
	c := &compiled{}
	nsLabels := map[string]map[string]string{}
	svcLabels := map[string]map[string]string{}
	var files []waypointconfig.File
	var pols []authz.Policy
	var pas []authz.PeerAuthentication
	var errs []error
	for _, o := range cp.objects {
		where := o.file + ": " + o.resource()
		switch {
		case o.apiVersion == "v1" && o.kind == "Namespace":
			nsLabels[o.name] = o.labels
			continue
		case o.apiVersion == "v1" && o.kind == "Service":
			svcLabels[o.namespace+"/"+o.name] = o.labels
		case strings.HasPrefix(o.apiVersion, "gateway.networking.k8s.io/") && o.kind == "Gateway":
			if o.gatewayClass == waypointClass {
				c.waypoints = append(c.waypoints, o.namespace+"/"+o.name)
			}
			continue
		case strings.HasPrefix(o.apiVersion, "security.istio.io/") && o.kind == "AuthorizationPolicy":
			p, err := istio.Parse(o.data, istio.Options{})
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
			}
			pols = append(pols, p...)
		case strings.HasPrefix(o.apiVersion, "security.istio.io/") && o.kind == "PeerAuthentication":
			p, err := istio.ParsePeerAuthentications(o.data, istio.Options{})
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
			}
			pas = append(pas, p...)
		}
		files = append(files, waypointconfig.File{Name: where, Data: o.data})
	}

	// Pods of an ambient namespace receive HBONE, unless opted out.
	workloads := slices.Clone(cp.base.Workloads)
	for i := range workloads {
		w := &workloads[i]
		w.Protocol = proxy.TunnelNone
		if nsLabels[w.Namespace][labelDataplaneMode] == "ambient" && w.Labels[labelDataplaneMode] != "none" {
			w.Protocol = proxy.TunnelHBONE
			c.hbone++
		}
	}
	// A Service labelled istio.io/use-waypoint (or in a namespace so
	// labelled) goes through that waypoint, once it exists.
	services := slices.Clone(cp.base.Services)
	for i := range services {
		s := &services[i]
		s.Waypoint = nil
		name := svcLabels[s.Namespace+"/"+s.Name][labelUseWaypoint]
		if name == "" {
			name = nsLabels[s.Namespace][labelUseWaypoint]
		}
		if name == "" || name == "none" {
			continue
		}
		addr, ok := waypointAddr(workloads, c.waypoints, s.Namespace, name)
		if !ok {
			c.warnings = append(c.warnings, fmt.Sprintf("service %s/%s: waypoint %s/%s does not exist; traffic goes to the endpoints", s.Namespace, s.Name, s.Namespace, name))
			continue
		}
		s.Waypoint = &proxy.Gateway{Address: addr, HBONEPort: proxy.DefaultHBONEPort}
	}

	// L4 policies: AuthorizationPolicy and PeerAuthentication to ztunnel's
	// format, bound to the workloads they select (ztunnel.Convert fails
	// closed on invalid policies and says so in its error).
	in := ztunnel.Input{Policies: pols, PeerAuthentications: pas}
	for _, w := range workloads {
		in.Workloads = append(in.Workloads, authz.Workload{Namespace: w.Namespace, Labels: w.Labels, ServiceAccount: w.ServiceAccount})
	}
	out, err := ztunnel.Convert(ztunnel.Config{}, in)
	if out == nil {
		return nil, err
	}
	if err != nil {
		errs = append(errs, err)
	}
	c.l4, c.bindings, c.warnings = out.Policies, out.Bindings, append(c.warnings, out.Warnings...)
	// The data plane's side of the same format: what a ztunnel does with
	// the policies and each workload's authorizationPolicies.
	l4, root, err := proxy.BindPolicies(workloads, out.Policies, out.Bindings)
	if err != nil {
		return nil, err
	}
	engine, err := authz.New(authz.Config{RootNamespace: root}, l4)
	if err != nil {
		errs = append(errs, err) // the engine fails closed
	}
	if c.state, err = proxy.NewState(workloads, services, proxy.WithAuthz(engine)); err != nil {
		return nil, err
	}

	// The waypoint's rules: L7 policies (targetRefs), routes, subsets and
	// the Services' port protocols.
	res, err := waypointconfig.Parse(waypointconfig.Options{}, files...)
	if err != nil && !errors.Is(err, authz.ErrInvalidPolicy) {
		return nil, err
	}
	c.rules = res.Rules
	return c, errors.Join(errs...)
}

// waypointAddr finds the address of waypoint namespace/name: a Gateway of
// class istio-waypoint and the pod that runs it.
func waypointAddr(workloads []proxy.Workload, gateways []string, namespace, name string) (netip.Addr, bool) {
	if !slices.Contains(gateways, namespace+"/"+name) {
		return netip.Addr{}, false
	}
	for _, w := range workloads {
		if w.Namespace == namespace && w.Labels[labelGatewayName] == name && len(w.Addresses) > 0 {
			return w.Addresses[0], true
		}
	}
	return netip.Addr{}, false
}

// describeL4 summarizes the ztunnel policies and the workloads bound to
// them, one line per policy.
func describeL4(c *compiled, workloads []proxy.Workload) []string {
	var lines []string
	for _, a := range c.l4 {
		rules := "no rules (matches nothing)"
		if len(a.Rules) > 0 {
			var rs []string
			for _, r := range a.Rules {
				rs = append(rs, ruleString(r))
			}
			rules = "rules [" + strings.Join(rs, "] or [") + "]"
		}
		line := fmt.Sprintf("%s: %s %s, %s", a.Key(), a.Scope, a.Action, rules)
		var bound []string
		for i, b := range c.bindings {
			if slices.Contains(b, a.Key()) {
				bound = append(bound, cmpName(&workloads[i]))
			}
		}
		if len(bound) > 0 {
			line += "; listed by " + strings.Join(bound, ", ")
		}
		lines = append(lines, line)
	}
	return lines
}

// ruleString renders a ztunnel rule on one line: clauses ANDed, matches
// ORed, fields ANDed.
func ruleString(r ztunnel.Rule) string {
	if len(r) == 0 {
		return "any connection"
	}
	var clauses []string
	for _, cl := range r {
		var ms []string
		for _, m := range cl {
			ms = append(ms, matchString(&m))
		}
		clauses = append(clauses, strings.Join(ms, " or "))
	}
	return strings.Join(clauses, " and ")
}

func matchString(m *ztunnel.Match) string {
	var fs []string
	add := func(name string, n int, item func(i int) string) {
		if n == 0 {
			return
		}
		vs := make([]string, n)
		for i := range vs {
			vs[i] = item(i)
		}
		fs = append(fs, name+": "+strings.Join(vs, ", "))
	}
	str := func(ms []ztunnel.StringMatch) func(int) string { return func(i int) string { return ms[i].String() } }
	sa := func(ms []ztunnel.ServiceAccountMatch) func(int) string {
		return func(i int) string { return ms[i].Namespace + "/" + ms[i].ServiceAccount }
	}
	pfx := func(ps []netip.Prefix) func(int) string { return func(i int) string { return ps[i].String() } }
	port := func(ps []uint16) func(int) string { return func(i int) string { return fmt.Sprint(ps[i]) } }
	add("namespaces", len(m.Namespaces), str(m.Namespaces))
	add("notNamespaces", len(m.NotNamespaces), str(m.NotNamespaces))
	add("serviceAccounts", len(m.ServiceAccounts), sa(m.ServiceAccounts))
	add("notServiceAccounts", len(m.NotServiceAccounts), sa(m.NotServiceAccounts))
	add("principals", len(m.Principals), str(m.Principals))
	add("notPrincipals", len(m.NotPrincipals), str(m.NotPrincipals))
	add("sourceIps", len(m.SourceIPs), pfx(m.SourceIPs))
	add("notSourceIps", len(m.NotSourceIPs), pfx(m.NotSourceIPs))
	add("destinationIps", len(m.DestinationIPs), pfx(m.DestinationIPs))
	add("notDestinationIps", len(m.NotDestinationIPs), pfx(m.NotDestinationIPs))
	add("destinationPorts", len(m.DestinationPorts), port(m.DestinationPorts))
	add("notDestinationPorts", len(m.NotDestinationPorts), port(m.NotDestinationPorts))
	if len(fs) == 0 {
		return "nothing"
	}
	return strings.Join(fs, "; ")
}

// describeRules summarizes a waypoint's rules.
func describeRules(r *proxy.WaypointRules) string {
	var parts []string
	var names []string
	for _, p := range r.Policies {
		if len(p.TargetRefs) > 0 {
			names = append(names, p.Namespace+"/"+p.Name)
		}
	}
	if len(names) > 0 {
		parts = append(parts, "L7 policies "+strings.Join(names, ", "))
	}
	seen := map[string]bool{}
	names = names[:0]
	for _, rt := range r.Routes {
		k := rt.Kind + " " + rt.Namespace + "/" + rt.Name
		if !seen[k] {
			seen[k] = true
			names = append(names, k)
		}
	}
	if len(names) > 0 {
		parts = append(parts, "routes "+strings.Join(names, ", "))
	}
	names = names[:0]
	for _, d := range r.Destinations {
		names = append(names, d.Namespace+"/"+d.Name)
	}
	if len(names) > 0 {
		parts = append(parts, "DestinationRules "+strings.Join(names, ", "))
	}
	if len(parts) == 0 {
		return "none"
	}
	keys := slices.Sorted(maps.Keys(r.AppProtocols))
	var protos []string
	for _, k := range keys {
		protos = append(protos, k+"="+r.AppProtocols[k])
	}
	if len(protos) > 0 {
		parts = append(parts, "ports "+strings.Join(protos, ", "))
	}
	return strings.Join(parts, "; ")
}

// cmpName is a workload's name for the transcript: its workload (owner)
// name, else its pod name.
func cmpName(w *proxy.Workload) string {
	if w.WorkloadName != "" {
		return w.WorkloadName
	}
	return w.Name
}
