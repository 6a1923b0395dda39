package authztest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/go-multierror"
	"sigs.k8s.io/yaml"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
)

// ErrInvalidFile is wrapped by errors about malformed test files.
var ErrInvalidFile = errors.New("authztest: invalid test file")

// Suite is one test file.
type Suite struct {
	// File is the path the suite was loaded from, if any.
	File  string `json:"-"`
	Cases []Case `json:"cases"`
}

// Case is one offline policy test case. Every field except Expect (and
// the optional assertions after it) is also what `meshctl authz check`
// reads from a request file.
type Case struct {
	Name          string `json:"name"`
	Layer         string `json:"layer"`
	RootNamespace string `json:"rootNamespace,omitempty"`
	// ExtensionProviders lists meshConfig.extensionProviders names; CUSTOM
	// policies naming other providers deny what their rules match.
	ExtensionProviders []string `json:"extensionProviders,omitempty"`
	Policies           string   `json:"policies"`
	Workload           Workload `json:"workload"`
	Request            Req      `json:"request"`
	Expect             string   `json:"expect,omitempty"`
	// ExpectPolicy optionally asserts the deciding policy, "ns/name".
	ExpectPolicy string `json:"expectPolicy,omitempty"`
	// ExpectRule optionally asserts the index of the deciding rule.
	ExpectRule *int `json:"expectRule,omitempty"`
	// ExpectError asserts that loading the policies fails with an error
	// containing this text. Without it, any policy error fails the case.
	ExpectError string `json:"expectError,omitempty"`

	// PeerAuthentications is Istio PeerAuthentication YAML (optional).
	// When set, an L4 plaintext request (no source principal) to a port
	// whose effective mode is STRICT is denied whatever AuthorizationPolicy
	// says, as ztunnel does, and loading errors count like policy errors.
	PeerAuthentications string `json:"peerAuthentications,omitempty"`
	// ExpectMTLS optionally asserts the effective mTLS mode of the
	// destination port: DISABLE, PERMISSIVE or STRICT. A case with
	// ExpectMTLS may omit expect. A case with ExpectMTLS or
	// PeerAuthentications may omit layer, which then defaults to L4.
	ExpectMTLS string `json:"expectMTLS,omitempty"`
	// ExpectMTLSBy optionally asserts the PeerAuthentication ("ns/name")
	// that decided the mode, or "default" when none did.
	ExpectMTLSBy string `json:"expectMTLSBy,omitempty"`
}

// Workload is the destination workload.
type Workload struct {
	Namespace         string            `json:"namespace"`
	Labels            map[string]string `json:"labels,omitempty"`
	ServiceAccount    string            `json:"serviceAccount,omitempty"`
	Services          []string          `json:"services,omitempty"`
	ServiceEntries    []string          `json:"serviceEntries,omitempty"`
	Waypoint          string            `json:"waypoint,omitempty"`
	WaypointNamespace string            `json:"waypointNamespace,omitempty"`
}

// Req is the request.
type Req struct {
	Source struct {
		Principal string `json:"principal,omitempty"`
		Namespace string `json:"namespace,omitempty"` // informational: identity comes from Principal
		IP        string `json:"ip,omitempty"`
	} `json:"source"`
	Destination struct {
		IP   string `json:"ip,omitempty"`
		Port int    `json:"port,omitempty"`
	} `json:"destination"`
	RemoteIP string            `json:"remoteIp,omitempty"`
	SNI      string            `json:"sni,omitempty"`
	Method   string            `json:"method,omitempty"`
	Path     string            `json:"path,omitempty"`
	Host     string            `json:"host,omitempty"`
	Headers  map[string]string `json:"headers,omitempty"`
	Auth     *Auth             `json:"auth,omitempty"`
}

// Auth is an already-validated JWT.
type Auth struct {
	Principal string         `json:"principal,omitempty"`
	Audiences []string       `json:"audiences,omitempty"`
	Presenter string         `json:"presenter,omitempty"`
	Claims    map[string]any `json:"claims,omitempty"`
}

// Load parses a test file. name is used in error messages.
func Load(name string, data []byte) (*Suite, error) {
	s := &Suite{File: name}
	if err := decodeStrict(data, s); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidFile, name, err)
	}
	if len(s.Cases) == 0 {
		return nil, fmt.Errorf("%w: %s: no cases", ErrInvalidFile, name)
	}
	seen := map[string]bool{}
	var errs *multierror.Error
	for i := range s.Cases {
		c := &s.Cases[i]
		where := fmt.Sprintf("%s: cases[%d]", name, i)
		if c.Name == "" {
			errs = multierror.Append(errs, fmt.Errorf("%w: %s.name: must not be empty", ErrInvalidFile, where))
		} else if seen[c.Name] {
			errs = multierror.Append(errs, fmt.Errorf("%w: %s.name: duplicate name %q", ErrInvalidFile, where, c.Name))
		}
		seen[c.Name] = true
		if err := c.checkMTLSFields(); err != nil {
			errs = multierror.Append(errs, fmt.Errorf("%w: %s.%w", ErrInvalidFile, where, err))
		}
		if c.Expect != "ALLOW" && c.Expect != "DENY" && (c.Expect != "" || c.ExpectMTLS == "") {
			errs = multierror.Append(errs, fmt.Errorf("%w: %s.expect: %q must be ALLOW or DENY", ErrInvalidFile, where, c.Expect))
		}
		if _, err := c.BuildRequest(); err != nil {
			errs = multierror.Append(errs, fmt.Errorf("%w: %s: %w", ErrInvalidFile, where, err))
		}
	}
	if errs != nil {
		errs.ErrorFormat = authz.ListFormat
		return nil, errs
	}
	return s, nil
}

// decodeStrict decodes YAML into v, rejecting unknown fields. Top-level
// keys starting with "x-" are ignored: they hold YAML anchors shared by
// cases.
func decodeStrict(data []byte, v any) error {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		return fmt.Errorf("the file must be a mapping with a cases list: %w", err)
	}
	for k := range top {
		if strings.HasPrefix(k, "x-") {
			delete(top, k)
		}
	}
	js, err = json.Marshal(top)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// ParseRequest parses one request file: a single case's fields (layer,
// rootNamespace, extensionProviders, policies, workload, request) as used
// by `meshctl authz check`. name and expect are optional.
func ParseRequest(name string, data []byte) (*Case, error) {
	c := &Case{}
	if err := decodeStrict(data, c); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidFile, name, err)
	}
	if _, err := c.BuildRequest(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidFile, name, err)
	}
	return c, nil
}

// LoadFile reads and parses a test file.
func LoadFile(path string) (*Suite, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidFile, err)
	}
	return Load(path, data)
}

func parseAddr(field, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, fmt.Errorf("%s: %q is not an IP address", field, s)
	}
	return a, nil
}

// BuildRequest converts the case's layer, workload and request.
func (c *Case) BuildRequest() (*authz.Request, error) {
	r := &authz.Request{}
	switch strings.ToUpper(c.Layer) {
	case "L4":
		r.Layer = authz.L4
	case "L7":
		r.Layer = authz.L7
	default:
		return nil, fmt.Errorf("layer: %q must be L4 or L7", c.Layer)
	}
	if c.Workload.Namespace == "" {
		return nil, errors.New("workload.namespace: must not be empty")
	}
	r.Workload = authz.Workload{
		Namespace: c.Workload.Namespace, Labels: c.Workload.Labels, ServiceAccount: c.Workload.ServiceAccount,
		Services: c.Workload.Services, ServiceEntries: c.Workload.ServiceEntries,
		Waypoint: c.Workload.Waypoint, WaypointNamespace: c.Workload.WaypointNamespace,
	}
	q := &c.Request
	r.Peer = strings.TrimPrefix(q.Source.Principal, "spiffe://")
	var err error
	if r.SourceIP, err = parseAddr("request.source.ip", q.Source.IP); err != nil {
		return nil, err
	}
	if r.DestIP, err = parseAddr("request.destination.ip", q.Destination.IP); err != nil {
		return nil, err
	}
	if r.RemoteIP, err = parseAddr("request.remoteIp", q.RemoteIP); err != nil {
		return nil, err
	}
	if q.Destination.Port < 0 || q.Destination.Port > 65535 {
		return nil, fmt.Errorf("request.destination.port: %d is out of range", q.Destination.Port)
	}
	r.DestPort = uint16(q.Destination.Port)
	r.SNI, r.Method, r.Path, r.Host = q.SNI, q.Method, q.Path, q.Host
	if len(q.Headers) > 0 {
		r.Headers = make(map[string]string, len(q.Headers))
		for k, v := range q.Headers {
			r.Headers[strings.ToLower(k)] = v
		}
	}
	if a := q.Auth; a != nil {
		j := &authz.JWT{Principal: a.Principal, Audiences: a.Audiences, Presenter: a.Presenter, Claims: a.Claims}
		if j.Principal == "" {
			iss, _ := a.Claims["iss"].(string)
			sub, _ := a.Claims["sub"].(string)
			if iss != "" || sub != "" {
				j.Principal = iss + "/" + sub
			}
		}
		if j.Audiences == nil {
			switch aud := a.Claims["aud"].(type) {
			case string:
				j.Audiences = []string{aud}
			case []any:
				for _, x := range aud {
					if s, ok := x.(string); ok {
						j.Audiences = append(j.Audiences, s)
					}
				}
			}
		}
		if j.Presenter == "" {
			j.Presenter, _ = a.Claims["azp"].(string)
		}
		r.Auth = j
	}
	return r, nil
}

// Engine builds the engine for the case's policies. The engine is usable
// even when err is non-nil (invalid policies fail closed).
func (c *Case) Engine() (*authz.Engine, error) {
	pols, perr := istio.Parse([]byte(c.Policies), istio.Options{})
	eng, err := authz.New(authz.Config{RootNamespace: c.RootNamespace, Providers: c.ExtensionProviders}, pols)
	if perr != nil {
		return eng, perr // includes the validation errors of converted policies
	}
	return eng, err
}

// Evaluate builds the engine and request and decides the request. When a
// document of the policies cannot be read at all (an *istio.DocumentError:
// it cannot be attributed to any scope), the decision is DENY with
// ReasonInvalidPolicy, whatever the other policies say.
func (c *Case) Evaluate() (authz.Decision, error) {
	req, err := c.BuildRequest()
	if err != nil {
		return authz.Decision{}, err
	}
	eng, perr := c.Engine()
	var de *istio.DocumentError
	if errors.As(perr, &de) {
		return authz.Decision{Reason: authz.ReasonInvalidPolicy, Rule: -1}, perr
	}
	return eng.Evaluate(req), perr
}

// Result is the outcome of one case.
type Result struct {
	File     string
	Case     *Case
	Decision authz.Decision
	// MTLS is the effective mTLS mode of the destination port (meaningful
	// when the case has peerAuthentications or expectMTLS).
	MTLS authz.MTLSDecision
	// Failure is empty when the case passed.
	Failure string
}

// Run runs every case of the suite.
func (s *Suite) Run() []Result {
	out := make([]Result, 0, len(s.Cases))
	for i := range s.Cases {
		c := &s.Cases[i]
		res := Result{File: s.File, Case: c}
		d, err := c.Evaluate()
		res.Decision = d
		got := "DENY"
		if d.Allowed {
			got = "ALLOW"
		}
		gotText := d.String()
		withMTLS := c.PeerAuthentications != "" || c.ExpectMTLS != ""
		if withMTLS {
			m, merr := c.EvaluateMTLS()
			res.MTLS = m
			err = joinErrs(err, merr)
			if req, rerr := c.BuildRequest(); rerr == nil && req.Layer == authz.L4 && req.Peer == "" && !m.AllowsPlaintext() {
				got, gotText = "DENY", "DENY (plaintext rejected: "+m.String()+")"
			}
		}
		switch {
		case c.ExpectError == "" && err != nil:
			res.Failure = fmt.Sprintf("policy error: %v", oneLine(err))
		case c.ExpectError != "" && err == nil:
			res.Failure = fmt.Sprintf("expected a policy error containing %q, got none", c.ExpectError)
		case c.ExpectError != "" && !strings.Contains(err.Error(), c.ExpectError):
			res.Failure = fmt.Sprintf("expected a policy error containing %q, got: %v", c.ExpectError, oneLine(err))
		case c.Expect != "" && got != c.Expect:
			res.Failure = fmt.Sprintf("got %s, want %s", gotText, c.Expect)
		case c.ExpectMTLS != "" && res.MTLS.Mode.String() != c.ExpectMTLS:
			res.Failure = fmt.Sprintf("mTLS %s, want %s", res.MTLS, c.ExpectMTLS)
		case c.ExpectMTLSBy != "" && mtlsBy(res.MTLS) != c.ExpectMTLSBy:
			res.Failure = fmt.Sprintf("mTLS %s, want it decided by %s", res.MTLS, c.ExpectMTLSBy)
		case c.ExpectPolicy != "" && (d.Policy == nil || d.Policy.Namespace+"/"+d.Policy.Name != c.ExpectPolicy):
			res.Failure = fmt.Sprintf("decided by %s, want policy %s", d, c.ExpectPolicy)
		case c.ExpectRule != nil && d.Rule != *c.ExpectRule:
			res.Failure = fmt.Sprintf("decided by %s, want rules[%d]", d, *c.ExpectRule)
		}
		out = append(out, res)
	}
	return out
}

func oneLine(err error) string {
	var me *multierror.Error
	if errors.As(err, &me) {
		var parts []string
		for _, e := range me.Errors {
			parts = append(parts, oneLine(e))
		}
		return strings.Join(parts, "; ")
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// Exit statuses of RunFiles.
const (
	ExitPass    = 0
	ExitFail    = 1
	ExitInvalid = 2
)

// RunFiles loads and runs test files, printing one line per failing case
// and a final "N passed, M failed" line to w. It returns ExitInvalid (after
// printing the reason) if a file cannot be loaded, ExitFail if any case
// failed, and ExitPass otherwise.
func RunFiles(w io.Writer, files ...string) int {
	suites, err := loadAll(files)
	if err != nil {
		fmt.Fprintf(w, "%s\n", oneLine(err))
		return ExitInvalid
	}
	pass, fail := 0, 0
	for _, s := range suites {
		for _, r := range s.Run() {
			if r.Failure == "" {
				pass++
				continue
			}
			fail++
			fmt.Fprintf(w, "FAIL %s: %s: %s\n", r.File, r.Case.Name, r.Failure)
		}
	}
	fmt.Fprintf(w, "%d passed, %d failed\n", pass, fail)
	if fail > 0 {
		return ExitFail
	}
	return ExitPass
}

// loadAll loads test files; case names must be unique across all of them.
func loadAll(files []string) ([]*Suite, error) {
	if len(files) == 0 {
		return nil, fmt.Errorf("%w: no test files", ErrInvalidFile)
	}
	var suites []*Suite
	var errs *multierror.Error
	where := map[string]string{} // case name -> "file: cases[i]"
	for _, f := range files {
		s, err := LoadFile(f)
		if err != nil {
			errs = multierror.Append(errs, err)
			continue
		}
		for i := range s.Cases {
			at := fmt.Sprintf("%s: cases[%d]", f, i)
			if first, dup := where[s.Cases[i].Name]; dup {
				errs = multierror.Append(errs, fmt.Errorf("%w: %s.name: duplicate name %q (first used at %s)", ErrInvalidFile, at, s.Cases[i].Name, first))
				continue
			}
			where[s.Cases[i].Name] = at
		}
		suites = append(suites, s)
	}
	if errs != nil {
		errs.ErrorFormat = authz.ListFormat
		return nil, errs
	}
	return suites, nil
}

// RunT runs test files as subtests of t (one per file and case), so that
// policy suites run under `go test`. Like RunFiles, it fails when a file is
// invalid or a case name is used twice across the files.
func RunT(t *testing.T, files ...string) {
	t.Helper()
	suites, err := loadAll(files)
	if err != nil {
		t.Fatalf("%v", err)
	}
	for _, s := range suites {
		t.Run(s.File, func(t *testing.T) {
			for _, r := range s.Run() {
				t.Run(r.Case.Name, func(t *testing.T) {
					if r.Failure != "" {
						t.Error(r.Failure)
					}
				})
			}
		})
	}
}
