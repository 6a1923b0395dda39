package authz

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/go-multierror"
)

// MTLSMode is a PeerAuthentication mutual TLS mode.
type MTLSMode uint8

// The PeerAuthentication modes, in the order of the Istio enum. The zero
// value is MTLSUnset (inherit from the parent).
const (
	MTLSUnset MTLSMode = iota
	MTLSDisable
	MTLSPermissive
	MTLSStrict
)

// String returns the Istio spelling of the mode.
func (m MTLSMode) String() string {
	switch m {
	case MTLSUnset:
		return "UNSET"
	case MTLSDisable:
		return "DISABLE"
	case MTLSPermissive:
		return "PERMISSIVE"
	case MTLSStrict:
		return "STRICT"
	}
	return "MTLSMode(" + strconv.Itoa(int(m)) + ")"
}

// ParseMTLSMode parses an Istio mode name (upper case, as in the API).
func ParseMTLSMode(s string) (MTLSMode, error) {
	switch s {
	case "UNSET":
		return MTLSUnset, nil
	case "DISABLE":
		return MTLSDisable, nil
	case "PERMISSIVE":
		return MTLSPermissive, nil
	case "STRICT":
		return MTLSStrict, nil
	}
	return 0, fmt.Errorf("authz: unknown mTLS mode %q (want UNSET, DISABLE, PERMISSIVE or STRICT)", s)
}

// PeerAuthentication is one Istio PeerAuthentication, independent of its
// wire format (package authz/istio decodes the YAML).
type PeerAuthentication struct {
	Namespace string
	Name      string

	// Selector is spec.selector.matchLabels. HasSelector reports whether
	// spec.selector was present. A selector without labels is treated as
	// no selector (namespace- or mesh-wide), as istiod does.
	Selector    map[string]string
	HasSelector bool

	// Mode is spec.mtls.mode (MTLSUnset when spec.mtls is absent).
	Mode MTLSMode
	// PortModes is spec.portLevelMtls: workload port number to mode.
	PortModes map[uint32]MTLSMode

	// Created is metadata.creationTimestamp; when several policies compete
	// at one level the oldest wins. Ties (including objects without a
	// timestamp, which count as oldest) are broken by Order, then by
	// namespace/name.
	Created time.Time
	// Order is the creation order among objects with equal Created, for
	// example the document index in a YAML file (lower is older).
	Order int

	// Err, when non-nil, marks an object that could not be decoded; it is
	// invalid and makes its scope STRICT.
	Err error
}

// ErrInvalidPeerAuthentication is wrapped by every *PeerAuthenticationError.
var ErrInvalidPeerAuthentication = errors.New("authz: invalid PeerAuthentication")

// PeerAuthenticationError is one validation failure of one PeerAuthentication.
type PeerAuthenticationError struct {
	Namespace, Name string
	// Field is the Istio field path, e.g. "spec.portLevelMtls".
	Field string
	Msg   string
	// Err is the underlying cause, if any.
	Err error
}

// Error returns "authz: PeerAuthentication ns/name: field: msg".
func (e *PeerAuthenticationError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("authz: PeerAuthentication %s/%s: %s", e.Namespace, e.Name, e.Msg)
	}
	return fmt.Sprintf("authz: PeerAuthentication %s/%s: %s: %s", e.Namespace, e.Name, e.Field, e.Msg)
}

// Unwrap returns ErrInvalidPeerAuthentication and the cause, if any.
func (e *PeerAuthenticationError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrInvalidPeerAuthentication, e.Err}
	}
	return []error{ErrInvalidPeerAuthentication}
}

// ValidatePeerAuthentication checks pa as Istio's validation does (the CRD
// rules in istio.io/api security/v1beta1/peer_authentication.proto:
// portLevelMtls requires a selector with matchLabels, and its ports must be
// 1-65535) and returns nil or a *multierror.Error of
// *PeerAuthenticationError values (one per problem; a decoding error in
// pa.Err is included).
func ValidatePeerAuthentication(pa *PeerAuthentication) error {
	var errs *multierror.Error
	add := func(field, format string, args ...any) {
		errs = multierror.Append(errs, &PeerAuthenticationError{Namespace: pa.Namespace, Name: pa.Name, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if pa.Err != nil {
		var me *multierror.Error
		var pe *PeerAuthenticationError
		switch {
		case errors.As(pa.Err, &me):
			errs = multierror.Append(errs, me.Errors...)
		case errors.As(pa.Err, &pe):
			errs = multierror.Append(errs, pe)
		default:
			errs = multierror.Append(errs, &PeerAuthenticationError{Namespace: pa.Namespace, Name: pa.Name, Msg: pa.Err.Error(), Err: pa.Err})
		}
	}
	if pa.Name == "" {
		add("metadata.name", "must not be empty")
	}
	if pa.Namespace == "" {
		add("metadata.namespace", "must not be empty")
	}
	for k := range pa.Selector {
		if k == "" {
			add("spec.selector.matchLabels", "label keys must not be empty")
			break
		}
	}
	if pa.Mode > MTLSStrict {
		add("spec.mtls.mode", "unknown mode %d", pa.Mode)
	}
	if len(pa.PortModes) > 0 && len(pa.Selector) == 0 {
		add("spec.portLevelMtls", "requires spec.selector (mesh- and namespace-wide policies cannot set port-level mTLS)")
	}
	ports := make([]uint32, 0, len(pa.PortModes))
	for p := range pa.PortModes {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	for _, p := range ports {
		field := "spec.portLevelMtls[" + strconv.FormatUint(uint64(p), 10) + "]"
		if p == 0 || p > 65535 {
			add(field, "port must be in 1-65535")
		}
		if m := pa.PortModes[p]; m > MTLSStrict {
			add(field+".mode", "unknown mode %d", m)
		}
	}
	if errs == nil {
		return nil
	}
	errs.ErrorFormat = ListFormat
	return errs
}

// PeerAuthnConfig configures NewPeerAuthn. The zero value is usable.
type PeerAuthnConfig struct {
	// RootNamespace is the mesh root namespace. If empty, "istio-system".
	RootNamespace string
}

// MTLSLevel says which level of the hierarchy decided an MTLSDecision.
type MTLSLevel uint8

// Decision levels, from least to most specific.
const (
	// LevelDefault: no PeerAuthentication set a mode; Istio's default
	// (PERMISSIVE) applies.
	LevelDefault MTLSLevel = iota
	// LevelMesh: the mesh-wide policy in the root namespace.
	LevelMesh
	// LevelNamespace: the namespace-wide policy.
	LevelNamespace
	// LevelWorkload: spec.mtls of a workload-selector policy.
	LevelWorkload
	// LevelPort: spec.portLevelMtls of a workload-selector policy.
	LevelPort
	// LevelInvalid: an invalid policy whose scope covers the workload
	// forced STRICT.
	LevelInvalid
)

// String returns a lower-case name of the level.
func (l MTLSLevel) String() string {
	switch l {
	case LevelDefault:
		return "default"
	case LevelMesh:
		return "mesh"
	case LevelNamespace:
		return "namespace"
	case LevelWorkload:
		return "workload"
	case LevelPort:
		return "port"
	case LevelInvalid:
		return "invalid"
	}
	return "unknown"
}

// MTLSDecision is the effective mTLS mode for one workload port.
type MTLSDecision struct {
	// Mode is DISABLE, PERMISSIVE or STRICT; never UNSET.
	Mode MTLSMode
	// Level is the level that decided Mode.
	Level MTLSLevel
	// By is the deciding PeerAuthentication (owned by the engine; do not
	// modify), nil for LevelDefault.
	By *PeerAuthentication
	// Port is the port the decision is for.
	Port uint16
}

// AllowsPlaintext reports whether ztunnel accepts plaintext (non-mTLS)
// inbound traffic on the port: true for PERMISSIVE and DISABLE (ambient
// treats them alike), false for STRICT.
func (d MTLSDecision) AllowsPlaintext() bool { return d.Mode != MTLSStrict }

// String explains the decision, e.g.
// "STRICT by workload PeerAuthentication test/web portLevelMtls[8080]".
func (d MTLSDecision) String() string {
	if d.By == nil {
		return d.Mode.String() + " (default)"
	}
	s := d.Mode.String() + " by " + d.Level.String() + " PeerAuthentication " + d.By.Namespace + "/" + d.By.Name
	if d.Level == LevelPort {
		s += " portLevelMtls[" + strconv.Itoa(int(d.Port)) + "]"
	}
	return s
}

type labelKV struct{ k, v string }

// compiledPA is a valid workload-selector policy with its selector as a
// slice (cheaper to test than ranging over a map) and its age rank.
type compiledPA struct {
	pa  *PeerAuthentication
	sel []labelKV
	age int // position in oldest-first order
}

func (c *compiledPA) selects(labels map[string]string) bool {
	for _, kv := range c.sel {
		if v, ok := labels[kv.k]; !ok || v != kv.v {
			return false
		}
	}
	return true
}

type paLevel struct {
	ns *PeerAuthentication // oldest namespace-wide valid policy
	// byLabel indexes the valid selector policies by the smallest
	// key=value of their selector; each list is oldest first.
	byLabel map[labelKV][]*compiledPA
	invalid []*PeerAuthentication // invalid policies of the namespace
}

// PeerAuthn resolves the effective PeerAuthentication mTLS mode of a
// destination workload port for the ambient data path (ztunnel inbound). It
// is immutable and safe for concurrent use.
//
// What Istio does, as read from the Istio sources and docs (summarised in
// our own words):
//
//   - Scopes (istio.io docs, "PeerAuthentication" reference and the
//     "Authentication policy" task). A PeerAuthentication in the mesh root
//     namespace without a selector is mesh-wide; one in any other namespace
//     without a selector is namespace-wide; one with spec.selector applies to
//     the workloads of its namespace whose labels contain every matchLabels
//     entry. A selector with no matchLabels counts as "no selector"
//     (istio/istio pilot/pkg/serviceregistry/kube/controller/ambient/
//     authorization.go, convertedSelectorPeerAuthentications).
//   - Precedence: workload > namespace > mesh, resolved top-down: a mode of
//     UNSET (or an absent spec.mtls) inherits the parent's mode; with no
//     policy at all the mode is PERMISSIVE (Istio's default).
//   - Several policies at one level: the oldest (metadata.creationTimestamp)
//     wins; the others are ignored (same file, getOldestPeerAuthn and the
//     per-level "Before" comparisons).
//   - spec.portLevelMtls only works together with a selector (Istio
//     validation rejects it on mesh/namespace-wide policies); a port whose
//     mode is UNSET falls back to the policy's own mode and then to the
//     parent. Keys are the workload's (target) port numbers, not Service
//     ports; port 0 is rejected.
//   - Workload-selector policies in the ROOT namespace are ignored by
//     istiod's ambient conversion (the `cfg.Namespace != rootNamespace`
//     guard in convertedSelectorPeerAuthentications); this package does the
//     same.
//
// Where ambient (ztunnel) differs from sidecars:
//
//   - ztunnel has no "plaintext only" listener mode. Traffic that arrives
//     over HBONE is always mTLS, and plaintext traffic reaching a captured
//     pod is accepted unless the effective mode is STRICT. DISABLE is
//     therefore treated exactly like PERMISSIVE (istiod only ever asks "is it
//     STRICT?": isMtlsModeStrict, and groups PERMISSIVE with DISABLE in every
//     branch of convertPeerAuthentication). The istio.io PeerAuthentication
//     reference says DISABLE "is not supported" in ambient for this reason:
//     it cannot turn mTLS off between ztunnels, it only fails to require it.
//     MTLSDecision keeps the configured mode for explanation, and
//     MTLSDecision.AllowsPlaintext encodes the ambient meaning.
//   - istiod does not send PeerAuthentication to ztunnel as such. It turns
//     it into L4 authorization: a static DENY policy named
//     "istio_converted_static_strict" in the root namespace whose only rule
//     denies connections WITHOUT a peer principal (notPrincipals with a
//     presence match), referenced by every workload whose effective mode is
//     STRICT; and, for workload policies with portLevelMtls, a converted DENY
//     policy "converted_peer_authentication_<name>" with per-port rules
//     (deny without a principal on STRICT ports, or exempt PERMISSIVE ports
//     via notDestinationPorts). This package computes the same answer
//     directly, as a mode per (workload, port), so that a node proxy can
//     reject plaintext before running AuthorizationPolicy.
//   - One corner of istiod's conversion (a workload policy with mode UNSET
//     under a STRICT parent whose port-level entries are all DISABLE, none
//     PERMISSIVE) keeps the static STRICT policy, so those ports stay STRICT
//     in ambient although the API documents port-level DISABLE. We follow
//     istiod here (fail closed): under a STRICT parent and an UNSET workload
//     mode, port-level DISABLE entries only take effect when at least one
//     port-level entry is PERMISSIVE, exactly as istiod resolves it. The
//     opposite corner (namespace UNSET under a STRICT mesh, workload UNSET,
//     a PERMISSIVE port) makes istiod drop the static STRICT policy for the
//     whole workload, so every port accepts plaintext; we do NOT copy that:
//     only the listed port becomes PERMISSIVE, the rest stay STRICT.
//
// Failing closed: an invalid PeerAuthentication (one with Err set or that
// ValidatePeerAuthentication rejects) makes every port of every workload in
// its scope STRICT, whatever other policies say: its selector's workloads
// when the selector itself is usable, otherwise its whole namespace (the
// whole mesh for the root namespace). It is never more permissive than any
// reading of the broken object.
type PeerAuthn struct {
	root        string
	mesh        *PeerAuthentication
	meshInvalid *PeerAuthentication
	byNS        map[string]*paLevel
	pas         []PeerAuthentication
}

func olderPA(a, b *PeerAuthentication) int {
	if c := a.Created.Compare(b.Created); c != 0 {
		return c
	}
	return cmp.Or(cmp.Compare(a.Order, b.Order), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// NewPeerAuthn validates and indexes the PeerAuthentications. It always
// returns a usable engine; the error aggregates every validation problem
// (*PeerAuthenticationError values in a *multierror.Error), and each
// invalid object makes its scope STRICT.
func NewPeerAuthn(cfg PeerAuthnConfig, pas []PeerAuthentication) (*PeerAuthn, error) {
	e := &PeerAuthn{
		root: cmp.Or(cfg.RootNamespace, "istio-system"),
		byNS: map[string]*paLevel{},
		pas:  slices.Clone(pas),
	}
	var errs *multierror.Error
	order := make([]*PeerAuthentication, len(e.pas))
	for i := range e.pas {
		order[i] = &e.pas[i]
	}
	slices.SortStableFunc(order, olderPA)
	for age, pa := range order {
		lv := e.byNS[pa.Namespace]
		if lv == nil {
			lv = &paLevel{}
			e.byNS[pa.Namespace] = lv
		}
		if err := ValidatePeerAuthentication(pa); err != nil {
			errs = multierror.Append(errs, err)
			if pa.Namespace == e.root && len(pa.Selector) == 0 && e.meshInvalid == nil {
				e.meshInvalid = pa
			}
			lv.invalid = append(lv.invalid, pa)
			continue
		}
		switch {
		case len(pa.Selector) == 0 && pa.Namespace == e.root:
			if e.mesh == nil {
				e.mesh = pa
			}
		case len(pa.Selector) == 0:
			if lv.ns == nil {
				lv.ns = pa
			}
		case pa.Namespace != e.root:
			c := &compiledPA{pa: pa, age: age}
			for k, v := range pa.Selector {
				c.sel = append(c.sel, labelKV{k, v})
			}
			slices.SortFunc(c.sel, func(a, b labelKV) int { return cmp.Compare(a.k, b.k) })
			if lv.byLabel == nil {
				lv.byLabel = map[labelKV][]*compiledPA{}
			}
			lv.byLabel[c.sel[0]] = append(lv.byLabel[c.sel[0]], c)
		}
	}
	if errs == nil {
		return e, nil
	}
	errs.ErrorFormat = ListFormat
	return e, errs
}

// RootNamespace returns the configured root namespace.
func (e *PeerAuthn) RootNamespace() string { return e.root }

// Mode returns the effective mTLS mode for inbound traffic to port of the
// workload w (only w.Namespace and w.Labels are used). It does no I/O and
// does not allocate.
func (e *PeerAuthn) Mode(w *Workload, port uint16) MTLSDecision {
	if e.meshInvalid != nil {
		return MTLSDecision{Mode: MTLSStrict, Level: LevelInvalid, By: e.meshInvalid, Port: port}
	}
	lv := e.byNS[w.Namespace]
	if lv != nil {
		for _, pa := range lv.invalid {
			if len(pa.Selector) == 0 || selects(pa.Selector, w.Labels) {
				return MTLSDecision{Mode: MTLSStrict, Level: LevelInvalid, By: pa, Port: port}
			}
		}
	}
	d := MTLSDecision{Mode: MTLSPermissive, Level: LevelDefault, Port: port}
	if e.mesh != nil && e.mesh.Mode != MTLSUnset {
		d.Mode, d.Level, d.By = e.mesh.Mode, LevelMesh, e.mesh
	}
	if lv == nil {
		return d
	}
	if ns := lv.ns; ns != nil && ns.Mode != MTLSUnset {
		d.Mode, d.Level, d.By = ns.Mode, LevelNamespace, ns
	}
	var best *compiledPA
	if len(lv.byLabel) > 0 {
		for k, v := range w.Labels {
			for _, c := range lv.byLabel[labelKV{k, v}] {
				if best != nil && c.age > best.age {
					break
				}
				if c.selects(w.Labels) {
					best = c
					break
				}
			}
		}
	}
	if best == nil {
		return d
	}
	wl := best.pa
	parentStrict := d.Mode == MTLSStrict
	if wl.Mode != MTLSUnset {
		d.Mode, d.Level, d.By = wl.Mode, LevelWorkload, wl
	}
	pm, ok := wl.PortModes[uint32(port)]
	if !ok || pm == MTLSUnset {
		return d
	}
	if pm == MTLSDisable && wl.Mode == MTLSUnset && parentStrict && !hasPermissivePort(wl) {
		// istiod keeps the static STRICT policy in this case (see the
		// package comment); stay STRICT.
		return d
	}
	d.Mode, d.Level, d.By = pm, LevelPort, wl
	return d
}

func hasPermissivePort(pa *PeerAuthentication) bool {
	for _, m := range pa.PortModes {
		if m == MTLSPermissive {
			return true
		}
	}
	return false
}

// PeerAuthentications returns the engine's (validated or not) objects in
// input order. The slice is shared; do not modify it.
func (e *PeerAuthn) PeerAuthentications() []PeerAuthentication { return e.pas }

// String returns "namespace/name".
func (pa *PeerAuthentication) String() string { return pa.Namespace + "/" + pa.Name }

// Admit applies the mode to one L4 request, as ztunnel does before
// AuthorizationPolicy: it returns the decision for r.Workload and
// r.DestPort and whether the connection may proceed (false only when r
// has no peer identity, i.e. arrived in plaintext, and the mode is
// STRICT). It does not allocate.
func (e *PeerAuthn) Admit(r *Request) (MTLSDecision, bool) {
	d := e.Mode(&r.Workload, r.DestPort)
	return d, r.Peer != "" || d.AllowsPlaintext()
}
