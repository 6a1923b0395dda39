package depcheck

import (
	"strings"
	"testing"
)

// rules says, for every library package, which non-standard-library packages
// it may import directly. An entry ending in "/..." allows a whole tree. A
// package of this module that is missing from the table fails the test, so
// that every new package takes a deliberate place in the layering.
//
// Layers, lowest first (a package may only import those above it):
//
//	internal/leakcheck, internal/netutil            (stdlib only)
//	identity                                        (go-spiffe)
//	identity/identitytest, identity/istioca, identity/spire
//	hbone                                           (identity, x/net/http2)
//	authz, authz/cel, authz/istio                   (identity, cel-go, istio.io/api)
//	authz/ztunnel                                   (authz, yaml.v3: no Istio API, no CEL)
//	route, route/istio, route/gatewayapi            (istio.io/api)
//	inpod                                           (x/sys)
//	xds, xds/istio                                  (grpc, protobuf; authz, route)
//	proxy                                           (identity, hbone, authz, authz/ztunnel, route)
//	proxy/waypointconfig                            (proxy, authz/istio, route/istio, route/gatewayapi)
var rules = map[string][]string{
	"":                   nil, // the root package is documentation only
	"internal/depcheck":  nil,
	"internal/leakcheck": nil,
	"internal/netutil":   nil,
	"internal/yamldoc":   nil,
	"internal/istiopb/...": {
		"google.golang.org/protobuf/...", "google.golang.org/grpc/...",
	},

	"identity": {
		"github.com/spiffe/go-spiffe/v2/spiffeid",
		"github.com/spiffe/go-spiffe/v2/svid/x509svid",
		"github.com/spiffe/go-spiffe/v2/bundle/x509bundle",
		"github.com/hashicorp/go-multierror",
	},
	// The Workload API client links gRPC and go-jose: only its importers pay.
	"identity/spire": {
		"identity", "github.com/spiffe/go-spiffe/v2/...",
	},
	"identity/identitytest": {
		"identity", "github.com/spiffe/go-spiffe/v2/...",
	},
	"identity/istioca": {
		"identity", "internal/istiopb/...", "github.com/spiffe/go-spiffe/v2/...",
		"google.golang.org/grpc/...", "google.golang.org/protobuf/...",
	},

	"hbone": {
		"identity", "internal/netutil",
		"golang.org/x/net/http2", "golang.org/x/net/http2/hpack",
		"github.com/spiffe/go-spiffe/v2/spiffeid",
	},
	"hbone/hbonetest": {"hbone", "identity", "identity/identitytest", "github.com/spiffe/go-spiffe/v2/spiffeid"},

	"authz": {
		"identity", "github.com/hashicorp/go-multierror",
		"github.com/spiffe/go-spiffe/v2/spiffeid",
	},
	"authz/cel": {"authz", "cel.dev/cel-go/...", "github.com/hashicorp/go-multierror"},
	"authz/istio": {
		"authz", "authz/cel", "identity", "internal/istiopb/...", "internal/yamldoc",
		"istio.io/api/...", "sigs.k8s.io/yaml", "github.com/hashicorp/go-multierror",
		"google.golang.org/protobuf/...",
	},
	// ztunnel's own policy format: what a node proxy reads. Deliberately
	// free of istio.io/api, protobuf and CEL, so that its importers do not
	// link them.
	"authz/ztunnel": {"authz", "github.com/hashicorp/go-multierror", "go.yaml.in/yaml/v3"},
	"authz/authztest": {
		"authz", "authz/cel", "authz/istio", "identity",
		"sigs.k8s.io/yaml", "github.com/hashicorp/go-multierror",
	},

	"route": {"github.com/hashicorp/go-multierror"},
	"route/istio": {
		"route", "internal/yamldoc", "istio.io/api/...", "sigs.k8s.io/yaml",
		"github.com/hashicorp/go-multierror", "google.golang.org/protobuf/...",
	},
	"route/gatewayapi": {"route", "internal/yamldoc", "sigs.k8s.io/yaml", "github.com/hashicorp/go-multierror"},
	"route/routetest": {
		"route", "route/istio", "route/gatewayapi",
		"sigs.k8s.io/yaml", "github.com/hashicorp/go-multierror",
	},

	"inpod":           {"golang.org/x/sys/unix", "google.golang.org/protobuf/...", "internal/istiopb/..."},
	"inpod/inpodtest": {"inpod"},

	"xds": {"google.golang.org/grpc/...", "google.golang.org/protobuf/...", "internal/istiopb/..."},
	"xds/istio": {
		"xds", "route", "authz", "authz/istio", "internal/istiopb/...",
		"google.golang.org/protobuf/...",
	},

	"proxy": {
		"identity", "hbone", "authz", "authz/ztunnel", "route", "internal/netutil",
		"github.com/spiffe/go-spiffe/v2/spiffeid", "github.com/hashicorp/go-multierror",
		"go.yaml.in/yaml/v3",
	},
	// A waypoint's rules from Istio and Gateway API YAML: links Istio's
	// API types, so that package proxy (and ztunnel) does not.
	"proxy/waypointconfig": {
		"proxy", "authz", "authz/istio", "route/istio", "route/gatewayapi", "internal/yamldoc",
		"sigs.k8s.io/yaml", "github.com/hashicorp/go-multierror",
	},
}

func allowed(list []string, imp string) bool {
	rel, internal := strings.CutPrefix(imp, Module+"/")
	for _, a := range list {
		want, target := a, imp
		if strings.Contains(strings.SplitN(a, "/", 2)[0], ".") {
			// an external module path
		} else {
			if !internal {
				continue
			}
			target = rel
		}
		if tree, ok := strings.CutSuffix(want, "/..."); ok {
			if target == tree || strings.HasPrefix(target, tree+"/") {
				return true
			}
		} else if target == want {
			return true
		}
	}
	return false
}

func lookup(pkg string) ([]string, bool) {
	rel := strings.TrimPrefix(strings.TrimPrefix(pkg, Module), "/")
	if l, ok := rules[rel]; ok {
		return l, true
	}
	for k, l := range rules {
		if tree, ok := strings.CutSuffix(k, "/..."); ok && (rel == tree || strings.HasPrefix(rel, tree+"/")) {
			return l, true
		}
	}
	return nil, false
}

func TestImportDirection(t *testing.T) {
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	files, err := Files(root)
	if err != nil {
		t.Fatal(err)
	}
	imports := Imports(files)
	if len(imports) < 3 {
		t.Fatalf("found only %d packages under %s; the scan is broken", len(imports), root)
	}
	for pkg, imps := range imports {
		list, ok := lookup(pkg)
		if !ok {
			t.Errorf("%s is not in the import table of internal/depcheck/deps_test.go: give it a layer", pkg)
			continue
		}
		for _, imp := range imps {
			if IsStd(imp) {
				continue
			}
			if strings.HasPrefix(imp, Module+"/examples") {
				t.Errorf("%s imports %s: nothing may import examples/", pkg, imp)
				continue
			}
			if !allowed(list, imp) {
				t.Errorf("%s may not import %s (see the layer table in internal/depcheck/deps_test.go)", pkg, imp)
			}
		}
	}
}

func TestAllowed(t *testing.T) {
	tests := []struct {
		list []string
		imp  string
		want bool
	}{
		{[]string{"identity"}, Module + "/identity", true},
		{[]string{"identity"}, Module + "/identity/identitytest", false},
		{[]string{"internal/istiopb/..."}, Module + "/internal/istiopb/workload", true},
		{[]string{"istio.io/api/..."}, "istio.io/api/security/v1beta1", true},
		{[]string{"istio.io/api/..."}, "istio.io/apix", false},
		{[]string{"golang.org/x/net/http2"}, "golang.org/x/net/http2/hpack", false},
		{nil, Module + "/hbone", false},
	}
	for _, tc := range tests {
		if got := allowed(tc.list, tc.imp); got != tc.want {
			t.Errorf("allowed(%v, %q) = %v, want %v", tc.list, tc.imp, got, tc.want)
		}
	}
}
