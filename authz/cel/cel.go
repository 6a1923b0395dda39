package cel

import (
	"fmt"
	"strings"

	"cel.dev/cel-go/cel"

	"github.com/meshblocks/meshblocks/authz"
)

// Annotation is the AuthorizationPolicy annotation that carries a CEL
// condition. Its value is one CEL expression of type bool, ANDed into every
// rule of the policy.
const Annotation = "authz.meshblocks.io/cel"

// Compiler compiles CEL conditions. The zero value is not usable; use
// NewCompiler. A Compiler is safe for concurrent use.
type Compiler struct {
	env *cel.Env
}

// NewCompiler builds the CEL environment with the request variables
// described in the package documentation.
func NewCompiler() (*Compiler, error) {
	m := cel.MapType(cel.StringType, cel.DynType)
	env, err := cel.NewEnv(
		cel.Variable("layer", cel.StringType),
		cel.Variable("source", m),
		cel.Variable("remote", m),
		cel.Variable("destination", m),
		cel.Variable("connection", m),
		cel.Variable("request", m),
	)
	if err != nil {
		return nil, fmt.Errorf("cel: environment: %w", err)
	}
	return &Compiler{env: env}, nil
}

// Condition is a compiled CEL expression; it implements authz.Predicate.
type Condition struct {
	expr string
	prg  cel.Program
}

// Compile parses and type-checks expr. The expression must be of type bool.
func (c *Compiler) Compile(expr string) (*Condition, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, fmt.Errorf("cel: empty expression")
	}
	ast, iss := c.env.Compile(expr)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("cel: %w", iss.Err())
	}
	if ast.OutputType() != cel.BoolType && ast.OutputType() != cel.DynType {
		return nil, fmt.Errorf("cel: expression has type %s, want bool", ast.OutputType())
	}
	prg, err := c.env.Program(ast)
	if err != nil {
		return nil, fmt.Errorf("cel: %w", err)
	}
	return &Condition{expr: expr, prg: prg}, nil
}

// String returns the source expression.
func (c *Condition) String() string { return c.expr }

// Match evaluates the condition against r. A runtime error (for example a
// missing map key) or a non-bool result is returned as an error, which the
// engine treats fail-closed.
func (c *Condition) Match(r *authz.Request) (bool, error) {
	out, _, err := c.prg.Eval(Activation(r))
	if err != nil {
		return false, fmt.Errorf("cel: %s: %w", c.expr, err)
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("cel: %s: result %v is not a bool", c.expr, out.Value())
	}
	return b, nil
}

// Activation returns the CEL variables for r.
func Activation(r *authz.Request) map[string]any {
	td, ns, sa := peerParts(r.Peer)
	ipStr := func(a interface {
		IsValid() bool
		String() string
	}) string {
		if !a.IsValid() {
			return ""
		}
		return a.String()
	}
	remote := r.RemoteIP
	if !remote.IsValid() {
		remote = r.SourceIP
	}
	headers := map[string]any{}
	for k, v := range r.Headers {
		headers[strings.ToLower(k)] = v
	}
	auth := map[string]any{"principal": "", "audiences": []string{}, "presenter": "", "claims": map[string]any{}}
	if r.Auth != nil {
		auth["principal"] = r.Auth.Principal
		if r.Auth.Audiences != nil {
			auth["audiences"] = r.Auth.Audiences
		}
		auth["presenter"] = r.Auth.Presenter
		if r.Auth.Claims != nil {
			auth["claims"] = r.Auth.Claims
		}
	}
	labels := map[string]any{}
	for k, v := range r.Workload.Labels {
		labels[k] = v
	}
	return map[string]any{
		"layer": r.Layer.String(),
		"source": map[string]any{
			"principal": r.Peer, "namespace": ns, "serviceAccount": sa, "trustDomain": td,
			"ip": ipStr(r.SourceIP),
		},
		"remote": map[string]any{"ip": ipStr(remote)},
		"destination": map[string]any{
			"ip": ipStr(r.DestIP), "port": int64(r.DestPort),
			"namespace": r.Workload.Namespace, "serviceAccount": r.Workload.ServiceAccount,
			"labels": labels,
		},
		"connection": map[string]any{"sni": r.SNI},
		"request": map[string]any{
			"method": r.Method, "path": r.Path, "host": r.Host, "headers": headers, "auth": auth,
		},
	}
}

func peerParts(p string) (td, ns, sa string) {
	parts := strings.Split(p, "/")
	if len(parts) == 5 && parts[1] == "ns" && parts[3] == "sa" {
		return parts[0], parts[2], parts[4]
	}
	if len(parts) > 0 {
		td = parts[0]
	}
	return td, "", ""
}

var _ authz.Predicate = (*Condition)(nil)
