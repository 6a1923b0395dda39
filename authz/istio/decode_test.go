package istio_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	secv1beta1 "istio.io/api/security/v1beta1"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
)

const header = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: x}\n"

// policyErrors parses one policy and returns its error lines.
func policyErrors(t *testing.T, yaml string) []string {
	t.Helper()
	_, err := istio.Parse([]byte(yaml), istio.Options{})
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

func TestDecodeErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name string
		spec string
		want []string
	}{
		{"number in a string list", "spec:\n  rules:\n  - from:\n    - source: {principals: [a]}\n    - source: {principals: [7]}\n",
			[]string{"authz: x/a: spec.rules[0].from[1].source.principals[0]: must be a string, got number 7"}},
		{"unquoted port", "spec:\n  rules:\n  - to:\n    - operation: {ports: [8080]}\n",
			[]string{"authz: x/a: spec.rules[0].to[0].operation.ports[0]: must be a string, got number 8080"}},
		{"yaml 1.1 bool", "spec:\n  rules:\n  - when:\n    - key: request.headers[x]\n      values: [yes]\n",
			[]string{"authz: x/a: spec.rules[0].when[0].values[0]: must be a string, got bool true"}},
		{"mapping instead of list", "spec:\n  rules:\n  - to: {operation: {ports: [\"80\"]}}\n",
			[]string{"authz: x/a: spec.rules[0].to: must be a list, got a mapping"}},
		{"string instead of list", "spec:\n  rules:\n  - from:\n    - source: {principals: cluster.local/ns/x/sa/y}\n",
			[]string{`authz: x/a: spec.rules[0].from[0].source.principals: must be a list, got string "cluster.local/ns/x/sa/y"`}},
		{"null rule", "spec:\n  rules: [~]\n", []string{"authz: x/a: spec.rules[0]: must not be null"}},
		{"label value", "spec:\n  selector:\n    matchLabels: {app: 1}\n", []string{"authz: x/a: spec.selector.matchLabels[app]: must be a string, got number 1"}},
		{"unknown field with suggestion", "spec:\n  rules:\n  - from:\n    - source: {ipBlock: [10.0.0.1]}\n",
			[]string{`authz: x/a: spec.rules[0].from[0].source: unknown field "ipBlock" (did you mean "ipBlocks"?)`}},
		{"unknown field", "spec:\n  rules:\n  - frm: []\n", []string{`authz: x/a: spec.rules[0]: unknown field "frm" (did you mean "from"?)`}},
		{"field given twice", "spec:\n  selector:\n    matchLabels: {a: b}\n    match_labels: {a: b}\n",
			[]string{`authz: x/a: spec.selector: field "match_labels" is given twice (also as "matchLabels")`}},
		{"bad enum", "spec: {action: deny}\n", []string{`authz: x/a: spec.action: "deny" is not one of ALLOW, DENY, AUDIT, CUSTOM`}},
		{"spec not a mapping", "spec: [a]\n", []string{"authz: x/a: spec: must be a mapping, got a list"}},
		{"every problem at once", "spec:\n  action: NOPE\n  rules:\n  - to:\n    - operation: {ports: [80]}\n  - from: {}\n",
			[]string{
				`authz: x/a: spec.action: "NOPE" is not one of ALLOW, DENY, AUDIT, CUSTOM`,
				"authz: x/a: spec.rules[0].to[0].operation.ports[0]: must be a string, got number 80",
				"authz: x/a: spec.rules[1].from: must be a list, got a mapping",
			}},
		{"empty lists aggregated with validation", "spec:\n  rules:\n  - from: []\n    to: []\n  - from:\n    - source: {ipBlocks: [10.0.0.300]}\n",
			[]string{
				"authz: x/a: spec.rules[0].from: must not be an empty list (omit it instead)",
				"authz: x/a: spec.rules[0].to: must not be an empty list (omit it instead)",
				`authz: x/a: spec.rules[1].from[0].source.ipBlocks[0]: "10.0.0.300" is not an IP or CIDR`,
			}},
		{"snake case names accepted", "spec:\n  rules:\n  - from:\n    - source: {ip_blocks: [10.0.0.1], not_principals: [a]}\n", nil},
		{"numeric enum accepted", "spec: {action: 1, rules: [{}]}\n", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := policyErrors(t, header+tc.spec)
			assert.Equal(t, tc.want, got)
			for _, l := range got {
				assert.NotContains(t, l, "(line 1:", "protojson position leaked")
			}
		})
	}
}

func TestDecodeErrorsWrapErrDecode(t *testing.T) {
	ps, err := istio.Parse([]byte(header+"spec:\n  rules:\n  - to:\n    - operation: {ports: [8080]}\n"), istio.Options{})
	require.Error(t, err)
	assert.ErrorIs(t, err, istio.ErrDecode)
	assert.ErrorIs(t, err, authz.ErrInvalidPolicy)
	require.Len(t, ps, 1)
	require.Error(t, ps[0].Err)
	assert.ErrorIs(t, ps[0].Err, istio.ErrDecode)

	// A validation error is not a decoding error.
	_, err = istio.Parse([]byte(header+"spec:\n  rules:\n  - to:\n    - operation: {ports: [\"http\"]}\n"), istio.Options{})
	require.Error(t, err)
	assert.NotErrorIs(t, err, istio.ErrDecode)
}

func TestDryRunAnnotation(t *testing.T) {
	pol := func(action, value string) string {
		return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\n  namespace: x\n  annotations:\n    istio.io/dry-run: " +
			value + "\nspec:\n  action: " + action + "\n  rules: [{}]\n"
	}
	tests := []struct {
		action, value string
		dryRun        bool
		wantErr       string
	}{
		{"DENY", `"true"`, true, ""},
		{"DENY", `"True"`, true, ""},
		{"DENY", `"TRUE"`, true, ""},
		{"DENY", `"t"`, true, ""},
		{"DENY", `"T"`, true, ""},
		{"ALLOW", `"1"`, true, ""},
		{"ALLOW", `"false"`, false, ""},
		{"ALLOW", `"0"`, false, ""},
		{"ALLOW", `"F"`, false, ""},
		{"DENY", `"yes"`, false, `x/a: metadata.annotations["istio.io/dry-run"]: "yes" is not a boolean`},
		{"DENY", `""`, false, `x/a: metadata.annotations["istio.io/dry-run"]: "" is not a boolean`},
		{"DENY", `"on"`, false, `"on" is not a boolean`},
		{"DENY", `true`, false, `x/a: metadata.annotations["istio.io/dry-run"]: must be a string, got bool true`},
		{"AUDIT", `"true"`, false, `x/a: metadata.annotations["istio.io/dry-run"]: is only supported for action ALLOW or DENY, not AUDIT`},
		{"CUSTOM", `"false"`, false, `is only supported for action ALLOW or DENY, not CUSTOM`},
	}
	for _, tc := range tests {
		t.Run(tc.action+"="+tc.value, func(t *testing.T) {
			y := pol(tc.action, tc.value)
			if tc.action == "CUSTOM" {
				y += "  provider: {name: ext}\n"
			}
			ps, err := istio.Parse([]byte(y), istio.Options{})
			require.Len(t, ps, 1)
			assert.Equal(t, tc.dryRun, ps[0].DryRun)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
			require.Error(t, authz.Validate(&ps[0]), "the policy itself must stay invalid")
		})
	}
}

func TestValidateDryRunAction(t *testing.T) {
	for _, a := range []authz.Action{authz.Audit, authz.Custom} {
		p := authz.Policy{Namespace: "x", Name: "a", Action: a, Provider: "ext", DryRun: true, Rules: []authz.Rule{{}}}
		if a == authz.Audit {
			p.Provider = ""
		}
		err := authz.Validate(&p)
		require.Error(t, err)
		assert.Contains(t, err.Error(), `x/a: metadata.annotations["istio.io/dry-run"]: is only supported for action ALLOW or DENY, not `+a.String())
	}
}

func TestDocumentErrors(t *testing.T) {
	tests := []struct {
		name      string
		yaml      string
		doc, line int
		item      string
		want      string
	}{
		{"bad yaml in second document", header + "spec: {}\n---\n# comment\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b\n",
			1, 6, "", "istio: document 1 (line 6): cannot decode: yaml: line 9: "},
		{"not a mapping", header + "spec: {}\n---\n- a\n- b\n", 1, 6, "", "istio: document 1 (line 6): cannot decode: an object must be a mapping, got a list"},
		{"kind not a string", "kind: [AuthorizationPolicy]\n", 0, 1, "", "kind and apiVersion must be strings"},
		{"namespace not a string", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: 7}\nspec: {}\n",
			0, 1, "", "istio: document 0 (line 1): cannot decode: metadata.namespace: must be a string, got number 7"},
		{"metadata not a mapping", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: a\n", 0, 1, "", "metadata: must be a mapping"},
		{"list item", "apiVersion: v1\nkind: List\nitems:\n- " + strings.ReplaceAll(header, "\n", "\n  ") + "spec: {}\n- 7\n",
			0, 1, "items[1]", "istio: document 0 (line 1) items[1]: cannot decode: an object must be a mapping, got number 7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := istio.Parse([]byte(tc.yaml), istio.Options{})
			require.Error(t, err)
			assert.ErrorIs(t, err, istio.ErrDecode)
			var de *istio.DocumentError
			require.True(t, errors.As(err, &de), "%v", err)
			assert.Equal(t, tc.doc, de.Doc)
			assert.Equal(t, tc.line, de.Line)
			assert.Equal(t, tc.item, de.Item)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestNonStringNameStillFailsClosed(t *testing.T) {
	ps, err := istio.Parse([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: [a], namespace: x}\nspec: {rules: [{}]}\n"), istio.Options{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "x/: metadata.name: must be a string, got a list")
	require.Len(t, ps, 1)
	eng, _ := authz.New(authz.Config{}, ps)
	d := eng.Evaluate(&authz.Request{Layer: authz.L4, Workload: authz.Workload{Namespace: "x"}})
	assert.False(t, d.Allowed)
	assert.Equal(t, authz.ReasonInvalidPolicy, d.Reason)
}

// specCorpus holds specs that protojson accepts and refuses, to check that
// the field-path checker agrees with it exactly.
var specCorpus = []string{
	`{}`, `[]`, `"x"`, `7`,
	`{"rules":[null]}`, `{"rules":null}`, `{"rules":{}}`, `{"rules":[{}]}`,
	`{"rules":[{"from":[null]}]}`, `{"rules":[{"from":[{"source":null}]}]}`,
	`{"rules":[{"from":[{"source":{"principals":[null]}}]}]}`,
	`{"rules":[{"from":[{"source":{"principals":null}}]}]}`,
	`{"rules":[{"from":[{"source":{"principals":"x"}}]}]}`,
	`{"rules":[{"from":[{"source":{"principals":[1]}}]}]}`,
	`{"rules":[{"from":[{"source":{"principals":[true]}}]}]}`,
	`{"rules":[{"from":[{"source":{"principals":[[]]}}]}]}`,
	`{"selector":{"matchLabels":{"a":null}}}`, `{"selector":{"matchLabels":{"a":1}}}`,
	`{"selector":{"match_labels":{"a":"b"}}}`, `{"selector":{"match_labels":{"a":"b"},"matchLabels":{}}}`,
	`{"selector":{"matchLabels":[]}}`, `{"selector":"a"}`,
	`{"action":5}`, `{"action":"5"}`, `{"action":1.0}`, `{"action":1.5}`, `{"action":-1}`,
	`{"action":4294967296}`, `{"action":2147483648}`, `{"action":-2147483649}`, `{"action":null}`,
	`{"action":"allow"}`, `{"action":"DENY"}`, `{"action":true}`, `{"action":1e3}`,
	`{"provider":null}`, `{"provider":{"name":"x"}}`, `{"provider":{"name":7}}`, `{"provider":{"nme":"x"}}`,
	`{"targetRef":{"name":null}}`, `{"targetRefs":null}`, `{"targetRefs":[null]}`,
	`{"targetRefs":[{"kind":"Service","name":"a","group":""}]}`, `{"target_refs":[{"kind":"Service"}]}`,
	`{"rules":[{"when":[{"key":"a","values":["b"],"not_values":["c"]}]}]}`,
	`{"rules":[{"when":[{"key":"a","values":["b"],"notValues":["c"],"not_values":["d"]}]}]}`,
	`{"rules":[{"from":[{"source":{"ip_blocks":["1.1.1.1"]}}]}]}`,
	`{"@type":"x"}`, `{"rules":[{"from":[{"source":{"principals":["a"]},"extra":1}]}]}`,
	`{"rules":[{"to":[{"operation":{"ports":["80"],"hosts":[""]}}]}]}`,
}

func specErrors(js []byte) (checker, proto error) {
	yamlDoc := header + "spec: " + string(js) + "\n"
	_, err := istio.Parse([]byte(yamlDoc), istio.Options{})
	if err != nil && !errors.Is(err, istio.ErrDecode) {
		err = nil // a validation error: decoding succeeded
	}
	return err, protojson.Unmarshal(js, &secv1beta1.AuthorizationPolicy{})
}

func TestSpecCheckerAgreesWithProtojson(t *testing.T) {
	for _, s := range specCorpus {
		checker, proto := specErrors([]byte(s))
		if (checker != nil) != (proto != nil) {
			t.Errorf("%s: checker %v, protojson %v", s, checker, proto)
		}
		if checker != nil && strings.Contains(checker.Error(), "spec: ") && !strings.Contains(checker.Error(), "spec: must be") &&
			!strings.Contains(checker.Error(), "spec: unknown field") && !strings.Contains(checker.Error(), "spec: field") {
			t.Errorf("%s: the checker did not name a field: %v", s, checker)
		}
	}
}

func FuzzSpecDecode(f *testing.F) {
	for _, s := range specCorpus {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		var v any
		if json.Unmarshal(js, &v) != nil || v == nil {
			return // spec: null is an absent spec, not a message
		}
		// YAML reads JSON, so the spec is given in flow style; keep to
		// inputs that survive that embedding unchanged.
		canon, err := json.Marshal(v)
		if err != nil || strings.ContainsAny(string(canon), "\n\r") {
			return
		}
		checker, proto := specErrors(canon)
		if (checker != nil) != (proto != nil) {
			t.Fatalf("%s: checker %v, protojson %v", canon, checker, proto)
		}
	})
}
