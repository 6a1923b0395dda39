package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
	"github.com/meshblocks/meshblocks/authz/ztunnel"
	"github.com/meshblocks/meshblocks/proxy"
)

const convertUsage = `usage: meshctl authz convert [-root-namespace NS] [-config LOCAL_CONFIG] [-dry-run] FILE...

Converts Istio AuthorizationPolicy and PeerAuthentication YAML (FILE...,
applied in order: a later object replaces an earlier one of the same name)
to ztunnel's own policy format, istio.security.Authorization, as istiod
does for ztunnel, and writes a ztunnel local config to stdout:

  with -config   that local config, with its policies replaced and each
                 workload's authorizationPolicies set to the selector-scoped
                 policies that apply to it (comments and order kept);
  without        only the policies (selector-scoped ones then bind to no
                 workload: list them in authorizationPolicies yourself).

What ztunnel cannot enforce (HTTP attributes, CEL conditions, AUDIT, CUSTOM,
dry-run, targetRefs) is reported on stderr; CEL conditions fail closed.
Exit status: 0 converted; 1 some policies are invalid (each is converted to
a policy that denies every connection in its scope); 2 bad input.
`

// withConvert adds `authz convert` to the authz command.
func withConvert(c command) command {
	run := c.run
	c.summary += "; convert policies to ztunnel's format"
	c.run = func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
		if len(args) > 0 && args[0] == "convert" {
			return authzConvert(args[1:], stdout, stderr)
		}
		return run(ctx, args, stdout, stderr)
	}
	return c
}

func authzConvert(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meshctl authz convert", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, convertUsage) }
	root := fs.String("root-namespace", ztunnel.DefaultRootNamespace, "mesh root namespace")
	config := fs.String("config", "", "ztunnel local config file whose workloads to bind")
	dryRun := fs.Bool("dry-run", false, "send dry-run policies (as istiod with AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, convertUsage)
		return 2
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "meshctl authz convert: "+format+"\n", a...)
		return 2
	}

	in := ztunnel.Input{}
	invalid := false
	var polIndex, paIndex = map[[2]string]int{}, map[[2]string]int{}
	for _, f := range fs.Args() {
		data, err := os.ReadFile(f)
		if err != nil {
			return bad("%v", err)
		}
		pols, perr := istio.Parse(data, istio.Options{})
		pas, paerr := istio.ParsePeerAuthentications(data, istio.Options{})
		for _, err := range []error{perr, paerr} {
			var de *istio.DocumentError
			if errors.As(err, &de) {
				// A document that cannot be attributed to any scope
				// cannot be converted to fail closed.
				return bad("%s: %v", f, err)
			}
			if err != nil {
				invalid = true
				fmt.Fprintf(stderr, "%s: %v\n", f, err)
			}
		}
		for _, p := range pols {
			k := [2]string{p.Namespace, p.Name}
			if i, ok := polIndex[k]; ok {
				in.Policies[i] = p
				continue
			}
			polIndex[k] = len(in.Policies)
			in.Policies = append(in.Policies, p)
		}
		for _, p := range pas {
			k := [2]string{p.Namespace, p.Name}
			if i, ok := paIndex[k]; ok {
				in.PeerAuthentications[i] = p
				continue
			}
			paIndex[k] = len(in.PeerAuthentications)
			in.PeerAuthentications = append(in.PeerAuthentications, p)
		}
	}

	var doc *yaml.Node
	var workloadNodes []*yaml.Node
	if *config != "" {
		var err error
		if doc, workloadNodes, in.Workloads, err = readLocalConfig(*config); err != nil {
			return bad("%v", err)
		}
	}
	out, err := ztunnel.Convert(ztunnel.Config{RootNamespace: *root, SendDryRun: *dryRun}, in)
	if out == nil {
		return bad("%v", err)
	}
	if err != nil {
		invalid = true
		fmt.Fprintln(stderr, err) // already reported by the parser for decoding errors, this adds validation
	}
	for _, w := range out.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}

	var buf bytes.Buffer
	if doc == nil {
		data, err := ztunnel.Marshal(out.Policies)
		if err != nil {
			return bad("%v", err)
		}
		buf.Write(data)
		for _, p := range out.Policies {
			if p.Scope == ztunnel.WorkloadSelector {
				fmt.Fprintln(stderr, "note: without -config, selector-scoped policies (and PeerAuthentication) bind to no workload")
				break
			}
		}
	} else {
		for i, n := range workloadNodes {
			setKey(n, "authorizationPolicies", stringList(out.Bindings[i]))
		}
		var pols yaml.Node
		if err := pols.Encode(ztunnel.Policies(out.Policies)); err != nil {
			return bad("%v", err)
		}
		setKey(doc.Content[0], "policies", &pols)
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(doc); err != nil {
			return bad("%v", err)
		}
		enc.Close()
	}
	stdout.Write(buf.Bytes())
	if invalid {
		return 1
	}
	return 0
}

// readLocalConfig reads a local config file as a YAML tree and checks it
// (without its policies and bindings, which convert replaces). It returns
// the tree, the workload mapping nodes, and the workloads as authz sees
// them, in file order.
func readLocalConfig(path string) (*yaml.Node, []*yaml.Node, []authz.Workload, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, nil, nil, fmt.Errorf("%s: a local config is a mapping with workloads, services and policies", path)
	}
	top := doc.Content[0]
	deleteKey(top, "policies")
	var nodes []*yaml.Node
	if ws := getKey(top, "workloads"); ws != nil {
		if ws.Kind != yaml.SequenceNode {
			return nil, nil, nil, fmt.Errorf("%s: workloads: must be a list", path)
		}
		for _, w := range ws.Content {
			if w.Kind != yaml.MappingNode {
				return nil, nil, nil, fmt.Errorf("%s: workloads: every workload must be a mapping", path)
			}
			deleteKey(w, "authorizationPolicies")
			nodes = append(nodes, w)
		}
	}
	stripped, err := yaml.Marshal(&doc)
	if err != nil {
		return nil, nil, nil, err
	}
	lc, err := proxy.ParseLocalConfig(stripped)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	ws := make([]authz.Workload, len(lc.Workloads))
	for i, w := range lc.Workloads {
		ws[i] = authz.Workload{Namespace: w.Namespace, Labels: w.Labels, ServiceAccount: w.ServiceAccount}
	}
	return &doc, nodes, ws, nil
}

func getKey(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func deleteKey(m *yaml.Node, key string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content = append(m.Content[:i], m.Content[i+2:]...)
			return
		}
	}
}

// setKey sets key to v (nil deletes it), in place or at the end.
func setKey(m *yaml.Node, key string, v *yaml.Node) {
	if v == nil {
		deleteKey(m, key)
		return
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
}

func stringList(ss []string) *yaml.Node {
	if len(ss) == 0 {
		return nil
	}
	n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for _, s := range ss {
		n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s})
	}
	return n
}
