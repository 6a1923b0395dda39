package authztest

import (
	"fmt"

	"github.com/hashicorp/go-multierror"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/istio"
)

// checkMTLSFields validates expectMTLS and defaults the layer of cases
// with peerAuthentications or expectMTLS to L4. The returned error starts
// with the field name.
func (c *Case) checkMTLSFields() error {
	if c.Layer == "" && (c.ExpectMTLS != "" || c.PeerAuthentications != "") {
		c.Layer = "L4" // PeerAuthentication is enforced by ztunnel
	}
	if c.ExpectMTLS == "" {
		if c.ExpectMTLSBy != "" {
			return fmt.Errorf("expectMTLSBy: requires expectMTLS")
		}
		return nil
	}
	switch c.ExpectMTLS {
	case "DISABLE", "PERMISSIVE", "STRICT":
	default:
		return fmt.Errorf("expectMTLS: %q must be DISABLE, PERMISSIVE or STRICT", c.ExpectMTLS)
	}
	return nil
}

// MTLSEngine builds the PeerAuthentication resolver for the case. It is
// usable even when err is non-nil (invalid objects make their scope STRICT).
func (c *Case) MTLSEngine() (*authz.PeerAuthn, error) {
	pas, perr := istio.ParsePeerAuthentications([]byte(c.PeerAuthentications), istio.Options{})
	eng, err := authz.NewPeerAuthn(authz.PeerAuthnConfig{RootNamespace: c.RootNamespace}, pas)
	if perr != nil {
		return eng, perr // the same objects carry Err, so NewPeerAuthn's errors repeat them
	}
	return eng, err
}

// EvaluateMTLS returns the effective mTLS mode of the case's destination
// workload and port.
func (c *Case) EvaluateMTLS() (authz.MTLSDecision, error) {
	req, err := c.BuildRequest()
	if err != nil {
		return authz.MTLSDecision{}, err
	}
	eng, perr := c.MTLSEngine()
	return eng.Mode(&req.Workload, req.DestPort), perr
}

func mtlsBy(d authz.MTLSDecision) string {
	if d.By == nil {
		return "default"
	}
	return d.By.Namespace + "/" + d.By.Name
}

func joinErrs(a, b error) error {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	me := multierror.Append(a, b)
	me.ErrorFormat = authz.ListFormat
	return me
}
