package istio

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-multierror"
	"google.golang.org/protobuf/encoding/protojson"
	secv1beta1 "istio.io/api/security/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/meshblocks/meshblocks/authz"
)

type paObject struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name              string `json:"name"`
		Namespace         string `json:"namespace"`
		CreationTimestamp string `json:"creationTimestamp"`
	} `json:"metadata"`
	Spec  json.RawMessage   `json:"spec"`
	Items []json.RawMessage `json:"items"`
}

// ParsePeerAuthentications decodes multi-document YAML as kubectl would
// apply it and converts every security.istio.io v1/v1beta1
// PeerAuthentication (other kinds are skipped; a v1 List is expanded).
//
// Each object's Order is its position in the input, and Created is
// metadata.creationTimestamp when present, so that the oldest-wins rule
// follows creation time and then file order. For a repeated namespace/name
// only the last object is kept. Objects that fail to decode are returned
// with Err set (so that authz.NewPeerAuthn makes their scope STRICT) and
// every error, naming the object and field, is also aggregated in the
// returned error. A document that cannot be read as an object at all (not
// YAML, or not of the object's shape) cannot be attributed to a namespace
// and yields no object, only a *DocumentError: callers that enforce must
// treat it as fatal. The result is not
// validated beyond decoding; authz.NewPeerAuthn validates.
func ParsePeerAuthentications(data []byte, opts Options) ([]authz.PeerAuthentication, error) {
	var errs *multierror.Error
	var out []authz.PeerAuthentication
	for i, doc := range documents(data) {
		js, err := yaml.YAMLToJSON(doc.body)
		if err != nil {
			errs = multierror.Append(errs, &DocumentError{Doc: i, Line: doc.line, Err: shiftLines(err, doc.line)})
			continue
		}
		if err := parsePAJSON(js, &opts, &out, &DocumentError{Doc: i, Line: doc.line}); err != nil {
			errs = multierror.Append(errs, err)
		}
	}
	out = lastWins(out, func(p *authz.PeerAuthentication) [2]string { return [2]string{p.Namespace, p.Name} })
	if errs == nil {
		return out, nil
	}
	errs.ErrorFormat = authz.ListFormat
	return out, errs
}

func parsePAJSON(js []byte, opts *Options, out *[]authz.PeerAuthentication, at *DocumentError) error {
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil
	}
	var o paObject
	if err := json.Unmarshal(js, &o); err != nil {
		return docErr(at, "%w", err)
	}
	if o.Kind == "List" {
		var errs *multierror.Error
		for i, it := range o.Items {
			item := *at
			item.Item = fmt.Sprintf("items[%d]", i)
			if at.Item != "" {
				item.Item = at.Item + "." + item.Item
			}
			if err := parsePAJSON(it, opts, out, &item); err != nil {
				errs = multierror.Append(errs, err)
			}
		}
		if errs == nil {
			return nil
		}
		errs.ErrorFormat = authz.ListFormat
		return errs
	}
	group, _, _ := strings.Cut(o.APIVersion, "/")
	if o.Kind != "PeerAuthentication" || group != "security.istio.io" {
		return nil
	}
	pa, err := convertPAObject(&o, opts)
	pa.Order = len(*out)
	*out = append(*out, pa)
	return err
}

func convertPAObject(o *paObject, opts *Options) (authz.PeerAuthentication, error) {
	ns := o.Metadata.Namespace
	if ns == "" {
		ns = opts.DefaultNamespace
		if ns == "" {
			ns = "default"
		}
	}
	fail := func(field string, err error) (authz.PeerAuthentication, error) {
		pe := &authz.PeerAuthenticationError{Namespace: ns, Name: o.Metadata.Name, Field: field, Msg: err.Error(), Err: err}
		return authz.PeerAuthentication{Namespace: ns, Name: o.Metadata.Name, Err: pe}, pe
	}
	if o.APIVersion != "security.istio.io/v1" && o.APIVersion != "security.istio.io/v1beta1" {
		return fail("apiVersion", fmt.Errorf("%w: unsupported apiVersion %q", ErrDecode, o.APIVersion))
	}
	var created time.Time
	if ts := o.Metadata.CreationTimestamp; ts != "" {
		t, err := time.Parse(time.RFC3339, ts)
		if err != nil {
			return fail("metadata.creationTimestamp", fmt.Errorf("%w: %q is not an RFC 3339 time", ErrDecode, ts))
		}
		created = t
	}
	spec := &secv1beta1.PeerAuthentication{}
	if len(o.Spec) > 0 && !bytes.Equal(o.Spec, []byte("null")) {
		if err := protojson.Unmarshal(o.Spec, spec); err != nil {
			return fail("spec", fmt.Errorf("%w: %w", ErrDecode, err))
		}
	}
	pa, err := ConvertPeerAuthentication(ns, o.Metadata.Name, spec)
	pa.Created = created
	return pa, err
}

// ConvertPeerAuthentication turns a decoded PeerAuthentication spec into an
// authz.PeerAuthentication. It only fails for a nil spec.portLevelMtls
// entry or an enum value outside the Istio API (the returned object then
// has Err set); other checks are left to authz.NewPeerAuthn.
func ConvertPeerAuthentication(namespace, name string, spec *secv1beta1.PeerAuthentication) (authz.PeerAuthentication, error) {
	pa := authz.PeerAuthentication{Namespace: namespace, Name: name}
	if sel := spec.GetSelector(); sel != nil {
		pa.HasSelector = true
		pa.Selector = sel.GetMatchLabels()
	}
	var errs *multierror.Error
	mode := func(field string, m *secv1beta1.PeerAuthentication_MutualTLS) authz.MTLSMode {
		switch m.GetMode() {
		case secv1beta1.PeerAuthentication_MutualTLS_UNSET:
			return authz.MTLSUnset
		case secv1beta1.PeerAuthentication_MutualTLS_DISABLE:
			return authz.MTLSDisable
		case secv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE:
			return authz.MTLSPermissive
		case secv1beta1.PeerAuthentication_MutualTLS_STRICT:
			return authz.MTLSStrict
		}
		errs = multierror.Append(errs, &authz.PeerAuthenticationError{Namespace: namespace, Name: name,
			Field: field, Msg: fmt.Sprintf("unknown mode %d", m.GetMode())})
		return authz.MTLSStrict
	}
	pa.Mode = mode("spec.mtls.mode", spec.GetMtls())
	if pl := spec.GetPortLevelMtls(); len(pl) > 0 {
		pa.PortModes = make(map[uint32]authz.MTLSMode, len(pl))
		for port, m := range pl {
			field := fmt.Sprintf("spec.portLevelMtls[%d]", port)
			if m == nil {
				errs = multierror.Append(errs, &authz.PeerAuthenticationError{Namespace: namespace, Name: name,
					Field: field, Msg: "must not be null"})
				pa.PortModes[port] = authz.MTLSStrict
				continue
			}
			pa.PortModes[port] = mode(field+".mode", m)
		}
	}
	if errs == nil {
		return pa, nil
	}
	errs.ErrorFormat = authz.ListFormat
	pa.Err = errs
	return pa, errs
}
