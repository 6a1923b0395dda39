package routetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// File is one route test file: "cases: [...]".
type File struct {
	Path  string `json:"-"`
	Cases []Case `json:"cases"`
}

// Case is one test case.
type Case struct {
	Name string `json:"name"`
	// Source cites where the expected behaviour is specified.
	Source string `json:"source"`
	Note   string `json:"note,omitempty"`
	// Config is multi-document YAML of Istio and Gateway API objects.
	Config   string    `json:"config,omitempty"`
	Services []Service `json:"services"`
	// WaypointLocality is where the waypoint runs; locality load balancing
	// in the waypoint is relative to it. Unset: no locality preference.
	WaypointLocality *Locality `json:"waypointLocality,omitempty"`
	Request          Request   `json:"request"`
	Expect           Expect    `json:"expect"`
}

// Service describes one Service and its endpoints.
type Service struct {
	Host                     string     `json:"host"`
	Port                     int        `json:"port,omitempty"`
	Ports                    []Port     `json:"ports,omitempty"`
	VIP                      string     `json:"vip,omitempty"`
	Endpoints                []Endpoint `json:"endpoints,omitempty"`
	Waypoint                 *bool      `json:"waypoint,omitempty"`
	WaypointNamespace        string     `json:"waypointNamespace,omitempty"`
	TrafficDistribution      string     `json:"trafficDistribution,omitempty"`
	InternalTrafficPolicy    string     `json:"internalTrafficPolicy,omitempty"`
	PublishNotReadyAddresses bool       `json:"publishNotReadyAddresses,omitempty"`
	// Resolution is the ServiceEntry resolution: STATIC (the default) or
	// NONE (connections pass through to the address dialled).
	Resolution string `json:"resolution,omitempty"`
}

// Port is a Service port.
type Port struct {
	Port int    `json:"port"`
	Name string `json:"name,omitempty"`
	// TargetPort is a number, or the name of a port the endpoints define.
	TargetPort  TargetPort `json:"targetPort,omitempty"`
	AppProtocol string     `json:"appProtocol,omitempty"`
}

// TargetPort is a port number or a port name (as Kubernetes' IntOrString).
type TargetPort struct {
	Number int
	Name   string
}

// UnmarshalJSON accepts a number or a name.
func (p *TargetPort) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &p.Number); err == nil {
		return nil
	}
	if err := json.Unmarshal(b, &p.Name); err != nil || p.Name == "" {
		return fmt.Errorf("targetPort: want a number or a port name, got %s", b)
	}
	return nil
}

// Locality is a node/region/zone/network placement.
type Locality struct {
	Node    string `json:"node,omitempty"`
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	Subzone string `json:"subzone,omitempty"`
	Network string `json:"network,omitempty"`
}

// Endpoint is one backend workload.
type Endpoint struct {
	// IP may be omitted for a workload reachable only through its
	// networkGateway.
	IP       string            `json:"ip,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Healthy  *bool             `json:"healthy,omitempty"`
	Capacity *uint32           `json:"capacity,omitempty"`
	// Ports are the workload's named ports, for Services whose targetPort
	// is a name.
	Ports map[string]int `json:"ports,omitempty"`
	// NetworkGateway is the address of the gateway that reaches the
	// workload from other networks.
	NetworkGateway string `json:"networkGateway,omitempty"`
	Locality       `json:",inline"`
}

// Request is the simulated request.
type Request struct {
	Host                   string            `json:"host"`
	Port                   int               `json:"port,omitempty"`
	Path                   string            `json:"path,omitempty"`
	Method                 string            `json:"method,omitempty"`
	Scheme                 string            `json:"scheme,omitempty"`
	Headers                map[string]string `json:"headers,omitempty"`
	SourceLabels           map[string]string `json:"sourceLabels,omitempty"`
	SourceNamespace        string            `json:"sourceNamespace,omitempty"`
	SourceIP               string            `json:"sourceIP,omitempty"`
	Protocol               string            `json:"protocol,omitempty"`
	TargetIP               string            `json:"targetIP,omitempty"`
	Source                 *Locality         `json:"source,omitempty"`
	Backend                *Backend          `json:"backend,omitempty"`
	BackendResponseHeaders map[string]string `json:"backendResponseHeaders,omitempty"`
	Count                  int               `json:"count,omitempty"`
}

// Backend is simulated upstream behaviour.
type Backend struct {
	Delay     Duration `json:"delay,omitempty"`
	FailFirst int      `json:"failFirst,omitempty"`
	Status    int      `json:"status,omitempty"`
}

// Duration is a time.Duration written as "1.5s".
type Duration time.Duration

// UnmarshalJSON reads "1.5s" (or a number of seconds).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var f float64
		if err2 := json.Unmarshal(b, &f); err2 != nil {
			return fmt.Errorf("duration: %w", err)
		}
		*d = Duration(f * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Expect holds the expectation: exactly one of Destination, Distribution,
// Response, Affinity, plus optional checks.
type Expect struct {
	Destination  *Destination       `json:"destination,omitempty"`
	Distribution map[string]float64 `json:"distribution,omitempty"`
	Response     *Response          `json:"response,omitempty"`
	Affinity     *Affinity          `json:"affinity,omitempty"`

	Path                    string                       `json:"path,omitempty"`
	Authority               string                       `json:"authority,omitempty"`
	RequestHeaders          map[string]string            `json:"requestHeaders,omitempty"`
	AbsentRequestHeaders    []string                     `json:"absentRequestHeaders,omitempty"`
	ResponseHeaders         map[string]string            `json:"responseHeaders,omitempty"`
	AbsentResponseHeaders   []string                     `json:"absentResponseHeaders,omitempty"`
	RequestHeadersByBackend map[string]map[string]string `json:"requestHeadersByBackend,omitempty"`
	MirroredTo              []Mirror                     `json:"mirroredTo,omitempty"`
	MinLatency              Duration                     `json:"minLatency,omitempty"`
	UpstreamAttempts        int                          `json:"upstreamAttempts,omitempty"`
}

// Destination is where every request must end.
type Destination struct {
	Host   string `json:"host"`
	Subset string `json:"subset,omitempty"`
	Port   int    `json:"port,omitempty"`
}

// Response is what the client must see.
type Response struct {
	Status          int               `json:"status,omitempty"`
	GRPCStatus      *int              `json:"grpcStatus,omitempty"`
	ConnectionError bool              `json:"connectionError,omitempty"`
	Headers         map[string]string `json:"headers,omitempty"`
	Body            *string           `json:"body,omitempty"`
	Redirect        *Redirect         `json:"redirect,omitempty"`
}

// Redirect parts of a Location header; empty parts are not checked.
type Redirect struct {
	Scheme string `json:"scheme,omitempty"`
	Host   string `json:"host,omitempty"`
	// Port is a number, or "default" (absent, or 80/443 for the scheme).
	Port PortSpec `json:"port,omitempty"`
	Path string   `json:"path,omitempty"`
}

// PortSpec is a port number or "default".
type PortSpec string

// UnmarshalJSON accepts a number or a string.
func (p *PortSpec) UnmarshalJSON(b []byte) error {
	var n int
	if err := json.Unmarshal(b, &n); err == nil {
		*p = PortSpec(strconv.Itoa(n))
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if s != "default" {
		if _, err := strconv.Atoi(s); err != nil {
			return fmt.Errorf("redirect port: want a number or \"default\", got %q", s)
		}
	}
	*p = PortSpec(s)
	return nil
}

// Affinity expects repeated requests to stick to one endpoint.
type Affinity struct {
	// HashOn is "header:<name>", "cookie:<name>", "sourceIP" or "query:<name>";
	// with SameEndpoint it must be the hash key of the destination used.
	HashOn       string `json:"hashOn"`
	SameEndpoint bool   `json:"sameEndpoint"`
	// Within is a subset name or host all those requests stay in.
	Within string `json:"within,omitempty"`
}

// Mirror expects a share of requests mirrored to a destination.
type Mirror struct {
	Host     string   `json:"host"`
	Subset   string   `json:"subset,omitempty"`
	Fraction *float64 `json:"fraction,omitempty"`
}

// ErrInvalidFile wraps every problem with a test file's structure.
var ErrInvalidFile = errors.New("routetest: invalid file")

// LoadFile reads and validates a test file.
func LoadFile(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidFile, err)
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f.Path = path
	return f, nil
}

// Parse decodes and validates a test file. Unknown fields are errors.
func Parse(data []byte) (*File, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidFile, err)
	}
	if len(f.Cases) == 0 {
		return nil, fmt.Errorf("%w: no cases", ErrInvalidFile)
	}
	seen := map[string]bool{}
	for i, c := range f.Cases {
		at := fmt.Sprintf("cases[%d]", i)
		if c.Name == "" {
			return nil, fmt.Errorf("%w: %s.name: required", ErrInvalidFile, at)
		}
		at += " (" + c.Name + ")"
		if seen[c.Name] {
			return nil, fmt.Errorf("%w: %s.name: duplicate", ErrInvalidFile, at)
		}
		seen[c.Name] = true
		if c.Source == "" {
			return nil, fmt.Errorf("%w: %s.source: required", ErrInvalidFile, at)
		}
		if c.Request.Host == "" {
			return nil, fmt.Errorf("%w: %s.request.host: required", ErrInvalidFile, at)
		}
		n := 0
		for _, set := range []bool{c.Expect.Destination != nil, c.Expect.Distribution != nil, c.Expect.Response != nil, c.Expect.Affinity != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			return nil, fmt.Errorf("%w: %s.expect: exactly one of destination, distribution, response, affinity is required (got %d)", ErrInvalidFile, at, n)
		}
		sum := 0.0
		for k, v := range c.Expect.Distribution {
			if v < 0 || v > 1 {
				return nil, fmt.Errorf("%w: %s.expect.distribution.%s: must be in 0..1", ErrInvalidFile, at, k)
			}
			sum += v
		}
		if c.Expect.Distribution != nil && (sum < 0.999 || sum > 1.001) {
			return nil, fmt.Errorf("%w: %s.expect.distribution: fractions sum to %v, want 1", ErrInvalidFile, at, sum)
		}
		switch strings.ToLower(c.Request.Protocol) {
		case "", "http", "grpc", "tcp", "tls":
		default:
			return nil, fmt.Errorf("%w: %s.request.protocol: unknown %q", ErrInvalidFile, at, c.Request.Protocol)
		}
		if a := c.Expect.Affinity; a != nil && a.HashOn == "" {
			return nil, fmt.Errorf("%w: %s.expect.affinity.hashOn: required", ErrInvalidFile, at)
		}
	}
	return &f, nil
}
