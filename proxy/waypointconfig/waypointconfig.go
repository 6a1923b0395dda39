// Package waypointconfig reads the configuration a waypoint enforces from
// the Istio and Kubernetes YAML users already write, into
// proxy.WaypointRules:
//
//   - security.istio.io AuthorizationPolicy (package authz/istio);
//   - networking.istio.io VirtualService and DestinationRule (package
//     route/istio);
//   - gateway.networking.k8s.io HTTPRoute, GRPCRoute, TCPRoute and
//     TLSRoute attached to Services (package route/gatewayapi);
//   - core v1 Service, for the protocol of each port (appProtocol, else
//     the port name, with Istio's protocol selection).
//
// Documents of other kinds are skipped and listed in Result.Skipped; a v1
// List is expanded. Several files are read as one stream, so that a route
// in one file may use a DestinationRule of another.
//
//	res, err := waypointconfig.Parse(waypointconfig.Options{}, waypointconfig.File{Name: "istio.yaml", Data: data})
//	if err != nil { ... }
//	err = wp.SetRules(res.Rules)
package waypointconfig

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/go-multierror"
	"sigs.k8s.io/yaml"

	"github.com/meshblocks/meshblocks/authz"
	authzistio "github.com/meshblocks/meshblocks/authz/istio"
	"github.com/meshblocks/meshblocks/internal/yamldoc"
	"github.com/meshblocks/meshblocks/proxy"
	"github.com/meshblocks/meshblocks/route/gatewayapi"
	routeistio "github.com/meshblocks/meshblocks/route/istio"
)

// ErrInvalid is wrapped by every error about the input that is not an
// invalid AuthorizationPolicy (those wrap authz.ErrInvalidPolicy).
var ErrInvalid = errors.New("waypointconfig: invalid configuration")

// File is one input.
type File struct {
	// Name prefixes errors about the file (for example its path).
	Name string
	Data []byte
}

// Options configures Parse. The zero value is usable.
type Options struct {
	// Domain is the cluster DNS suffix. If empty, "cluster.local".
	Domain string
	// RootNamespace is the mesh root namespace. If empty, "istio-system".
	RootNamespace string
	// Providers are the extension providers meshConfig defines; a CUSTOM
	// policy naming another one denies what it matches.
	Providers []string
	// DefaultNamespace is used for objects without metadata.namespace,
	// as kubectl does with the current context. If empty, "default".
	DefaultNamespace string
}

// Result is what Parse read.
type Result struct {
	Rules proxy.WaypointRules
	// Skipped lists the objects of other kinds, as
	// "file: document N: apiVersion/kind namespace/name".
	Skipped []string
}

// Parse reads the files. Every problem is reported, together, each naming
// its file and document and the field at fault; problems found when the
// routes are converted, across files, name the object and field.
//
// When some AuthorizationPolicies are invalid, Result still holds them:
// each denies every request in the scope it would have applied to (fail
// closed, as authz.New does), and the error wraps authz.ErrInvalidPolicy.
// Every other problem (YAML that is not an object, invalid routes,
// DestinationRules or Services) wraps ErrInvalid, and Result must not be
// used: a route configuration cannot fail closed.
func Parse(opts Options, files ...File) (Result, error) {
	var res Result
	res.Rules.Domain = opts.Domain
	res.Rules.Authz = authz.Config{RootNamespace: opts.RootNamespace, Providers: opts.Providers}
	defNS := cmp.Or(opts.DefaultNamespace, "default")
	domain := cmp.Or(opts.Domain, "cluster.local")
	var errs *multierror.Error
	var iobjs []routeistio.Object
	var gobjs gatewayapi.Objects
	for _, f := range files {
		where := func(i int) string {
			if f.Name == "" {
				return fmt.Sprintf("document %d", i)
			}
			return fmt.Sprintf("%s: document %d", f.Name, i)
		}
		// AuthorizationPolicies: authz/istio reads the whole stream (it
		// skips other kinds) and reports documents that are not objects.
		pols, err := authzistio.Parse(f.Data, authzistio.Options{DefaultNamespace: defNS})
		res.Rules.Policies = append(res.Rules.Policies, pols...)
		if err != nil {
			var de *authzistio.DocumentError
			if errors.As(err, &de) {
				err = fmt.Errorf("%w: %w", ErrInvalid, err)
			}
			errs = multierror.Append(errs, prefix(f.Name, err))
		}
		for i, doc := range yamldoc.Split(f.Data) {
			js, err := yaml.YAMLToJSON(doc)
			if err != nil || string(js) == "null" {
				continue // reported by authz/istio
			}
			items, err := expandList(js)
			if err != nil {
				errs = multierror.Append(errs, fmt.Errorf("%w: %s: %w", ErrInvalid, where(i), err))
				continue
			}
			for _, item := range items {
				var h header
				if err := json.Unmarshal(item, &h); err != nil {
					continue // not an object: reported by authz/istio
				}
				group, version, _ := strings.Cut(h.APIVersion, "/")
				if version == "" {
					group, version = "", group
				}
				id := fmt.Sprintf("%s %s/%s", h.Kind, cmp.Or(h.Metadata.Namespace, defNS), h.Metadata.Name)
				switch {
				case group == "security.istio.io" && h.Kind == "AuthorizationPolicy":
					// read above
				case group == routeistio.Group && (h.Kind == "VirtualService" || h.Kind == "DestinationRule"):
					o, err := routeistio.DecodeJSON(item)
					if err != nil {
						errs = multierror.Append(errs, fmt.Errorf("%w: %s: %w", ErrInvalid, where(i), err))
						continue
					}
					if h.Metadata.Namespace == "" {
						o.Namespace = defNS
					}
					iobjs = append(iobjs, o)
				case group == gatewayapi.Group && slices.Contains([]string{"HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute"}, h.Kind):
					if h.Metadata.Namespace == "" {
						if item, err = withNamespace(item, defNS); err != nil {
							errs = multierror.Append(errs, fmt.Errorf("%w: %s: %w", ErrInvalid, where(i), err))
							continue
						}
					}
					if err := gobjs.AddJSON(item); err != nil {
						errs = multierror.Append(errs, fmt.Errorf("%w: %s: %w", ErrInvalid, where(i), err))
					}
				case group == "" && version == "v1" && h.Kind == "Service":
					if err := addService(&res.Rules, item, cmp.Or(h.Metadata.Namespace, defNS), domain); err != nil {
						errs = multierror.Append(errs, fmt.Errorf("%w: %s: %s: %w", ErrInvalid, where(i), id, err))
					}
				default:
					res.Skipped = append(res.Skipped, fmt.Sprintf("%s: %s %s", where(i), h.APIVersion, id))
				}
			}
		}
	}
	ir, err := routeistio.Convert(iobjs, opts.Domain)
	if err != nil {
		errs = multierror.Append(errs, fmt.Errorf("%w: %w", ErrInvalid, err))
	}
	gr, err := gatewayapi.Convert(gobjs, opts.Domain)
	if err != nil {
		errs = multierror.Append(errs, fmt.Errorf("%w: %w", ErrInvalid, err))
	}
	res.Rules.Routes = append(ir.Routes, gr...)
	res.Rules.Destinations = ir.Policies
	if errs != nil {
		errs.ErrorFormat = joinLines
		return res, errs
	}
	return res, nil
}

func joinLines(es []error) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

func prefix(name string, err error) error {
	if name == "" {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// expandList returns the items of a v1 List, or the object itself.
func expandList(js []byte) ([]json.RawMessage, error) {
	var l struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Items      []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(js, &l); err != nil || l.Kind != "List" || l.APIVersion != "v1" {
		return []json.RawMessage{js}, nil
	}
	return l.Items, nil
}

// withNamespace sets metadata.namespace of an object in JSON form.
func withNamespace(js []byte, ns string) ([]byte, error) {
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil {
		return nil, err
	}
	md, _ := obj["metadata"].(map[string]any)
	if md == nil {
		md = map[string]any{}
		obj["metadata"] = md
	}
	md["namespace"] = ns
	return json.Marshal(obj)
}

// addService records the protocol of each port of a core v1 Service.
func addService(r *proxy.WaypointRules, js []byte, ns, domain string) error {
	var svc struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			Ports []struct {
				Name        string `json:"name"`
				Port        int    `json:"port"`
				AppProtocol string `json:"appProtocol"`
			} `json:"ports"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(js, &svc); err != nil {
		return err
	}
	if svc.Metadata.Name == "" {
		return errors.New("metadata.name: required")
	}
	host := svc.Metadata.Name + "." + ns + ".svc." + domain
	for i, p := range svc.Spec.Ports {
		if p.Port <= 0 || p.Port > 65535 {
			return fmt.Errorf("spec.ports[%d].port: must be in 1..65535, got %d", i, p.Port)
		}
		proto := cmp.Or(p.AppProtocol, p.Name)
		if proto == "" {
			continue
		}
		if r.AppProtocols == nil {
			r.AppProtocols = map[string]string{}
		}
		r.AppProtocols[host+":"+strconv.Itoa(p.Port)] = proto
	}
	return nil
}
